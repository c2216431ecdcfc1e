"""Text from people and files: unseen characters refused where they enter, escaped when shown."""

from __future__ import annotations

import pytest

from aegis.errors import UsageError
from aegis.text import check_reason, printable

UNSEEN = {
    "escape": "\x1b[2J",
    "newline": "\n",
    "bidi-override": "\u202e",
    "bidi-isolate": "\u2067",
    "zero-width": "\u200b",
    "line-separator": "\u2028",
    "tag-character": "\U000e0041",
    "private-use": "\ue000",
    "surrogate": "\udcff",
    "unassigned": "\U000e0080",
    "hangul-filler": "\u3164",
    "grapheme-joiner": "\u034f",
    "braille-blank": "\u2800",
    "variation-selector": "\ufe0f",
}


@pytest.mark.parametrize("text", UNSEEN.values(), ids=UNSEEN.keys())
def test_unseen_characters_are_refused_in_reasons_and_escaped_when_shown(text):
    with pytest.raises(UsageError, match="control characters"):
        check_reason(f"ok {text} ok")
    shown = printable(f"ok {text} ok")
    assert shown.isprintable() and shown.startswith("ok \\") and shown.endswith(" ok")


def test_ordinary_text_passes_unchanged_and_markup_is_neutralized():
    reason = "robustness 0.41 < 0.5: zurück, 再训练"
    assert check_reason(f"  {reason}  ") == reason
    assert printable("café\u00a0[bold]x[/bold]") == "café\u00a0\\[bold]x\\[/bold]"


def test_a_reason_over_the_limit_is_refused():
    with pytest.raises(UsageError, match="at most"):
        check_reason("x" * 2001)
