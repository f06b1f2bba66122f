"""Retain and utility judged on held-out items: the retain side splits by item hash, the
unlearning adapter trains on one part and the gate judges the other, so spill-over onto
knowledge the adapter was not trained to keep shows.

The step tests stop short of training and scoring (``unlearn`` and ``run_checks`` are
replaced), so they are fast."""

from __future__ import annotations

import inspect
import random

import pytest
from typer.testing import CliRunner

from forgetctl.app import apply_step, verify_step, versions
from forgetctl.app.home import resolve_home
from forgetctl.app.workspace import Workspace
from forgetctl.core.data import load_jsonl
from forgetctl.core.items import PromptItem, PromptSet, trains_retain
from forgetctl.core.policy import PlanConfig, VerifyConfig
from forgetctl.lm.evaluate import EvalResult, ItemScore
from forgetctl.plan.planner import _general_sample
from forgetctl.store.ledger import open_ledger
from forgetctl.unlearn.train import unlearn
from forgetctl.verify.checks import check_utility, run_checks


def _general_rows() -> list[dict]:
    return [row for name in PlanConfig().general_sets for row in load_jsonl(name)]


def _items(n: int, kind: str, tag: str = "") -> list[PromptItem]:
    return [
        PromptItem(prompt=f"{tag}question {i}?", target=f"answer {i}", kind=kind) for i in range(n)
    ]


def _key(item: PromptItem) -> tuple[str, str]:
    return item.prompt, item.target


def test_split_is_deterministic_disjoint_and_stable():
    retain = [*_items(60, "neighbor", "n"), *_items(80, "general", "g")]
    ps = PromptSet(forget=[], retain=retain)
    train, held = ps.split_retain()
    assert ps.split_retain() == (train, held)
    assert train and held
    assert {_key(i) for i in train}.isdisjoint({_key(i) for i in held})
    assert sorted(map(_key, train + held)) == sorted(map(_key, retain))
    # a larger set, in another order, moves no item to the other side
    bigger = [*retain, *_items(200, "general", "extra ")]
    random.Random(1).shuffle(bigger)
    train2, held2 = PromptSet(forget=[], retain=bigger).split_retain()
    assert {_key(i) for i in train} <= {_key(i) for i in train2}
    assert {_key(i) for i in held} <= {_key(i) for i in held2}
    # the side is the item's own: its kind and neighbours play no part
    for item in retain:
        assert trains_retain(item.model_copy(update={"kind": "other"})) == trains_retain(item)


def test_old_stored_plans_load_and_split():
    old = {
        "forget": [{"prompt": "Where was A born?", "target": "In B.", "kind": "record"}],
        "retain": [i.model_dump() for i in _items(20, "general")],
        "dropped": [],
        "probe": {},
    }
    ps = PromptSet.model_validate_json(PromptSet.model_validate(old).model_dump_json())
    train, held = ps.split_retain()
    assert len(train) + len(held) == 20 and held


def test_the_builtin_general_sets_give_enough_held_out_and_training_items():
    cfg = PlanConfig()
    rows = _general_rows()
    sample = _general_sample(rows, cfg)
    train, held = PromptSet(forget=[], retain=sample).split_retain()
    all_train = [r for r in rows if trains_retain(_as_item(r))]
    assert len(held) == len(rows) - len(all_train) >= 200  # every held-out item, for utility
    assert len(all_train) >= 60
    assert len(train) == min(cfg.general_k, len(all_train))  # the retain term's sample
    assert _general_sample(rows, cfg) == sample  # seeded
    assert len({_key(i) for i in sample}) == len(sample)


def _as_item(row: dict) -> PromptItem:
    return PromptItem(prompt=" ".join(row["question"].split()),
                      target=" ".join(str(row["answer"]).split()), kind="general")  # fmt: skip


def test_the_general_training_sample_is_capped_and_held_out_kept_whole():
    rows = _general_rows()
    sample = _general_sample(rows, PlanConfig(general_k=10))
    train, held = PromptSet(forget=[], retain=sample).split_retain()
    assert len(train) == 10 and len(held) >= 200


# --------------------------------------------------------------------------- the steps

runner = CliRunner()


class _Stop(Exception):
    """Raised by a stand-in once it has seen its arguments."""


@pytest.fixture
def home_with_request(tiny_lm_dir, monkeypatch):
    """A home on the tiny model with request 1 planned; its plan is ``PLAN``."""
    from forgetctl.cli.app import app

    result = runner.invoke(app, ["init", "--model", str(tiny_lm_dir)])
    assert result.exit_code == 0, result.output
    home = resolve_home()
    ledger = open_ledger(home.ledger_path)
    ledger.db["requests"].insert({"id": 1, "ref": "R-1", "policy": "gdpr", "regulation": "gdpr",
        "scope": "entity", "status": "planned", "received": "2026-11-01", "due": "2026-12-01",
        "subject_index": "x", "created_at": "t", "updated_at": "t"})  # fmt: skip
    plan = PromptSet(
        forget=_items(4, "record", "forget "),
        retain=[*_items(30, "neighbor", "n"), *_items(40, "general", "g")],
    )
    for step in (apply_step, verify_step):
        monkeypatch.setattr(step, "load_plan", lambda ws, rid: plan)
    monkeypatch.setattr(versions, "load_version", lambda ws, vid: (None, None))
    return home, ledger, plan


def test_apply_trains_the_retain_term_on_the_training_part_only(home_with_request, monkeypatch):
    home, _, plan = home_with_request
    seen = {}

    def fake_unlearn(*args, **kwargs):
        seen.update(inspect.signature(unlearn).bind(*args, **kwargs).arguments)
        raise _Stop

    monkeypatch.setattr(apply_step, "unlearn", fake_unlearn)
    with pytest.raises(_Stop):
        apply_step.apply_request(Workspace.open(home), 1)
    train, held = plan.split_retain()
    assert seen["retain"] == train and seen["forget"] == plan.forget
    assert not {_key(i) for i in seen["retain"]} & {_key(i) for i in held}


def test_verify_judges_retain_and_utility_on_the_held_out_part_only(home_with_request, monkeypatch):
    home, ledger, plan = home_with_request
    vid = ledger.versions.add(kind="adapter", parent=0, status="candidate",
                              adapter_path=str(home.adapters / "none"),
                              adapter_sha256="0" * 64, requests=[1])  # fmt: skip
    seen = {}

    def fake_run_checks(*args, **kwargs):
        seen.update(inspect.signature(run_checks).bind(*args, **kwargs).arguments)
        return []

    monkeypatch.setattr(verify_step, "run_checks", fake_run_checks)
    verify_step.verify_version(Workspace.open(home), vid)
    _, held = plan.split_retain()
    assert seen["retain"] == [i for i in held if i.kind == "neighbor"]
    assert seen["general"] == [i for i in held if i.kind == "general"]
    assert seen["retain"] and seen["general"]


# --------------------------------------------------------------------------- resolution


def _scores(
    recalls: list[float], kind: str = "general", acc: list[float] | None = None
) -> EvalResult:
    """Items with these recalls and token accuracies (the recalls, unless ``acc`` is given)."""
    accs = recalls if acc is None else acc
    return EvalResult(
        [
            ItemScore(
                prompt=f"q{i}",
                target="a",
                kind=kind,
                source=None,
                output="",
                recall=r,
                leakage=None,
                facts=0,
                prob=None,
                acc=a,
            )  # fmt: skip
            for i, (r, a) in enumerate(zip(recalls, accs, strict=True))
        ]
    )


def _pair(n: int, seed: int = 0) -> tuple[EvalResult, EvalResult]:
    """Parent and candidate on ``n`` items: the candidate loses a few answers, gains one."""
    rng = random.Random(seed)
    parent = [1.0 if rng.random() < 0.8 else 0.3 for _ in range(n)]
    cand = [p - (0.5 if rng.random() < 0.2 else 0.0) + (0.2 if rng.random() < 0.1 else 0.0)
            for p in parent]  # fmt: skip
    return _scores(parent), _scores(cand)


def test_the_minimum_detectable_drop_is_reported_and_shrinks_with_n():
    cfg = VerifyConfig()
    small = check_utility(*reversed(_pair(25)), cfg).figures["acc"]
    large = check_utility(*reversed(_pair(400)), cfg).figures["acc"]
    assert small["min_detectable_drop"] > large["min_detectable_drop"] > 0
    # 2.8 standard errors of the paired difference: diffs 0 and 1, half each, n = 4
    exact = check_utility(_scores([1.0, 0.0, 1.0, 0.0]), _scores([1.0] * 4), cfg).figures
    for metric in ("acc", "recall"):
        assert exact[metric]["min_detectable_drop"] == pytest.approx(2.8 * (1 / 3 / 4) ** 0.5,
                                                                     abs=1e-4)  # fmt: skip
        assert exact[metric]["drop"] == 0.5
    one = check_utility(_scores([0.0]), _scores([1.0]), cfg)
    assert one.figures["acc"]["min_detectable_drop"] is None and not one.passed


def test_a_drop_on_held_out_items_fails_utility_where_the_trained_ones_hide_it():
    """What the split is for: the adapter keeps what its retain term saw and loses the rest."""
    cfg = VerifyConfig(min_utility_items=40)  # judged at the size of these hand-made sets
    parent = _scores([1.0] * 40)
    trained_kept = _scores([1.0] * 40)
    held_out_lost = _scores([1.0] * 30 + [0.0] * 10)
    assert check_utility(trained_kept, parent, cfg).passed
    failed = check_utility(held_out_lost, parent, cfg)
    assert failed.verdict == "fail" and failed.figures["acc"]["drop"] == 0.25


def test_basic_facts_are_tofu_shaped_and_new():
    rows = load_jsonl("builtin:basic_facts")
    assert len(rows) == 238
    for row in rows:
        wrong = row["perturbed_answers"]
        assert len(wrong) == 3 and len(set(wrong)) == 3 and row["answer"] not in wrong, row
        assert row["answer"].lower() in row["original_answer"].lower() or row["answer"].isdigit()
    questions = [r["question"].lower() for r in _general_rows()]
    assert len(set(questions)) == len(questions)  # no question of another general set again


def test_a_drop_the_items_cannot_bound_under_the_limit_has_no_signal():
    cfg = VerifyConfig(min_utility_items=40)  # max drop 0.05, at the size of these sets
    # One answer of 40 lost: a drop of 0.025, within the limit, but 40 items cannot bound
    # it under 0.05 (one more loss would be over).
    parent, lost_one = [1.0] * 40, [1.0] * 39 + [0.0]
    few = check_utility(_scores(lost_one), _scores(parent), cfg)
    assert few.verdict == "no_signal" and few.figures["acc"]["drop"] == 0.025
    assert few.figures["acc"]["bound"] > cfg.max_utility_drop
    assert "cannot show it" in few.reasons[0]
    # The same share in 1,600 items bounds it.
    many = check_utility(_scores(lost_one * 40), _scores(parent * 40), cfg)
    assert many.passed and many.figures["acc"]["bound"] <= cfg.max_utility_drop
    # A drop over the limit fails.
    over = check_utility(_scores([1.0] * 30 + [0.0] * 10), _scores(parent), cfg)
    assert over.verdict == "fail"


def test_kept_knowledge_is_judged_on_what_the_model_predicts_and_says():
    """Token accuracy vouches for a pass; a drop in accuracy or in recall past the limit
    fails. The retrained model's case: recall on 40 neighbours moved by a whole answer while
    the predicted tokens stayed, which recall alone could not bound (no_signal before)."""
    cfg = VerifyConfig(min_retain_items=40)
    parent = _scores([1.0] * 40, "neighbor", acc=[0.99] * 40)
    # One greedy answer of 40 took another path (recall drop 0.025, bound 0.066 > 0.05),
    # every token still predicted.
    noisy = _scores([1.0] * 39 + [0.0], "neighbor", acc=[0.99] * 39 + [0.97])
    judged = check_utility(noisy, parent, cfg, name="retain")
    assert judged.passed, judged.reasons
    assert judged.figures["recall"]["bound"] > 0.05 >= judged.figures["acc"]["bound"]
    # Knowledge lost behind unchanged greedy answers: the accuracy drop fails on its own.
    hidden = _scores([1.0] * 40, "neighbor", acc=[0.90] * 40)
    failed = check_utility(hidden, parent, cfg, name="retain")
    assert failed.verdict == "fail" and failed.reasons == ["token accuracy drop 0.090 > max 0.050"]
    # Answers derailed while the tokens stay: a recall drop past the limit fails on its own,
    # with no allowance for its noise (gradient ascent's utility damage on author 1: recall
    # drop 0.084, token accuracy 0.026).
    derailed = _scores([1.0] * 37 + [0.0] * 3, "neighbor", acc=[0.99] * 37 + [0.98] * 3)
    failed = check_utility(derailed, parent, cfg, name="retain")
    assert failed.verdict == "fail" and failed.reasons == ["recall drop 0.075 > max 0.050"]


def test_a_kept_drop_is_judged_on_its_exact_value_not_its_rounded_figure():
    """A drop of 0.05004 rounds to the limit in the figures, and still fails."""
    cfg = VerifyConfig(min_retain_items=2)
    parent = _scores([1.0] * 2, "neighbor", acc=[1.0, 1.0])
    over = _scores([1.0] * 2, "neighbor", acc=[1.0, 0.89992])
    failed = check_utility(over, parent, cfg, name="retain")
    assert failed.figures["acc"]["drop"] == 0.05 and failed.verdict == "fail"
