"""The insider attack on our own pipeline: a poisoned copy of a dataset, signed, and its truth.

``aegis attack poison`` writes the poisoned rows as a **signed dataset** (a
supplier key signs it, as a compromised or malicious supplier would) and,
outside it, the ground truth: which row ids were poisoned and how. The
pipeline never reads the truth file; ``aegis attack score`` compares it with
the quarantine (row ids are the quarantine's ``row``: positions in the dataset).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from aegis.attack.poison import poison
from aegis.data.manifest import MANIFEST_NAME, dataset_digest, parse_manifest
from aegis.data.publish import publish_dataset, read_source_frame
from aegis.errors import UsageError
from aegis.fileutil import atomic_write, read_regular

TRUTH_LIMIT = 64 * 1024**2
TRUTH_FORMAT = "aegis-poison-truth/1"


def _source_frame(src: Path):
    """The rows of SRC: a signed dataset directory (manifest order) or CSV/Parquet files."""
    import pandas as pd

    manifest_path = src / MANIFEST_NAME
    if src.is_dir() and manifest_path.is_file():
        manifest, _ = parse_manifest(manifest_path)
        frames = [pd.read_parquet(src / f.path) for f in manifest.files]
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return read_source_frame(src)


def _check_places(out: Path, truth: Path) -> None:
    from aegis.pipeline.layout import check_user_output

    out, truth = check_user_output(out), check_user_output(truth)
    if truth == out or truth.is_relative_to(out):
        raise UsageError(f"--truth {truth} must lie outside --out (the pipeline reads only --out)")
    if truth.exists() or truth.is_symlink():
        raise UsageError(f"--truth {truth}: already exists")


def poison_dataset(
    src: Path,
    *,
    name: str,
    kind: str,
    rate: float,
    seed: int,
    source: int | None,
    target: int | None,
    key_path: Path,
    out: Path,
    truth: Path,
) -> dict[str, Any]:
    """Writes a poisoned, signed copy of ``src`` to ``out`` and its ground truth to ``truth``.

    Returns:
        The truth document (also written to ``truth``).

    Raises:
        UsageError: Unreadable source, bad attack settings, ``out`` not empty,
            ``truth`` inside ``out`` or existing.
        RefusedError: ``path``: ``out`` or ``truth`` inside a workspace's stage outputs.
    """
    _check_places(out, truth)
    frame = _source_frame(src)
    poisoned = poison(frame, kind=kind, rate=rate, seed=seed, source=source, target=target)
    with tempfile.TemporaryDirectory(prefix="aegis-poison-") as tmp:
        staged = Path(tmp) / f"{name}.parquet"
        poisoned.frame.to_parquet(staged, index=False)
        publish_dataset(staged, name=name, key_path=key_path, out=out)
    _, raw = parse_manifest(out / MANIFEST_NAME)
    document = {
        "format": TRUTH_FORMAT,
        "kind": kind,
        "rate": rate,
        "seed": seed,
        "name": name,
        "dataset": dataset_digest(raw),
        "total_rows": len(poisoned.frame),
        "rows": poisoned.rows,
        "original_labels": {str(k): v for k, v in poisoned.labels.items()},
        **{k: v for k, v in (("from", source), ("to", target)) if v is not None},
        "details": poisoned.details,
    }
    truth.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(truth, json.dumps(document, indent=1).encode() + b"\n")
    return document


def read_truth(path: Path) -> dict[str, Any]:
    """A truth file written by :func:`poison_dataset`.

    Raises:
        UsageError: Missing, not a regular file, too large, or not a truth document.
    """
    try:
        raw = read_regular(path, limit=TRUTH_LIMIT, what=str(path))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such truth file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"{path}: not JSON") from None
    rows = document.get("rows") if isinstance(document, dict) else None
    if not isinstance(rows, list) or not all(
        isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in rows
    ):
        raise UsageError(f'{path}: not a truth file (needs "rows": [row ids])')
    return document


def _prf(flagged: set[int], truth: set[int]) -> dict[str, Any]:
    hits = len(flagged & truth)
    precision = hits / len(flagged) if flagged else (1.0 if not truth else 0.0)
    recall = hits / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "flagged": len(flagged), "true_positives": hits, "false_positives": len(flagged - truth),
        "missed": len(truth - flagged), "precision": round(precision, 6),
        "recall": round(recall, 6), "f1": round(f1, 6),
    }  # fmt: skip


def score(truth: dict[str, Any], records: list[dict], *, total_rows: int, digest: str):
    """Precision, recall and F1 of the quarantine against a truth document, overall and per reason.

    Raises:
        UsageError: The truth is for another dataset version, or names rows it does not have.
    """
    if truth.get("dataset") not in (None, digest):
        raise UsageError(
            f"the truth file is for {str(truth['dataset'])[:19]}, the quarantine for {digest[:19]}"
        )
    poisoned = set(truth["rows"])
    unknown = sorted(r for r in poisoned if r >= total_rows)
    if unknown:
        raise UsageError(f"the truth file names rows the dataset does not have: {unknown[:10]}")
    flagged = {r["row"] for r in records}
    reasons = sorted({why for r in records for why in r["reasons"]})
    per_reason = {
        why: _prf({r["row"] for r in records if why in r["reasons"]}, poisoned) for why in reasons
    }
    return {
        "kind": truth.get("kind"), "rate": truth.get("rate"), "dataset": digest,
        "poisoned": len(poisoned), "rows": total_rows, **_prf(flagged, poisoned),
        "clean_flagged_share": round(len(flagged - poisoned) / max(total_rows - len(poisoned), 1),
                                     6),
        "reasons": per_reason,
    }  # fmt: skip
