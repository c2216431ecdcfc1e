"""How the screens read a table: its feature columns, and whether they form an image."""

from __future__ import annotations

import math
import re

LABEL = "label"
_PIXEL = re.compile(r"pixel_(\d+)_(\d+)")


def feature_columns(frame) -> list[str]:
    """The feature columns of a table: every column but ``label``."""
    return [c for c in frame.columns if c != LABEL]


def image_side(columns: list[str]) -> int | None:
    """The side of the square pixel grid the columns form (``pixel_<r>_<c>``), else None."""
    cells = {m.groups() for m in (_PIXEL.fullmatch(c) for c in columns) if m}
    side = math.isqrt(len(columns))
    if len(cells) != len(columns) or side * side != len(columns):
        return None
    wanted = {(str(r), str(c)) for r in range(side) for c in range(side)}
    return side if cells == wanted else None
