"""``aegis attack``: attacks on our own pipeline, and how well the screens caught them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aegis.cli._app import STATE, JsonOpt, _console, _ledger, _print_json, app

attack_app = typer.Typer(help="Attack your own pipeline and score its defenses.",
                         no_args_is_help=True)  # fmt: skip
app.add_typer(attack_app, name="attack")


@attack_app.command("poison")
def attack_poison(
    src: Annotated[Path, typer.Argument(help="A signed dataset directory, or CSV/Parquet.")],
    name: Annotated[str, typer.Option(help="The dataset name the manifest carries.")],
    kind: Annotated[
        str, typer.Option(help="flip | pair | boundary | badnets | clean-label | ood.")
    ],
    rate: Annotated[float, typer.Option(help="Share poisoned (of class --from for pair).")],
    key: Annotated[Path, typer.Option("--key", help="The supplier key that signs the copy.")],
    out: Annotated[Path, typer.Option(help="The poisoned, signed dataset directory to write.")],
    truth: Annotated[Path, typer.Option(help="Where the ground truth goes (outside --out).")],
    from_class: Annotated[
        int | None, typer.Option("--from", help="pair: the class relabelled.")
    ] = None,
    to_class: Annotated[
        int | None,
        typer.Option(
            "--to", help="pair: its new label; badnets / clean-label: the target class (0)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Decides which rows the attack picks.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Write a poisoned copy of SRC as a signed dataset, and the truth of what was poisoned.

    The truth file lists the poisoned row ids (positions, as `aegis quarantine show
    --json` reports them); the pipeline never reads it.
    """  # fmt: skip
    from aegis.attack.simulate import poison_dataset
    from aegis.data.manifest import check_dataset_name

    check_dataset_name(name)
    with _console(stderr=True).status(f"poisoning {src} ({kind}, rate {rate}) ..."):
        document = poison_dataset(
            src, name=name, kind=kind, rate=rate, seed=seed, source=from_class,
            target=to_class, key_path=key, out=out, truth=truth,
        )  # fmt: skip
    summary = {k: document[k] for k in ("kind", "rate", "seed", "name", "dataset", "total_rows")}
    summary |= {"poisoned": len(document["rows"]), "out": str(out), "truth": str(truth)}
    if STATE.json or as_json:
        _print_json(summary)
        return
    _console().print(
        f"wrote {out}: '{name}' {document['dataset'][:19]}, {len(document['rows'])} of "
        f"{document['total_rows']} rows poisoned ({kind}), signed; truth in {truth}"
    )


@attack_app.command("score")
def attack_score(
    truth: Annotated[Path, typer.Argument(help="A truth file from `aegis attack poison`.")],
    name: Annotated[str, typer.Option(help="The dataset whose quarantine is scored.")],
    as_json: JsonOpt = False,
) -> None:
    """Precision, recall and F1 of the quarantine against a truth file (overall, per reason)."""
    from aegis.attack.simulate import read_truth, score
    from aegis.data.manifest import check_dataset_name
    from aegis.data.quarantine import quarantine_records, validated_version
    from aegis.pipeline.train import require_validated

    check_dataset_name(name)
    document = read_truth(truth)
    ledger = _ledger()
    digest = validated_version(ledger, name)
    total = require_validated(ledger, name, digest)["rows"]["total"]
    result = score(document, quarantine_records(ledger, name), total_rows=int(total), digest=digest)
    if STATE.json or as_json:
        _print_json(result)
        return
    from rich.table import Table

    table = Table(title=f"quarantine of '{name}' against {truth.name} ({result['kind']})")
    for col in ("reason", "flagged", "true pos.", "precision", "recall", "F1"):
        table.add_column(col)
    for label, r in [("all", result), *result["reasons"].items()]:
        table.add_row(label, str(r["flagged"]), str(r["true_positives"]),
                      f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}")  # fmt: skip
    _console().print(table)
    share = result["clean_flagged_share"]
    _console().print(f"{result['poisoned']} rows poisoned; clean rows flagged: {share:.2%}")


@attack_app.command("extract")
def attack_extract(
    url: Annotated[str, typer.Option(help="The gateway, e.g. http://127.0.0.1:8080.")],
    token: Annotated[str, typer.Option(help="An API client's bearer token.")],
    kind: Annotated[str, typer.Option(help="jacobian | knockoff | natural.")],
    queries: Annotated[int, typer.Option(help="The query budget (rows).")],
    out: Annotated[Path, typer.Option(help="Where the surrogate is written (a new directory).")],
    surrogate: Annotated[str, typer.Option(help="mlp | cnn | logreg | forest.")] = "mlp",
    check: Annotated[int, typer.Option(help="Held-out rows asked to measure agreement.")] = 200,
    seed: Annotated[int, typer.Option(help="Fixes every random choice.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Copy a served model through its API: query it, train a surrogate, report agreement.

    The attacker's in-distribution pool is scikit-learn's digits (64 features) or
    breast_cancer (30): public data like the victim's. Its last CHECK rows are never
    queried during the attack; they are asked afterwards to measure agreement.
    """  # fmt: skip
    from aegis.attack.extract import agreement, extract, public_pool
    from aegis.attack.oracle import HttpOracle, OracleError
    from aegis.errors import UsageError

    if out.exists():
        raise UsageError(f"--out {out}: already exists (a surrogate goes to a new directory)")
    console = _console(stderr=True)
    oracle = HttpOracle(url, token, progress=lambda line: console.print(line))
    try:
        model = oracle.describe()
        pool = public_pool(int(model.get("features", 0)))
        attack_pool, held_out = pool[:-check], pool[-check:]
        with console.status(f"{kind} extraction of {url}, {queries} queries ..."):
            run = extract(kind, oracle, queries=queries, pool=attack_pool,
                          classes=int(model["classes"]), family=surrogate, seed=seed,
                          progress=lambda line: console.print(line))  # fmt: skip
            agree = agreement(run.surrogate, held_out, oracle(held_out))
    except OracleError as exc:
        raise UsageError(f"the gateway refused the attack: {exc}") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    finally:
        oracle.close()
    run.surrogate.save(out)
    summary = {
        "kind": kind, "queries": run.queries, "rounds": run.rounds, "surrogate": surrogate,
        "agreement": round(agree, 4), "checked_on": check, "waited_s": round(oracle.waited, 1),
        "settings": run.settings, "out": str(out),
    }  # fmt: skip
    if STATE.json or as_json:
        _print_json(summary)
        return
    _console().print(f"{kind}: {run.queries} queries, {surrogate} surrogate agrees with the "
                     f"victim on {agree:.1%} of {check} held-out rows; wrote {out}")  # fmt: skip
