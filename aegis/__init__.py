"""Aegis: a secure ML training pipeline.

The core library. Nothing in this package imports Prefect; flows and tasks
wrap these functions, and the CLI (``aegis.cli``) wires them together.
"""

__version__ = "0.1.0"
