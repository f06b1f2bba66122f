"""``forget``: on every request the version covers, the candidate scores on the subject's
prompts like it does on the control subjects' (token accuracy, answer recall, key-fact
leakage; pooled and per prompt kind), where the parent scored above them."""

from __future__ import annotations

from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import EvalResult
from forgetctl.verify.checks.base import CheckResult, paired_check, versus_controls


def check_forget(
    candidate: EvalResult,
    control: EvalResult,
    parent: EvalResult | None,
    parent_control: EvalResult | None,
    cfg: VerifyConfig,
    name: str = "forget",
) -> CheckResult:
    """The subject within ``max_forget_gap`` / ``max_leakage_gap`` of the controls."""
    return versus_controls(name, candidate, control, parent, parent_control, cfg)


FORGET = paired_check("forget", check_forget)
