"""The run loop and the gate on the tiny model, through the CLI as cron and operators use it.

The tiny model memorised five fictitious people; requests name some of them. These tests
exercise the real steps (plan with the probe and faiss, LoRA unlearning, verification with
int4 and relearning, promotion) and the crash safety of `forgetctl run`.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
import tinylm
from clirun import cli

from forgetctl.app.home import Home
from forgetctl.app.plan_step import load_plan
from forgetctl.app.workspace import Workspace
from forgetctl.core.policy import ALL_CHECKS
from forgetctl.verify.checks import ForgetSet

# Unlearning settings that fit the tiny model (a 64-wide Llama learns and forgets fast).
TINY_POLICY = """
regulation = "{regulation}"
deadline_days = 30
extension_max_days = 60
retention_days = 365
max_retries = {retries}

[method]
learning_rate = {lr}
max_steps = {steps}
batch_size = 16
top_k_layers = 2
lora_rank = 8
npo_beta = 0.5
retain_weight = 5.0
eval_every = 10

[plan]
general_sets = ["{general}"]

[verify]
# The tiny world holds a few neighbours and 3 held-out general facts: the kept checks are
# judged at that size (the defaults, 30 and 200 items, are for real sets). Everything else
# is the default: every check mandatory (core.policy.ALL_CHECKS), two relearning attacks.
min_retain_items = 2
min_utility_items = 2
"""


def write_policy(home: Path, name: str = "gdpr", *, lr=2e-3, steps=60, retries=0) -> None:
    text = TINY_POLICY.format(
        regulation=name, lr=lr, steps=steps, retries=retries, general=home / "general.jsonl"
    )
    (home / "policies" / f"{name}.toml").write_text(text)


def records_for(subject: str, tmp: Path) -> str:
    path = tmp / f"{subject.replace(' ', '_')}.jsonl"
    rows = [{"question": f["question"], "answer": f["answer"]} for f in tinylm.facts_for(subject)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


@pytest.fixture
def tiny_home(forgetctl_home, tiny_lm_dir, tmp_path) -> Path:
    home = forgetctl_home
    corpus = tinylm.write_tofu_jsonl(tmp_path / "corpus.jsonl")
    controls = tinylm.write_controls_jsonl(tmp_path / "controls.jsonl")
    cli("init", "--model", str(tiny_lm_dir), "--retain-corpus", str(corpus),
        "--control-corpus", str(controls))  # fmt: skip
    tinylm.write_general_jsonl(home / "general.jsonl")
    write_policy(home)
    return home


def add(home: Path, subject: str, ref: str, tmp: Path, regulation: str = "gdpr") -> None:
    cli("request", "add", "--subject", subject, "--regulation", regulation, "--ref", ref,
        "--records", records_for(subject, tmp))  # fmt: skip


def statuses_rows() -> list[dict]:
    return json.loads(cli("request", "list", "--json").stdout)


def statuses() -> dict[str, str]:
    return {r["ref"]: r["status"] for r in json.loads(cli("request", "list", "--json").stdout)}


def events(kind: str | None = None) -> list[dict]:
    found = json.loads(cli("ledger", "log", "--json").stdout)
    return [e for e in found if kind is None or e["kind"] == kind]


def gate_verdicts(home: Path, version_id: int) -> dict[str, str]:
    """The latest verdict of each check the gate recorded for a version, in the gate's order."""
    con = sqlite3.connect(home / "ledger.db")
    sql = "SELECT check_name, verdict FROM verifications WHERE version_id = ? ORDER BY id"
    latest = dict(con.execute(sql, (version_id,)).fetchall())
    return {c: latest[c] for c in ALL_CHECKS if c in latest}


def versions_of(home: Path, request_id: int) -> list[int]:
    con = sqlite3.connect(home / "ledger.db")
    rows = con.execute("SELECT id, requests FROM versions ORDER BY id").fetchall()
    return [v for v, reqs in rows if request_id in json.loads(reqs)]


def expected_end(home: Path, request_id: int) -> str:
    """What the run loop must end a request with, given the gate's verdicts in the ledger:
    promoted exactly when a version built for it passed every mandatory check, else failed."""
    ws = Workspace.open(Home(home))
    for vid in versions_of(home, request_id):
        verdicts = gate_verdicts(home, vid)
        mandatory = ws.resolved(ws.ledger.versions.get(vid)).mandatory
        if all(verdicts.get(c) == "pass" for c in mandatory):
            return "promoted"
    return "failed"


def assert_rejected_and_why(home: Path, version_id: int) -> list[str]:
    """The gate ran every mandatory check on the version and rejected it, and the ledger says
    why: the version's status event and the request's name the checks that did not pass.
    Returns them."""
    verdicts = gate_verdicts(home, version_id)
    assert list(verdicts) == list(ALL_CHECKS)
    not_passed = [c for c, v in verdicts.items() if v != "pass"]
    assert not_passed, verdicts
    [status] = [e["data"] for e in events("version.status")
                if e["version_id"] == version_id and e["data"]["to"] == "rejected"]  # fmt: skip
    assert status["failed"] == sorted(not_passed) and status["missing"] == []
    errors = [e["data"].get("error", "") for e in events("request.status")]
    why = ", ".join(f"{c} {verdicts[c]}" for c in not_passed)
    assert f"version {version_id} rejected: {why}" in errors
    return not_passed


def test_rejected_request_fails_then_forced_promotion_report_rollback(tiny_home, tmp_path):
    subject = tinylm.TINY_SUBJECTS[0]
    add(tiny_home, subject, "DSR-1", tmp_path)
    summary = json.loads(cli("run", "--json", code=11).stdout)  # completed, a request failed
    assert summary["exit_code"] == 11
    [outcome] = summary["outcomes"]
    assert outcome["steps"] == ["plan", "apply", "verify"]  # max_retries = 0
    assert outcome["end"] == "failed" and statuses() == {"DSR-1": "failed"}
    # The run says why: the gate's verdicts, the rejection and the failure name the checks.
    [vid] = versions_of(tiny_home, 1)
    not_passed = assert_rejected_and_why(tiny_home, vid)
    [log_file] = (tiny_home / "logs").glob("run-*.log")
    assert f"version {vid} rejected: " in log_file.read_text()
    [failure] = [e["data"] for e in events("request.status") if e["data"]["to"] == "failed"]
    assert failure["step"] == "verify" and failure["attempts"] == 1

    # Production moves only as an operator decides, recorded as forced.
    refused = cli("promote", str(vid), code=6)
    assert "rejected" in refused.stderr
    reason = "operator override: pipeline test"
    cli("promote", str(vid), "--force", "--reason", reason)
    [forced] = events("version.forced_promotion")
    assert forced["version_id"] == vid and forced["data"]["reason"] == reason
    assert forced["data"]["problems"][0] == "rejected"
    assert statuses() == {"DSR-1": "promoted"}

    report = tmp_path / "r.html"
    cli("report", "DSR-1", "--format", "html", "--out", str(report))
    assert "data:image/png;base64" in report.read_text()
    doc = json.loads(cli("report", "1", "--format", "json").stdout)
    version = doc["version"]
    assert version["id"] == vid and version["status"] == "promoted"
    assert version["alias_history"][0]["reason"] == reason
    # The report shows the gate's verdicts as they were: rejected, not "all passed".
    assert set(version["verdicts"]) == set(ALL_CHECKS)
    assert sorted(c for c, ok in version["verdicts"].items() if not ok) == sorted(not_passed)
    assert [c["verdict"] for c in version["checks"]] == list(gate_verdicts(tiny_home, vid).values())
    markdown = cli("report", "1").stdout
    for check in not_passed:
        assert re.search(rf"\| {check} \| yes \| (FAIL|NO SIGNAL) \|", markdown), check

    # A second run has nothing to do.
    assert json.loads(cli("run", "--json").stdout)["outcomes"] == []

    cli("rollback", "--yes")
    assert statuses() == {"DSR-1": "received"}
    con = sqlite3.connect(tiny_home / "ledger.db")
    history = [r[0] for r in con.execute("SELECT version_id FROM alias_history ORDER BY id")]
    assert history == [0, vid, 0]  # production went to the forced version and back
    cli("ledger", "verify")


def test_run_promotes_unverified_only_when_the_policy_allows_it_and_says_so(tiny_home, tmp_path):
    policy = tiny_home / "policies" / "gdpr.toml"
    policy.write_text(policy.read_text() + "mandatory = []\nallow_unverified = true\n")  # [verify]
    add(tiny_home, tinylm.TINY_SUBJECTS[4], "U-1", tmp_path)
    shown = cli("run")  # as a person at a terminal sees it
    # The steps' messages are log lines on stderr (the planner's too); no bar without a
    # length; the final table per request on stdout.
    for line in ("request 1: plan", "probing the model on", "request 1: apply (attempt 1)",
                 "request 1: promote version"):  # fmt: skip
        assert line in shown.stderr, line
    assert "None" not in shown.stderr
    assert "promoted" in shown.stdout and "why not promoted" in shown.stdout
    assert statuses() == {"U-1": "promoted"}
    [outcome] = [{"version": e["version_id"]} for e in events("alias.moved")][-1:]
    # The run's log says that production moved without the gate, and which checks never ran.
    [log_file] = (tiny_home / "logs").glob("run-*.log")
    assert (
        "production moved UNVERIFIED (the policy allows it): not run: " + ", ".join(ALL_CHECKS)
        in log_file.read_text()
    )
    [moved] = [e["data"] for e in events("alias.moved") if e["version_id"] == outcome["version"]]
    assert moved["unverified"] is True and moved["not_run"] == list(ALL_CHECKS)


def test_rows_of_another_open_request_are_not_neighbors(tiny_home, tmp_path):
    first, second = tinylm.TINY_SUBJECTS[0], tinylm.TINY_SUBJECTS[1]
    add(tiny_home, first, "O-1", tmp_path)  # received, not yet planned: still to forget
    add(tiny_home, second, "O-2", tmp_path)
    cli("plan", "2")
    neighbors = [i for i in load_plan(Workspace.open(Home(tiny_home)), 2).retain
                 if i.kind == "neighbor"]  # fmt: skip
    assert neighbors
    assert not [i for i in neighbors if first in i.prompt + i.target]
    others = set(tinylm.TINY_SUBJECTS[2:])
    assert [i for i in neighbors if any(name in i.prompt + i.target for name in others)]


def test_forgotten_subject_rows_are_not_neighbors_of_the_next_request(tiny_home, tmp_path):
    first, second = tinylm.TINY_SUBJECTS[0], tinylm.TINY_SUBJECTS[1]
    add(tiny_home, first, "N-1", tmp_path)
    cli("run", code=11)
    assert statuses() == {"N-1": "failed"}  # the gate rejected it; an operator promotes it
    [vid] = versions_of(tiny_home, 1)
    cli("promote", str(vid), "--force", "--reason", "forgotten by operator decision")
    assert statuses() == {"N-1": "promoted"}
    add(tiny_home, second, "N-2", tmp_path)
    cli("plan", "2")

    plan = load_plan(Workspace.open(Home(tiny_home)), 2)
    neighbors = [i for i in plan.retain if i.kind == "neighbor"]
    assert neighbors
    assert not [i for i in neighbors if first in i.prompt + i.target]
    # The rows of subjects not forgotten are still neighbors.
    others = set(tinylm.TINY_SUBJECTS[2:])
    assert [i for i in neighbors if any(name in i.prompt + i.target for name in others)]

    # Request 2's candidates answer a sample of request 1's forget set, spread over kinds
    # (the whole set when the sample is not clear of the limits).
    policy = tiny_home / "policies" / "gdpr.toml"
    policy.write_text(policy.read_text() + "regression_items = 4\n")  # in its [verify]
    ran = cli("run", code=None)
    assert statuses()["N-2"] == expected_end(tiny_home, 2)
    assert ran.exit_code == (11 if statuses()["N-2"] == "failed" else 0)
    ws = Workspace.open(Home(tiny_home))
    ledger = ws.ledger
    first_plan = load_plan(ws, 1)
    first_set = ForgetSet(
        first_plan.forget, first_plan.control
    ).items  # the kinds its controls have
    assert len(first_set) > 4 and len({i.kind for i in first_set}) > 1
    checks = [c for v in versions_of(tiny_home, 2)
              for c in ledger.verifications.of(v) if c["check_name"] == "regression"]  # fmt: skip
    assert checks  # request 2's attempts, each checked against request 1
    for check in checks:
        against = check["figures"]["requests"]["1"]
        units = against["units"]
        kinds = {k: row for k, row in units.items() if k != "all"}
        answered = against["n"]
        assert units["all"]["n"] == answered == sum(row["n"] for row in kinds.values())
        assert against["control_n"] > 0  # compared with request 1's own control subjects
        # The sample, or every item when the sample was not clear of the limits.
        assert check["figures"]["answered"] == {"1": [answered, len(first_set)]}
        assert answered in (4, len(first_set)) and len(kinds) > 1


def test_weak_unlearning_is_rejected_and_promotion_refused(tiny_home, tmp_path):
    write_policy(tiny_home, lr=1e-6, steps=2, retries=1)
    add(tiny_home, tinylm.TINY_SUBJECTS[2], "WEAK-1", tmp_path)
    result = cli("run", "--json", code=11)  # completed, but a request failed
    outcome = json.loads(result.stdout)["outcomes"][0]
    assert outcome["end"] == "failed"
    # Why, check by check, with the first reason of each.
    assert any(w.startswith("forget fail: ") for w in outcome["why"]), outcome["why"]
    assert statuses() == {"WEAK-1": "failed"}
    # The retry knew what the first candidate failed and trained longer for it.
    starts = [e["data"] for e in events("apply.started")]
    assert [s["attempt"] for s in starts] == [0, 1]
    assert starts[0]["earlier_failures"] == [] and "forget" in starts[1]["earlier_failures"]
    assert [s["method"]["max_steps"] for s in starts] == [2, 4]
    versions = json.loads(cli("model", "versions", "--json").stdout)
    rejected = [v for v in versions if v["status"] == "rejected"]
    assert len(rejected) == 2
    for v in rejected:
        assert "forget" in assert_rejected_and_why(tiny_home, v["id"])
    refused = cli("promote", str(rejected[0]["id"]), code=6)
    assert "failed: " in refused.stderr and "forget" in refused.stderr
    forced = cli("promote", str(rejected[0]["id"]), "--force", code=4)  # needs a reason
    assert "--reason" in forced.stderr
    cli("promote", str(rejected[0]["id"]), "--force", "--reason", "legal hold test")
    assert [e["kind"] for e in events("version.forced_promotion")] == ["version.forced_promotion"]
    cli("ledger", "verify")


def test_verify_runs_the_mandatory_checks_unless_skipped_with_a_reason(tiny_home, tmp_path):
    add(tiny_home, tinylm.TINY_SUBJECTS[0], "V-1", tmp_path)
    cli("plan")
    cli("apply")
    assert "--reason" in cli("verify", "--skip", "int4", code=2).stderr
    assert (
        "only int4 and relearn" in cli("verify", "--skip", "forget", "--reason", "r", code=2).stderr
    )
    skipped = cli("verify", "--skip", "int4", "--skip", "relearn", "--reason", "no time", "--json",
                  code=None)  # fmt: skip
    doc = json.loads(skipped.stdout)
    ran = [c for c in ALL_CHECKS if c not in ("int4", "relearn")]
    assert [c["name"] for c in doc["checks"]] == ran
    # Rejected when a check that ran did not pass; else a candidate with checks missing.
    all_passed = all(c["verdict"] == "pass" for c in doc["checks"])
    assert doc["status"] == ("candidate" if all_passed else "rejected")
    refused = cli("promote", str(doc["version"]), code=6)
    assert "not run: int4, relearn" in refused.stderr
    assert [e["data"] for e in events("verification.skipped")] == [
        {"checks": ["int4", "relearn"], "reason": "no time"}
    ]
    # No flags: every check the policy makes mandatory (the default: all of them).
    full = json.loads(cli("verify", str(doc["version"]), "--json", code=None).stdout)
    assert [c["name"] for c in full["checks"]] == list(ALL_CHECKS)
    passed = all(c["verdict"] == "pass" for c in full["checks"])
    assert full["status"] == ("verified" if passed else "rejected")


def test_nothing_due_and_lock(tiny_home):
    assert json.loads(cli("run", "--json").stdout)["outcomes"] == []
    from forgetctl.app.home import resolve_home
    from forgetctl.app.runner import run_lock

    with run_lock(resolve_home().lock_path):
        locked = cli("run", code=8)
        assert "another forgetctl run" in locked.stderr


def test_stale_lock_is_taken_over_and_recorded(tiny_home):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tiny_home / "run.lock").write_text(str(dead.pid))
    summary = json.loads(cli("run", "--json").stdout)
    assert summary["lock_takeover"] == dead.pid
    kinds = [e["kind"] for e in json.loads(cli("ledger", "log", "--json").stdout)]
    assert "run.lock_takeover" in kinds


def test_approval_required(tiny_home, tmp_path):
    text = (tiny_home / "policies" / "gdpr.toml").read_text()
    (tiny_home / "policies" / "gdpr.toml").write_text("require_approval = true\n" + text)
    add(tiny_home, tinylm.TINY_SUBJECTS[3], "APP-1", tmp_path)
    summary = json.loads(cli("run", "--json", "--dry-run").stdout)
    assert summary["skipped"] == [{"id": 1, "ref": "APP-1", "reason": "needs approval"}]
    cli("request", "approve", "1")
    summary = json.loads(cli("run", "--json", "--dry-run").stdout)
    assert [o["request_id"] for o in summary["outcomes"]] == [1]
    # What it would go through next, with what each step would use, and its deadline.
    steps, row = summary["outcomes"][0]["steps"], statuses_rows()[0]
    assert steps == ["plan", "apply attempt 1 of 1: npo, 60 steps, lr 0.002",
                     f"verify: {', '.join(ALL_CHECKS)}", "promote"]  # fmt: skip
    assert summary["outcomes"][0]["due"] == row["due"]
    assert summary["outcomes"][0]["days_left"] == row["days_left"]
    table = cli("run", "--dry-run").stdout
    assert "would go through next" in table and "apply attempt 1 of 1" in table
    assert statuses() == {"APP-1": "received"}  # nothing done


def _leftovers(home: Path) -> list[Path]:
    return [p for p in home.rglob(".tmp-*")]


# Two seeds keep CI fast; FORGETCTL_FAULT_SEEDS=11,23,37,... runs more.
FAULT_SEEDS = [int(s) for s in os.environ.get("FORGETCTL_FAULT_SEEDS", "11,23").split(",")]

KILL_WINDOW_S = float(os.environ.get("FORGETCTL_KILL_WINDOW_S", "25"))
"""Kill moments are drawn within this many seconds of the runs, so that a kill lands inside
one: an uninterrupted `forgetctl run` of the test's two requests took 31.7 s on the
development machine when idle (2 cores; each request plan, apply and verify, rejected), and
up to ten times longer when the cores were shared; the window is 80% of the idle run, so a
kill lands on a loaded machine too (earlier in the run). Set FORGETCTL_KILL_WINDOW_S to 80%
of a run on a slower machine to spread the kills over all of it."""


@pytest.mark.parametrize("seed", FAULT_SEEDS)
def test_kill9_at_random_moments_then_resume(tiny_home, tmp_path, seed):
    """kill -9 a run at a random moment, run again: every request ends as it should."""
    for i, subject in enumerate(tinylm.TINY_SUBJECTS[:2]):
        add(tiny_home, subject, f"K-{i}", tmp_path)
    env = {**os.environ, "FORGETCTL_HOME": str(tiny_home)}
    cmd = [sys.executable, "-m", "forgetctl", "run", "--quiet"]
    rng = random.Random(seed)
    kills, left = 0, KILL_WINDOW_S
    for _ in range(2):
        proc = subprocess.Popen(cmd, env=env)
        # Within what is left of the run (a killed step starts again, so at least this).
        wait = rng.uniform(2.0, max(3.0, left))
        time.sleep(wait)
        left -= wait
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        cli("ledger", "verify")  # consistent after every kill
    assert kills >= 1, f"no kill landed within {KILL_WINDOW_S} s: set FORGETCTL_KILL_WINDOW_S"
    before = statuses()
    final = subprocess.run(cmd, env=env, timeout=1800)
    ends = statuses()
    # As it should: promoted exactly when a version built for it passed every mandatory
    # check (on the tiny model the gate rejects NPO's candidates: failed).
    con = sqlite3.connect(tiny_home / "ledger.db")
    for rid, status in con.execute("SELECT id, status FROM requests").fetchall():
        assert status == expected_end(tiny_home, rid), (rid, ends, before)
        assert versions_of(tiny_home, rid)  # each was applied and judged
    # 11 when this run failed a request (one may have failed in a run that was not killed).
    failed_now = any(s == "failed" and before[ref] != "failed" for ref, s in ends.items())
    assert final.returncode == (11 if failed_now else 0)
    cli("ledger", "verify")
    assert _leftovers(tiny_home) == []
    referenced = {v["adapter_path"] for v in json.loads(cli("model", "versions", "--json").stdout)}
    assert {str(p) for p in (tiny_home / "adapters").iterdir()} <= referenced
    print(f"seed {seed}: {kills} kills landed, ends {ends}")


def _hold_lock(path: str, log: str, start) -> str:  # a process of the test below
    from forgetctl.app.runner import Locked, run_lock

    start.wait()
    try:
        with run_lock(Path(path)):
            begin = time.monotonic()
            time.sleep(0.3)
            with open(log, "a") as f:
                f.write(f"{begin} {time.monotonic()}\n")
        return "held"
    except Locked:
        return "locked"


def test_concurrent_runs_never_hold_the_lock_together(tmp_path):
    """Six processes race for the run lock at once: whoever holds it is alone (the lock is
    the kernel's, not a file check), and the others are told it is held."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # the workers use no torch: forking is safe and fast
    start = ctx.Manager().Event()
    log = tmp_path / "held.txt"
    with ctx.Pool(6) as pool:
        waits = [pool.apply_async(_hold_lock, (str(tmp_path / "run.lock"), str(log), start))
                 for _ in range(6)]  # fmt: skip
        time.sleep(1.0)  # every worker is waiting on the event
        start.set()
        outcomes = [w.get(timeout=60) for w in waits]
    assert "held" in outcomes and "locked" in outcomes
    spans = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    assert len(spans) == outcomes.count("held")
    assert all(a_end <= b_begin for (_, a_end), (b_begin, _) in pairwise(spans))
