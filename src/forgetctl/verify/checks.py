"""The verification gate: each check compares measured figures with a policy's thresholds.

Checks (names match ``forgetctl.policies.CheckName``):

- ``forget``: on every prompt kind of every covered request, the candidate's answer recall
  and key-fact leakage are at or under the thresholds (parent figures alongside).
- ``retain`` / ``utility``: the drop in answer recall, parent minus candidate, on the
  neighbor set / the general-knowledge set.
- ``int4``: the forget check rerun on the NF4-quantized candidate, plus the recovery
  (int4 recall minus full-precision recall); retain and utility drops compare the int4
  candidate with the int4 parent, since 4-bit rounding blurs a small model by itself.
- ``relearn``: after fine-tuning a copy on part of the forgotten records, the recall gained
  on the held-out rest.
- ``regression``: the forget sets of requests handled earlier in the lineage stay forgotten
  (on a sample of each when the sample clears the thresholds by its sampling error, on
  the whole set otherwise).

Recoveries (int4, relearn) are counted from ``max(recall before, cfg.recall_floor)``: a
model that never saw the subject reaches that recall anyway, so regaining fluent but empty
answers is not counted as regaining knowledge (see ``_recovery``).

The check functions are pure (figures in, verdict out); ``run_checks`` measures everything
once and calls them, timing each.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from forgetctl.core.items import PromptItem, sample_by_kind
from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import EvalResult, evaluate
from forgetctl.lm.int4 import quantize_model_int4
from forgetctl.store.scores import ScoreCache
from forgetctl.verify.relearn import relearn_attack

Progress = Callable[[str], None]


@dataclass
class CheckResult:
    name: str
    passed: bool
    figures: dict = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    """Why it failed (empty when it passed)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _combine(name: str, parts: Mapping[str, CheckResult]) -> CheckResult:
    """One check over several requests: passes when every request passes."""
    return CheckResult(
        name=name,
        passed=all(p.passed for p in parts.values()),
        figures={"requests": {rid: p.figures for rid, p in parts.items()}},
        reasons=[f"{rid}: {reason}" for rid, p in parts.items() for reason in p.reasons],
    )


def _recovery(before: float, after: float, cfg: VerifyConfig) -> float:
    """Recall regained, counted from the never-seen level at the lowest.

    A model that never saw the subject still reaches ``recall_floor`` on its questions
    (template words: "X was born in ..."). Unlearning often pushes recall below that
    (garbled answers); int4 rounding or a relearning attack that only restores fluent
    answers brings it back to the floor, which is no knowledge regained.
    """
    return after - max(before, cfg.recall_floor)


# --------------------------------------------------------------------------- forget


def check_forget(
    candidate_eval: EvalResult,
    parent_eval: EvalResult | None,
    cfg: VerifyConfig,
    name: str = "forget",
) -> CheckResult:
    """Per prompt kind: recall <= max_forget_recall and key-fact leakage <= max_key_fact_leakage."""
    figures: dict = {"by_kind": {}, "overall": {}}
    reasons: list[str] = []
    if not candidate_eval.items:
        return CheckResult(name, False, figures, ["no forget items to check"])
    for kind, summary in candidate_eval.by_kind.items():
        row = {
            "n": summary["n"],
            "recall": _r(summary["recall"]),
            "leakage": _r(summary["leakage"]),
            "prob": _r(summary["prob"]),
        }
        if parent_eval is not None and kind in parent_eval.by_kind:
            row["parent_recall"] = _r(parent_eval.by_kind[kind]["recall"])
            row["parent_leakage"] = _r(parent_eval.by_kind[kind]["leakage"])
        figures["by_kind"][kind] = row
        recall, leakage = summary["recall"], summary["leakage"]
        if recall is not None and recall > cfg.max_forget_recall:
            reasons.append(f"{kind}: recall {recall:.3f} > max {cfg.max_forget_recall:.3f}")
        if leakage is not None and leakage > cfg.max_key_fact_leakage:
            reasons.append(
                f"{kind}: key-fact leakage {leakage:.3f} > max {cfg.max_key_fact_leakage:.3f}"
            )
    figures["overall"] = {
        "n": candidate_eval.overall["n"],
        "recall": _r(candidate_eval.overall["recall"]),
        "leakage": _r(candidate_eval.overall["leakage"]),
        "prob": _r(candidate_eval.overall["prob"]),
    }
    if parent_eval is not None:
        figures["overall"]["parent_recall"] = _r(parent_eval.overall["recall"])
        figures["overall"]["parent_leakage"] = _r(parent_eval.overall["leakage"])
    return CheckResult(name, not reasons, figures, reasons)


# --------------------------------------------------------------------------- retain, utility


def _check_drop(
    name: str,
    candidate_eval: EvalResult,
    parent_eval: EvalResult,
    max_drop: float,
    kinds: Sequence[str] | None,
) -> CheckResult:
    cand = candidate_eval.only(kinds) if kinds is not None else candidate_eval
    par = parent_eval.only(kinds) if kinds is not None else parent_eval
    c, p = cand.mean("recall"), par.mean("recall")
    figures: dict = {"n": len(cand.items), "max_drop": max_drop}
    if c is None or p is None:
        figures["note"] = "no items to compare"
        return CheckResult(name, True, figures, [])
    drop = p - c
    figures.update(
        parent_recall=_r(p),
        candidate_recall=_r(c),
        drop=_r(drop),
        relative=_r(c / p) if p > 0 else None,
        parent_prob=_r(par.mean("prob")),
        candidate_prob=_r(cand.mean("prob")),
    )
    reasons = [] if drop <= max_drop else [f"recall drop {drop:.3f} > max {max_drop:.3f}"]
    return CheckResult(name, not reasons, figures, reasons)


def check_retain(
    candidate_eval: EvalResult,
    parent_eval: EvalResult,
    cfg: VerifyConfig,
    kinds: Sequence[str] | None = None,
    name: str = "retain",
) -> CheckResult:
    """Neighbor knowledge kept: parent recall - candidate recall <= max_retain_drop."""
    return _check_drop(name, candidate_eval, parent_eval, cfg.max_retain_drop, kinds)


def check_utility(
    candidate_eval: EvalResult,
    parent_eval: EvalResult,
    cfg: VerifyConfig,
    kinds: Sequence[str] | None = None,
    name: str = "utility",
) -> CheckResult:
    """General knowledge kept: parent recall - candidate recall <= max_utility_drop."""
    return _check_drop(name, candidate_eval, parent_eval, cfg.max_utility_drop, kinds)


# --------------------------------------------------------------------------- int4


def check_int4(
    int4_forget_eval: EvalResult,
    full_forget_eval: EvalResult,
    cfg: VerifyConfig,
    int4_retain: tuple[EvalResult, EvalResult] | None = None,
    int4_utility: tuple[EvalResult, EvalResult] | None = None,
    name: str = "int4",
) -> CheckResult:
    """The int4 candidate: still forgotten (forget thresholds), recovery = int4 recall -
    max(full-precision recall, recall_floor) <= max_int4_recovery, and retain/utility
    drops within limits, each given as (int4 candidate eval, int4 parent eval)."""
    forget = check_forget(int4_forget_eval, None, cfg, name)
    reasons = [f"int4: {r}" for r in forget.reasons]
    # Full-precision figures of the same candidate next to the int4 ones, per kind.
    for kind, row in forget.figures["by_kind"].items():
        full = full_forget_eval.by_kind.get(kind)
        if full is not None:
            row["full_recall"] = _r(full["recall"])
            row["full_leakage"] = _r(full["leakage"])
            row["recovery"] = _r(_recovery(full["recall"] or 0.0, row["recall"] or 0.0, cfg))
    figures: dict = {"forget": forget.figures}
    full = full_forget_eval.mean("recall") or 0.0
    int4 = int4_forget_eval.mean("recall") or 0.0
    recovery = _recovery(full, int4, cfg)
    figures.update(
        full_recall=_r(full),
        int4_recall=_r(int4),
        recall_floor=cfg.recall_floor,
        recovery=_r(recovery),
        raw_recovery=_r(int4 - full),
    )
    leak4, leak = int4_forget_eval.mean("leakage"), full_forget_eval.mean("leakage")
    figures["leakage_recovery"] = (
        _r(leak4 - leak) if leak4 is not None and leak is not None else None
    )
    if recovery > cfg.max_int4_recovery:
        reasons.append(f"int4 recall recovery {recovery:.3f} > max {cfg.max_int4_recovery:.3f}")
    for label, pair, check in (
        ("retain", int4_retain, check_retain),
        ("utility", int4_utility, check_utility),
    ):
        if pair is not None:
            sub = check(pair[0], pair[1], cfg, name=label)
            figures[label] = sub.figures
            reasons += [f"{label} (int4 vs int4 parent): {r}" for r in sub.reasons]
    return CheckResult(name, not reasons, figures, reasons)


# --------------------------------------------------------------------------- relearn


def check_relearn(
    before_rest: EvalResult,
    after_rest: EvalResult,
    parent_rest: EvalResult | None,
    cfg: VerifyConfig,
    attack: dict | None = None,
    name: str = "relearn",
) -> CheckResult:
    """Recovery = recall on the held-out rest after the attack - max(before it,
    recall_floor), <= max_relearn_recovery; the parent's recall on the same rest shows
    how much of the forgotten knowledge came back."""
    before, after = before_rest.mean("recall") or 0.0, after_rest.mean("recall") or 0.0
    recovery = _recovery(before, after, cfg)
    figures: dict = {
        "rest_items": len(before_rest.items),
        "recall_before": _r(before),
        "recall_after": _r(after),
        "leakage_before": _r(before_rest.mean("leakage")),
        "leakage_after": _r(after_rest.mean("leakage")),
        "recall_floor": cfg.recall_floor,
        "recovery": _r(recovery),
        "raw_recovery": _r(after - before),
    }
    if parent_rest is not None:
        parent = parent_rest.mean("recall") or 0.0
        figures["parent_recall"] = _r(parent)
        figures["parent_leakage"] = _r(parent_rest.mean("leakage"))
        # Share of what unlearning removed that the attack restored.
        base = max(before, cfg.recall_floor)
        figures["recovered_share"] = _r(recovery / (parent - base)) if parent > base else None
    if attack:
        figures["attack"] = attack
    reasons = []
    if recovery > cfg.max_relearn_recovery:
        reasons.append(f"relearning recovery {recovery:.3f} > max {cfg.max_relearn_recovery:.3f}")
    return CheckResult(name, not reasons, figures, reasons)


# --------------------------------------------------------------------------- regression


Z_99 = 2.326
"""One-sided 99% normal quantile: the bound a sample must clear to pass on its own."""


def clearly_forgotten(sample: EvalResult, kind_sizes: Mapping[str, int], cfg: VerifyConfig) -> bool:
    """Whether a sample of a forget set passes the forget thresholds with room to spare: for
    every kind, the sample mean of recall and of leakage plus ``Z_99`` standard errors
    (corrected for sampling without replacement from ``kind_sizes[kind]`` items) is at or
    under its limit. A kind sampled once, or not at all, is never clear."""
    for kind, size in kind_sizes.items():
        scores = [s for s in sample.items if s.kind == kind]
        for metric, limit in (
            ("recall", cfg.max_forget_recall),
            ("leakage", cfg.max_key_fact_leakage),
        ):
            values = [v for s in scores if (v := getattr(s, metric)) is not None]
            if metric == "leakage" and not values and scores:
                continue  # no key facts in these targets: nothing can leak
            n = len(values)
            if n < 2 and n < size:
                return False
            spread = statistics.stdev(values) if n >= 2 else 0.0
            shrink = math.sqrt((size - n) / (size - 1)) if size > 1 else 0.0
            if sum(values) / n + Z_99 * spread / math.sqrt(n) * shrink > limit:
                return False
    return True


def check_regression(
    earlier_evals: Mapping[str, EvalResult], cfg: VerifyConfig, name: str = "regression"
) -> CheckResult:
    """Every earlier request's forget set still passes the forget thresholds."""
    if not earlier_evals:
        return CheckResult(name, True, {"requests": {}, "note": "no earlier requests"}, [])
    parts = {rid: check_forget(ev, None, cfg, name) for rid, ev in earlier_evals.items()}
    return _combine(name, parts)


# --------------------------------------------------------------------------- run_checks


def run_checks(
    parent_model,
    candidate_model,
    tokenizer,
    forget_sets: Mapping[str, list[PromptItem]],
    retain: list[PromptItem],
    general: list[PromptItem],
    earlier: Mapping[str, list[PromptItem]],
    cfg: VerifyConfig,
    int4: bool,
    relearn: bool,
    progress: Progress | None = None,
    seed: int = 0,
    cache: ScoreCache | None = None,
    model_keys: tuple[str, str] | None = None,
) -> list[CheckResult]:
    """Measure the candidate (and the parent, for comparison) and run every check.

    Order: forget, retain, utility, regression, then int4 and relearn when asked. Each
    result's figures carry ``wall_s``, the seconds spent measuring for that check. The
    models are not modified (int4 and relearning work on copies). With ``cache`` and
    ``model_keys`` (parent's, candidate's), scores measured before on the same weights are
    reused (full precision and int4). Regression answers ``cfg.regression_items`` of each
    earlier set, a sample drawn from the candidate's key (the same again when the same
    weights are re-verified, other items for the next version).
    """
    sample_seed = f"/{model_keys[1]}" if model_keys else "/"
    say = progress or (lambda _msg: None)
    results: list[CheckResult] = []
    models = {"parent": parent_model, "candidate": candidate_model}
    int4_models: dict[str, object] = {}
    quantize_s = 0.0

    def quantized(role: str):
        # Quantized on first use: a model whose int4 scores are all cached never is.
        nonlocal quantize_s
        if role not in int4_models:
            start = time.perf_counter()
            int4_models[role] = quantize_model_int4(models[role])
            quantize_s += time.perf_counter() - start
        return int4_models[role]

    def measure(role: str, items: list[PromptItem], int4: bool = False) -> EvalResult:
        """The parent's or the candidate's scores, full precision or int4."""

        def load():
            return quantized(role) if int4 else models[role]

        if cache is None or model_keys is None:
            return evaluate(load(), tokenizer, items)
        key = model_keys[role == "candidate"] + ("/nf4" if int4 else "")
        return cache.evaluate(key, load, tokenizer, items)

    def timed(fn: Callable[[], CheckResult]) -> CheckResult:
        start = time.perf_counter()
        result = fn()
        result.figures["wall_s"] = round(time.perf_counter() - start, 2)
        results.append(result)
        return result

    cand_forget: dict[str, EvalResult] = {}
    parent_forget: dict[str, EvalResult] = {}

    def forget() -> CheckResult:
        parts = {}
        for rid, items in forget_sets.items():
            say(f"forget: candidate on {rid} ({len(items)} items)")
            cand_forget[rid] = measure("candidate", items)
            say(f"forget: parent on {rid}")
            parent_forget[rid] = measure("parent", items)
            parts[rid] = check_forget(cand_forget[rid], parent_forget[rid], cfg)
        return _combine("forget", parts)

    timed(forget)

    keep: dict[str, tuple[EvalResult, EvalResult]] = {}

    def drop_check(label: str, items: list[PromptItem], check) -> CheckResult:
        say(f"{label}: candidate and parent on {len(items)} items")
        pair = (measure("candidate", items), measure("parent", items))
        keep[label] = pair
        return check(pair[0], pair[1], cfg, name=label)

    timed(lambda: drop_check("retain", retain, check_retain))
    timed(lambda: drop_check("utility", general, check_utility))

    def regression() -> CheckResult:
        # A sample of each earlier set first (spread over kinds, drawn per candidate); the
        # whole set unless the sample passes with room for its sampling error, so that a
        # set near its limits is judged on every item, as without sampling.
        evals, answered = {}, {}
        for rid, items in earlier.items():
            cap = cfg.regression_items or len(items)
            sample = sample_by_kind(items, cap, seed=rid + sample_seed)
            say(f"regression: candidate on request {rid} ({len(sample)} of {len(items)} items)")
            evals[rid] = measure("candidate", sample)
            if len(sample) < len(items) and not clearly_forgotten(
                evals[rid], Counter(i.kind for i in items), cfg
            ):
                say(f"regression: not clear on the sample; candidate on the rest of {rid}")
                chosen = {id(i) for i in sample}
                rest = [i for i in items if id(i) not in chosen]
                evals[rid] = EvalResult(evals[rid].items + measure("candidate", rest).items)
            answered[rid] = [len(evals[rid].items), len(items)]
        result = check_regression(evals, cfg)
        if answered:
            result.figures["answered"] = answered  # {request: [items answered, items in set]}
        return result

    timed(regression)

    if int4:

        def int4_check() -> CheckResult:
            parts = {}
            for rid, items in forget_sets.items():
                say(f"int4: candidate on {rid} (NF4, blocksize 64)")
                parts[rid] = check_int4(
                    measure("candidate", items, int4=True), cand_forget[rid], cfg, name="int4"
                )
            say("int4: retain and utility, candidate vs parent, both quantized")
            side = {
                label: (measure("candidate", items, True), measure("parent", items, True))
                for label, items in (("retain", retain), ("utility", general))
            }
            int4_models.clear()
            gc.collect()
            result = _combine("int4", parts)
            for label, check in (("retain", check_retain), ("utility", check_utility)):
                sub = check(*side[label], cfg, name=label)
                full = keep[label]
                sub.figures["full_precision_candidate_recall"] = _r(full[0].mean("recall"))
                result.figures[label] = sub.figures
                result.reasons += [f"{label} (int4 vs int4 parent): {r}" for r in sub.reasons]
            result.passed = not result.reasons
            result.figures["quantize_s"] = round(quantize_s, 2)
            return result

        timed(int4_check)

    if relearn:

        def relearn_check() -> CheckResult:
            parts = {}
            for rid, items in forget_sets.items():
                if len(items) < 2:
                    parts[rid] = CheckResult(
                        "relearn", False, {"rest_items": 0}, ["fewer than 2 forget items"]
                    )
                    continue
                res = relearn_attack(
                    candidate_model, tokenizer, items, cfg,
                    before=cand_forget[rid], seed=seed, progress=say,
                )  # fmt: skip
                parts[rid] = check_relearn(
                    res.before,
                    res.after,
                    parent_forget[rid].select(res.rest_indices),
                    cfg,
                    attack={
                        "attack_items": len(res.attack_indices),
                        "steps": cfg.relearn_steps,
                        "learning_rate": cfg.relearn_learning_rate,
                        "mode": "full fine-tuning",
                        "loss_first": _r(res.losses[0]),
                        "loss_last": _r(res.losses[-1]),
                        "attack_s": round(res.attack_s, 2),
                    },
                )
            return _combine("relearn", parts)

        timed(relearn_check)

    return results
