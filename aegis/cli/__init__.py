"""The ``aegis`` command line.

Errors are one line on stderr with exit code 1 (refused for a security or
policy reason) or 2 (usage or configuration); ``--verbose`` adds the
traceback. The commands live in ``workspace_cmds`` and ``data_cmds``; this
module is the entry point.
"""

from __future__ import annotations

import sys

import typer

from aegis.cli._app import _console, app

__all__ = ["app", "main"]

# Importing the command modules registers their commands, in `aegis --help` order.
from aegis.cli import workspace_cmds  # noqa: F401, I001
from aegis.cli import data_cmds  # noqa: F401
from aegis.cli import model_cmds  # noqa: F401
from aegis.cli import release_cmds  # noqa: F401
from aegis.cli import promote_cmds  # noqa: F401
from aegis.cli import registry_cmds  # noqa: F401
from aegis.cli import service_cmds  # noqa: F401
from aegis.cli import attack_cmds  # noqa: F401
from aegis.cli import serve_cmds  # noqa: F401
from aegis.cli import monitor_cmds  # noqa: F401


def main() -> None:
    """Runs the CLI, mapping Aegis errors to one line and an exit code."""
    try:  # typer >= 0.29 raises exceptions of its own vendored click
        from typer._click import exceptions as click_exceptions
    except ImportError:  # pragma: no cover - older typer uses click itself
        from click import exceptions as click_exceptions

    from aegis.errors import AegisError

    verbose = any(a in ("--verbose", "-v") for a in sys.argv[1:])
    try:
        rc = app(standalone_mode=False)
    except AegisError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        from aegis.text import printable

        kind = "refused" if exc.exit_code == 1 else "error"
        report = getattr(exc, "report", None)  # a stopped run's findings (the screens')
        if report is not None and "--json" in sys.argv[1:]:
            import json

            print(json.dumps({"refused": exc.check, "message": str(exc), "report": report}))
        _console(stderr=True).print(f"[red]{kind}:[/red] {printable(exc)}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except click_exceptions.ClickException as exc:
        exc.show()
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        _console(stderr=True).print("[red]aborted[/red]")
        sys.exit(130)
    except MemoryError:  # e.g. a planted file too large to check: one line, not a traceback
        _console(stderr=True).print(
            "[red]error:[/red] out of memory (a workspace file far larger than Aegis writes?)"
        )
        sys.exit(2)
    except OSError as exc:  # a path the user gave: too long, unreadable, a full disk
        if verbose:
            raise
        from aegis.text import printable

        where = f": {printable(exc.filename)}" if exc.filename else ""
        _console(stderr=True).print(
            f"[red]error:[/red] {exc.strerror or type(exc).__name__}{where}", soft_wrap=True
        )
        sys.exit(2)
    except Exception as exc:
        if verbose:
            raise
        from aegis.text import printable

        _console(stderr=True).print(
            f"[red]internal error:[/red] {type(exc).__name__}: {printable(exc)} "
            "(rerun with --verbose)",
            soft_wrap=True,
        )
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)
