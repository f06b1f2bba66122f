"""The pipeline half of benchmarks/tofu.py on the tiny model: its requests go through
`forgetctl run`'s loop in the benchmark's own home, and the figures it reports come out.

On the tiny model the gate rejects the NPO adapter (tests/test_pipeline.py), so the request
ends failed and production stays the deployed model: the benchmark must say so, with the
gate's verdicts, and measure what is really served."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import tinylm
from test_pipeline import write_policy

from forgetctl.app import versions
from forgetctl.app.home import Home
from forgetctl.app.plan_step import load_plan
from forgetctl.app.workspace import Workspace
from forgetctl.core.policy import ALL_CHECKS, VerifyConfig
from forgetctl.core.progress import silent
from forgetctl.demo.tofu import load_authors
from forgetctl.lm.weights import load_model

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "tofu.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("tofu_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_drives_requests_through_the_run_loop(tiny_lm_dir, tmp_path):
    bench = _benchmark()
    corpus = tinylm.write_tofu_jsonl(tmp_path / "corpus.jsonl")
    controls = tinylm.write_controls_jsonl(tmp_path / "controls.jsonl")
    settings = tmp_path / "settings"  # the tiny model's policy, as `--policies` passes it
    (settings / "policies").mkdir(parents=True)
    tinylm.write_general_jsonl(settings / "general.jsonl")
    write_policy(settings)
    suite = bench.Suite(load_authors(corpus), [0], [1, 2, 3, 4], cap=10)
    before = suite.measure(*load_model(tiny_lm_dir), [0])

    [row] = bench.run_forgetctl(
        tmp_path / "work", tiny_lm_dir, corpus, suite, [0], silent,
        settings / "policies", controls,
    )  # fmt: skip

    # The gate rejected the candidate; the policy allows no retry.
    assert row["status"] == "failed"
    assert row["steps"] == ["plan", "apply", "verify"]
    home = Home(tmp_path / "work" / "home")
    ws = Workspace.open(home)
    assert ws.ledger.aliases.get() == 0  # production is still the deployed model
    plan = load_plan(ws, row["request"])
    # The gate compared the subject with the control corpus the benchmark gave it.
    assert set(plan.control) <= {c["author"] for c in tinylm.TINY_CONTROLS} and plan.control
    # What the benchmark reports is production's figures: the deployed model's, the
    # forgotten author still recalled, the others kept.
    after = row["cumulative"]
    assert before["forget_original"] == 1.0  # the tiny model memorised author 0
    assert after["forget_by_author"][0]["original"] == after["forget_original"]  # one author
    assert {k: after[k] for k in before} == before
    assert after["forget_indirect"] is None  # no promoted plan: nothing measured on it
    # The ledger's rows give the per-step cost and the gate's verdicts.
    rows = bench.from_home(home)
    assert len(rows) == row["steps"].count("apply") == 1
    [version] = rows
    assert version["requests"] == [row["request"]] and version["status"] == "rejected"
    recorded = {
        c["check_name"]: c["verdict"] for c in ws.ledger.verifications.of(version["version"])
    }
    assert {n: c["verdict"] for n, c in version["checks"].items()} == recorded
    assert list(version["checks"]) == list(ALL_CHECKS)  # every check is mandatory by default
    not_passed = [n for n, c in version["checks"].items() if not c["passed"]]
    assert not_passed
    assert bench.verify_seconds(version) > 0
    table = bench.request_table(rows)
    assert f"| {version['version']} | [1] | rejected |" in table
    for name in not_passed:
        assert name in table.splitlines()[-1]

    # The robustness figures are the gate's own int4 and relearn checks: on the deployed
    # model itself nothing was removed, so the attacks have nothing to bring back (no
    # evidence), and int4 does not widen a gap that is already whole.
    parent, tokenizer = load_model(tiny_lm_dir)
    production, _ = versions.load_version(ws, 0)
    forget = bench.forget_set(suite.forget_rows[0], tinylm.TINY_CONTROLS)
    cfg = VerifyConfig()
    robust = bench.robustness(parent, production, tokenizer, forget, suite, cfg)
    relearn = robust["gate"]["relearn"]
    assert relearn["verdict"] == "no_signal"
    assert [a["attack"] for a in relearn["attacks"]] == [
        "full fine-tuning, lr 0.0001, 20 steps",
        "full fine-tuning, lr 1e-05, 20 steps",
    ]
    assert robust["relearn_share"] is None
    int4 = robust["gate"]["int4"]
    assert set(int4["recovery"]) == {"acc", "recall"}
    assert robust["int4_recovery"] == int4["recovery"]["recall"]["recovery"]
    assert robust["int4_recovery"] <= cfg.max_int4_recovery  # nothing was hidden to recover
    assert int4["retain"]["n"] == len(suite.others)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARK.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_seed_reaches_forgetctl_s_method_through_its_policies():
    bench = _benchmark()
    seeded = bench.with_method_seed('max_retries = 2\n\n[method]\nseed = 0\nobjective = "npo"\n', 2)
    assert "seed = 0" not in seeded and seeded.index("[method]\nseed = 2") > 0
    assert bench.with_method_seed("max_retries = 2\n", 1).endswith("\n[method]\nseed = 1\n")


def test_tables_are_generated_from_the_result_files():
    summarize = _load("summarize")

    def run(seed: int, recall: float) -> dict:
        config = {"authors": 10, "forget": 1, "forget_ids": "3", "format": "plain", "seed": seed}
        return {"commit": "abc", "config": config,
                "models": {"forgetctl": {"forget_original": recall, "field": {}}}}  # fmt: skip

    table = summarize.tables([run(0, 0.2), run(1, 0.4)])
    assert "### K=10, forget 3, format plain (seeds [0, 1], commits abc)" in table
    assert "| forgetctl | 0.3 ± 0.14 (2) |" in table  # mean ± sample sd (number of runs)
