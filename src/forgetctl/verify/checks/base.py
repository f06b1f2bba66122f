"""What every check is made of, and the figures helpers they share."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Generic, Literal, TypeVar

from forgetctl.core.policy import CheckName, VerifyConfig
from forgetctl.lm.evaluate import EvalResult
from forgetctl.verify.checks.measure import Measurements, request_of

Verdict = Literal["pass", "fail", "no_signal"]
"""``no_signal``: the check had nothing to judge (no items, or the parent itself already
scores like the controls); it blocks promotion like a failure where the check is mandatory,
but says the evidence is missing, not bad."""


@dataclass
class CheckResult:
    name: str
    verdict: Verdict
    figures: dict = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    """Why it failed or had no signal (empty when it passed)."""

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def verdict_of(reasons: Sequence[str], signal: bool) -> Verdict:
    """A check's verdict: any reason fails it; with none, it passes only on evidence."""
    return "fail" if reasons else "pass" if signal else "no_signal"


Measured = TypeVar("Measured")


@dataclass(frozen=True)
class Check(Generic[Measured]):
    """One check of the gate: ``run_checks`` calls ``verdict(measure(context), cfg)``."""

    name: CheckName
    measure: Callable[[Measurements], Measured]
    """Gathers the scores the check needs from the shared context (which measures each once)."""
    verdict: Callable[[Measured, VerifyConfig], CheckResult]
    """Pure: the measured scores and the policy's thresholds in, the result out."""


Paired = dict[str, tuple[EvalResult, EvalResult, EvalResult, EvalResult]]
"""Per request: the candidate's and the parent's scores on the subject's and the controls'
prompts (candidate, control, parent, parent control)."""


def paired_check(
    name: CheckName,
    judge: Callable[[EvalResult, EvalResult, EvalResult, EvalResult, VerifyConfig], CheckResult],
) -> Check[Paired]:
    """A check that judges each request on :data:`Paired` scores with ``judge`` (forget,
    membership and tell share these scores, measured once)."""

    def verdict(scores: Paired, cfg: VerifyConfig) -> CheckResult:
        return combine(name, {rid: judge(*s, cfg) for rid, s in scores.items()})

    return Check(name, lambda ctx: ctx.versus_controls(name), verdict)


def rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def worst(verdicts: Sequence[Verdict]) -> Verdict:
    """Several verdicts as one: a failure, else missing evidence (or none at all), else pass."""
    if "fail" in verdicts:
        return "fail"
    return "no_signal" if not verdicts or "no_signal" in verdicts else "pass"


def across_formats(verdicts: Sequence[Verdict]) -> Verdict:
    """One request's verdicts in its prompt formats as one: a failure in any format fails
    it; a format where the parent showed nothing to forget needs no evidence, so it passes
    when some format passed and none failed."""
    if "fail" in verdicts:
        return "fail"
    return "pass" if "pass" in verdicts else "no_signal"


def combine(name: str, parts: Mapping[str, CheckResult]) -> CheckResult:
    """One check over several requests (each maybe in several formats, keyed as
    :func:`.measure.in_formats` keys them): fails when one fails, has no signal when one
    has none (or there are no requests), passes only when every request passes."""
    per_request: dict[str, list[Verdict]] = {}
    for key, part in parts.items():
        per_request.setdefault(request_of(key), []).append(part.verdict)
    return CheckResult(
        name=name,
        verdict=worst([across_formats(v) for v in per_request.values()]),
        figures={"requests": {rid: p.figures for rid, p in parts.items()}},
        reasons=[f"{rid}: {reason}" for rid, p in parts.items() for reason in p.reasons]
        or (["no request to check"] if not parts else []),
    )


Z_95 = 1.645
"""One-sided 95% normal quantile, the gate's one allowance for sampling: a forget gap fails
only when it exceeds its limit by more than this many standard errors (two people the model
never saw, each measured on a few dozen prompts, are not told apart by noise); a drop in
kept knowledge passes only when its token accuracy is this many under its limit (a few
dozen items do not vouch for a drop they cannot see)."""


KEPT = ("acc", "recall")
"""What kept knowledge is judged on, as the forget check judges it: teacher-forced token
accuracy (what the model still predicts) and answer recall (what it says). A drop in
either past the limit fails; only token accuracy vouches for a pass, since a greedy answer
turns on its first tokens, so recall moves by whole answers and a few dozen items cannot
bound it (they detect drops of about 0.07 where token accuracy detects 0.01)."""


def _drop(parent: EvalResult, candidate: EvalResult, metric: str) -> dict:
    """Parent minus candidate on ``metric`` over the items both scored, with the paired
    standard error, the upper bound (``Z_95`` standard errors over the drop) and the smallest
    true drop the items detect with 80% power at 5% two-sided (2.8 standard errors).
    Unrounded: the verdict compares these, the figures keep them rounded."""
    both = zip(parent.items, candidate.items, strict=True)
    values = ((getattr(p, metric), getattr(c, metric)) for p, c in both)
    pairs = [(a, b) for a, b in values if a is not None and b is not None]
    if not pairs:
        return {"n": 0, "parent": None, "candidate": None, "drop": None, "se": None,
                "bound": None, "min_detectable_drop": None}  # fmt: skip
    n = len(pairs)
    diffs = [a - b for a, b in pairs]
    drop = sum(diffs) / n
    se = (sum((d - drop) ** 2 for d in diffs) / (n - 1) / n) ** 0.5 if n > 1 else None
    return {
        "n": n,
        "parent": sum(a for a, _ in pairs) / n,
        "candidate": sum(b for _, b in pairs) / n,
        "drop": drop,
        "se": se,
        "bound": drop + Z_95 * se if se is not None else None,
        "min_detectable_drop": 2.8 * se if se is not None else None,
    }


def check_drop(
    name: str,
    candidate_eval: EvalResult,
    parent_eval: EvalResult,
    max_drop: float,
    kinds: Sequence[str] | None,
    min_items: int = 2,
) -> CheckResult:
    """Knowledge kept, parent minus candidate on :data:`KEPT`'s figures.

    Fails when the token-accuracy or the recall drop is past ``max_drop``, on any number of
    items. Passes only when the items vouch for the accuracy drop: there are at least
    ``min_items`` of them and its upper bound (``bound``, the drop plus ``Z_95`` standard
    errors of the paired per-item difference) is within the limit. Anything else is
    ``no_signal``: a drop the items cannot bound."""
    cand = candidate_eval.only(kinds) if kinds is not None else candidate_eval
    par = parent_eval.only(kinds) if kinds is not None else parent_eval
    acc, recall = (_drop(par, cand, metric) for metric in KEPT)
    figures: dict = {"n": len(cand.items), "max_drop": max_drop, "min_items": min_items,
                     **{metric: {k: v if k == "n" else rounded(v) for k, v in f.items()}
                        for metric, f in zip(KEPT, (acc, recall), strict=True)}}  # fmt: skip
    if acc["drop"] is None and recall["drop"] is None:
        return CheckResult(name, "no_signal", figures, [f"no {name} items to compare"])
    reasons = [f"{label} drop {f['drop']:.3f} > max {max_drop:.3f}"
               for f, label in ((acc, "token accuracy"), (recall, "recall"))
               if f["drop"] is not None and f["drop"] > max_drop]  # fmt: skip
    if reasons:
        return CheckResult(name, "fail", figures, reasons)
    if acc["drop"] is None:
        return CheckResult(name, "no_signal", figures, [
            f"no token accuracy scored on the {name} items: nothing vouches for the drop"
        ])  # fmt: skip
    if acc["n"] < min_items:
        return CheckResult(name, "no_signal", figures, [
            f"token accuracy drop {acc['drop']:.3f} is within {max_drop:.3f}, but {acc['n']} "
            f"{name} items are fewer than the {min_items} the check needs to vouch for it: "
            "judge on more items"
        ])  # fmt: skip
    if acc["bound"] is None or acc["bound"] > max_drop:
        shown = "one item bounds nothing" if acc["bound"] is None else f"bound {acc['bound']:.3f}"
        return CheckResult(name, "no_signal", figures, [
            f"token accuracy drop {acc['drop']:.3f} is within {max_drop:.3f}, but {acc['n']} "
            f"{name} items cannot show it ({shown}, drop + {Z_95} x se): judge on more items"
        ])  # fmt: skip
    return CheckResult(name, "pass", figures, [])


GAPS = (("acc", "max_forget_gap"), ("recall", "max_forget_gap"), ("leakage", "max_leakage_gap"))
"""What the subject is compared with the controls on, and the limit of each gap: teacher-forced
token accuracy (what the model still predicts, which a derailed greedy answer hides), answer
recall (what it says) and key-fact leakage (what it gives away)."""


def _values(ev: EvalResult, metric: str) -> list[float]:
    return [v for s in ev.items if (v := getattr(s, metric)) is not None]


def gap(subject: EvalResult, control: EvalResult, metric: str) -> dict:
    """Subject mean minus control mean of ``metric``, with the standard error of that
    difference (``se``; 0 when a side has one value)."""
    s, c = _values(subject, metric), _values(control, metric)
    if s and not c and metric == "leakage":
        c = [0.0]  # the controls' targets hold no key facts: any of the subject's is a leak
    if not s or not c:
        return {"subject": None, "control": None, "gap": None, "se": None}
    ms, mc = sum(s) / len(s), sum(c) / len(c)
    var = sum(statistics.variance(side) / len(side) for side in (s, c) if len(side) > 1)
    return {"subject": rounded(ms), "control": rounded(mc), "gap": rounded(ms - mc),
            "se": rounded(math.sqrt(var))}  # fmt: skip


def _gaps(subject: EvalResult, control: EvalResult) -> dict[str, dict]:
    return {metric: gap(subject, control, metric) for metric, _ in GAPS}


def versus_controls(
    name: str,
    candidate: EvalResult,
    control: EvalResult,
    parent: EvalResult | None,
    parent_control: EvalResult | None,
    cfg: VerifyConfig,
) -> CheckResult:
    """The forgotten subject's figures against the control subjects', pooled and per prompt
    kind: each gap (subject minus controls) is at most its limit plus ``Z_95`` standard
    errors of the difference.

    A unit (the pool, or a kind with at least ``min_kind_items`` items) is judged only when
    it has signal: the parent's own gap exceeds a limit there, i.e. there was knowledge to
    remove. Without a parent (an earlier request, whose signal was shown when it was
    verified) every unit is judged. A kind is compared with the controls' prompts of the
    same kind; a kind the controls lack is not judged (:class:`.measure.ForgetSet` leaves
    such kinds out).
    """
    figures: dict = {"units": {}, "n": len(candidate.items), "control_n": len(control.items)}
    if not candidate.items:
        return CheckResult(name, "no_signal", figures, ["no forget items to check"])
    if not control.items:
        return CheckResult(
            name, "no_signal", figures,
            ["no control subjects in the plan: re-plan the request (`forgetctl plan`)"],
        )  # fmt: skip
    units: dict[str, str | None] = {"all": None, **{kind: kind for kind in candidate.by_kind}}
    reasons: list[str] = []
    signal = False
    for unit, kind in units.items():

        def part(ev: EvalResult, kind=kind) -> EvalResult:
            return ev.only([kind]) if kind else ev

        cand, ctrl = part(candidate), part(control)
        row: dict = {"n": len(cand.items), "control_n": len(ctrl.items), **_gaps(cand, ctrl)}
        judged = kind is None or min(len(cand.items), len(ctrl.items)) >= cfg.min_kind_items
        if parent is not None and parent_control is not None:
            ref = _gaps(part(parent), part(parent_control))
            for metric, _ in GAPS:
                row[metric]["parent_gap"] = ref[metric]["gap"]
            has_signal = any((ref[m]["gap"] or 0.0) > getattr(cfg, limit) for m, limit in GAPS)
        else:
            has_signal = True
        row["judged"] = judged and has_signal
        if not judged:
            row["note"] = (f"fewer than {cfg.min_kind_items} items (or control items): "
                           "judged in the pool only")  # fmt: skip
        elif not has_signal:
            row["note"] = "no signal: the parent already scores like the controls"
        figures["units"][unit] = row
        if not row["judged"]:
            continue
        signal = True
        for metric, limit in GAPS:
            g = row[metric]
            if g["gap"] is None:
                continue
            g["limit"] = rounded(getattr(cfg, limit) + Z_95 * g["se"])
            if g["gap"] > g["limit"]:
                reasons.append(
                    f"{unit}: {metric} {g['subject']:.3f} vs controls {g['control']:.3f}, "
                    f"gap {g['gap']:.3f} > {getattr(cfg, limit):.3f} + {Z_95} x se "
                    f"{g['se']:.3f}"
                )
    if not signal:
        reasons = ["no signal: the parent already scores like the controls on every kind"]
        return CheckResult(name, "no_signal", figures, reasons)
    return CheckResult(name, verdict_of(reasons, True), figures, reasons)
