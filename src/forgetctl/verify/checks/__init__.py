"""The verification gate: each check compares measured figures with a policy's thresholds.

One module per check (names match ``forgetctl.core.policy.CheckName``), each a
:class:`Check`: what it measures, through the shared :class:`Measurements` (which measures
each score once per run and reuses cached ones), and its pure verdict (figures in, result
out). :data:`CHECKS` lists them in the order ``run_checks`` runs them:

- ``forget``: the candidate's recall and key-fact leakage per prompt kind (:mod:`.forget`).
- ``retain`` / ``utility``: the drop in recall on the neighbor / general-knowledge set.
- ``regression``: the forget sets of requests handled earlier in the lineage stay forgotten.
- ``int4``: the forget check on the NF4-quantized candidate, and its recovery.
- ``relearn``: the recall a relearning attack brings back on held-out forgotten records.

Recoveries (int4, relearn) are counted from ``max(recall before, cfg.recall_floor)``: a
model that never saw the subject reaches that recall anyway, so regaining fluent but empty
answers is not counted as regaining knowledge (see :func:`.base.recovery`).

Adding a check: a module defining its ``Check``, an entry in :data:`CHECKS`, and its name
and thresholds in ``core.policy``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from forgetctl.core.items import PromptItem
from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import ScoreStore
from forgetctl.verify.checks.base import Check, CheckResult
from forgetctl.verify.checks.forget import FORGET, check_forget
from forgetctl.verify.checks.int4 import INT4, check_int4
from forgetctl.verify.checks.kept import RETAIN, UTILITY, check_retain, check_utility
from forgetctl.verify.checks.measure import Measurements, Progress
from forgetctl.verify.checks.regression import (
    REGRESSION,
    Z_99,
    check_regression,
    clearly_forgotten,
)
from forgetctl.verify.checks.relearn import RELEARN, check_relearn

__all__ = [
    "CHECKS",
    "Z_99",
    "Check",
    "CheckResult",
    "Measurements",
    "check_forget",
    "check_int4",
    "check_regression",
    "check_relearn",
    "check_retain",
    "check_utility",
    "clearly_forgotten",
    "run_checks",
]

CHECKS: tuple[Check, ...] = (FORGET, RETAIN, UTILITY, REGRESSION, INT4, RELEARN)
"""Every check, in the order they run: int4 and relearn reuse the forget, retain and
utility scores, so they come after them."""


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
    cache: ScoreStore | None = None,
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
    ctx = Measurements(
        parent_model, candidate_model, tokenizer, forget_sets, retain, general, earlier, cfg,
        say=progress or (lambda _msg: None), seed=seed, cache=cache, model_keys=model_keys,
    )  # fmt: skip
    skipped = {name for name, asked in (("int4", int4), ("relearn", relearn)) if not asked}
    results = []
    for check in CHECKS:
        if check.name in skipped:
            continue
        start = time.perf_counter()
        result = check.verdict(check.measure(ctx), cfg)
        result.figures["wall_s"] = round(time.perf_counter() - start, 2)
        results.append(result)
    return results
