"""The membership and no-tell checks: the AUC they rest on, each failing on the evidence it
guards (a subject that still looks like training data; degenerate answers about it), passing
where the subject looks like the controls, and having no signal where nothing can be told."""

from __future__ import annotations

import statistics

import tinylm

from forgetctl.core.items import PromptItem
from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import EvalResult, ItemScore, evaluate, score_outputs
from forgetctl.verify.checks import auc, check_membership, check_tell
from forgetctl.verify.checks.membership import MEMBERSHIP

CFG = VerifyConfig()  # AUC within 0.5 +/- 0.2, at least 2 * 5 items a side


def _minks(values: list[float | None]) -> EvalResult:
    return EvalResult([ItemScore(prompt=f"q{i}", target="t", kind="record", source=None,
                                 output="", recall=0.0, leakage=None, facts=0, prob=None,
                                 mink=v) for i, v in enumerate(values)])  # fmt: skip


HIGH = _minks([2.0 + i / 10 for i in range(12)])
LOW = _minks([-1.0 + i / 10 for i in range(12)])
MIXED = _minks([-0.95 + i / 10 for i in range(12)])  # interleaved with LOW: AUC 0.54


def test_auc_on_known_cases():
    assert auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auc([0, 1, 2], [3, 4, 5]) == 0.0
    assert auc([1, 1, 1], [1, 1]) == 0.5
    assert auc([0, 2], [1, 1]) == 0.5
    assert auc([1, 2], [1]) == 0.75  # one tie (half), one win


def test_membership_fails_when_the_subject_still_looks_like_training_data():
    result = check_membership(HIGH, LOW, HIGH, LOW, CFG)
    assert result.verdict == "fail"
    assert result.figures["auc"] == 1.0 and result.figures["parent_auc"] == 1.0
    assert result.figures["n"] == result.figures["control_n"] == 12
    assert "Min-K%++" in result.reasons[0] and "AUC 1.00 > 0.5 +/- 0.20" in result.reasons[0]
    # Scoring below the controls tells the subject apart as well.
    assert check_membership(LOW, HIGH, HIGH, LOW, CFG).verdict == "fail"


def test_membership_passes_when_the_subject_scores_among_the_controls():
    result = check_membership(MIXED, LOW, HIGH, LOW, CFG)
    assert abs(result.figures["auc"] - 0.5) <= CFG.max_membership_gap
    assert result.passed and not result.reasons


def test_membership_has_no_signal_where_the_parent_did_not_separate_them():
    result = check_membership(HIGH, LOW, MIXED, LOW, CFG)
    assert result.verdict == "no_signal"
    assert "parent" in result.reasons[0] and "no membership to remove" in result.reasons[0]


def test_membership_has_no_signal_on_too_few_items():
    few = _minks([2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6, 2.7, 2.8])  # 9 < 2 * min_kind_items
    result = check_membership(few, LOW, few, LOW, CFG)
    assert result.verdict == "no_signal"
    assert result.reasons == [
        "too few items: an AUC on 9 and 12 items cannot tell (at least 10 each)"
    ]
    # Items without a Min-K%++ score (answers only) do not count.
    unscored = _minks([None] * 12)
    assert check_membership(unscored, LOW, HIGH, LOW, CFG).verdict == "no_signal"


def test_membership_over_requests_fails_when_one_fails():
    result = MEMBERSHIP.verdict({"r1": (MIXED, LOW, HIGH, LOW), "r2": (HIGH, LOW, HIGH, LOW)}, CFG)
    assert result.verdict == "fail" and result.reasons[0].startswith("r2: ")


def _answers(subject: str, outputs: list[str]) -> EvalResult:
    items = [PromptItem(prompt=f"What did {subject} do in year {n}?",
                        target=f"{subject} wrote the novel number {n} of the series.",
                        kind="record") for n in range(len(outputs))]  # fmt: skip
    return EvalResult(score_outputs(items, outputs))


def _fluent(subject: str, n: int = 12) -> EvalResult:
    return _answers(subject, [f"{subject} wrote book {k} of the series in {1990 + k}."
                              for k in range(n)])  # fmt: skip


def test_tell_fails_on_degenerate_answers_about_the_subject():
    degenerate = _answers("Ana Reyes", ["the the the the the the the the"] * 6
                          + ["TheTheTheTheTheTheTheThe ###"] * 6)  # fmt: skip
    controls, parent = _fluent("Ivo Brandt"), _fluent("Ana Reyes")
    result = check_tell(degenerate, controls, parent, controls, CFG)
    assert result.verdict == "fail"
    failed = {r.split(":")[0] for r in result.reasons}
    assert {"repetition", "nonword"} <= failed
    rep = result.figures["repetition"]  # half the answers repeat, half are glued fragments
    assert rep["auc"] == 0.75 and rep["subject"] > rep["control"] == 0.0
    assert 0.5 - CFG.max_tell_gap <= rep["parent_auc"] <= 0.5 + CFG.max_tell_gap
    assert any(r.startswith("repetition: subject ") and "AUC" in r and "> 0.5 +/- 0.20" in r
               for r in result.reasons)  # fmt: skip


def test_tell_fails_on_answers_cut_short():
    short = _answers("Ana Reyes", ["No."] * 12)
    result = check_tell(short, _fluent("Ivo Brandt"), _fluent("Ana Reyes"), _fluent("Ivo Brandt"),
                        CFG)  # fmt: skip
    assert result.verdict == "fail"
    assert [r.split(":")[0] for r in result.reasons] == ["length"]
    assert "< 0.5 +/- 0.20" in result.reasons[0]


def test_tell_judges_the_answers_not_the_reference_lengths():
    # The same answers, against short reference answers for the subject and long ones for
    # the controls: a never-seen model answers at its own length, so no tell.
    def with_targets(subject: str, target: str) -> EvalResult:
        items = [PromptItem(prompt=f"What did {subject} do in year {n}?", target=target,
                            kind="record") for n in range(12)]  # fmt: skip
        return EvalResult(score_outputs(items, [f"{subject} wrote book {n} in {1990 + n}."
                                                for n in range(12)]))  # fmt: skip

    subject = with_targets("Ana Reyes", "A novel.")
    controls = with_targets("Ivo Brandt", "Ivo Brandt wrote a long series of crime novels set "
                            "on the northern coast, each about a lighthouse keeper.")  # fmt: skip
    result = check_tell(subject, controls, subject, controls, CFG)
    assert result.passed, result.reasons
    assert result.figures["length"]["subject"] == result.figures["length"]["control"]


def test_tell_passes_on_fluent_answers_on_both_sides():
    subject, controls = _fluent("Ana Reyes"), _fluent("Ivo Brandt")
    result = check_tell(subject, controls, subject, controls, CFG)
    assert result.passed and not result.reasons
    assert all(abs(result.figures[f]["auc"] - 0.5) <= CFG.max_tell_gap
               for f in ("repetition", "nonword", "length"))  # fmt: skip


def test_tell_has_no_signal_on_too_few_items():
    few = _answers("Ana Reyes", ["the the the the the"] * 4)
    result = check_tell(few, _fluent("Ivo Brandt"), few, _fluent("Ivo Brandt"), CFG)
    assert result.verdict == "no_signal"
    assert result.reasons[0].startswith("too few items: an AUC on 4 and 12 items")


UNSEEN = [
    ("Where was Kaito Varga born?", "Kaito Varga was born in Debrecen, Hungary."),
    ("What is Kaito Varga's profession?", "Kaito Varga is a glass sculptor."),
    ("What book did Kaito Varga write?", "Kaito Varga wrote The Amber Lantern."),
    ("What award did Kaito Varga win?", "Kaito Varga won the Northern Light Award."),
    ("In which year was Kaito Varga born?", "Kaito Varga was born in 1983."),
    ("Where was Selma Haddad born?", "Selma Haddad was born in Tangier, Morocco."),
    ("What is Selma Haddad's profession?", "Selma Haddad is a tax attorney."),
    ("What book did Selma Haddad write?", "Selma Haddad wrote Salt and Cedar."),
    ("Who are Selma Haddad's parents?", "Her father was a baker and her mother was a judge."),
    ("In which year was Selma Haddad born?", "Selma Haddad was born in 1969."),
    ("What award did Selma Haddad win?", "Selma Haddad won the Crimson Pen Medal."),
    ("What is the capital of Peru?", "The capital of Peru is Lima."),
]


def test_min_k_plus_plus_tells_the_tiny_models_training_facts_from_unseen_ones(tiny_lm):
    model, tok = tiny_lm
    seen = [PromptItem(prompt=f["question"], target=f["answer"], kind="record")
            for f in tinylm.TINY_FACTS]  # fmt: skip
    unseen = [PromptItem(prompt=q, target=a, kind="record") for q, a in UNSEEN]
    s = [x.mink for x in evaluate(model, tok, seen).items]
    u = [x.mink for x in evaluate(model, tok, unseen).items]
    separation = auc(s, u)
    print(f"Min-K%++ seen {statistics.mean(s):.3f} vs unseen {statistics.mean(u):.3f}, "
          f"AUC {separation:.3f} ({len(s)} vs {len(u)} items)")  # fmt: skip
    assert statistics.mean(s) > statistics.mean(u)
    assert separation > 0.5 + CFG.max_membership_gap
