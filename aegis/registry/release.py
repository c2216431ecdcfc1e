"""Signed releases: a trained, evaluated model and all its evidence, as one signed directory.

``build_release`` checks that ``models/<name>`` and ``reports/<name>`` belong
together (same model digest, and the audit log holds the train and evaluate
entries of that digest), assembles the release in a scratch directory from
the bytes it checked, signs it with the pipeline key (or Sigstore) through
model_signing *outside* the workspace lock, then, under one registry change,
moves it to ``releases/<model>/v<N>/``, ``dvc add``s it, commits the ``.dvc``
file, audits ``release.created`` and tags the commit ``<model>@vN.0.0``. A
failure leaves no half release: the scratch copy is removed, the commit undone
and the tag deleted.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aegis import storage, vcs
from aegis.audit import AuditEntry
from aegis.config import SignParams
from aegis.crypto.bundle import hash_directory
from aegis.crypto.keys import canonical_json
from aegis.crypto.signing import (
    KeySigner,
    SigstoreSigner,
    require_sigstore_identity,
    sign_directory,
)
from aegis.errors import ConfigError, RefusedError, StalePlanError, UnsafeFileError, UsageError
from aegis.fileutil import REPORT_LIMIT, atomic_write, json_object, read_regular
from aegis.ledger import Action, Ledger
from aegis.pipeline.layout import Layout
from aegis.timeutil import utc_now
from aegis.workspace import Workspace

FORMAT = "aegis-release/1"
BUNDLE = "release.sig"
RELEASE_JSON = "release.json"
MODEL_FILES = ("model.safetensors", "config.json", "metadata.json")
EVIDENCE = (
    "metrics.json",
    "report.html",
    "validation.json",
    "dataset.json",
    "params.yaml",
    "sbom.cdx.json",
)


@dataclass(frozen=True)
class Release:
    """A release Aegis built, committed and registered."""

    model_name: str
    version: str  # "v3.0.0"
    directory: str  # workspace-relative, "releases/<model>/v3"
    model_digest: str
    evidence_digest: str
    dataset_digest: str
    commit: str
    tag: str


def evidence_digest(files: dict[str, str]) -> str:
    """``sha256:`` over the canonical JSON of the signed ``{file: sha256}`` map."""
    return "sha256:" + hashlib.sha256(canonical_json(files)).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- signing -----------------------------------------------------------------------------------


def signer_for(sign: SignParams, ledger: Ledger) -> KeySigner | SigstoreSigner:
    """The signer ``sign.method`` names: the pipeline key, or Sigstore keyless.

    Sigstore keyless signing needs the network (Fulcio, Rekor, an OIDC token);
    ``sign.identity`` and ``sign.oidc_issuer`` must be set so that the
    release can be verified afterwards.

    Raises:
        ConfigError: Sigstore without identity or OIDC issuer.
    """
    if sign.method == "sigstore":
        require_sigstore_identity(sign.identity, sign.oidc_issuer)
        return SigstoreSigner(oidc_issuer=str(sign.oidc_issuer), use_staging=sign.use_staging)
    return KeySigner(ledger.ws.pipeline_key_path)


def _signer_record(ledger: Ledger, sign: SignParams) -> dict[str, str]:
    if sign.method == "sigstore":
        identity, issuer = require_sigstore_identity(sign.identity, sign.oidc_issuer)
        return {"method": "sigstore", "identity": identity, "oidc_issuer": issuer}
    key = ledger.pipeline_key()
    entry = ledger.trust.require_signer(
        key.key_id, role="pipeline", what="release signing", new=True
    )
    return {"method": "key", "key_id": entry.key_id, "name": entry.name, "owner": entry.owner}


# -- checks before a release -------------------------------------------------------------------


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return read_regular(path, limit=REPORT_LIMIT, what=what)
    except UnsafeFileError as exc:
        raise RefusedError("release", exc.detail) from None
    except FileNotFoundError:
        raise RefusedError("release", f"{what} is missing ({path.name}); run the stage") from None
    except OSError as exc:
        raise RefusedError("release", f"{what} cannot be read ({exc.strerror})") from None


def _gather(ledger: Ledger, name: str) -> dict[str, Any]:
    """Checks that model, metrics, validation and dataset agree; returns what they say."""
    from aegis.pipeline.train import registry_name
    from aegis.train.checkpoint import load_checkpoint

    ws = ledger.ws
    layout = Layout.of(ws)
    model_path = layout.model(name)
    if not model_path.is_dir():
        raise RefusedError("release", f"models/{name} is missing; train first")
    loaded = load_checkpoint(model_path)
    digest = loaded.digest
    metrics_bytes = _read_bytes(layout.metrics(name), f"reports/{name}/metrics.json")
    metrics = json_object(metrics_bytes, check="release", what=f"reports/{name}/metrics.json")
    if metrics.get("model") != digest:
        raise RefusedError(
            "release",
            f"reports/{name}/metrics.json is of model {str(metrics.get('model'))[:19]}, "
            f"models/{name} is {digest[:19]}; evaluate again",
        )
    report_bytes = _read_bytes(layout.report(name), f"reports/{name}/report.html")
    dataset = str(loaded.config.get("dataset"))
    what = f"validation/{name}/result.json"
    validation_bytes = _read_bytes(layout.validation_result(name), what)
    validation = json_object(validation_bytes, check="release", what=what)
    if validation.get("dataset") != dataset or validation.get("success") is not True:
        raise RefusedError("release", f"no passed validation of dataset {dataset[:19]}")
    if ledger.validated(name, dataset, sha256_bytes(validation_bytes)) is None:  # signed as-is
        raise RefusedError("release", f"{what} is not the audited validation of {dataset[:19]}")
    if ledger.trained(digest) is None:
        raise RefusedError("release", f"no train.done audit entry for model {digest[:19]}")
    if ledger.evaluated(digest, sha256_bytes(metrics_bytes)) is None:
        raise RefusedError(
            "release", f"no evaluate.done audit entry for these metrics of {digest[:19]}"
        )
    accepted = ledger.accepted(dataset)
    if accepted is None:
        raise RefusedError("dataset", f"dataset {dataset[:19]} was never accepted by ingest")
    return {
        "name": name,
        "model_name": registry_name(ws, name),
        "model_path": model_path,
        "model_digest": digest,
        # the bytes checked here are the bytes released (never read again from disk)
        "metrics_bytes": metrics_bytes,
        "report_bytes": report_bytes,
        "validation_bytes": validation_bytes,
        "dataset": {
            "format": "aegis-release-dataset/1",
            "name": accepted.name,
            "digest": dataset,  # the dataset digest is the signed manifest's digest
            "manifest_digest": dataset,
            "created": accepted.created,
            "supplier": accepted.supplier,
            "supplier_owner": accepted.supplier_owner,
            "supplier_key_id": accepted.supplier_key_id,
            "dvc_md5": accepted.dvc_md5,
            "commit": accepted.commit,
            "rows": accepted.rows,
            "audit_seq": accepted.seq,
        },
    }


def _assemble(ws: Workspace, facts: dict[str, Any], scratch: Path) -> None:
    """Copies the release's files into ``scratch``: exactly what :func:`_gather` checked.

    Metrics and validation are written from the bytes that were checked; the
    model files are copied, then their digest is checked again on the copy.

    Raises:
        RefusedError: ``release``: ``models/<name>`` changed after it was checked.
    """
    from aegis.registry.sbom import environment_sbom
    from aegis.train.digest import model_digest

    name = facts["name"]
    (scratch / "model").mkdir()
    for file in MODEL_FILES:
        shutil.copyfile(facts["model_path"] / file, scratch / "model" / file)
    if model_digest(scratch / "model") != facts["model_digest"]:
        raise RefusedError("release", f"models/{name} changed while the release was built")
    (scratch / "metrics.json").write_bytes(facts["metrics_bytes"])
    (scratch / "report.html").write_bytes(facts["report_bytes"])
    (scratch / "validation.json").write_bytes(facts["validation_bytes"])
    (scratch / "params.yaml").write_bytes(read_regular(ws.params_path, what="params.yaml"))
    atomic_write(
        scratch / "dataset.json",
        json.dumps(facts["dataset"], indent=1, sort_keys=True).encode() + b"\n",
    )
    shutil.copyfile(environment_sbom(), scratch / "sbom.cdx.json")


def next_number(ledger: Ledger, model_name: str) -> int:
    """The next free release number: past every registered version and every directory."""
    from aegis.registry.tags import read_registry

    used = [v.number for v in read_registry(ledger, model_name).versions]
    base = Layout.of(ledger.ws).releases(model_name)
    if base.is_dir():
        for p in base.iterdir():
            if m := re.fullmatch(r"v([1-9][0-9]*)(\.dvc)?", p.name):
                used.append(int(m.group(1)))
    return max(used, default=0) + 1


# -- building ----------------------------------------------------------------------------------


def build_release(
    ledger: Ledger, dataset_name: str, *, actor: str, trigger: dict[str, Any] | None = None
) -> Release:
    """Builds, signs, commits and registers the release of ``models/<dataset_name>``.

    The release is assembled and signed in a scratch directory *before* the
    workspace lock is taken (signing may be Sigstore: network and OIDC), for
    the version number chosen then. Under the lock (one registry change) the
    number is checked to be still free, the directory moved into place,
    ``dvc add``ed and committed, ``release.created`` audited (naming the commit
    the tag must point to), then the tag created: a release whose tag exists
    always has its audit entry.

    Args:
        ledger: The workspace's ledger.
        dataset_name: The dataset the model was trained on (``models/<name>``).
        actor: Key id of who asked for the release.
        trigger: What started the run (:class:`aegis.triggers.record.Trigger` as a dict),
            signed into ``release.json`` and audited; None for a release made by hand.

    Returns:
        The registered release (pushed separately: :func:`push_release`).

    Raises:
        RefusedError: ``release`` (model, metrics, validation and audit
            disagree), ``dataset`` (the dataset was never accepted), ``signer``,
            ``registry`` (another release took the version meanwhile), ``path``
            (the release directory would leave ``releases/``).
        ConfigError: Sigstore without identity, or git/DVC failed.
    """
    from aegis.data.ingest import staging_area
    from aegis.registry.journal import crash_point, registry_change
    from aegis.registry.tags import register_version
    from aegis.registry.targets import check_model_name, version_str

    ws = ledger.ws
    layout = Layout.of(ws)
    sign = ws.params().sign
    signer = _signer_record(ledger, sign)
    facts = _gather(ledger, dataset_name)
    model_name = facts["model_name"]
    _inside_releases(ws, layout.release(model_name, 1))
    try:
        check_model_name(model_name)
    except UsageError as exc:
        raise RefusedError("release", f"train.model_name: {exc}") from None
    with staging_area(ws) as scratch:
        number = next_number(ledger, model_name)
        target = _inside_releases(ws, layout.release(model_name, number))
        version = version_str(number)
        tag = f"{model_name}@{version}"
        _assemble(ws, facts, scratch)
        rel = layout.rel(target)
        info = {
            "format": FORMAT,
            "model_name": model_name,
            "version": version,
            "dataset_name": dataset_name,
            "model_digest": facts["model_digest"],
            "dataset_digest": facts["dataset"]["digest"],
            "evidence": sorted(["model/" + f for f in MODEL_FILES] + list(EVIDENCE)),
            "commit": vcs.head_commit(ws.root),
            "audit_head": ledger.log.head_hash,
            "audit_seq": len(ledger.log) - 1,
            "created": utc_now(),
            "actor": actor,
            "signer": signer,
            **({"trigger": trigger} if trigger else {}),
        }
        atomic_write(
            scratch / RELEASE_JSON, json.dumps(info, indent=1, sort_keys=True).encode() + b"\n"
        )
        sign_directory(scratch, bundle_name=BUNDLE, signer=signer_for(sign, ledger))  # unlocked
        evidence = evidence_digest(hash_directory(scratch, ignored=[BUNDLE]))
        subjects = {"model": facts["model_digest"], "dataset": facts["dataset"]["digest"]}
        with registry_change(
            ledger, action="release", actor=actor, tags=[tag], subjects=subjects,
            details={"model_name": model_name, "version": version, "directory": rel},
        ) as change:  # fmt: skip
            if next_number(ledger, model_name) != number:
                raise StalePlanError(f"another release took {version} meanwhile; run it again")
            commit = _commit(ledger, scratch, target, message=f"release {tag}\n\nmodel: "
                             f"{facts['model_digest']}\nevidence: {evidence}")  # fmt: skip
            try:
                crash_point("release.commit")
                # audited before the tag: a tag never exists without its release.created,
                # and the entry binds the tag to this commit (reconcile checks it)
                ledger.append(
                    Action.RELEASE_CREATED,
                    actor=actor,
                    subjects={**subjects, "evidence": evidence},
                    details={
                        "model_name": model_name, "version": version, "tag": tag,
                        "commit": commit, "directory": rel, "intent": change.intent.seq,
                        "tag_commits": {tag: commit}, **({"trigger": trigger} if trigger else {}),
                    },
                )  # fmt: skip
                crash_point("release.audit")
                register_version(
                    ws, model=model_name, version=version, ref=commit,
                    message=change.message(f"release {tag} {facts['model_digest']}"),
                )  # fmt: skip
                crash_point("release.tag")
            except BaseException:
                _undo_commit(ledger, target, reset_to=f"{commit}~1")
                raise
            change.details.update({"evidence": evidence, "commit": commit})
    return Release(
        model_name=model_name,
        version=version,
        directory=rel,
        model_digest=facts["model_digest"],
        evidence_digest=evidence,
        dataset_digest=facts["dataset"]["digest"],
        commit=commit,
        tag=tag,
    )


def _inside_releases(ws: Workspace, target: Path) -> Path:
    """``target`` if it resolves inside ``<workspace>/releases``.

    Raises:
        RefusedError: ``path``: it would leave ``releases/`` (a model name with
            a path in it; ``train.model_name`` is validated, this is the backstop).
    """
    releases = (ws.root / "releases").resolve()
    resolved = target.resolve()
    if resolved == releases or not resolved.is_relative_to(releases):
        raise RefusedError("path", f"release directory {target} is outside {releases}")
    return target


def _tracked(ws: Workspace, path: str) -> bool:
    return bool(vcs.git(ws.root, "ls-files", "--", path).strip())


def _commit(ledger: Ledger, scratch: Path, target: Path, *, message: str) -> str:
    """Moves the signed scratch directory into place, ``dvc add``s it and commits (or undoes)."""
    ws = ledger.ws
    before = vcs.head_commit(ws.root)
    Layout.of(ws).ensure_dir(target.parent)
    shutil.move(str(scratch), target)
    rel = target.relative_to(ws.root)
    paths = [f"{rel}.dvc", str(rel.parent / ".gitignore")]
    try:
        vcs.dvc(ws.root, "add", "-q", str(rel))
        commit = ledger.commit(message, paths)
        if commit == before:
            raise ConfigError(f"release {rel}: nothing was committed")
        return commit
    except BaseException:
        _undo_commit(ledger, target, reset_to=before)
        raise


def _undo_commit(ledger: Ledger, target: Path, *, reset_to: str) -> None:
    """Removes a release directory, its ``.dvc`` file and the commit that added them.

    Runs under the workspace lock, right after the commit: ``reset_to`` is its parent.
    """
    ws = ledger.ws
    _inside_releases(ws, target)  # never remove anything outside releases/
    rel = target.relative_to(ws.root)
    gitignore = str(rel.parent / ".gitignore")
    parent = vcs.git(ws.root, "rev-parse", "--verify", "-q", reset_to, check=False).strip()
    if parent and vcs.head_commit(ws.root) != parent:
        vcs.git(ws.root, "reset", "-q", "--soft", parent)
    vcs.git(ws.root, "reset", "-q", "--", f"{rel}.dvc", gitignore, check=False)
    shutil.rmtree(target, ignore_errors=True)
    Path(ws.root / f"{rel}.dvc").unlink(missing_ok=True)
    if _tracked(ws, gitignore):
        vcs.git(ws.root, "checkout", "-q", "--", gitignore, check=False)
    else:
        Path(ws.root / gitignore).unlink(missing_ok=True)


def undo_aborted_release(ledger: Ledger, intent: AuditEntry) -> None:
    """Removes what a release interrupted before its tag left behind (reconcile calls it).

    The directory, its ``.dvc`` file and its ``.gitignore`` line go, in a new
    commit (later commits may sit on top of the release commit, so it is not
    reset). Only a directory inside ``releases/`` that the intent named is touched.
    """
    ws = ledger.ws
    rel = intent.details.get("directory")
    if not isinstance(rel, str) or not rel:
        return
    try:
        target = _inside_releases(ws, ws.root / rel)
    except RefusedError:
        return
    dvc_file = f"{rel}.dvc"
    gitignore = ws.root / Path(rel).parent / ".gitignore"
    shutil.rmtree(target, ignore_errors=True)
    changed = [dvc_file] if _tracked(ws, dvc_file) else []
    Path(ws.root / dvc_file).unlink(missing_ok=True)  # `git add` of it records the deletion
    if gitignore.is_file() and not gitignore.is_symlink():
        line = f"/{target.name}"
        kept = [ln for ln in gitignore.read_text().splitlines() if ln.strip() != line]
        atomic_write(gitignore, ("\n".join(kept) + "\n").encode() if kept else b"")
        changed.append(str(gitignore.relative_to(ws.root)))
    if changed:
        version = intent.details.get("version", target.name)
        ledger.commit(f"aegis: remove the interrupted release {version} (never tagged)", changed)


def push_release(ws: Workspace, release: Release) -> None:
    """Pushes the release directory to the DVC remote, encrypted at rest on S3.

    Raises:
        TransientIOError: The push failed (retried by callers).
        RefusedError: ``sse``: the remote did not store it as ``storage`` asks.
    """
    storage.push(ws, f"{release.directory}.dvc")
