"""``relearn``: every attack of the policy's suite (:mod:`forgetctl.verify.relearn`) is run on
the forgotten subject and on each control subject; what the subject's held-out records
regain beyond the controls', as a share of what the parent knew of them, is at most
``max_relearn_share``, in full precision and int4-quantized after the attack."""

from __future__ import annotations

import math
import statistics

from forgetctl.core.formats import HELD_OUT
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


def _gains(after: EvalResult, before: EvalResult, metric: str) -> list[float]:
    """Per held-out item, ``metric`` after the attack minus before it (items in one order)."""
    return [
        a - b
        for x, y in zip(after.items, before.items, strict=True)
        if (a := getattr(x, metric)) is not None and (b := getattr(y, metric)) is not None
    ]


def recovered_share(
    after: EvalResult,
    before: EvalResult,
    control_after: EvalResult,
    control_before: EvalResult,
    parent: EvalResult,
    metric: str,
    signal: float,
) -> dict:
    """What the attack brought back of one metric: the subject's gain on its held-out items
    beyond the control subjects' gain on theirs (pooled), as a share of the parent's lead over the
    control before the attack, with the sampling allowance of that share (``Z_95``
    standard errors of the paired gains over that lead); no share when the parent led the
    control, or the candidate trailed the parent, by at most ``signal`` (nothing to
    regain: nothing was known, or nothing was removed, which the forget check judges).

    Gains, not levels: a model that never saw either person already scores one a little
    above the other (measured on the real default model: the retrained model led the
    control by 0.06 token accuracy on the held-out items before any attack), and that is
    not recovery.
    ``after_gap_share``, (subject after - control after) / (parent - control after), the
    level form, is reported beside it."""
    ds, dc = _gains(after, before, metric), _gains(control_after, control_before, metric)
    p, s0, c0 = parent.mean(metric), before.mean(metric), control_before.mean(metric)
    g = gap(after, control_after, metric)
    row = {
        "subject_before": rounded(s0), "subject_after": g["subject"],
        "control_before": rounded(c0), "control_after": g["control"], "parent": rounded(p),
    }  # fmt: skip
    if not ds or not dc or p is None or c0 is None or p - c0 <= signal or p - s0 <= signal:
        return row  # the parent knew no more than the control, or nothing was removed
    room = p - c0
    gain = sum(ds) / len(ds) - sum(dc) / len(dc)
    var = sum(statistics.variance(d) / len(d) for d in (ds, dc) if len(d) > 1)
    row.update(gain=rounded(gain), share=rounded(gain / room),
               allowance=rounded(Z_95 * math.sqrt(var) / room))  # fmt: skip
    if g["gap"] is not None and p - g["control"] > 0:
        row["after_gap_share"] = rounded(g["gap"] / (p - g["control"]))
    return row


def check_attack(
    result: AttackResult,
    parent_rest: EvalResult,
    before_rest: EvalResult,
    control_before_rest: EvalResult,
    cfg: VerifyConfig,
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
            row = recovered_share(s_after, before_rest, c_after, control_before_rest,
                                  parent_rest, metric, getattr(cfg, limit))  # fmt: skip
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
        why = (f"{name}: nothing to regain: the parent scored like the control, or the "
               "candidate still scores like the parent")  # fmt: skip
        return CheckResult("relearn", "no_signal", figures, [why])
    return CheckResult("relearn", verdict_of(reasons, True), figures, reasons)


Scores = dict[str, list[tuple[AttackResult, EvalResult, EvalResult, EvalResult]] | None]
"""Per request and attack: the attack's result, the parent's and the candidate's scores on
the subject's held-out items and the candidate's on the controls' (pooled); None when a
side is too small to split."""


def measure(ctx: Measurements) -> Scores:
    out: Scores = {}
    for rid, sets in ctx.forget_sets.items():
        if sets.format in HELD_OUT:
            continue  # the attacker fine-tunes in a format the model is served in
        # In the pooled control list's order, so that the pooled scores line up.
        controls = [sets.control[name] for name in sorted(sets.control)]
        if len(sets.items) < 2 or not controls or any(len(c) < 2 for c in controls):
            out[rid] = None
            continue
        parent, before = ctx.forget("parent", rid), ctx.forget("candidate", rid)
        control_before = ctx.control("candidate", rid)
        runs = []
        for attack in ctx.cfg.relearn_attacks:
            res = relearn_attack(
                ctx.candidate_model, ctx.tokenizer, sets.items, controls, attack,
                ctx.cfg.relearn_fraction, retain=ctx.retain, seed=ctx.seed, progress=ctx.say,
            )  # fmt: skip
            runs.append((res, parent.select(res.rest_indices), before.select(res.rest_indices),
                         control_before.select(res.control_rest_indices)))  # fmt: skip
        out[rid] = runs
    return out


def verdict(scores: Scores, cfg: VerifyConfig) -> CheckResult:
    parts = {}
    for rid, runs in scores.items():
        if runs is None:
            parts[rid] = CheckResult("relearn", "no_signal", {},
                                     ["too few forget or control items to split"])  # fmt: skip
            continue
        attacks = [check_attack(*run, cfg) for run in runs]
        parts[rid] = CheckResult(
            "relearn",
            worst([a.verdict for a in attacks]),
            {"attacks": [a.figures for a in attacks]},
            [r for a in attacks for r in a.reasons],
        )
    return combine("relearn", parts)


RELEARN = Check("relearn", measure, verdict)
