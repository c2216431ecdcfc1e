"""The DVC store: stage outputs committed to dvc.lock and git, pushed to the remote."""
