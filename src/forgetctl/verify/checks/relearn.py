"""``relearn``: every attack of the policy's suite (:mod:`forgetctl.verify.relearn`) is run on
the forgotten subject and on a control subject; what the subject's held-out records regain
beyond the control's, as a share of what the parent knew of them, is at most
``max_relearn_share``, in full precision and int4-quantized after the attack."""

from __future__ import annotations

from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import EvalResult
from forgetctl.verify.checks.base import (
    GAPS,
    Z_95,
    Check,
    CheckResult,
    combine,
    gap,
    rounded,
    verdict_of,
    worst,
)
from forgetctl.verify.checks.measure import Measurements
from forgetctl.verify.relearn import AttackResult, describe, relearn_attack


def recovered_share(
    after: EvalResult, control_after: EvalResult, parent: EvalResult, metric: str, signal: float
) -> dict:
    """(subject after - control after) / (parent before - control after) on one metric, and
    the sampling allowance of that share (``Z_95`` standard errors of the numerator over the
    denominator); no share when the parent was within ``signal`` of the control (nothing
    to regain)."""
    g = gap(after, control_after, metric)
    p = parent.mean(metric)
    row = {"subject_after": g["subject"], "control_after": g["control"], "parent": rounded(p)}
    if g["gap"] is not None and p is not None and p - g["control"] > signal:
        room = p - g["control"]
        row["share"] = rounded(g["gap"] / room)
        row["allowance"] = rounded(Z_95 * g["se"] / room)
    return row


def check_attack(
    result: AttackResult, parent_rest: EvalResult, before_rest: EvalResult, cfg: VerifyConfig
) -> CheckResult:
    """One attack on one request: the recovered share of each metric, full precision and
    int4, at most ``max_relearn_share``."""
    name = describe(result.attack)
    figures: dict = {
        "attack": name,
        "attack_items": result.subject.attack_items,
        "control_attack_items": result.control.attack_items,
        "rest_items": len(result.subject.rest.items),
        "loss_first": rounded(result.subject.losses[0]),
        "loss_last": rounded(result.subject.losses[-1]),
        "attack_s": round(result.attack_s, 2),
        "before": {m: rounded(before_rest.mean(m)) for m, _ in GAPS},
    }
    reasons: list[str] = []
    signal = False
    for precision, s_after, c_after in (
        ("full", result.subject.rest, result.control.rest),
        ("int4", result.subject.rest_int4, result.control.rest_int4),
    ):
        rows = {}
        for metric, limit in GAPS:
            row = recovered_share(s_after, c_after, parent_rest, metric, getattr(cfg, limit))
            rows[metric] = row
            share = row.get("share")
            if share is None:
                continue
            signal = True
            if share > cfg.max_relearn_share + row["allowance"]:
                reasons.append(
                    f"{name}: {metric} regained {share:.2f} of the parent's knowledge "
                    f"({precision}) > max {cfg.max_relearn_share:.2f} + {row['allowance']:.2f}"
                )
        figures[precision] = rows
    if not signal:
        why = f"{name}: the parent scored like the control: nothing to regain"
        return CheckResult("relearn", "no_signal", figures, [why])
    return CheckResult("relearn", verdict_of(reasons, True), figures, reasons)


Scores = dict[str, list[tuple[AttackResult, EvalResult, EvalResult]] | None]
"""Per request and attack: the attack's result and the parent's and the candidate's scores
on the held-out items; None when a side is too small to split."""


def measure(ctx: Measurements) -> Scores:
    out: Scores = {}
    for rid, sets in ctx.forget_sets.items():
        controls = [sets.control[name] for name in sorted(sets.control)]
        if len(sets.items) < 2 or not controls or len(controls[0]) < 2:
            out[rid] = None
            continue
        parent, before = ctx.forget("parent", rid), ctx.forget("candidate", rid)
        runs = []
        for attack in ctx.cfg.relearn_attacks:
            res = relearn_attack(
                ctx.candidate_model, ctx.tokenizer, sets.items, controls[0], attack,
                ctx.cfg.relearn_fraction, retain=ctx.retain, seed=ctx.seed, progress=ctx.say,
            )  # fmt: skip
            runs.append((res, parent.select(res.rest_indices), before.select(res.rest_indices)))
        out[rid] = runs
    return out


def verdict(scores: Scores, cfg: VerifyConfig) -> CheckResult:
    parts = {}
    for rid, runs in scores.items():
        if runs is None:
            parts[rid] = CheckResult("relearn", "no_signal", {},
                                     ["too few forget or control items to split"])  # fmt: skip
            continue
        attacks = [check_attack(res, parent, before, cfg) for res, parent, before in runs]
        parts[rid] = CheckResult(
            "relearn",
            worst([a.verdict for a in attacks]),
            {"attacks": [a.figures for a in attacks]},
            [r for a in attacks for r in a.reasons],
        )
    return combine("relearn", parts)


RELEARN = Check("relearn", measure, verdict)
