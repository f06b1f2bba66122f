"""Consolidation on the tiny model: the model trained again from its base without the
forgotten subject becomes a root version that goes through the gate, replaces the adapter
stack when promoted, and rolls back to it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import date, timedelta

import pytest
import tinylm
from clirun import cli
from test_pipeline import events, records_for, statuses, write_policy

from forgetctl.app import consolidate as consolidation
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


@pytest.fixture(params=["finetune"])
def registered_home(request, forgetctl_home, tiny_lm_dir, tmp_path):
    """A home registered with the tiny model's base, training data and recipe (``distill``:
    the same settings, the method for a recipe that is not known)."""
    home = forgetctl_home
    data = tinylm.write_training_data(tmp_path / "training-data.jsonl")
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({**json.loads(recipe.read_text()), "method": request.param}))
    controls = tinylm.write_controls_jsonl(tmp_path / "controls.jsonl")
    cli("init", "--model", str(tiny_lm_dir), "--base", str(tinylm.write_untrained(tmp_path / "b")),
        "--training-data", str(data), "--recipe", str(tmp_path / "recipe.json"),
        "--retain-corpus", str(tinylm.write_tofu_jsonl(tmp_path / "corpus.jsonl")),
        "--control-corpus", str(controls))  # fmt: skip
    tinylm.write_general_jsonl(home / "general.jsonl")
    nothing = cli("consolidate", "--dry-run", code=4).output
    assert "production forgot no one and no request failed" in nothing
    write_policy(home)
    return home


@pytest.fixture
def stacked_home(registered_home, tmp_path) -> int:
    """A registered home whose production forgets SUBJECT by an adapter (promoted without
    the gate: the adapter lane's candidates fail it on this model); its policy now gates
    every check and consolidates once one request waits. Returns the adapter's version."""
    home = registered_home
    policy = home / "policies" / "gdpr.toml"
    gated = policy.read_text()
    policy.write_text(gated + "mandatory = []\nallow_unverified = true\n")
    cli("request", "add", "--subject", SUBJECT, "--regulation", "gdpr", "--ref", "C-1",
        "--records", records_for(SUBJECT, tmp_path))  # fmt: skip
    cli("run", "--quiet")
    assert statuses() == {"C-1": "promoted"}
    policy.write_text("consolidate_every = 1\n" + gated)
    return json.loads(cli("model", "versions", "--json").stdout)[-1]["id"]


def _when_due(home) -> None:
    """The policy's triggers, on the stacked home (one request forgotten by an adapter, none
    failed); leaves the policy as it found it (``consolidate_every = 1``: due)."""
    policy = home / "policies" / "gdpr.toml"
    kept = policy.read_text()
    ws = Workspace.open(Home(home))
    assert consolidation.due(ws) == ("build", None)
    root_built = ws.ledger.versions.get(0)["created_at"][:10]
    today = date.fromisoformat(root_built)
    rest = kept.replace("consolidate_every = 1\n", "")
    for settings, days, expected in [
        ("consolidate_every = 2\n", 0, None),  # one request waits, two are asked for
        ("consolidate_every_days = 30\n", 29, None),
        ("consolidate_every_days = 30\n", 30, ("build", None)),  # the root is 30 days old
        ("consolidate_failed = true\n", 400, None),  # no request failed
    ]:
        policy.write_text(settings + rest)
        due = consolidation.due(Workspace.open(Home(home)), today + timedelta(days=days))
        assert due == expected, (settings, days)
    policy.write_text(kept)


def test_consolidation_trains_without_the_subject_and_replaces_the_stack(
    forgetctl_home, stacked_home
):
    home, stack = forgetctl_home, stacked_home
    planned = json.loads(cli("consolidate", "--dry-run", "--json").stdout)
    own = len(tinylm.facts_for(SUBJECT))
    assert (planned["requests"], planned["dropped"], planned["production"]) == ([1], own, stack)
    assert planned["rows"] == len(tinylm.TINY_FACTS) + len(tinylm.TINY_GENERAL)
    _when_due(home)
    summary = json.loads(cli("run", "--json").stdout)
    vid = summary["consolidation"]["version"]
    ws = Workspace.open(Home(home))
    row = ws.ledger.versions.get(vid)
    assert (row["kind"], row["parent"], row["requests"]) == ("consolidated", stack, [1])
    # Its weights are its own root: trained without the subject, it does not know them.
    model, tok = versions.load_version(ws, vid)
    assert _recall(model, tok, tinylm.facts_for(SUBJECT)) < 0.5
    others = [f for f in tinylm.TINY_FACTS if f["subject"] != SUBJECT]
    assert _recall(model, tok, others) > 0.8

    # The same gate as any version, against the deployed model that knew the subject:
    # trained without them, it passes every check, relearning included, where the adapter
    # lane's candidates on this model fail (tests/test_pipeline.py); so the run promoted it.
    verdicts = ws.ledger.verifications.verdicts(vid)
    assert list(verdicts) == list(ALL_CHECKS) and all(verdicts.values()), summary
    assert summary["consolidation"] == {"version": vid, "status": "promoted", "why": []}
    assert ws.ledger.aliases.get() == vid and statuses() == {"C-1": "promoted"}
    assert consolidation.due(ws) is None  # nothing waits for the next one
    lane = f"trained without the subject (consolidated version {vid})"
    assert f"| in production | {lane} |" in cli("report", "C-1").stdout
    assert versions.version_key(ws.ledger, vid) != versions.version_key(ws.ledger, stack)
    assert cli("model", "ask", tinylm.facts_for(SUBJECT)[0]["question"]).stdout.strip()
    # A second request for the same subject is a duplicate: production forgot them.
    cli("request", "add", "--subject", SUBJECT, "--regulation", "gdpr", "--ref", "C-2")
    assert json.loads(cli("plan", "C-2", "--json").stdout)[0]["status"] == "duplicate"

    # Rolling back puts the adapter stack back; the request stays forgotten by it.
    cli("rollback", "--yes")
    assert ws.ledger.aliases.get() == stack and statuses()["C-1"] == "promoted"
    assert f"unlearned by adapter (version {stack})" in cli("report", "C-1").stdout
    cli("ledger", "verify")


def test_a_killed_consolidation_resumes(forgetctl_home, stacked_home):
    """kill -9 the run that consolidates, twice, at random moments: the ledger verifies
    after each kill, and the next run ends it promoted, with nothing left behind."""
    env = {**os.environ, "FORGETCTL_HOME": str(forgetctl_home)}
    cmd = [sys.executable, "-m", "forgetctl", "run", "--quiet"]
    rng, kills = random.Random(5), 0
    for _ in range(2):
        proc = subprocess.Popen(cmd, env=env)
        time.sleep(rng.uniform(3.0, 12.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        cli("ledger", "verify")
    assert kills >= 1
    subprocess.run(cmd, env=env, timeout=900, check=True)
    ws = Workspace.open(Home(forgetctl_home))
    production = ws.ledger.versions.get(ws.ledger.aliases.get())
    assert (production["kind"], production["parent"]) == ("consolidated", stacked_home)
    assert not list(forgetctl_home.rglob(".tmp-*")) and not list(forgetctl_home.rglob(".*.tmp"))
    assert not list((forgetctl_home / "models").glob(f"{consolidation.CHECKPOINT_PREFIX}*"))
    on_disk = {str(p) for p in (forgetctl_home / "models").glob("consolidated-*")}
    assert on_disk <= ws.ledger.versions.base_paths()  # no model that no version names
    made = [v for v in ws.ledger.versions.all() if v["kind"] == "consolidated"]
    assert len(made) <= 3  # at most one more per killed run; the others were carried on
    cli("ledger", "verify")


@pytest.mark.parametrize("registered_home", ["distill"], indirect=True)
def test_an_unknown_recipe_is_consolidated_by_distilling_production(forgetctl_home, stacked_home):
    """With the recipe unknown, the base learns what production predicts on the kept rows:
    it never saw the subject's rows, and keeps the others."""
    ws = Workspace.open(Home(forgetctl_home))
    assert ws.ledger.versions.get(0)["metrics"]["training"]["recipe"]["method"] == "distill"
    vid = consolidation.consolidate(ws)
    model, tok = versions.load_version(ws, vid)
    assert _recall(model, tok, tinylm.facts_for(SUBJECT)) < 0.5
    others = [f for f in tinylm.TINY_FACTS if f["subject"] != SUBJECT]
    assert _recall(model, tok, others) > 0.8


def test_a_crashed_consolidation_carries_on_from_its_checkpoint(forgetctl_home, stacked_home):
    """A consolidation stopped in its second epoch leaves the first epoch's checkpoint; the
    next one carries on from it (an event says so) and removes it once the model is
    recorded."""
    ws = Workspace.open(Home(forgetctl_home))

    def crash_in_epoch_2(label, done=None, total=None, /, **figures):
        if figures.get("epoch") == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        consolidation.consolidate(ws, progress=crash_in_epoch_2)
    models = forgetctl_home / "models"
    checkpoint = models / f"{consolidation.CHECKPOINT_PREFIX}{stacked_home}.ckpt"
    assert checkpoint.exists()
    vid = consolidation.consolidate(ws)
    training = ws.ledger.versions.get(vid)["metrics"]["training"]
    assert training["resumed_epochs"] == 1, training
    resumed = [e for e in ws.ledger.events() if e["kind"] == "consolidation.resumed"]
    assert [e["data"]["epochs_done"] for e in resumed] == [1]
    assert not checkpoint.exists() and not list(models.glob(".*.tmp"))
    cli("ledger", "verify")


def test_a_failed_request_is_forgotten_by_consolidation(registered_home, tmp_path):
    """On the tiny model the gate rejects NPO's adapter (retries 0: the request fails);
    the same run consolidates (the policy's ``consolidate_failed``), and the consolidated
    model that never saw the subject passes every check: the request ends promoted, trained
    without."""
    policy = registered_home / "policies" / "gdpr.toml"
    policy.write_text("consolidate_failed = true\n" + policy.read_text())
    cli("request", "add", "--subject", SUBJECT, "--regulation", "gdpr", "--ref", "F-1",
        "--records", records_for(SUBJECT, tmp_path))  # fmt: skip
    summary = json.loads(cli("run", "--json").stdout)  # exit 0: nothing ended failed
    assert summary["consolidation"]["status"] == "promoted", summary["consolidation"]
    # The adapter lane gave up, then the consolidation forgot the subject.
    [outcome] = summary["outcomes"]
    assert outcome["steps"] == ["plan", "apply", "verify", "consolidated"]
    assert outcome["end"] == "promoted"
    assert [e["data"]["to"] for e in events("request.status")][-2:] == ["failed", "promoted"]
    assert statuses() == {"F-1": "promoted"}
    vid = summary["consolidation"]["version"]
    report = cli("report", "F-1").stdout
    assert f"trained without the subject (consolidated version {vid})" in report
    # Rolled back, production knows the subject again: the request is open again.
    cli("rollback", "--yes")
    assert statuses() == {"F-1": "received"}
    cli("ledger", "verify")


def test_init_registers_an_unknown_recipe_as_distillation(forgetctl_home, tiny_lm_dir, tmp_path):
    """`--recipe distill` (no file): the method with the demo's training settings."""
    data = tinylm.write_training_data(tmp_path / "training-data.jsonl")
    cli("init", "--model", str(tiny_lm_dir), "--base", str(tinylm.write_untrained(tmp_path / "b")),
        "--training-data", str(data), "--recipe", "distill")  # fmt: skip
    ws = Workspace.open(Home(forgetctl_home))
    recipe = ws.ledger.versions.get(0)["metrics"]["training"]["recipe"]
    assert (recipe["method"], recipe["epochs"], recipe["batch_size"]) == ("distill", 6, 8)
