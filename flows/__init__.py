"""Prefect flows: compose tasks only; all logic lives in ``aegis``."""
