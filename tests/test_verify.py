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

from forgetctl.core.facts import item_facts, key_fact_leakage, key_facts, rouge_l_recall
from forgetctl.core.items import PromptItem
from forgetctl.core.policy import ALL_CHECKS, MethodConfig, VerifyConfig
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
from forgetctl.store.scores import ScoreCache
from forgetctl.unlearn.objectives import FORGET_OBJECTIVES, RETAIN_TERMS
from forgetctl.verify.checks import (
    CHECKS,
    CheckResult,
    check_forget,
    check_int4,
    check_relearn,
    check_retain,
    clearly_forgotten,
    run_checks,
)
from forgetctl.verify.checks import measure as checks_measure
from forgetctl.verify.relearn import split_items

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


def test_check_functions_on_given_figures():
    cfg = VerifyConfig()
    items = [PromptItem(prompt="q", target="Alpha Beta won the Gold Prize.", kind="record")]
    gone = EvalResult(score_outputs(items, ["I cannot say."]))
    back = EvalResult(score_outputs(items, ["Alpha Beta won the Gold Prize."]))
    assert check_forget(gone, back, cfg).passed
    assert not check_forget(back, back, cfg).passed
    int4 = check_int4(back, gone, cfg)
    # recovery counts from the never-seen floor, not from 0
    assert not int4.passed and int4.figures["recovery"] == pytest.approx(1.0 - cfg.recall_floor)
    assert int4.figures["raw_recovery"] == 1.0
    assert not check_relearn(gone, back, back, cfg).passed
    assert check_relearn(gone, gone, back, cfg).passed
    assert not check_retain(gone, back, cfg).passed  # recall dropped by 1.0
    assert check_retain(back, back, cfg).passed


def test_the_registry_has_every_policy_check_in_run_order():
    names = [c.name for c in CHECKS]
    assert sorted(names) == sorted(ALL_CHECKS)
    assert names == ["forget", "retain", "utility", "regression", "int4", "relearn"]


def test_the_objective_registries_match_the_policy_choices():
    # Kept next to the check registry's test; it belongs with tests/test_unlearn.py.
    fields = MethodConfig.model_fields
    assert sorted(FORGET_OBJECTIVES) == sorted(get_args(fields["objective"].annotation))
    assert sorted(RETAIN_TERMS) == sorted(get_args(fields["retain_term"].annotation))


def test_unchanged_model_fails_forget_check(tiny_lm):
    model, tok = tiny_lm
    results = run_checks(
        model, model, tok, {"req-1": _forget_items()}, _retain_items(1), _general_items()[:2],
        {}, VerifyConfig(), int4=False, relearn=False,
    )  # fmt: skip
    by = {r.name: r for r in results}
    assert [r.name for r in results] == ["forget", "retain", "utility", "regression"]
    assert not by["forget"].passed
    assert any("recall" in reason for reason in by["forget"].reasons)
    assert by["retain"].passed and by["utility"].passed and by["regression"].passed
    assert all(r.figures["wall_s"] >= 0 for r in results)


def _scores(kind: str, recalls: list[float]) -> list[ItemScore]:
    return [ItemScore(prompt=f"q{i}", target="t", kind=kind, source=None, output="", recall=r,
                      leakage=0.0, facts=1, prob=None) for i, r in enumerate(recalls)]  # fmt: skip


def test_a_sample_is_clear_only_with_room_for_its_error():
    cfg = VerifyConfig()  # recall limit 0.4
    sizes = {"record": 10, "paraphrase": 10}
    low = _scores("record", [0.1, 0.15, 0.1]) + _scores("paraphrase", [0.1, 0.12])
    assert clearly_forgotten(EvalResult(low), sizes, cfg)
    # The mean is under the limit, but two items that far apart leave too wide a margin.
    spread = _scores("record", [0.0, 0.7]) + _scores("paraphrase", [0.1, 0.12])
    assert check_forget(EvalResult(spread), None, cfg).passed
    assert not clearly_forgotten(EvalResult(spread), sizes, cfg)
    # A kind answered once, or not at all, says too little.
    assert not clearly_forgotten(EvalResult(low[:4]), sizes, cfg)
    assert not clearly_forgotten(EvalResult(low[:3]), sizes, cfg)
    # The whole kind answered: its mean is exact.
    assert clearly_forgotten(EvalResult(spread), {"record": 2, "paraphrase": 10}, cfg)


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
    results = run_checks(model, model, tok, {}, [], [], {"1": known, "2": unknown}, cfg,
                         int4=False, relearn=False)  # fmt: skip
    regression = {r.name: r for r in results}["regression"]
    # The unchanged model still knows request 1's subject: its sample is not clear, so the
    # whole set is judged (and fails), each item answered once; request 2's sample is clear
    # on its own.
    assert regression.figures["answered"] == {"1": [12, 12], "2": [6, 12]}
    assert [n for n in answered if n] == [6, 6, 6]
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
    args = (tok, {"req-1": _forget_items()}, _retain_items(1), _general_items()[:2], {},
            VerifyConfig())  # fmt: skip
    first = run_checks(model, model, tok, *args[1:], int4=True, relearn=False, cache=cache,
                       model_keys=("parent", "candidate"))  # fmt: skip

    class Untouchable:  # a parent that must not be asked anything
        def __getattr__(self, name):
            raise AssertionError(f"parent model used: {name}")

    second = run_checks(Untouchable(), model, tok, *args[1:], int4=True, relearn=False,
                        cache=cache, model_keys=("parent", "candidate"))  # fmt: skip
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


def test_suppression_is_caught(tiny_lm, tiny_lm_dir):
    from forgetctl.lm.weights import load_model

    parent, tok = load_model(tiny_lm_dir)
    base, _ = tiny_lm
    candidate = _suppression_adapter(base, tok)
    cfg = VerifyConfig()
    results = run_checks(
        parent, candidate, tok, {"req-1": _forget_items()}, _retain_items(2), _general_items(),
        {}, cfg, int4=True, relearn=True,
    )  # fmt: skip
    by: dict[str, CheckResult] = {r.name: r for r in results}
    forget = by["forget"].figures["requests"]["req-1"]
    # In full precision it looks forgotten and everything else is kept ...
    assert by["forget"].passed, by["forget"].reasons
    assert forget["overall"]["parent_recall"] == 1.0
    assert by["retain"].passed and by["utility"].passed
    # ... but a 20-step fine-tune on half of the subject's records brings the other half back.
    relearn = by["relearn"].figures["requests"]["req-1"]
    assert not by["relearn"].passed
    assert relearn["recovery"] > cfg.max_relearn_recovery
    assert relearn["recall_after"] > 0.6 and relearn["leakage_after"] > 0.5
    assert relearn["attack"]["mode"] == "full fine-tuning"
    # The int4 check ran on really quantized copies and reports its figures.
    int4 = by["int4"].figures
    assert "recovery" in int4["requests"]["req-1"] and int4["quantize_s"] >= 0
    assert "retain" in int4 and "utility" in int4
    # The candidate itself was not modified by int4 or the attack.
    again = evaluate(candidate, tok, _forget_items(), with_prob=False)
    assert again.overall["recall"] == pytest.approx(forget["overall"]["recall"], abs=1e-4)


def test_a_version_of_several_requests_is_held_to_the_strictest_policy():
    from forgetctl.core.policy import strictest

    a = VerifyConfig(max_forget_recall=0.3, regression_items=48, mandatory=["forget"])
    b = VerifyConfig(max_forget_recall=0.4, regression_items=96, mandatory=["int4"])
    both = strictest([a, b])
    assert both.max_forget_recall == 0.3 and both.regression_items == 96
    assert both.mandatory == ["forget", "int4"]
    assert strictest([a, VerifyConfig(regression_items=0)]).regression_items == 0
