"""Text from people and files: refused with control characters, shown escaped.

A ``--reason`` is written to the audit log and printed by ``rollback``,
``audit show`` and ``status``; terminal escapes or Rich markup in it would
rewrite what an operator sees. Reasons with control characters are refused
where they enter; anything printed from the log or the workspace is escaped
(:func:`printable`), since older entries and planted files may hold anything.
"""

from __future__ import annotations

import re
import unicodedata

from aegis.errors import UsageError

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
REASON_LIMIT = 2000


def check_reason(text: str, *, what: str = "--reason") -> str:
    """``text`` stripped, if it is one line of printable text of sane length.

    Raises:
        UsageError: Control characters (terminal escapes, newlines, bidi
            overrides), or longer than :data:`REASON_LIMIT`.
    """
    if _CONTROL.search(text):
        raise UsageError(f"{what}: control characters (escapes, newlines) are not allowed")
    if len(text) > REASON_LIMIT:
        raise UsageError(f"{what}: at most {REASON_LIMIT} characters")
    return text.strip()


def printable(text: object) -> str:
    """``text`` with control characters shown as escapes and Rich markup neutralized."""
    from rich.markup import escape

    def show(match: re.Match[str]) -> str:
        ch = match.group(0)
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"

    value = unicodedata.normalize("NFC", str(text))
    return escape(_CONTROL.sub(show, value))
