"""``aegis attack extract`` against a real gateway on 127.0.0.1, and what the gateway saw."""

from __future__ import annotations

import json

from serve_helpers import Gateway, wait_for


def test_a_knockoff_attack_copies_the_model_and_is_flagged(served, cli, tmp_path):
    gateway = Gateway(served)
    try:
        out = tmp_path / "copy"
        result = cli(
            "attack", "extract", "--url", gateway.url, "--token", served.tokens["app"],
            "--kind", "knockoff", "--queries", "60", "--surrogate", "logreg", "--check", "100",
            "--out", out, "--json", cwd=served.root,
        )  # fmt: skip
        assert result.code == 0, result.err
        summary = json.loads(result.out)
        assert summary["queries"] == 60 and 0 <= summary["agreement"] <= 1
        assert (out / "surrogate.json").is_file() and (out / "surrogate.safetensors").is_file()

        def flagged() -> bool:
            listed = cli("keys", "api", "list", "--json", cwd=served.root)
            rows = {r["name"]: r for r in json.loads(listed.out)}
            return rows["app"]["flagged"] and rows["app"]["flagged_by"] == "ood"

        wait_for(flagged, what="the knockoff client flagged")  # within a flush and a save
        again = cli(
            "attack", "extract", "--url", gateway.url, "--token", "aegis_" + "x" * 43,
            "--kind", "natural", "--queries", "10", "--out", tmp_path / "no", cwd=served.root,
        )  # fmt: skip
        assert again.code == 2 and "401" in again.err and not (tmp_path / "no").exists()
    finally:
        gateway.stop()
