"""ART is imported once, without reconfiguring the process's logging."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A fresh interpreter: ART is already imported in the test process.
_PROBE = textwrap.dedent(
    """
    import logging, logging.config

    closed = []

    class Recording(logging.Handler):
        def emit(self, record):
            pass

        def close(self):
            closed.append(self.name)
            super().close()

    handler = Recording()
    handler.name = "ours"
    logging.getLogger("app").addHandler(handler)
    real = logging.config.dictConfig

    from aegis.evaluate.art_import import import_art

    import_art()
    import_art()  # a second call is a no-op
    import sys

    assert "art.attacks.evasion" in sys.modules and "art.estimators.classification" in sys.modules
    assert closed == [], closed
    assert logging.config.dictConfig is real
    art_handlers = logging.getLogger("art").handlers
    assert [type(h).__name__ for h in art_handlers] == ["NullHandler"], art_handlers
    assert logging.getLogger("app").handlers == [handler]

    # someone else's dictConfig is not swallowed by the guard (it is restored)
    theirs = {"version": 1, "incremental": True, "loggers": {"app": {"level": 30}}}
    logging.config.dictConfig(theirs)
    assert logging.getLogger("app").level == 30
    print("ok")
    """
)


def test_art_import_leaves_the_processes_handlers_open():
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_unguarded_art_import_would_close_them():
    """The reason for the guard: ART's own import closes every handler of the process."""
    probe = textwrap.dedent(
        """
        import logging
        closed = []
        class Recording(logging.Handler):
            def emit(self, record): pass
            def close(self):
                closed.append(1); super().close()
        logging.getLogger("app").addHandler(Recording())
        import art  # noqa: F401
        print(len(closed))
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
