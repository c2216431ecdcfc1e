"""What the monitor reads: the gateway's prediction log, through its signed index only.

The gateway signs every segment it writes (file name, SHA-256, rows, version) into
``log/segments.jsonl`` with its serving key (:mod:`aegis.serve.records`). The monitor
reads a segment only through that index and only if its bytes hash to the signed
digest: an edited, planted or swapped segment is refused (``prediction-log``), never
read; an index line that does not verify against a serving key of the trust store (not
revoked), or one listed twice, stops the pass the same way. A segment the log's size
cap has already removed (the oldest go first) is skipped and counted; one missing while
an older one remains is refused.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, fields

import numpy as np

from aegis.errors import RefusedError, UnsafeFileError
from aegis.evaluate.input_shift import SUMMARY
from aegis.fileutil import read_optional
from aegis.ledger import Ledger
from aegis.serve.records import READ_CAP, SEGMENT_KIND, segments_index, verified_record

SEGMENT_LIMIT = 1 << 30  # one segment's bytes at most (the log's cap is 512 MiB by default)


@dataclass(frozen=True)
class Segment:
    """One signed line of the segment index."""

    line: int  # its position in the index (the monitor's cursor)
    file: str
    sha256: str
    rows: int
    version: str


@dataclass
class Rows:
    """Answered rows of one version, in order: what windows are cut from."""

    probs: np.ndarray  # (n, classes)
    labels: np.ndarray  # (n,)
    ood: np.ndarray | None  # (n,) or None when the log has no scores
    times: np.ndarray  # (n,) datetime64[us]
    clients: np.ndarray  # (n,) client ids
    requests: np.ndarray  # (n,) "request#row": what feedback names a row by
    flagged: np.ndarray | None  # (n,) the detector's flags, or None when rows were unscored
    origin: list[tuple[int, int]]  # per row: (index line, row in that segment)
    latency: np.ndarray  # (n,) the request's latency in ms (each row carries its request's)
    inputs: np.ndarray | None = None  # (n, f) the logged input features, kept as ...
    input_mode: str | None = None  # ... serve.log_inputs said ("full" or "summary")
    extracting: np.ndarray | None = None  # (n,) the key was flagged for extraction; None: off

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls) -> Rows:
        none = np.empty(0)
        return cls(np.empty((0, 0)), none.astype(np.int64), None, none.astype("datetime64[us]"),
                   none.astype(str), none.astype(str), None, [], none)  # fmt: skip


def signed_segments(ledger: Ledger) -> list[Segment]:
    """Every segment the index vouches for, in the order written.

    A last line without its newline is being written by the gateway (a long line goes
    out in more than one write): it is left for the next pass, not refused.

    Raises:
        RefusedError: ``prediction-log``: a line that does not verify or is malformed,
            or a segment listed twice (a replayed line could reset a breach's run).
    """
    index = segments_index(ledger.ws)
    try:
        raw = read_optional(index, limit=READ_CAP, what=index.name) or b""
    except UnsafeFileError as exc:
        raise RefusedError("prediction-log", f"{index.name}: {exc.detail}") from None
    lines = raw.decode("utf-8", "replace").split("\n")[:-1]  # complete lines only
    out: list[Segment] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, start=1):
        document = verified_record(line, SEGMENT_KIND, ledger)
        if document is None:
            raise RefusedError("prediction-log", f"{index.name} line {n} does not verify "
                               "against an active serving key")  # fmt: skip
        body = document["body"]
        try:
            versions = body["versions"]
            segment = Segment(n, str(body["file"]), str(body["sha256"]), int(body["rows"]),
                              str(versions[0]))  # fmt: skip
        except (KeyError, TypeError, ValueError, IndexError):
            raise RefusedError("prediction-log", f"{index.name} line {n}: malformed") from None
        if len(versions) != 1 or "/" in segment.file or segment.file.startswith("."):
            raise RefusedError("prediction-log", f"{index.name} line {n}: not one segment file")
        if segment.file in seen or segment.sha256 in seen:
            raise RefusedError("prediction-log", f"{index.name} line {n}: {segment.file} is "
                               "listed twice (a replayed line)")  # fmt: skip
        seen.update((segment.file, segment.sha256))
        out.append(segment)
    return out


def missing_by_cap(ledger: Ledger, segments: list[Segment]) -> set[int]:
    """Index lines whose file is gone because the size cap removed it: the cap removes the
    oldest first, so a missing segment with a newer one still present was removed by
    someone else.

    Raises:
        RefusedError: ``prediction-log``: a segment missing while a newer one remains.
    """
    directory = segments_index(ledger.ws).parent
    present = [(directory / s.file).exists() or (directory / s.file).is_symlink() for s in segments]
    gone: set[int] = set()
    for i, segment in enumerate(segments):
        if not present[i]:
            if any(present[:i]):
                raise RefusedError("prediction-log", f"{segment.file} is missing while an "
                                   "older segment remains: not the size cap's doing")  # fmt: skip
            gone.add(segment.line)
    return gone


def read_rows(
    ledger: Ledger, segment: Segment, *, start: int = 0, expect_digest: str | None = None
) -> Rows | None:
    """The rows of ``segment`` from row ``start``; None if its file is gone.

    ``expect_digest``: the model digest every row must carry (the verified release's).

    Raises:
        RefusedError: ``prediction-log``: the file is not a regular file, does not hash
            to its signed digest, does not hold the signed rows, or holds rows of another
            model.
    """
    import pyarrow.parquet as pq

    from aegis.fileutil import read_regular

    path = segments_index(ledger.ws).parent / segment.file
    try:
        data = read_regular(path, limit=SEGMENT_LIMIT, what=segment.file)
    except FileNotFoundError:
        return None
    except UnsafeFileError as exc:
        raise RefusedError("prediction-log", f"{segment.file}: {exc.detail}") from None
    if hashlib.sha256(data).hexdigest() != segment.sha256:
        raise RefusedError("prediction-log", f"{segment.file} is not the segment the gateway "
                           "signed (its SHA-256 differs): refusing to read it")  # fmt: skip
    table = pq.read_table(io.BytesIO(data))
    if table.num_rows != segment.rows:
        raise RefusedError("prediction-log", f"{segment.file}: not the signed row count")
    if start >= table.num_rows:  # read to its end by an earlier pass
        return Rows.empty()
    optional = ("ood_score", "flagged", "latency_ms", "extracting", "inputs", *SUMMARY)
    columns = ["probs", "model_digest", "time", "client", "request"] + [
        c for c in optional if c in table.column_names
    ]
    frame = table.select(columns).slice(start).to_pandas()
    ood = None
    if "ood_score" in frame and frame["ood_score"].notna().all():
        ood = frame["ood_score"].to_numpy(np.float64)
    flagged = None
    if "flagged" in frame and frame["flagged"].notna().all():  # null: never scored
        flagged = frame["flagged"].to_numpy(bool)
    extracting = None
    if "extracting" in frame and frame["extracting"].notna().all():  # null: not monitored
        extracting = frame["extracting"].to_numpy(bool)
    digests = set(frame["model_digest"].unique().tolist())
    if expect_digest is not None and digests - {expect_digest}:
        raise RefusedError("prediction-log", f"{segment.file}: rows of another model than "
                           f"{segment.version}'s (model digest)")  # fmt: skip
    probs = np.stack(frame["probs"].to_numpy()).astype(np.float64)
    # a row's position in its request, counted over the whole segment (a request's rows
    # are written together, so a start inside one still numbers them right)
    whole = table.column("request").to_pandas()
    position = whole.groupby(whole, sort=False).cumcount().to_numpy()[start:]
    requests = (frame["request"].astype(str) + "#" + position.astype(str)).to_numpy(str)
    return Rows(
        probs=probs,
        labels=probs.argmax(axis=1),  # the model's own: a watermarked answer is not
        ood=ood,
        times=frame["time"].to_numpy("datetime64[us]"),
        clients=frame["client"].to_numpy(str),
        requests=requests,
        flagged=flagged,
        origin=[(segment.line, start + i) for i in range(len(frame))],
        latency=(frame["latency_ms"].fillna(0.0).to_numpy(np.float64) if "latency_ms" in frame
                 else np.zeros(len(frame))),
        extracting=extracting,
        **_inputs(frame),
    )  # fmt: skip


def _inputs(frame) -> dict:
    """What the segment kept of its inputs, as features: every one (``full``) or each row's
    mean, minimum and maximum (``summary``); nothing when it kept nothing."""
    if "inputs" in frame and frame["inputs"].notna().all():
        return {"inputs": np.stack(frame["inputs"].to_numpy()).astype(np.float64),
                "input_mode": "full"}  # fmt: skip
    if all(c in frame for c in SUMMARY) and frame[list(SUMMARY)].notna().all().all():
        return {"inputs": frame[list(SUMMARY)].to_numpy(np.float64), "input_mode": "summary"}
    return {}


def concat(parts: list[Rows]) -> Rows:
    """Rows of several segments in order (an optional column only if every part has it, in
    one shape: a version's segments could have kept inputs differently)."""
    out: dict = {}
    for f in fields(Rows):
        values = [getattr(p, f.name) for p in parts]
        if f.name == "origin":
            out[f.name] = [o for v in values for o in v]
        elif f.name == "input_mode":
            out[f.name] = values[0] if len(set(values)) == 1 else None
        elif any(v is None for v in values) or len({v.shape[1:] for v in values}) > 1:
            out[f.name] = None  # optional columns only: the others are always there
        else:
            out[f.name] = np.concatenate(values)
    if out["input_mode"] is None:
        out["inputs"] = None
    return Rows(**out)
