"""Ingest verification throughput for a 300 MB dataset, as a ratio to hashlib.sha256.

What is measured
    (a) baseline: ``hashlib.sha256`` over every file that verification hashes
        (all dataset files except the signature bundle), read from disk in
        1 MiB chunks, one thread, one file after another.
    (b) verification: ``aegis.data.ingest.verify_staged`` on an already-staged
        copy: trust store load, bundle signature check, hashing every byte
        once (model_signing's file serializer), manifest checks (file list,
        SHA-256s, sizes, Parquet row counts). This is what ``ingest`` does
        after copying the source into staging.
    (c) for context only: the whole ``aegis.data.ingest.ingest`` (copy into
        staging + verify + ``dvc add`` + git commit + audit + ``dvc push`` to
        the workspace's local remote), once with bytes DVC has never seen and
        once more with the same bytes (DVC cache and remote already hold them).

    (a) and (b) read the very same files (the staged copy), warm in the page
    cache (read once before timing); their digests are cross-checked. They
    alternate, ``--repeats`` times each; the ratio uses the best time of each
    (median reported too). A breakdown of (b) says where its time goes.

Why
    DESIGN.md: "Verification hashes each byte once." If verification costs
    much more than one SHA-256 pass over the data, something hashes twice or
    adds large fixed costs. Goal: verify throughput >= 0.9 x sha256
    throughput. Throughput is decimal MB/s of the hashed bytes.

Run: ``.venv/bin/python benchmarks/bench_ingest.py [--mb 300] [--files 6]``.
Writes ``benchmarks/results/bench_ingest.json``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import MB, quiet_environment, summary, timed, write_result

quiet_environment()

GOAL_RATIO = 0.9
CHUNK = 1 << 20  # 1 MiB, as model_signing's SimpleFileHasher reads
COLUMNS = 8  # float64 columns: 64 bytes of random (incompressible) data per row


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mb", type=int, default=300, help="dataset size in MB (default 300)")
    parser.add_argument("--files", type=int, default=6, help="Parquet files (default 6)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of (a) and (b)")
    parser.add_argument(
        "--ingest-runs", type=int, default=2, help="full ingest runs (1st cold, rest repeats)"
    )
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temp directory")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument(
        "--tag", default="", help="suffix of the result file (bench_ingest-TAG.json) for variants"
    )
    return parser.parse_args()


def write_random_parquet(out: Path, *, total_bytes: int, files: int, seed: int = 0) -> None:
    """``files`` Parquet files of random float64 columns, ``total_bytes`` in all (about)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = max(1, total_bytes // files // (8 * COLUMNS))
    for index in range(files):
        data = rng.random((COLUMNS, rows))
        table = pa.table({f"f{c}": data[c] for c in range(COLUMNS)})
        pq.write_table(table, out / f"part-{index:03d}.parquet", compression="none")


def sha256_files(paths: list[Path]) -> dict[str, str]:
    """The baseline: one thread, sequential, 1 MiB reads."""
    digests = {}
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        digests[path.name] = h.hexdigest()
    return digests


def main() -> None:
    args = parse_args()
    from aegis.crypto.bundle import hash_directory
    from aegis.crypto.signing import KeyIdentity, verify_bundle
    from aegis.data.ingest import ingest, stage, verify_staged
    from aegis.data.manifest import BUNDLE_NAME, MANIFEST_NAME, parse_manifest
    from aegis.data.publish import publish_dataset
    from aegis.ledger import Ledger, load_trust
    from aegis.trust_ops import new_key
    from aegis.workspace import init_workspace

    base = Path(tempfile.mkdtemp(prefix="aegis-bench-ingest-", dir=args.tmp))
    started = time.perf_counter()
    try:
        # -- set-up (not timed) ------------------------------------------------------------
        print(f"building a ~{args.mb} MB signed dataset ({args.files} files) in {base} ...")
        keys = base / "keys"
        keys.mkdir()
        ws, _ = init_workspace(base / "ws", admin_key_out=keys / "admin.pem")
        new_key(
            ws,
            role="supplier",
            name="bench-supplier",
            owner="bench",
            out=keys / "supplier.pem",
            admin_key=keys / "admin.pem",
        )
        ledger = Ledger.load(ws)
        actor, _ = ledger.actor(None)
        raw = base / "raw"
        write_random_parquet(raw, total_bytes=args.mb * MB, files=args.files)
        signed = base / "signed"
        publish_seconds, _ = timed(
            lambda: publish_dataset(raw, name="bench", key_path=keys / "supplier.pem", out=signed)
        )
        shutil.rmtree(raw)

        ws.staging_dir.mkdir(parents=True, exist_ok=True)
        staging = ws.staging_dir / "bench-verify"
        staging.mkdir()
        staged = stage(ws, str(signed), staging)
        os.sync()  # no write-back of the fresh copies during the timed part
        hashed = sorted(p for p in staging.iterdir() if p.name != BUNDLE_NAME)
        hashed_bytes = sum(p.stat().st_size for p in hashed)
        print(
            f"  {len(hashed)} files hashed by verification, {hashed_bytes / MB:.1f} MB "
            f"(+ bundle; {staged.bytes / MB:.1f} MB staged); publish took {publish_seconds:.1f}s"
        )

        # -- warm the page cache and check both sides see the same bytes --------------------
        baseline_digests = sha256_files(hashed)
        verified = verify_staged(ledger, staged, name="bench")
        signed_digests = {f.path: f.sha256 for f in verified.manifest.files}
        verify_digests = hash_directory(staging, ignored=[BUNDLE_NAME])
        same_bytes = (
            baseline_digests == verify_digests
            and all(baseline_digests[k] == v for k, v in signed_digests.items())
            and set(baseline_digests) == set(signed_digests) | {MANIFEST_NAME}
        )
        if not same_bytes:
            print("WARNING: baseline and verification digests differ", file=sys.stderr)

        # -- (a) and (b), alternating --------------------------------------------------------
        base_s: list[float] = []
        verify_s: list[float] = []
        for _ in range(args.repeats):
            base_s.append(timed(lambda: sha256_files(hashed))[0])
            verify_s.append(timed(lambda: verify_staged(ledger, staged, name="bench"))[0])

        # -- breakdown of (b) ----------------------------------------------------------------
        from model_signing import hashing

        one_worker = (
            hashing.Config()
            .use_file_serialization(hashing_algorithm="sha256", max_workers=1)
            .set_ignored_paths(paths=[BUNDLE_NAME], ignore_git_paths=False)
        )
        identity = KeyIdentity(ledger.trust.by_key_id(verified.supplier_key_id).public_key)
        parts: dict[str, list[float]] = {
            "trust_store_load": [],
            "bundle_signature": [],
            "hash_directory": [],
            "hash_directory_1_worker": [],
            "manifest_checks": [],
        }

        def manifest_checks() -> None:
            import pyarrow.parquet as pq

            manifest, _ = parse_manifest(staging / MANIFEST_NAME)
            for entry in manifest.files:
                (staging / entry.path).stat()
                pq.ParquetFile(staging / entry.path).metadata.num_rows  # noqa: B018

        for _ in range(args.repeats):
            parts["trust_store_load"].append(timed(lambda: load_trust(ws))[0])
            parts["bundle_signature"].append(
                timed(lambda: verify_bundle(staging / BUNDLE_NAME, expected=identity))[0]
            )
            parts["hash_directory"].append(
                timed(lambda: hash_directory(staging, ignored=[BUNDLE_NAME]))[0]
            )
            parts["hash_directory_1_worker"].append(timed(lambda: one_worker.hash(staging))[0])
            parts["manifest_checks"].append(timed(manifest_checks)[0])
        shutil.rmtree(staging)

        # -- (c) full ingest -----------------------------------------------------------------
        ingest_runs = []
        for run in range(args.ingest_runs):
            seconds, result = timed(
                lambda: ingest(Ledger.load(ws), str(signed), name="bench", actor=actor)
            )
            ingest_runs.append(
                {
                    "run": run + 1,
                    "dvc_state": "new bytes" if run == 0 else "same bytes again (DVC cache hit)",
                    "seconds": seconds,
                    "mb_per_s": result.bytes / MB / seconds,
                    "bytes": result.bytes,
                }
            )
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    # -- results ---------------------------------------------------------------------------
    sha_best = hashed_bytes / MB / min(base_s)
    ver_best = hashed_bytes / MB / min(verify_s)
    sha_med = hashed_bytes / MB / statistics.median(base_s)
    ver_med = hashed_bytes / MB / statistics.median(verify_s)
    ratio = ver_best / sha_best
    ratio_median = ver_med / sha_med
    breakdown = {k: summary(v) for k, v in parts.items()}
    fixed = min(verify_s) - breakdown["hash_directory"]["best_s"]
    met = ratio >= GOAL_RATIO

    print()
    print(
        f"dataset: {hashed_bytes / MB:.1f} MB hashed in {len(hashed)} files (same bytes: "
        f"{same_bytes}); best of {args.repeats}"
    )
    print(f"  (a) sha256 baseline   {sha_best:8.1f} MB/s  ({min(base_s):.3f}s)")
    print(f"  (b) verify_staged     {ver_best:8.1f} MB/s  ({min(verify_s):.3f}s)")
    print(
        f"  ratio (b)/(a)         {ratio:8.3f}   (median {ratio_median:.3f}); goal >= "
        f"{GOAL_RATIO}: {'MET' if met else 'MISSED'}"
    )
    print(
        "  (b) breakdown (best): "
        + ", ".join(f"{k} {v['best_s']:.3f}s" for k, v in breakdown.items())
    )
    for run in ingest_runs:
        print(
            f"  (c) ingest run {run['run']} ({run['dvc_state']}): {run['seconds']:.2f}s, "
            f"{run['mb_per_s']:.1f} MB/s end to end"
        )

    path = write_result(
        f"bench_ingest-{args.tag}" if args.tag else "bench_ingest",
        {
            "title": "Ingest verification throughput as a ratio to hashlib.sha256 (same bytes)",
            "parameters": {
                "mb": args.mb,
                "files": args.files,
                "repeats": args.repeats,
                "ingest_runs": args.ingest_runs,
                "chunk_bytes": CHUNK,
                "columns_float64": COLUMNS,
                "mb_unit_bytes": MB,
            },
            "dataset": {
                "hashed_files": len(hashed),
                "hashed_bytes": hashed_bytes,
                "staged_bytes_incl_bundle": staged.bytes,
                "same_bytes_checked": same_bytes,
                "publish_seconds": publish_seconds,
            },
            "raw_seconds": {
                "sha256_baseline": base_s,
                "verify_staged": verify_s,
                **{f"breakdown_{k}": v for k, v in parts.items()},
            },
            "throughput_mb_per_s": {
                "sha256_baseline_best": sha_best,
                "verify_staged_best": ver_best,
                "sha256_baseline_median": sha_med,
                "verify_staged_median": ver_med,
            },
            "ratios": {"verify_over_sha256_best": ratio, "verify_over_sha256_median": ratio_median},
            "verify_breakdown": breakdown,
            "verify_fixed_overhead_s": fixed,
            "ingest_end_to_end": ingest_runs,
            "goal": {
                "metric": "verify_over_sha256_best",
                "op": ">=",
                "target": GOAL_RATIO,
                "value": ratio,
                "met": met,
            },
            "total_benchmark_seconds": time.perf_counter() - started,
        },
    )
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    main()
