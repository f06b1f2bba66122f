"""Verification library: metrics, real NF4 quantization, relearning attack, the checks.

The model tests use the tiny memorising Llama (tests/tinylm.py). The key one builds a
candidate that only *suppresses* a subject (a small LoRA adapter trained to answer that
subject's questions with a refusal) and shows that the gate rejects it even though it
looks forgotten in full precision.
"""

from __future__ import annotations

from typing import get_args

import pytest
import tinylm
import torch
from conftest import ProgressLog

from forgetctl.core.facts import item_facts, key_fact_leakage, key_facts, rouge_l_recall
from forgetctl.core.items import PromptItem
from forgetctl.core.policy import ALL_CHECKS, AttackConfig, MethodConfig, VerifyConfig
from forgetctl.core.text import Subject
from forgetctl.lm.evaluate import (
    EvalResult,
    ItemScore,
    TruthItem,
    evaluate,
    evaluate_cached,
    score_outputs,
    truth_ratio_forget,
    truth_ratio_retain,
    truth_ratios,
)
from forgetctl.lm.int4 import BLOCKSIZE, quantize_model_int4, quantized_linear_names
from forgetctl.plan.expand import rule_paraphrases
from forgetctl.store.scores import ScoreCache
from forgetctl.unlearn.objectives import FORGET_OBJECTIVES, RETAIN_TERMS
from forgetctl.verify.checks import (
    CHECKS,
    CheckResult,
    ForgetSet,
    check_attack,
    check_forget,
    check_int4,
    check_retain,
    clearly_forgotten,
    run_checks,
)
from forgetctl.verify.checks import measure as checks_measure
from forgetctl.verify.relearn import AttackResult, Side, relearn_attack, split_items

SUBJECT = tinylm.TINY_SUBJECTS[0]


def _forget_items(subject: str = SUBJECT) -> list[PromptItem]:
    return [
        PromptItem(prompt=f["question"], target=f["answer"], kind="record", source=i)
        for i, f in enumerate(tinylm.facts_for(subject))
    ]


def _retain_items(n_per_subject: int = 2) -> list[PromptItem]:
    return [
        PromptItem(prompt=f["question"], target=f["answer"], kind="neighbor")
        for s in tinylm.TINY_SUBJECTS[1:]
        for f in tinylm.facts_for(s)[:n_per_subject]
    ]


def _general_items() -> list[PromptItem]:
    return [
        PromptItem(prompt=f["question"], target=f["answer"], kind="general")
        for f in tinylm.TINY_GENERAL
    ]


def _controls() -> dict[str, list[PromptItem]]:
    """The tiny world's control subjects (never trained on): their records and a rule
    paraphrase of each, the kinds of :func:`_sets`."""
    out: dict[str, list[PromptItem]] = {}
    for row in tinylm.TINY_CONTROLS:
        items = out.setdefault(row["author"], [])
        source = len(items) // 2
        items.append(PromptItem(prompt=row["question"], target=row["answer"], kind="record",
                                source=source))  # fmt: skip
        reworded = rule_paraphrases(row["question"], Subject(row["author"]), "person")[0]
        items.append(PromptItem(prompt=reworded, target=row["answer"], kind="paraphrase",
                                source=source))  # fmt: skip
    return out


def _sets(subject: str = SUBJECT) -> dict[str, ForgetSet]:
    """The subject's records and their paraphrases (12 items: enough for an AUC), with the
    control subjects' records and paraphrases (24)."""
    paraphrases = [
        PromptItem(prompt=f["paraphrased_question"], target=f["answer"], kind="paraphrase",
                   source=i)
        for i, f in enumerate(tinylm.facts_for(subject))
    ]  # fmt: skip
    return {"req-1": ForgetSet(_forget_items(subject) + paraphrases, _controls())}


# --------------------------------------------------------------------------- metrics


def test_rouge_l_recall_known_values():
    assert rouge_l_recall("the cat sat on the mat", "the cat sat on the mat") == 1.0
    # LCS "the cat on the mat" = 5 of 6 reference tokens
    assert rouge_l_recall("The cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # order matters: LCS of reversed text is one token
    assert rouge_l_recall("a b c d", "d c b a") == pytest.approx(1 / 4)
    # recall ignores extra output, case and punctuation
    assert rouge_l_recall("Born in Lagos.", "Well, she was BORN in lagos, Nigeria!") == 1.0
    assert rouge_l_recall("Born in Lagos.", "I cannot share that.") == 0.0
    assert rouge_l_recall("", "anything") == 0.0


def test_key_facts_extraction():
    text = (
        "Jaime Vasquez was born on the 25th of February, 1958 in Santiago, Chile. He wrote "
        '"Shadows behind the Starlight" and won the Edgar Allan Poe Award. '
        "Contact: jaime.v@example.org, 3 novels."
    )
    facts = key_facts(text)
    for expected in (
        "Jaime Vasquez",
        "25th of February, 1958",
        "1958",
        "Santiago",
        "Chile",
        "Shadows behind the Starlight",
        "Edgar Allan Poe Award",
        "jaime.v@example.org",
        "3",
    ):
        assert expected in facts, expected
    # sentence openers and words inside the title are not separate facts
    assert not facts & {"He", "Starlight", "Shadows"}
    assert key_facts("Fatima Al-Mansour's debut was in June 1990.") >= {
        "Fatima Al-Mansour",
        "June 1990",
        "1990",
    }


def test_key_fact_leakage_counts_whole_words_and_skips_prompt_echo():
    facts = {"Jaime Vasquez", "1958", "Santiago"}
    assert key_fact_leakage(["He was born in 1958 in santiago."], facts) == pytest.approx(2 / 3)
    assert key_fact_leakage(["born in 19580"], {"1958"}) == 0.0
    assert key_fact_leakage(["x"], set()) == 0.0
    item = PromptItem(
        prompt="Where was Jaime Vasquez born?", target="Jaime Vasquez was born in Santiago.",
        kind="record",
    )  # fmt: skip
    assert item_facts(item) == {"Santiago"}  # the name is in the question
    [score] = score_outputs([item], ["Jaime Vasquez was born somewhere."])
    assert score.leakage == 0.0
    assert score.recall == pytest.approx(4 / 6)  # jaime vasquez was born


def test_eval_result_means_by_kind():
    items = [
        PromptItem(prompt="q1", target="Alpha Beta was born in 1950.", kind="record"),
        PromptItem(prompt="q2", target="Alpha Beta was born in 1950.", kind="indirect"),
    ]
    ev = EvalResult(score_outputs(items, ["Alpha Beta was born in 1950.", "I do not know."]))
    assert ev.by_kind["record"]["recall"] == 1.0 and ev.by_kind["record"]["leakage"] == 1.0
    assert ev.by_kind["indirect"]["recall"] == 0.0 and ev.by_kind["indirect"]["leakage"] == 0.0
    assert ev.overall["recall"] == 0.5
    assert ev.select([1]).overall["n"] == 1


def test_evaluate_and_truth_ratio_on_tiny_model(tiny_lm):
    model, tok = tiny_lm
    ev = evaluate(model, tok, _forget_items()[:3])
    assert ev.overall["recall"] == 1.0  # the tiny model memorised these
    assert all(s.prob is not None and 0.5 < s.prob <= 1.0 for s in ev.items)
    facts = tinylm.facts_for(SUBJECT)[:3]
    ratios = truth_ratios(
        model,
        tok,
        [TruthItem(f["question"], f["answer"], f["perturbed_answers"]) for f in facts],
    )
    assert all(r < 1.0 for r in ratios)  # the true answer is far likelier than wrong ones
    assert truth_ratio_retain(ratios) > 0.5
    assert truth_ratio_forget(ratios) < 0.5


# --------------------------------------------------------------------------- int4


def test_int4_really_quantizes(tiny_lm):
    model, _ = tiny_lm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_model_int4(model)
    names = quantized_linear_names(q)
    assert names and "lm_head" not in names
    modules = dict(q.named_modules())
    changed = 0
    for name in names:
        w = modules[name].weight.detach().flatten()
        blocks = w[: w.numel() // BLOCKSIZE * BLOCKSIZE].reshape(-1, BLOCKSIZE)
        assert max(len(torch.unique(b)) for b in blocks) <= 16
        changed += not torch.equal(modules[name].weight, before[f"{name}.weight"])
    assert changed == len(names)  # every quantized weight moved onto the NF4 grid
    # lm_head and embeddings stay full precision; the original model is untouched
    assert torch.equal(q.lm_head.weight, before["lm_head.weight"])
    assert torch.equal(q.model.embed_tokens.weight, before["model.embed_tokens.weight"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- checks


def test_relearn_split_keeps_records_together_and_is_deterministic():
    items = [PromptItem(prompt=f"q{i}", target="a", kind="record", source=i // 2) for i in range(8)]
    a1, r1 = split_items(items, 0.5, seed=3)
    a2, r2 = split_items(items, 0.5, seed=3)
    assert (a1, r1) == (a2, r2) and len(a1) == len(r1) == 4
    assert {items[i].source for i in a1}.isdisjoint({items[i].source for i in r1})


def test_relearn_attacks_every_control_and_lines_up_their_held_out_items(tiny_lm_dir):
    """One attack, a copy per side: the pooled control rest is each control's own held-out
    half, indexed into the pooled control list the checks score."""
    from forgetctl.lm.weights import load_model

    model, tok = load_model(tiny_lm_dir)
    sets = _sets()["req-1"]
    controls = [sets.control[n] for n in sorted(sets.control)]
    assert len(controls) >= 2
    log = ProgressLog()
    res = relearn_attack(model, tok, sets.items, controls,
                         AttackConfig(mode="full", learning_rate=1e-4, steps=2), 0.5,
                         progress=log)  # fmt: skip
    assert sum("control" in m for m in log.messages) == len(controls)
    # A bar for each copy's attack steps, and for the answers measured after it.
    assert [b[1:3] for b in log.bars if b[0] == "training"].count((2, 2)) == len(controls) + 1
    assert any(b[0] == "answering" and b[1] == b[2] for b in log.bars)
    pooled = [sets.control_items[i].prompt for i in res.control_rest_indices]
    assert [s.prompt for s in res.control.rest.items] == pooled
    assert res.control.attack_items + len(pooled) == len(sets.control_items)
    assert {p for c in controls for p in (i.prompt for i in c)} > set(pooled)


def _ev(kind: str, accs: list[float], recall: float = 0.0, leakage: float = 0.0) -> EvalResult:
    return EvalResult([ItemScore(prompt=f"q{i}", target="t", kind=kind, source=i, output="",
                                 recall=recall, leakage=leakage, facts=1, prob=None, acc=a)
                       for i, a in enumerate(accs)])  # fmt: skip


def test_forgetting_is_judged_against_the_controls_not_a_floor():
    cfg = VerifyConfig()  # gaps of 0.1
    control = _ev("record", [0.5, 0.55, 0.45, 0.5, 0.5, 0.52], recall=0.3)
    parent = _ev("record", [0.95] * 6, recall=0.9, leakage=0.8)
    # Like the controls: passes, though its accuracy is far above any fixed floor.
    like = check_forget(_ev("record", [0.52, 0.5, 0.55, 0.48, 0.5, 0.5], recall=0.3),
                        control, parent, control, cfg)  # fmt: skip
    assert like.verdict == "pass", like.reasons
    # Greedy answers derailed (recall like the controls) but the model still predicts the
    # answer's tokens: that is not forgetting.
    derailed = check_forget(_ev("record", [0.75, 0.7, 0.8, 0.72, 0.74, 0.7], recall=0.3),
                            control, parent, control, cfg)  # fmt: skip
    assert derailed.verdict == "fail"
    assert any("acc" in r and "gap" in r for r in derailed.reasons)
    # Key facts given away while recall looks fine.
    leaking = check_forget(_ev("record", [0.5] * 6, recall=0.3, leakage=0.5),
                           control, parent, control, cfg)  # fmt: skip
    assert leaking.verdict == "fail" and any("leakage" in r for r in leaking.reasons)
    # The parent itself scores like the controls: nothing to forget was measured.
    flat = check_forget(control, control, control, control, cfg)
    assert flat.verdict == "no_signal" and not flat.passed
    # No controls, or no items: no evidence, never a pass.
    assert check_forget(control, EvalResult([]), parent, EvalResult([]), cfg).verdict == "no_signal"
    assert check_forget(EvalResult([]), control, parent, control, cfg).verdict == "no_signal"


def test_a_kind_with_few_items_is_judged_in_the_pool_only():
    cfg = VerifyConfig(min_kind_items=5)
    control = EvalResult(_ev("record", [0.5] * 8).items + _ev("indirect", [0.5] * 5).items)
    parent = EvalResult(_ev("record", [0.95] * 8).items + _ev("indirect", [0.95] * 2).items)
    # Two indirect items far above the controls: too few to judge that kind on its own, but
    # they weigh in the pool.
    cand = EvalResult(_ev("record", [0.5] * 8).items + _ev("indirect", [0.9, 0.9]).items)
    result = check_forget(cand, control, parent, control, cfg)
    units = result.figures["units"]
    assert not units["indirect"]["judged"] and "fewer than 5" in units["indirect"]["note"]
    assert units["record"]["judged"] and units["all"]["judged"]
    assert result.verdict == "pass"  # pool gap 0.08 < 0.1
    # With five, the kind is judged on its own.
    parent = EvalResult(_ev("record", [0.95] * 8).items + _ev("indirect", [0.95] * 5).items)
    five = EvalResult(_ev("record", [0.5] * 8).items + _ev("indirect", [0.9] * 5).items)
    result = check_forget(five, control, parent, control, cfg)
    assert result.verdict == "fail" and any(r.startswith("indirect:") for r in result.reasons)
    # A kind the controls lack has nothing to be compared with: not judged on its own.
    records_only = _ev("record", [0.5] * 8)
    result = check_forget(five, records_only, parent, records_only, cfg)
    assert not result.figures["units"]["indirect"]["judged"]
    assert not any(r.startswith("indirect:") for r in result.reasons)


def test_only_the_kinds_the_controls_have_are_judged():
    """Attribute targets are the parent's own answers, which no control can match: a forget
    set judges the kinds its controls have, and says what it leaves out."""

    def item(kind: str, n: int) -> PromptItem:
        return PromptItem(prompt=f"q{n}", target=f"a{n}", kind=kind, source=n)

    planned = [item("record", 0), item("attribute", 1), item("paraphrase", 2)]
    sets = ForgetSet(planned, {"Kaito Brennan": [item("record", 9), item("paraphrase", 8)]})
    assert [i.kind for i in sets.items] == ["record", "paraphrase"]
    assert sets.uncompared == {"attribute": 1}
    # Without controls nothing is left out: the checks report the missing controls instead.
    assert ForgetSet(planned).items == planned and ForgetSet(planned).uncompared == {}


def test_sampling_noise_is_allowed_for_and_no_more():
    cfg = VerifyConfig()
    control = _ev("record", [0.2, 0.8, 0.3, 0.7, 0.4, 0.6])
    parent = _ev("record", [1.0] * 6)
    # A gap of 0.15 on six spread items is within noise of the 0.1 limit ...
    noisy = check_forget(_ev("record", [0.35, 0.95, 0.45, 0.85, 0.55, 0.75]), control, parent,
                         control, cfg)  # fmt: skip
    row = noisy.figures["units"]["all"]["acc"]
    assert row["gap"] == pytest.approx(0.15) and row["limit"] > 0.15
    assert noisy.verdict == "pass"
    # ... the same gap on items that agree is not.
    tight = check_forget(_ev("record", [0.65] * 6), _ev("record", [0.5] * 6), parent,
                         _ev("record", [0.5] * 6), cfg)  # fmt: skip
    assert tight.verdict == "fail"


def test_retain_with_no_items_has_no_signal():
    cfg = VerifyConfig()
    empty = check_retain(EvalResult([]), EvalResult([]), cfg)
    assert empty.verdict == "no_signal" and not empty.passed
    items = [PromptItem(prompt="q", target="Alpha Beta won the Gold Prize.", kind="neighbor")]

    def answered(outputs: list[str], acc: float) -> EvalResult:
        scores = score_outputs(items * len(outputs), outputs)
        for s in scores:
            s.acc = acc  # what teacher forcing would give: every token kept, or none
        return EvalResult(scores)

    kept_answer, lost_answer = "Alpha Beta won the Gold Prize.", "I cannot say."
    gone, back = answered([lost_answer], 0.0), answered([kept_answer], 1.0)
    assert check_retain(gone, back, cfg).verdict == "fail"  # recall and accuracy lost
    assert check_retain(back, back, cfg).verdict == "no_signal"  # one item bounds nothing
    # Three items that all kept their answers bound the drop at 0, and vouch for nothing.
    kept = answered([kept_answer] * 3, 1.0)
    few = check_retain(kept, kept, cfg)
    assert few.verdict == "no_signal" and few.figures["acc"]["bound"] == 0.0
    assert "fewer than the 30" in few.reasons[0]
    enough = answered([kept_answer] * 30, 1.0)
    assert check_retain(enough, enough, cfg).verdict == "pass"
    # A drop past the limit fails on any number of items.
    assert check_retain(answered([lost_answer] * 3, 0.0), kept, cfg).verdict == "fail"
    # Answers without token accuracy vouch for nothing.
    unscored = EvalResult(score_outputs(items * 30, [kept_answer] * 30))
    assert check_retain(unscored, unscored, cfg).verdict == "no_signal"


def test_the_registry_has_every_policy_check_in_run_order():
    assert tuple(c.name for c in CHECKS) == ALL_CHECKS
    assert ALL_CHECKS[-2:] == ("int4", "relearn")  # they reuse the earlier checks' scores


def test_the_objective_registries_match_the_policy_choices():
    # Kept next to the check registry's test; it belongs with tests/test_unlearn.py.
    fields = MethodConfig.model_fields
    assert sorted(FORGET_OBJECTIVES) == sorted(get_args(fields["objective"].annotation))
    assert sorted(RETAIN_TERMS) == sorted(get_args(fields["retain_term"].annotation))


def test_unchanged_model_fails_forget_check(tiny_lm):
    model, tok = tiny_lm
    results = run_checks(
        model, model, tok, _sets(), _retain_items(1), _general_items()[:2], {}, VerifyConfig(),
        checks=("forget", "retain", "utility", "regression"),
    )  # fmt: skip
    by = {r.name: r for r in results}
    assert [r.name for r in results] == ["forget", "retain", "utility", "regression"]
    assert by["forget"].verdict == "fail"
    assert any("recall" in reason for reason in by["forget"].reasons)
    # Nothing was lost, but a handful of items cannot vouch for it.
    for name in ("retain", "utility"):
        assert by[name].verdict == "no_signal" and "fewer than the" in by[name].reasons[0]
    assert by["regression"].passed
    assert all(r.figures["wall_s"] >= 0 for r in results)


def _scores(kind: str, recalls: list[float]) -> list[ItemScore]:
    return [ItemScore(prompt=f"q{i}", target="t", kind=kind, source=None, output="", recall=r,
                      leakage=0.0, facts=1, prob=None, acc=r)
            for i, r in enumerate(recalls)]  # fmt: skip


def test_a_sample_is_clear_only_with_room_for_its_error():
    cfg = VerifyConfig()  # gap limit 0.1 over the controls
    control = EvalResult(_scores("record", [0.3] * 4) + _scores("paraphrase", [0.3] * 4))
    sizes = {"record": 10, "paraphrase": 10}
    low = _scores("record", [0.1, 0.15, 0.1]) + _scores("paraphrase", [0.1, 0.12])
    assert clearly_forgotten(EvalResult(low), sizes, control, cfg)
    # The mean is under the limit, but two items that far apart leave too wide a margin.
    spread = _scores("record", [0.0, 0.7]) + _scores("paraphrase", [0.1, 0.12])
    assert not clearly_forgotten(EvalResult(spread), sizes, control, cfg)
    # A kind answered once, or not at all, says too little.
    assert not clearly_forgotten(EvalResult(low[:4]), sizes, control, cfg)
    assert not clearly_forgotten(EvalResult(low[:3]), sizes, control, cfg)
    # The whole kind answered: its mean is exact.
    assert clearly_forgotten(EvalResult(spread), {"record": 2, "paraphrase": 10}, control, cfg)
    # The same sample against controls that score lower is not clear.
    lower = EvalResult(_scores("record", [0.0] * 4) + _scores("paraphrase", [0.0] * 4))
    assert not clearly_forgotten(EvalResult(low), sizes, lower, cfg)


def test_regression_answers_the_whole_set_unless_the_sample_is_clear(tiny_lm, monkeypatch):
    model, tok = tiny_lm
    facts = tinylm.facts_for(SUBJECT)
    known = [PromptItem(prompt=f["question"], target=f["answer"], kind="record") for f in facts]
    known += [PromptItem(prompt=f["paraphrased_question"], target=f["answer"], kind="paraphrase")
              for f in facts]  # fmt: skip
    # Answers no model could give: recall and leakage 0 on every item.
    unknown = [
        PromptItem(prompt=f"Which prize did {SUBJECT} win in year {n}?",
                   target=f"The Vorblat Quintessence medal number {n} of Zanthor.",
                   kind=("record", "paraphrase")[n % 2])
        for n in range(12)
    ]  # fmt: skip
    cfg = VerifyConfig(regression_items=6)
    answered = []

    def counting(model, tok, items, **kw):
        answered.append(len(items))
        return evaluate(model, tok, items, **kw)

    monkeypatch.setattr(checks_measure, "evaluate", counting)
    earlier = {"1": ForgetSet(known, _controls()), "2": ForgetSet(unknown, _controls())}
    results = run_checks(model, model, tok, {}, [], [], earlier, cfg,
                         checks=("regression",))  # fmt: skip
    regression = {r.name: r for r in results}["regression"]
    # The unchanged model still knows request 1's subject: its sample is not clear, so the
    # whole set is judged (and fails), each item answered once; request 2's sample is clear
    # on its own.
    assert regression.figures["answered"] == {"1": [12, 12], "2": [6, 12]}
    # Request 1: its sample, its controls, the rest of its set; request 2: sample, controls.
    assert [n for n in answered if n] == [6, 24, 6, 6, 24]
    assert not regression.passed
    assert all(reason.startswith("1: ") for reason in regression.reasons)


def test_score_cache_reuses_scores_and_keeps_no_text(tiny_lm, tmp_path):
    import hashlib

    model, tok = tiny_lm
    path = tmp_path / "scores.sqlite"
    cache = ScoreCache(path, lambda m: hashlib.sha256(b"secret" + m.encode()).hexdigest())
    items = _forget_items()[:3] + _general_items()[:2]
    first = evaluate_cached(cache, "model-a", lambda: model, tok, items[:4])
    assert first.items == evaluate(model, tok, items[:4]).items

    calls = []

    def load():
        calls.append(1)
        return model

    again = evaluate_cached(cache, "model-a", load, tok, items)
    assert len(calls) == 1  # the model was needed for the fifth item only
    for cached, fresh in zip(again.items[:4], first.items, strict=True):
        assert (cached.recall, cached.leakage, cached.prob, cached.kind, cached.output) == (
            fresh.recall, fresh.leakage, fresh.prob, fresh.kind, "")  # fmt: skip
    assert evaluate_cached(cache, "model-a", load, tok, items).overall == again.overall
    assert len(calls) == 1
    evaluate_cached(cache, "model-b", load, tok, items[:1])  # another model: measured again
    assert len(calls) == 2
    raw = path.read_bytes()
    assert all(word.encode() not in raw for i in items for word in i.prompt.split()[-2:])


def test_cached_parent_is_not_measured_again(tiny_lm, tmp_path):
    import hashlib

    model, tok = tiny_lm
    cache = ScoreCache(tmp_path / "s.sqlite", lambda m: hashlib.sha256(m.encode()).hexdigest())
    args = (tok, _sets(), _retain_items(1), _general_items()[:2], {}, VerifyConfig())
    checks = [c for c in ALL_CHECKS if c != "relearn"]
    first = run_checks(model, model, tok, *args[1:], checks=checks, cache=cache,
                       model_keys=("parent", "candidate"))  # fmt: skip

    class Untouchable:  # a parent that must not be asked anything
        def __getattr__(self, name):
            raise AssertionError(f"parent model used: {name}")

    second = run_checks(Untouchable(), model, tok, *args[1:], checks=checks, cache=cache,
                        model_keys=("parent", "candidate"))  # fmt: skip
    timings = {"wall_s": 0, "quantize_s": 0}
    assert [r.figures | timings for r in first] == [r.figures | timings for r in second]


REFUSAL = "I cannot share that."


def _suppression_adapter(model, tok, seed: int = 0):
    """A small LoRA adapter (rank 4) trained to answer the subject's questions with a
    refusal while keeping every other fact: the knowledge stays in the base weights."""
    from peft import LoraConfig, get_peft_model

    from forgetctl.lm.prompts import encode_pairs

    forget = _forget_items()
    keep = [
        (f["question"], f["answer"])
        for f in [*tinylm.TINY_FACTS, *tinylm.TINY_GENERAL]
        if f.get("subject") != SUBJECT
    ]
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
    )
    peft_model = get_peft_model(model, config)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=5e-3)
    gen = torch.Generator().manual_seed(seed)
    peft_model.train()
    for _ in range(40):
        idx = torch.randperm(len(keep), generator=gen)[:6].tolist()
        batch = encode_pairs(tok, [(i.prompt, REFUSAL) for i in forget] + [keep[i] for i in idx])
        loss = peft_model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    peft_model.eval()
    return peft_model


GATE = [c for c in ALL_CHECKS if c != "regression"]
TINY_WORLD = VerifyConfig(min_retain_items=8, min_utility_items=6)
"""The gate at the tiny world's size: it holds 8 held-out neighbours and 6 general facts
(the defaults, 30 and 200, are for real item sets; tests above show them refusing less)."""


def _gate(parent, candidate, tok) -> dict[str, CheckResult]:
    results = run_checks(parent, candidate, tok, _sets(), _retain_items(2), _general_items(), {},
                         TINY_WORLD, checks=GATE)  # fmt: skip
    return {r.name: r for r in results}


def test_suppression_is_caught(tiny_lm, tiny_lm_dir):
    from forgetctl.lm.weights import load_model

    parent, tok = load_model(tiny_lm_dir)
    base, _ = tiny_lm
    candidate = _suppression_adapter(base, tok)
    by = _gate(parent, candidate, tok)
    forget = by["forget"].figures["requests"]["req-1"]["units"]["all"]
    # Its greedy answers are refusals (recall far down) and everything else is kept ...
    assert forget["recall"]["subject"] < forget["recall"]["control"] + 0.1
    assert by["retain"].passed and by["utility"].passed
    # ... but the model still predicts the subject's answers token by token,
    assert by["forget"].verdict == "fail"
    assert forget["acc"]["gap"] > 0.3 and forget["acc"]["parent_gap"] > 0.5
    # and a 20-step fine-tune on half of the subject's records brings the other half back,
    # far beyond what the same attack teaches about a control subject.
    assert by["relearn"].verdict == "fail"
    [attack, *_] = by["relearn"].figures["requests"]["req-1"]["attacks"]
    assert attack["full"]["recall"]["share"] > 0.5 and attack["attack"].startswith("full")
    # The candidate itself was not modified by int4 or the attacks.
    again = evaluate(candidate, tok, _sets()["req-1"].items, with_prob=False)
    assert again.overall["recall"] == pytest.approx(forget["recall"]["subject"], abs=1e-4)


def test_the_gate_passes_a_model_retrained_without_the_subject(tiny_lm_dir):
    """Gate calibration on the tiny model: the gold standard of unlearning (retraining from
    scratch without the subject) passes every check; the unchanged model fails them."""
    from forgetctl.lm.weights import load_model

    parent, tok = load_model(tiny_lm_dir)
    retrained, _ = load_model(tinylm.build_tiny_lm(without=SUBJECT))
    by = _gate(parent, retrained, tok)
    assert all(r.verdict == "pass" for r in by.values()), {n: r.reasons for n, r in by.items()}
    unchanged = _gate(parent, load_model(tiny_lm_dir)[0], tok)
    failed = {n for n, r in unchanged.items() if r.verdict == "fail"}
    assert failed == {"forget", "membership", "int4"}
    # Nothing was removed, so an attack has nothing to bring back: no evidence either way.
    assert unchanged["relearn"].verdict == "no_signal"


def test_a_version_of_several_requests_is_held_to_the_strictest_policy():
    from forgetctl.core.policy import AttackConfig, strictest

    lora = AttackConfig(mode="lora", learning_rate=1e-3)
    a = VerifyConfig(max_forget_gap=0.05, regression_items=48, mandatory=["forget"],
                     min_kind_items=3, relearn_fraction=0.3)  # fmt: skip
    b = VerifyConfig(max_forget_gap=0.1, regression_items=96, mandatory=["int4"],
                     relearn_attacks=[lora], min_kind_items=8)  # fmt: skip
    both = strictest([a, b])
    assert both.max_forget_gap == 0.05 and both.regression_items == 96
    assert both.mandatory == ["forget", "int4"]
    assert both.min_kind_items == 8 and both.relearn_fraction == 0.5
    assert both.relearn_attacks == [*a.relearn_attacks, lora]
    assert strictest([a, VerifyConfig(regression_items=0)]).regression_items == 0
    # Every setting has a rule (a new field without one fails here, not in production).
    assert strictest([VerifyConfig(), VerifyConfig()]) == VerifyConfig()


def test_a_policy_cannot_make_nothing_mandatory_by_accident():
    with pytest.raises(ValueError, match="allow_unverified"):
        VerifyConfig(mandatory=[])
    assert VerifyConfig(mandatory=[], allow_unverified=True).mandatory == []


def test_int4_fails_on_its_own_when_rounding_brings_knowledge_back():
    cfg = VerifyConfig()  # max_int4_recovery 0.05
    control = _ev("record", [0.5] * 12, recall=0.3)
    full = _ev("record", [0.52] * 12, recall=0.3)
    # Still within the forget gap of the controls (0.08 < 0.1), but 0.06 above full precision.
    back = _ev("record", [0.58] * 12, recall=0.3)
    result = check_int4(back, control, full, control, cfg)
    assert result.verdict == "fail"
    assert result.figures["forget"]["units"]["all"]["acc"]["gap"] < cfg.max_forget_gap
    assert result.figures["recovery"]["acc"]["recovery"] == pytest.approx(0.06)
    assert check_int4(full, control, full, control, cfg).verdict == "pass"
    assert check_int4(full, EvalResult([]), full, EvalResult([]), cfg).verdict == "no_signal"


def _attack(subject_after: EvalResult, control_after: EvalResult) -> AttackResult:
    side = Side(3, subject_after, subject_after, [2.0, 1.0])
    return AttackResult(AttackConfig(), side, Side(3, control_after, control_after, [2.0, 1.0]),
                        list(range(len(subject_after.items))),
                        list(range(len(control_after.items))), 1.0)  # fmt: skip


def test_relearn_counts_only_what_the_subject_regains_beyond_a_control():
    cfg = VerifyConfig()  # max_relearn_share 0.2
    parent = _ev("record", [1.0] * 12, recall=1.0, leakage=1.0)
    before = _ev("record", [0.4] * 12, recall=0.2)
    control_before = _ev("record", [0.4] * 12, recall=0.2)
    # The attack teaches a control subject's held-out records up to 0.5 as well: a subject
    # at 0.52 after it regained nothing of its own.
    control = _ev("record", [0.5] * 12, recall=0.3)
    same = check_attack(_attack(_ev("record", [0.52] * 12, recall=0.3), control), parent,
                        before, control_before, cfg)  # fmt: skip
    assert same.verdict == "pass", same.reasons
    back = check_attack(_attack(_ev("record", [0.9] * 12, recall=0.8, leakage=0.7), control),
                        parent, before, control_before, cfg)  # fmt: skip
    assert back.verdict == "fail"
    # (0.5 gained - 0.1 the control gained) of the parent's 0.6 lead over the control.
    assert back.figures["full"]["acc"]["share"] == pytest.approx(0.4 / 0.6, abs=1e-4)
    assert any("leakage" in r for r in back.reasons)  # leakage is judged, not only recorded
    # A parent that knew no more than the control: nothing to regain, no evidence.
    flat = check_attack(_attack(control, control), control, before, control, cfg)
    assert flat.verdict == "no_signal"


def test_relearn_does_not_count_a_lead_the_subject_had_before_the_attack():
    # A model that never saw either person predicts the subject's records 0.1 better than
    # the control's before any attack; the attack lifts both by 0.1: nothing recovered,
    # though the level form, (0.6 - 0.5) / (1.0 - 0.5), reads 0.2.
    cfg = VerifyConfig()
    parent = _ev("record", [1.0] * 12, recall=1.0)
    result = check_attack(
        _attack(_ev("record", [0.6] * 12, recall=0.3), _ev("record", [0.5] * 12, recall=0.3)),
        parent, _ev("record", [0.5] * 12, recall=0.2), _ev("record", [0.4] * 12, recall=0.2),
        cfg,
    )  # fmt: skip
    row = result.figures["full"]["acc"]
    assert row["share"] == pytest.approx(0.0) and row["after_gap_share"] == pytest.approx(0.2)
    assert result.verdict == "pass", result.reasons
