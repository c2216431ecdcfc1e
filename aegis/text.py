"""Text from people and files: refused with control characters, shown escaped.

A ``--reason`` is written to the audit log and printed by ``rollback``,
``audit show`` and ``status``; terminal escapes or Rich markup in it would
rewrite what an operator sees. Reasons with control characters are refused
where they enter; anything printed from the log or the workspace is escaped
(:func:`printable`), since older entries and planted files may hold anything.
"""

from __future__ import annotations

import unicodedata

from aegis.errors import UsageError

# Characters that are not text one sees: controls (Cc: escapes, newlines), format
# characters (Cf: bidi overrides and isolates, zero-width ones), line and paragraph
# separators, and private-use, surrogate and unassigned code points. Decided by
# category, so a new bidi control of a later Unicode version is caught too.
_UNSEEN = frozenset({"Cc", "Cf", "Cn", "Co", "Cs", "Zl", "Zp"})
# Default-ignorable code points of other categories (Unicode's DerivedCoreProperties)
# render as nothing, so "bob" and "b\u3164ob" look alike; U+2800 is blank too.
_INVISIBLE = frozenset(
    (
        *(0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180F, 0x2800, 0x3164, 0xFFA0),
        *range(0x180B, 0x180E),  # Mongolian variation selectors
        *range(0xFE00, 0xFE10),  # variation selectors
        *range(0xE0100, 0xE01F0),  # variation selectors supplement
    )
)


def _unseen(ch: str) -> bool:
    return unicodedata.category(ch) in _UNSEEN or ord(ch) in _INVISIBLE


def has_unseen(text: str) -> bool:
    """Whether ``text`` holds a character that does not show (see :data:`_UNSEEN`)."""
    # str.isprintable is False for every unseen category (and for spaces other
    # than " "): the fast path for ordinary text, which has no invisible letters either.
    if text.isprintable() and text.isascii():
        return False
    return any(_unseen(ch) for ch in text)


REASON_LIMIT = 2000


def check_reason(text: str, *, what: str = "--reason") -> str:
    """``text`` stripped, if it is one line of printable text of sane length.

    Raises:
        UsageError: Control characters (terminal escapes, newlines, bidi
            overrides), or longer than :data:`REASON_LIMIT`.
    """
    if has_unseen(text):
        raise UsageError(f"{what}: control characters (escapes, newlines) are not allowed")
    if len(text) > REASON_LIMIT:
        raise UsageError(f"{what}: at most {REASON_LIMIT} characters")
    return text.strip()


def printable(text: object) -> str:
    """``text`` with control characters shown as escapes and Rich markup neutralized."""
    from rich.markup import escape

    def show(ch: str) -> str:
        if not _unseen(ch):
            return ch
        code = ord(ch)
        if code < 0x100:
            return f"\\x{code:02x}"
        return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"

    value = unicodedata.normalize("NFC", str(text))
    if has_unseen(value):
        value = "".join(show(ch) for ch in value)
    return escape(value)
