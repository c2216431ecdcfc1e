"""Commands on the workspace itself: init, keys, trust, audit, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aegis.cli._app import (
    STATE,
    AdminKeyOpt,
    JsonOpt,
    _console,
    _ledger,
    _print_json,
    _ws,
    app,
    audit_app,
    keys_app,
    trust_app,
)
from aegis.text import printable

# -- workspace, keys, trust -----------------------------------------------------


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the workspace.")],
    admin_key_out: Annotated[
        Path | None,
        typer.Option(
            "--admin-key-out",
            help="Where to write the first admin key: outside the workspace (required).",
        ),
    ] = None,
    remote: Annotated[
        str | None,
        typer.Option(help="DVC remote URL (s3://bucket/prefix); default a local remote."),
    ] = None,
) -> None:
    """Create a workspace (git + DVC, keys, signed trust store, audit log)."""
    from aegis.workspace import init_workspace

    ws, created = init_workspace(directory, admin_key_out=admin_key_out, remote=remote)
    out = _console()
    if not created:
        out.print(f"{ws.root}: already an Aegis workspace; nothing changed")
        return
    out.print(f"[green]Initialized[/green] Aegis workspace in {ws.root}")
    for item in created:
        out.print(f"  + {item}")
    if admin_key_out is not None:
        out.print(
            f"  admin key: {admin_key_out} (keep it off this machine's shared paths; trust "
            "changes take --admin-key or AEGIS_ADMIN_KEY)"
        )


@keys_app.command("new")
def keys_new(
    role: Annotated[str, typer.Option(help="admin | supplier | operator | approver | serving")],
    name: Annotated[str, typer.Option(help="Unique name of the key in the trust store.")],
    owner: Annotated[str, typer.Option(help="Person or team owning the key.")],
    out: Annotated[Path, typer.Option(help="Private key file to write (PATH and PATH.pub).")],
    key_type: Annotated[
        str,
        typer.Option(
            "--type",
            help="p256 (signs) or x25519: a serving identity that opens sealed exports "
            "(--role serving; PATH is an age identity, PATH.pub its recipient).",
        ),
    ] = "p256",
    admin_key: AdminKeyOpt = None,
) -> None:
    """Create a key pair and register it in the trust store."""
    from aegis.trust_ops import new_key

    ws = _ws()
    entry = new_key(
        ws, role=role, name=name, owner=owner, out=out, admin_key=admin_key, key_type=key_type
    )
    name, owner = printable(name), printable(owner)
    what = "serving identity" if entry.key_type == "x25519" else f"{role} key"
    _console().print(
        f"[green]Created[/green] {what} '{name}' (owner {owner}, id {entry.key_id[:12]}) "
        f"-> {out} (0600) and {out}.pub"
    )
    if entry.key_type == "x25519":
        print(entry.public_key)  # the recipient, alone on the last line (for --seal-to)


@keys_app.command("rotate")
def keys_rotate(
    name: Annotated[str, typer.Argument(help="The serving identity to rotate out.")],
    out: Annotated[Path, typer.Option(help="Where to write the new identity (PATH, PATH.pub).")],
    new_name: Annotated[
        str | None, typer.Option(help="Trust-store name of the new identity (default NAME.2, ...).")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (audited).")] = "rotated",
    admin_key: AdminKeyOpt = None,
) -> None:
    """Rotate an X25519 serving identity: new identity, prod and known-good re-sealed, old retired.

    The re-sealed exports land in .aegis/sealed/<new name>/<model>@<version>/ (git-ignored):
    copy them to the serving host.
    """
    from aegis.registry.reseal import rotate_identity

    done = rotate_identity(
        _ws(), name, out=out, new_name=new_name, reason=reason, admin_key=admin_key
    )
    out_ = _console()
    out_.print(
        f"[green]Rotated[/green] serving identity '{printable(name)}' -> "
        f"'{printable(done.new.name)}' (id {done.new.key_id[:12]}) -> {out} (0600) and {out}.pub; "
        f"'{printable(name)}' is now retired"
    )
    for release, directory in done.resealed:
        out_.print(f"  re-sealed {release} -> {directory}")
    if not done.resealed:
        out_.print("  no prod or known-good version to re-seal")
    print(done.new.public_key)


@trust_app.command("list")
def trust_list(as_json: JsonOpt = False) -> None:
    """List trusted keys: role, owner, status (refused, after the table, if not current)."""
    from aegis.crypto.truststore import TrustStore
    from aegis.errors import RefusedError
    from aegis.ledger import Ledger

    ws = _ws()
    refusal, ledger = None, None
    try:
        ledger = Ledger.load(ws)
        store = ledger.trust
    except RefusedError as exc:  # show what is there, then refuse: it is not the audited store
        refusal = exc
        store = TrustStore.load(ws.trust_path, anchor=ws.meta()["trust_anchor"])
    standing = _supplier_standing(ledger, store)
    if STATE.json or as_json:
        _print_json([e | ({"reputation": standing[e["name"]]} if e["name"] in standing else {})
                     for e in store.to_json()])  # fmt: skip
    else:
        from rich.table import Table

        table = Table(title="trust store")
        for col in ("name", "role", "owner", "status", "key id", "added", "flagged"):
            table.add_column(col)
        style = {"active": "green", "retired": "yellow", "revoked": "red"}
        for e in store.entries:
            table.add_row(
                printable(e.name),
                e.role + (" (x25519)" if e.key_type == "x25519" else ""),
                printable(e.owner),
                f"[{style.get(e.status, 'red')}]{e.status}[/]",
                e.key_id[:12],
                e.added_at[:19],
                _flagged_cell(standing.get(e.name)),
            )
        _console().print(table)
    if refusal is not None:
        raise refusal


def _supplier_standing(ledger, store) -> dict[str, dict]:
    """Per supplier, the share of its rows the screens flagged (needs the verified log)."""
    if ledger is None:
        return {}
    from dataclasses import asdict

    from aegis.data.reputation import reputation

    return {
        e.name: asdict(r) | {"blocked": r.blocked}
        for e in store.entries
        if e.role == "supplier" and (r := reputation(ledger, e.name))
    }


def _flagged_cell(record: dict | None) -> str:
    if record is None:
        return ""
    text = f"{record['flagged']}/{record['rows']} ({record['rate']:.1%})"
    return f"[red]{text} blocked[/]" if record["blocked"] else text


@trust_app.command("readmit")
def trust_readmit(
    name: str,
    reason: Annotated[str, typer.Option(help="Why the supplier may deliver again (audited).")],
    admin_key: AdminKeyOpt = None,
) -> None:
    """Re-admit a supplier blocked by its reputation (signed by an admin; the count restarts)."""
    from aegis.data.reputation import readmit

    record = readmit(_ledger(), name, reason=reason, admin_key=admin_key)
    _console().print(f"supplier '{printable(name)}' re-admitted ({record.rows} rows counted since)")


def _status_change(name: str, status: str, reason: str, admin_key: Path | None) -> None:
    from aegis.trust_ops import change_status

    change_status(_ws(), name, status=status, reason=reason, admin_key=admin_key)
    _console().print(f"'{printable(name)}' is now {status}")


@trust_app.command("revoke")
def trust_revoke(
    name: str,
    reason: Annotated[str, typer.Option(help="Why (kept in the trust store and audit log).")] = "",
    admin_key: AdminKeyOpt = None,
) -> None:
    """Revoke a key: compromised, nothing it ever signed verifies."""
    _status_change(name, "revoked", reason, admin_key)


@trust_app.command("retire")
def trust_retire(
    name: str,
    reason: Annotated[str, typer.Option(help="Why (kept in the trust store and audit log).")] = "",
    admin_key: AdminKeyOpt = None,
) -> None:
    """Retire a key: rotated out, signs nothing new, old signatures still verify."""
    _status_change(name, "retired", reason, admin_key)


# -- audit ---------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify(
    remote: Annotated[
        bool,
        typer.Option(
            "--remote",
            help="Also compare the log with its copy at audit.ship_to, entry by entry.",
        ),
    ] = False,
) -> None:
    """Check every entry's hash and link, the signed head, the trust store and freshness."""
    from aegis.errors import UsageError

    ws = _ws()
    ship_to = ws.params().audit.ship_to if remote else None
    if remote and ship_to is None:
        raise UsageError("--remote: audit.ship_to is not set in params.yaml (nothing is shipped)")
    ledger = _ledger(ws)
    check = ws.audit().verify(pipeline_public_key=ledger.pipeline_entry().public_key)
    _console().print(
        f"[green]audit log OK[/green]: {check.entries} entries, head {check.head_hash[:16]}, "
        "signed by the pipeline key; trust store matches its last audited change; "
        "no newer entry recorded in git"
    )
    if ship_to is not None:
        from aegis.audit_ship import verify_remote

        shipped = verify_remote(url=ship_to, log=ledger.log)
        lock = (
            "Object Lock (COMPLIANCE) on the bucket"
            if shipped.object_lock
            else "no Object Lock on the bucket: shipped entries can be deleted there"
        )
        _console().print(
            f"[green]remote copy OK[/green]: {shipped.entries} entries at "
            f"{printable(shipped.url)}, byte for byte the local log; {lock}"
        )


@audit_app.command("show")
def audit_show(
    last: Annotated[int | None, typer.Option(help="Only the last N entries.", min=1)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print audit entries (not verified: run `aegis audit verify`)."""
    from dataclasses import asdict

    entries = _ws().audit().entries()
    if last is not None:
        entries = entries[-last:]
    if STATE.json or as_json:
        _print_json([asdict(e) for e in entries])
        return
    from rich.table import Table

    table = Table(title="audit log")
    for col in ("seq", "time (UTC)", "actor", "action", "subjects", "details"):
        table.add_column(col, overflow="fold")
    for e in entries:
        subjects = ", ".join(
            f"{k}={str(v).removeprefix('sha256:')[:12]}" for k, v in e.subjects.items()
        )
        details = ", ".join(
            f"{k}={str(v)[:10] if k == 'commit' else v}"
            for k, v in e.details.items()
            if k in _SHOWN_DETAILS
        )
        table.add_row(
            str(e.seq), printable(e.time[:19]), printable(e.actor[:12]), printable(e.action),
            printable(subjects), printable(details),
        )  # fmt: skip
    _console().print(table)


_SHOWN_DETAILS = ("name", "supplier", "role", "owner", "reason", "allowed_older", "commit")


@app.command()
def demo(
    directory: Annotated[Path, typer.Argument(help="Demo workspace (recreated).")] = Path(
        "demo-workspace"
    ),
    story: Annotated[
        str,
        typer.Option(help="main (a fresh workspace) | theft (in the folder main left)."),
    ] = "main",
) -> None:
    """Tell the end-to-end story in a fresh demo workspace, or a longer one after it."""
    from aegis.errors import UsageError

    if story == "main":
        from aegis.demo import run_demo

        run_demo(directory)
    elif story == "theft":
        from aegis.demo_theft import run_theft_story

        run_theft_story(directory)
    else:
        raise UsageError(f"--story {story!r}: main or theft")
