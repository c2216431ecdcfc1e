"""Commands on releases: ``aegis verify`` and ``aegis export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aegis.cli._app import STATE, JsonOpt, _console, _ledger, _print_json, _print_notes, app
from aegis.text import printable


def release_summary(verified) -> dict:
    m = verified.metrics
    return {
        "release": str(verified),
        "directory": str(verified.directory),
        "model_digest": verified.model_digest,
        "evidence_digest": verified.evidence_digest,
        "dataset_digest": verified.dataset_digest,
        "signer": verified.signer_key_id,
        "signer_owner": verified.signer_owner,
        "files": len(verified.files),
        "created": verified.release.get("created"),
        "commit": verified.release.get("commit"),
        "clean_acc": m.get("clean_acc"),
        "robust_acc": (m.get("robust") or {}).get("worst_case"),
    }


@app.command()
def verify(
    release: Annotated[
        str, typer.Argument(help="NAME@vN, NAME@vN.0.0, NAME#STAGE or a release directory.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Verify a release: signature, signer, every file, identity, audit trail, dataset."""
    from aegis.registry.verify import open_release_arg

    verified, notes = open_release_arg(_ledger(), release)
    _print_notes(notes, "reconciled")
    summary = release_summary(verified)
    if STATE.json or as_json:
        _print_json(summary)
        return
    out = _console()
    out.print(f"[green]verified[/green] {summary['release']} ({verified.directory})")
    out.print(
        f"  {summary['files']} signed files; signer {summary['signer'][:16]} "
        f"({printable(summary['signer_owner'])})"
    )
    for key in ("model_digest", "evidence_digest", "dataset_digest"):
        out.print(f"  {key.replace('_', ' ')}: {summary[key]}")
    out.print(f"  clean acc {summary['clean_acc']}, robust acc {summary['robust_acc']}")


@app.command("export")
def export_cmd(
    release: Annotated[str, typer.Argument(help="NAME@vN, NAME#STAGE or a release directory.")],
    out_dir: Annotated[Path, typer.Argument(help="A new or empty directory.")],
    seal_to: Annotated[
        list[str] | None,
        typer.Option(
            "--seal-to",
            help="Seal the release to this serving identity (its .pub file, its age1... "
            "recipient or its trust-store name; repeatable): only its key opens the export.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a release, then copy it with its public key and a VERIFY.md for downstream users.

    With --seal-to, the whole release is encrypted instead (release.tar.age) to active
    X25519 serving identities of the trust store; `aegis serve DIR --identity` opens it.
    """
    from aegis.registry.export import export_release

    result = export_release(_ledger(), release, out_dir, seal_to=seal_to or ())
    _print_notes(list(result.reconciled), "reconciled")
    if STATE.json or as_json:
        _print_json(
            {
                "release": result.release,
                "directory": str(result.directory),
                "command": result.command,
                "sealed_to": list(result.sealed_to),
            }
        )
        return
    out = _console()
    if result.sealed_to:
        names = ", ".join(printable(n) for n in result.sealed_to)
        out.print(f"exported {result.release} to {result.directory}, sealed to {names}")
        out.print(f"serve it with: aegis serve {result.directory} --identity IDENTITY --key KEY")
        return
    out.print(f"exported {result.release} to {result.directory}")
    out.print(f"verify there with:\n  {result.command}", soft_wrap=True)
