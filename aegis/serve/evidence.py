"""The watermark's evidence and its test: was a suspect model trained on our answers?

The records are the watermarks the gateway signed into its prediction-log segment index
(:mod:`aegis.serve.watermark`), from the audit log's ``serve.records`` entries (on the
chain) and from ``log/segments.jsonl`` (not imported yet). A line of the index that does
not verify refuses the whole verification (``watermark-ledger``): evidence from an
edited ledger must not stand. The test is one-sided binomial: under the null "an
independent model", the suspect agrees with a served wrong label with probability at
most ``p0 = max(1 / (classes - 1), null_agreement)`` (the measured agreement of
independently trained models, ``benchmarks/bench_theft.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from aegis.crypto.documents import body_digest
from aegis.errors import RefusedError, UsageError
from aegis.ledger import Action, Ledger
from aegis.serve.records import SEGMENT_KIND, record_lines, segments_index, verified_record
from aegis.serve.watermark import input_sha256


@dataclass(frozen=True)
class WatermarkRecord:
    row: np.ndarray
    sha256: str
    served: int
    label: int
    version: str
    classes: int


@dataclass(frozen=True)
class Verdict:
    p_value: float
    queries: int
    matches: int
    null_agreement: float
    recorded: int  # distinct watermarked inputs on record

    def to_json(self) -> dict:
        return {
            "p_value": self.p_value, "queries": self.queries, "matches": self.matches,
            "agreement": round(self.matches / self.queries, 4) if self.queries else None,
            "null_agreement": round(self.null_agreement, 6), "recorded": self.recorded,
        }  # fmt: skip


def watermark_records(ledger: Ledger) -> list[WatermarkRecord]:
    """Every distinct watermarked input on record, oldest first.

    Raises:
        RefusedError: ``watermark-ledger``: a segment line that does not verify, or a
            record whose input does not hash to its recorded SHA-256.
    """
    documents = []
    for entry in ledger.log.by_action(Action.SERVE_RECORDS):
        documents.extend(entry.details.get("segments", []))
    index = segments_index(ledger.ws)
    for n, line in enumerate(record_lines(index), start=1):
        document = verified_record(line, SEGMENT_KIND, ledger)
        if document is None:
            raise RefusedError(
                "watermark-ledger", f"{index.name} line {n} does not verify "
                "against a serving key: the watermark evidence was changed",
            )  # fmt: skip
        documents.append(document)
    seen_docs: set[str] = set()
    out: dict[str, WatermarkRecord] = {}
    for document in documents:
        body = document["body"]
        digest = body_digest(body)
        if digest in seen_docs:
            continue
        seen_docs.add(digest)
        for mark in body.get("watermarks", []):
            try:
                row = np.asarray(mark["input"], dtype=np.float64)
                record = WatermarkRecord(
                    row,
                    str(mark["input_sha256"]),
                    int(mark["served"]),
                    int(mark["label"]),
                    str(mark["version"]),
                    int(mark["classes"]),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise RefusedError("watermark-ledger", f"a malformed record ({exc})") from None
            if input_sha256(row) != record.sha256:
                raise RefusedError("watermark-ledger", "a record's input is not the one hashed")
            out.setdefault(record.sha256, record)
    return list(out.values())


def binomial_p(matches: int, queries: int, p0: float) -> float:
    from scipy import stats

    return float(stats.binom.sf(matches - 1, queries, p0)) if queries else 1.0


def verify_watermark(
    records: list[WatermarkRecord],
    predict: Callable[[np.ndarray], np.ndarray],
    *,
    classes: int,
    max_queries: int = 100,
    null_agreement: float | None = None,
) -> Verdict:
    """Asks ``predict`` the recorded inputs (at most ``max_queries``) and tests agreement.

    Raises:
        UsageError: No records; two classes without ``null_agreement`` (the only wrong
            label is then the other class: 1 / (classes - 1) = 1 proves nothing).
    """
    if not records:
        raise UsageError("no watermarked answers on record (serve.watermark_rate is 0?)")
    if classes < 3 and null_agreement is None:
        raise UsageError(
            "a two-class model needs --null-agreement (measured on independent models): "
            "with two classes every wrong label is the other class"
        )
    p0 = max(1.0 / (classes - 1) if classes >= 3 else 0.0, null_agreement or 0.0)
    asked = records[:max_queries]
    labels = predict(np.stack([r.row for r in asked]))
    matches = int((np.asarray(labels) == np.array([r.served for r in asked])).sum())
    return Verdict(binomial_p(matches, len(asked), p0), len(asked), matches, p0, len(records))
