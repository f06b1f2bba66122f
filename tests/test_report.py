"""The audit report on hand-made verifications (no model): every check has a row with its
verdict, its key figures beside their limits and its reasons, and a no-signal verdict says
in words that the check had no evidence."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from forgetctl.app.home import Home
from forgetctl.app.intake import add_request, parse_request
from forgetctl.app.report import build_report
from forgetctl.app.workspace import Workspace
from forgetctl.cli.report_render import render
from forgetctl.core.policy import AttackConfig, VerifyConfig
from forgetctl.lm.evaluate import EvalResult, ItemScore
from forgetctl.verify.checks import CheckResult
from forgetctl.verify.checks import int4 as int4_check
from forgetctl.verify.checks.forget import FORGET
from forgetctl.verify.checks.kept import RETAIN, UTILITY
from forgetctl.verify.checks.membership import MEMBERSHIP
from forgetctl.verify.checks.regression import REGRESSION
from forgetctl.verify.checks.relearn import RELEARN
from forgetctl.verify.checks.tell import TELL

N = 12


def scores(acc: float, recall: float, mink: float, repetition: float = 0.0,
           kind: str = "record", n: int = N) -> EvalResult:  # fmt: skip
    """``n`` items whose figures spread a little around the given means."""
    wobble = [(i % 3 - 1) * 0.02 for i in range(n)]
    return EvalResult([
        ItemScore(prompt=f"q{i}", target="t", kind=kind, source=i, output="", recall=recall + w,
                  leakage=recall + w, facts=1, prob=None, acc=acc + w, mink=mink + w * 10,
                  repetition=repetition, nonword=0.0, length=20.0)
        for i, w in enumerate(wobble)
    ])  # fmt: skip


def attack_result(subject_after: EvalResult, control_after: EvalResult) -> SimpleNamespace:
    """What ``relearn_attack`` returns, for one attack (the check reads only these fields)."""

    def side(rest: EvalResult) -> SimpleNamespace:
        return SimpleNamespace(attack_items=N, rest=rest, rest_int4=rest, losses=[2.0, 0.5])

    return SimpleNamespace(attack=AttackConfig(mode="full", learning_rate=1e-4, steps=20),
                           subject=side(subject_after), control=side(control_after),
                           attack_s=1.0)  # fmt: skip


def gate_results(cfg: VerifyConfig) -> list[CheckResult]:
    """One result of every check, from the checks' own verdicts on hand-made scores: the
    subject forgotten (like the controls), but its answers repetitive (tell fails), the
    relearning attack bringing it back (relearn fails), the parent's Min-K%++ unable to
    tell the subject from the controls (membership: no signal), no general items (utility:
    no signal)."""
    parent, control = scores(0.9, 0.8, 5.0), scores(0.3, 0.2, 0.0)
    candidate = scores(0.32, 0.21, 0.1, repetition=0.6)
    forget = {"1": (candidate, control, parent, control)}
    retain_parent, retain_cand = (
        scores(0.9, 0.9, 5.0, kind="neighbor", n=40),
        scores(0.9, 0.88, 5.0, kind="neighbor", n=40),
    )
    int4_scores = int4_check.Scores(
        forget={"1": (candidate, control, candidate, control)},
        kept={"retain": (retain_cand, retain_parent, retain_cand),
              "utility": (EvalResult([]), EvalResult([]), EvalResult([]))},
        quantize_s=0.5,
    )  # fmt: skip
    relearned = attack_result(scores(0.85, 0.75, 4.0), control)
    return [
        FORGET.verdict(forget, cfg),
        RETAIN.verdict((retain_cand, retain_parent), cfg),
        UTILITY.verdict((EvalResult([]), EvalResult([])), cfg),
        REGRESSION.verdict({}, cfg),
        MEMBERSHIP.verdict({"1": (candidate, control, control, control)}, cfg),
        TELL.verdict(forget, cfg),
        int4_check.verdict(int4_scores, cfg),
        RELEARN.verdict({"1": [(relearned, parent, candidate, control)]}, cfg),
    ]


@pytest.fixture
def report_doc(tmp_path) -> dict:
    home = Home(tmp_path / "home")
    home.create_dirs()
    ws = Workspace.open(home, create=True)
    ledger = ws.ledger
    with ledger.transaction():
        ledger.versions.add(id=0, kind="base", status="promoted", base_path="/nowhere",
                            base_sha256="0" * 64)  # fmt: skip
        ledger.aliases.move("production", 0, "base model registered")
    rid, _ = add_request(ws, parse_request(
        {"ref": "R-1", "regulation": "gdpr", "subject": {"name": "Ada Quill"}}))  # fmt: skip
    vid = ledger.versions.add(kind="adapter", parent=0, status="candidate",
                              adapter_path="/nowhere/1", adapter_sha256="0" * 64,
                              requests=[rid])  # fmt: skip
    for r in gate_results(ws.resolved(vid).verify):
        ledger.verifications.add(vid, r.name, r.verdict, r.figures, r.reasons)
    return build_report(ws, f"v{vid}")


def test_every_check_has_a_row_with_its_verdict(report_doc):
    verdicts = {c["check_name"]: c["verdict"] for c in report_doc["version"]["checks"]}
    assert verdicts == {"forget": "pass", "retain": "pass", "utility": "no_signal",
                        "regression": "pass", "membership": "no_signal", "tell": "fail",
                        "int4": "pass", "relearn": "fail"}  # fmt: skip
    md = render(report_doc, "md")
    for row in ("| forget | yes | pass |", "| utility | yes | NO SIGNAL |",
                "| membership | yes | NO SIGNAL |", "| tell | yes | FAIL |",
                "| relearn | yes | FAIL |", "### membership: NO SIGNAL (mandatory)"):  # fmt: skip
        assert row in md, row
    # No signal is said in words: no evidence, not a pass.
    assert "NO SIGNAL: the check had no evidence to judge" in md
    assert "no utility items to compare" in md
    assert "no signal: the parent's Min-K%++ AUC" in md


def test_key_figures_stand_beside_their_limits(report_doc):
    checks = {c["check_name"]: c for c in report_doc["version"]["checks"]}
    forget = {(r["where"], r["figure"]): r["values"] for r in checks["forget"]["key_figures"]}
    acc = forget[("request 1, all", "acc")]
    assert acc["subject"] == pytest.approx(0.32) and acc["controls"] == pytest.approx(0.3)
    assert acc["gap"] == pytest.approx(0.02) and acc["parent gap"] == pytest.approx(0.6)
    assert acc["limit"] >= 0.1
    assert ("request 1, record", "leakage") in forget
    relearn = checks["relearn"]["key_figures"]
    attacks = {r["where"] for r in relearn}
    assert attacks == {"request 1, full fine-tuning, lr 0.0001, 20 steps (full)",
                       "request 1, full fine-tuning, lr 0.0001, 20 steps (int4)"}  # fmt: skip
    share = next(r["values"] for r in relearn if r["figure"] == "recall recovered share")
    assert share["share"] > 0.8 and share["limit"] == 0.2 and share["allowance"] is not None
    int4 = {r["figure"]: r["values"] for r in checks["int4"]["key_figures"]}
    assert int4["acc recovery"] == {"int4 gap": 0.02, "full gap": 0.02, "recovery": 0.0,
                                    "limit": 0.05}  # fmt: skip
    tell = {r["figure"]: r["values"] for r in checks["tell"]["key_figures"]}
    assert tell["repetition"]["auc"] == 1.0 and tell["repetition"]["limit |auc - 0.5|"] == 0.2
    retain = checks["retain"]["key_figures"][0]
    assert retain["values"]["n"] == 40 and retain["values"]["limit"] == 0.05
    md = render(report_doc, "md")
    assert f"the check can detect a drop of {retain['values']['min detectable drop']:.3f}" in md
    assert "acc | n 12, subject 0.320, controls 0.300, gap 0.020, limit" in md
    assert "Min-K%++" in md and "recall recovered share" in md


def test_html_report_has_the_gap_plot(report_doc):
    gaps = report_doc["version"]["forget_gaps"]
    assert gaps["acc"]["all"] == {"parent": 0.6, "candidate": 0.02, "candidate int4": 0.02}
    page = render(report_doc, "html")
    assert "data:image/png;base64" in page and "NO SIGNAL" in page
