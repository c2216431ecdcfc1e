"""Prefect tasks: thin wrappers over ``aegis`` functions; retries on I/O only."""
