"""``relearn``: after fine-tuning a copy on part of the forgotten records (the attack in
:mod:`forgetctl.verify.relearn`), the recall gained on the held-out rest."""

from __future__ import annotations

from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import EvalResult
from forgetctl.verify.checks.base import Check, CheckResult, combine, recovery, rounded
from forgetctl.verify.checks.measure import Measurements
from forgetctl.verify.relearn import RelearnResult, relearn_attack


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
    regained = recovery(before, after, cfg)
    figures: dict = {
        "rest_items": len(before_rest.items),
        "recall_before": rounded(before),
        "recall_after": rounded(after),
        "leakage_before": rounded(before_rest.mean("leakage")),
        "leakage_after": rounded(after_rest.mean("leakage")),
        "recall_floor": cfg.recall_floor,
        "recovery": rounded(regained),
        "raw_recovery": rounded(after - before),
    }
    if parent_rest is not None:
        parent = parent_rest.mean("recall") or 0.0
        figures["parent_recall"] = rounded(parent)
        figures["parent_leakage"] = rounded(parent_rest.mean("leakage"))
        # Share of what unlearning removed that the attack restored.
        base = max(before, cfg.recall_floor)
        figures["recovered_share"] = rounded(regained / (parent - base)) if parent > base else None
    if attack:
        figures["attack"] = attack
    reasons = []
    if regained > cfg.max_relearn_recovery:
        reasons.append(f"relearning recovery {regained:.3f} > max {cfg.max_relearn_recovery:.3f}")
    return CheckResult(name, not reasons, figures, reasons)


Scores = dict[str, tuple[RelearnResult, EvalResult] | None]
"""Per request: the attack's result and the parent's scores on the forget set; None when
the set is too small to split."""


def measure(ctx: Measurements) -> Scores:
    out: Scores = {}
    for rid, items in ctx.forget_sets.items():
        if len(items) < 2:
            out[rid] = None
            continue
        attacked = relearn_attack(
            ctx.candidate_model, ctx.tokenizer, items, ctx.cfg,
            before=ctx.forget("candidate", rid), seed=ctx.seed, progress=ctx.say,
        )  # fmt: skip
        out[rid] = attacked, ctx.forget("parent", rid)
    return out


def verdict(scores: Scores, cfg: VerifyConfig) -> CheckResult:
    parts = {}
    for rid, measured in scores.items():
        if measured is None:
            parts[rid] = CheckResult(
                "relearn", False, {"rest_items": 0}, ["fewer than 2 forget items"]
            )
            continue
        res, parent = measured
        parts[rid] = check_relearn(
            res.before,
            res.after,
            parent.select(res.rest_indices),
            cfg,
            attack={
                "attack_items": len(res.attack_indices),
                "steps": cfg.relearn_steps,
                "learning_rate": cfg.relearn_learning_rate,
                "mode": "full fine-tuning",
                "loss_first": rounded(res.losses[0]),
                "loss_last": rounded(res.losses[-1]),
                "attack_s": round(res.attack_s, 2),
            },
        )
    return combine("relearn", parts)


RELEARN = Check("relearn", measure, verdict)
