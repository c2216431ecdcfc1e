"""Importing the Adversarial Robustness Toolbox (ART) safely: once, and without touching logging.

Every use of ART in Aegis goes through :func:`import_art` first.
"""

from __future__ import annotations

import logging
import logging.config
import threading

_ART_IMPORT = threading.Lock()
_ART_LOGGERS = {"art", "tests"}  # the loggers ART's own configuration names
# Set once the modules are whole: a module is in sys.modules from the moment its import
# starts, so another thread could not tell a finished import from one under way.
_imported = False


def import_art() -> None:
    """Imports the ART modules the attacks use, in the calling thread, leaving logging alone.

    ART's package imports itself circularly; two threads importing it for the
    first time at once (attack jobs on a thread pool) deadlock or see a
    partially initialized module. Call this once before running jobs in threads
    (every use of ART here calls it first).

    ART's ``__init__`` also calls ``logging.config.dictConfig``, which flushes and
    closes every handler the process has: inside a Prefect flow run that waits for
    Prefect's API log handler to drain, 5 s of each evaluation here. All its
    configuration means for ART is a ``NullHandler`` on the ``art`` logger (the rest
    is for ART's own tests), so that is what is done instead.
    """
    global _imported
    if _imported:
        return
    with _ART_IMPORT:
        if _imported:  # another thread finished it while this one waited
            return
        real = logging.config.dictConfig

        def art_only(config: dict) -> None:
            if set(config.get("loggers", {})) != _ART_LOGGERS:  # not ART's: someone else's call
                real(config)
                return
            _art_logging()

        logging.config.dictConfig = art_only
        try:
            import art.attacks.evasion
            import art.estimators.classification  # noqa: F401
        finally:
            logging.config.dictConfig = real
        _imported = True


def _art_logging() -> None:
    """What ART's logging configuration does for ART, without reconfiguring the process."""
    art_logger = logging.getLogger("art")
    if not any(isinstance(h, logging.NullHandler) for h in art_logger.handlers):
        art_logger.addHandler(logging.NullHandler())
