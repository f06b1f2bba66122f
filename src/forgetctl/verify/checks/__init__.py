"""The verification gate: each check compares measured figures with a policy's thresholds.

One module per check (names match ``forgetctl.core.policy.CheckName``), each a
:class:`Check`: what it measures, through the shared :class:`Measurements` (which measures
each score once per run and reuses cached ones), and its pure verdict (figures in, result
out). Forgetting is judged against control subjects, people the model never saw whose
prompt sets were built like the request's (:func:`.base.versus_controls`): the forgotten
subject must look like them, not fall under a fixed floor. :data:`CHECKS` lists them in
the order ``run_checks`` runs them:

- ``forget``: token accuracy, recall and key-fact leakage on the subject vs the controls.
- ``retain`` / ``utility``: the drop in recall on the neighbor / general-knowledge set.
- ``regression``: the subjects of requests handled earlier in the lineage still look like
  their controls.
- ``int4``: the forget check on the NF4-quantized candidate, and how much its gap grew.
- ``relearn``: relearning attacks on the subject and on a control subject.

A check with nothing to judge is ``no_signal``, never a pass.

Adding a check: a module defining its ``Check``, an entry in :data:`CHECKS`, and its name
and thresholds in ``core.policy``.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping

from forgetctl.core.items import PromptItem
from forgetctl.core.policy import ALL_CHECKS, VerifyConfig
from forgetctl.core.progress import Progress, silent
from forgetctl.lm.evaluate import ScoreStore
from forgetctl.verify.checks.base import Check, CheckResult
from forgetctl.verify.checks.forget import FORGET, check_forget
from forgetctl.verify.checks.int4 import INT4, check_int4
from forgetctl.verify.checks.kept import RETAIN, UTILITY, check_retain, check_utility
from forgetctl.verify.checks.measure import ForgetSet, Measurements, in_formats
from forgetctl.verify.checks.membership import MEMBERSHIP, auc, check_membership
from forgetctl.verify.checks.regression import (
    REGRESSION,
    Z_99,
    check_regression,
    clearly_forgotten,
)
from forgetctl.verify.checks.relearn import RELEARN, check_attack
from forgetctl.verify.checks.tell import TELL, check_tell

__all__ = [
    "CHECKS",
    "Z_99",
    "Check",
    "CheckResult",
    "ForgetSet",
    "in_formats",
    "Measurements",
    "auc",
    "check_forget",
    "check_int4",
    "check_membership",
    "check_regression",
    "check_attack",
    "check_retain",
    "check_tell",
    "check_utility",
    "clearly_forgotten",
    "run_checks",
]

CHECKS: tuple[Check, ...] = (FORGET, RETAIN, UTILITY, REGRESSION, MEMBERSHIP, TELL, INT4, RELEARN)
"""Every check, in the order they run (``core.policy.ALL_CHECKS``): int4 and relearn reuse
the forget, retain and utility scores, so they come after them."""


def run_checks(
    parent_model,
    candidate_model,
    tokenizer,
    forget_sets: Mapping[str, ForgetSet],
    retain: list[PromptItem],
    general: list[PromptItem],
    earlier: Mapping[str, ForgetSet],
    cfg: VerifyConfig,
    checks: Collection[str] = ALL_CHECKS,
    progress: Progress = silent,
    seed: int = 0,
    cache: ScoreStore | None = None,
    model_keys: tuple[str, str] | None = None,
) -> list[CheckResult]:
    """Measure the candidate (and the parent, for comparison) and run every check.

    ``checks``: the names to run, in the registry's order whatever theirs. Each
    result's figures carry ``wall_s``, the seconds spent measuring for that check. The
    models are not modified (int4 and relearning work on copies). With ``cache`` and
    ``model_keys`` (parent's, candidate's), scores measured before on the same weights are
    reused (full precision and int4). Regression answers ``cfg.regression_items`` of each
    earlier set, a sample drawn from the candidate's key (the same again when the same
    weights are re-verified, other items for the next version).
    """
    ctx = Measurements(
        parent_model, candidate_model, tokenizer, forget_sets, retain, general, earlier, cfg,
        say=progress, seed=seed, cache=cache, model_keys=model_keys,
    )  # fmt: skip
    results = []
    for check in CHECKS:
        if check.name not in checks:
            continue
        start = time.perf_counter()
        result = check.verdict(check.measure(ctx), cfg)
        result.figures["wall_s"] = round(time.perf_counter() - start, 2)
        results.append(result)
    return results
