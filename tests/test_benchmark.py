"""The pipeline half of benchmarks/tofu.py on the tiny model: its requests go through
`forgetctl run`'s loop in the benchmark's own home, and the figures it reports come out."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import tinylm
from test_pipeline import write_policy

from forgetctl.app import versions
from forgetctl.app.home import Home
from forgetctl.app.plan_step import load_plan
from forgetctl.app.workspace import Workspace
from forgetctl.core.policy import VerifyConfig
from forgetctl.demo.tofu import load_authors
from forgetctl.lm.evaluate import evaluate
from forgetctl.lm.weights import load_model

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "tofu.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("tofu_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.xfail(
    reason="the honest gate (issue 17) rejects the tiny NPO candidate: the benchmark's "
    "run loop ends failed; being rewritten"
)
def test_benchmark_drives_requests_through_the_run_loop(tiny_lm_dir, tmp_path):
    bench = _benchmark()
    corpus = tinylm.write_tofu_jsonl(tmp_path / "corpus.jsonl")
    settings = tmp_path / "settings"  # the tiny model's policy, as `--policies` passes it
    (settings / "policies").mkdir(parents=True)
    tinylm.write_general_jsonl(settings / "general.jsonl")
    write_policy(settings)
    suite = bench.Suite(load_authors(corpus), [0], [1, 2, 3, 4], cap=10)
    before = suite.measure(*load_model(tiny_lm_dir), [0])

    [row] = bench.run_forgetctl(
        tmp_path / "work", tiny_lm_dir, corpus, suite, [0], lambda _msg: None,
        settings / "policies",
    )  # fmt: skip

    assert row["status"] == "promoted"
    # The run loop's steps, a rejected candidate's retry included (its policy allows one).
    assert row["steps"][0] == "plan" and row["steps"][-1] == "promote"
    assert set(row["steps"]) == {"plan", "apply", "verify", "promote"}
    after = row["cumulative"]
    assert after["forget_by_author"][0]["original"] == after["forget_original"]  # one author
    assert before["forget_original"] == 1.0  # the tiny model memorised author 0
    # What the benchmark reports agrees with what the gate promised: the forgotten author's
    # records are recalled at most max_forget_gap above the plan's control subjects' records.
    ws = Workspace.open(Home(tmp_path / "work" / "home"))
    plan = load_plan(ws, row["request"])
    production, tokenizer = versions.load_version(ws, ws.ledger.aliases.get())
    controls = [i for items in plan.control.values() for i in items if i.kind == "record"]
    assert controls
    control_recall = evaluate(production, tokenizer, controls, with_prob=False).mean("recall")
    assert after["forget_original"] - control_recall <= VerifyConfig().max_forget_gap
    assert after["other_authors"] >= 0.9 * before["other_authors"]  # at most 1 of 10 lost
    # forget_indirect is production's recall on the promoted plan's indirect prompts, and
    # no higher than the parent's on the same prompts.
    indirect = [i for i in plan.forget if i.kind == "indirect"]
    assert indirect
    parent = suite.measure(*load_model(tiny_lm_dir), [0], indirect)["forget_indirect"]
    measured = evaluate(production, tokenizer, indirect, with_prob=False).mean("recall")
    assert after["forget_indirect"] == measured <= parent
    # The ledger's rows give the per-step cost and the gate's verdicts.
    rows = bench.from_home(Home(tmp_path / "work" / "home"))
    assert len(rows) == row["steps"].count("apply")
    [version] = [v for v in rows if v["status"] == "promoted"]
    assert version["requests"] == [row["request"]]
    assert all(check["passed"] for check in version["checks"].values())
    assert bench.verify_seconds(version) > 0
    assert f"| {version['version']} | [1] | promoted |" in bench.request_table(rows)
