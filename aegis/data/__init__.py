"""Datasets: demo import, signed publication, sources, verified ingest."""
