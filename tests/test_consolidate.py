"""Consolidation on the tiny model: the model trained again from its base without the
forgotten subject becomes a root version that goes through the gate, replaces the adapter
stack when promoted, and rolls back to it."""

from __future__ import annotations

import json

import tinylm
from clirun import cli
from test_pipeline import records_for, statuses, write_policy

from forgetctl.app import versions
from forgetctl.app.home import Home
from forgetctl.app.workspace import Workspace
from forgetctl.core.items import PromptItem
from forgetctl.core.policy import ALL_CHECKS
from forgetctl.lm.evaluate import evaluate

SUBJECT = tinylm.TINY_SUBJECTS[1]


def _recall(model, tok, facts) -> float:
    items = [PromptItem(prompt=f["question"], target=f["answer"], kind="record") for f in facts]
    return evaluate(model, tok, items, with_prob=False).mean("recall")


def test_consolidation_trains_without_the_subject_and_replaces_the_stack(
    forgetctl_home, tiny_lm_dir, tmp_path
):
    home = forgetctl_home
    data = tinylm.write_training_data(tmp_path / "training-data.jsonl")
    controls = tinylm.write_controls_jsonl(tmp_path / "controls.jsonl")
    cli("init", "--model", str(tiny_lm_dir), "--base", str(tinylm.write_untrained(tmp_path / "b")),
        "--training-data", str(data), "--recipe", str(tmp_path / "recipe.json"),
        "--retain-corpus", str(tinylm.write_tofu_jsonl(tmp_path / "corpus.jsonl")),
        "--control-corpus", str(controls))  # fmt: skip
    tinylm.write_general_jsonl(home / "general.jsonl")
    assert "production forgot no one" in cli("consolidate", "--dry-run", code=4).output
    # The fast lane first: an adapter, promoted without the gate (the policy allows it).
    write_policy(home)
    policy = home / "policies" / "gdpr.toml"
    gated = policy.read_text()
    policy.write_text(gated + "mandatory = []\nallow_unverified = true\n")
    cli("request", "add", "--subject", SUBJECT, "--regulation", "gdpr", "--ref", "C-1",
        "--records", records_for(SUBJECT, tmp_path))  # fmt: skip
    cli("run", "--quiet")
    assert statuses() == {"C-1": "promoted"}
    stack = json.loads(cli("model", "versions", "--json").stdout)[-1]["id"]
    policy.write_text(gated)  # every check mandatory again

    planned = json.loads(cli("consolidate", "--dry-run", "--json").stdout)
    own = len(tinylm.facts_for(SUBJECT))
    assert (planned["requests"], planned["dropped"], planned["production"]) == ([1], own, stack)
    assert planned["rows"] == len(tinylm.TINY_FACTS) + len(tinylm.TINY_GENERAL)
    vid = json.loads(cli("consolidate", "--json").stdout)["version"]
    ws = Workspace.open(Home(home))
    row = ws.ledger.versions.get(vid)
    assert (row["kind"], row["parent"], row["requests"]) == ("consolidated", stack, [1])
    # Its weights are its own root: trained without the subject, it does not know them.
    model, tok = versions.load_version(ws, vid)
    assert _recall(model, tok, tinylm.facts_for(SUBJECT)) < 0.5
    others = [f for f in tinylm.TINY_FACTS if f["subject"] != SUBJECT]
    assert _recall(model, tok, others) > 0.8

    # The same gate as any version, against the deployed model that knew the subject.
    doc = json.loads(cli("verify", str(vid), "--json", code=None).stdout)
    verdicts = {c["name"]: c["verdict"] for c in doc["checks"]}
    # Trained without the subject, it passes every check, relearning included, where the
    # adapter lane's candidates on this model fail (tests/test_pipeline.py).
    assert doc["status"] == "verified", verdicts
    assert set(verdicts.values()) == {"pass"} and list(verdicts) == list(ALL_CHECKS)
    cli("promote", str(vid))
    assert ws.ledger.aliases.get() == vid and statuses() == {"C-1": "promoted"}
    assert versions.version_key(ws.ledger, vid) != versions.version_key(ws.ledger, stack)
    assert cli("model", "ask", tinylm.facts_for(SUBJECT)[0]["question"]).stdout.strip()
    # A second request for the same subject is a duplicate: production forgot them.
    cli("request", "add", "--subject", SUBJECT, "--regulation", "gdpr", "--ref", "C-2")
    assert json.loads(cli("plan", "C-2", "--json").stdout)[0]["status"] == "duplicate"

    # Rolling back puts the adapter stack back; the request stays forgotten by it.
    cli("rollback", "--yes")
    assert ws.ledger.aliases.get() == stack and statuses()["C-1"] == "promoted"
    cli("ledger", "verify")
