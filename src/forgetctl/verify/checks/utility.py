"""``utility``: the drop in answer recall, parent minus candidate, on the general-knowledge set."""

from __future__ import annotations

from collections.abc import Sequence

from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import EvalResult
from forgetctl.verify.checks.base import Check, CheckResult, check_drop
from forgetctl.verify.checks.measure import Measurements


def check_utility(
    candidate_eval: EvalResult,
    parent_eval: EvalResult,
    cfg: VerifyConfig,
    kinds: Sequence[str] | None = None,
    name: str = "utility",
) -> CheckResult:
    """General knowledge kept: parent recall - candidate recall <= max_utility_drop."""
    return check_drop(name, candidate_eval, parent_eval, cfg.max_utility_drop, kinds)


def measure(ctx: Measurements) -> tuple[EvalResult, EvalResult]:
    ctx.say(f"utility: candidate and parent on {len(ctx.general)} items")
    return ctx.kept("candidate", "utility"), ctx.kept("parent", "utility")


def verdict(scores: tuple[EvalResult, EvalResult], cfg: VerifyConfig) -> CheckResult:
    return check_utility(*scores, cfg)


UTILITY = Check("utility", measure, verdict)
