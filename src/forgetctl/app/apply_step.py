"""The apply step bound to the ledger: one LoRA adapter per request, on top of production.

A candidate is always built on the production version of the moment it starts, never on
another unpromoted candidate: candidates are independent proposals, and the run loop
promotes (or rejects) each before the next request is applied, so requests still stack
sequentially in production's lineage. A candidate whose parent is no longer production
cannot be promoted (``promote.promote`` refuses it) and is applied again.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection

from forgetctl.app import versions
from forgetctl.app.plan_step import load_plan
from forgetctl.app.workspace import Workspace
from forgetctl.core.items import in_each_format
from forgetctl.core.lifecycle import require_status
from forgetctl.core.policy import MethodConfig
from forgetctl.core.progress import Progress, silent
from forgetctl.lm.prompts import item_format
from forgetctl.store.ledger import Ledger
from forgetctl.unlearn.train import save_adapter, unlearn

RETAIN_CHECKS = frozenset({"retain", "utility"})


ROBUSTNESS_CHECKS = frozenset({"int4", "relearn"})


def escalate(method: MethodConfig, attempt: int, failed: Collection[str] = ()) -> MethodConfig:
    """The method of retry ``attempt`` (0 = the first try), aimed at the checks that
    ``failed`` on the request's earlier candidates:

    - always (attempt+1)x the steps: a retry never trains less;
    - a forget failure: half the target token accuracy per attempt, because training stops
      at the target on its evaluation sample, and a candidate that reached it there can
      still leak on the full prompt set (more steps alone would stop at the same point);
    - a retain or utility failure means the update hurt what it must keep: half the
      learning rate and twice the retain weight per attempt (where the retain guard lands
      after a trip, but from the first step: on the demo's second request, 20 steps at
      lr 5e-4 cost the neighbors 0.02 recall where 10 at 1e-3 had cost 0.14);
    - an int4 or relearning failure while full-precision forgetting passed means the
      forgetting is shallow: int4-aware training and SAM, with a doubled radius per attempt.
    """
    if attempt == 0:
        return method
    update: dict[str, object] = {"max_steps": method.max_steps * (attempt + 1)}
    failed = set(failed)
    if "forget" in failed:
        update["target_accuracy"] = method.target_accuracy * 0.5**attempt
    if failed & RETAIN_CHECKS:
        update["learning_rate"] = method.learning_rate * 0.5**attempt
        update["retain_weight"] = method.retain_weight * 2**attempt
    if failed & ROBUSTNESS_CHECKS and "forget" not in failed:
        update |= {"int4_aware": True, "sam": True, "sam_rho": method.sam_rho * 2**attempt}
    return method.model_copy(update=update)


def failed_checks(ledger: Ledger, request_id: int) -> set[str]:
    """Every check that failed on any rejected candidate of the request."""
    return {
        check
        for version in ledger.versions.of_request(request_id, ("rejected",))
        if version["kind"] == "adapter"  # a rejected consolidation says nothing of this one
        for check, ok in ledger.verifications.verdicts(version["id"]).items()
        if not ok
    }


def apply_request(
    ws: Workspace,
    request_id: int,
    *,
    attempt: int = 0,
    progress: Progress = silent,
    method: MethodConfig | None = None,
) -> int:
    """Unlearn a planned request; returns the new candidate version's id. ``method``
    replaces the policy's (escalated) method: the benchmark's comparison of methods."""
    ledger = ws.ledger
    row = ledger.requests.get(request_id)
    require_status(row, {"planned"}, "apply")
    failed = failed_checks(ledger, request_id) if attempt else set()
    method = method or escalate(ws.policy_of(row).method, attempt, failed)
    plan = load_plan(ws, request_id)
    parent = ledger.aliases.get("production")
    ledger.append_event(
        "apply.started", request_id=request_id, parent=parent, attempt=attempt,
        earlier_failures=sorted(failed), method=method.model_dump(),
    )  # fmt: skip
    model, tokenizer = versions.load_version(ws, parent)
    pretrained = versions.load_pretrained(ws)
    # The held-out half of the retain side is what verify judges: the adapter never sees it.
    retain, _ = plan.split_retain()
    # Trained in every format production is served in: knowledge removed behind one prompt
    # wrapper stays behind another.
    formats = [item_format(tokenizer, f) for f in versions.serving_formats(ledger, tokenizer)]
    result = unlearn(model, tokenizer, in_each_format(plan.forget, formats),
                     in_each_format(retain, formats), method, progress=progress,
                     pretrained=pretrained)  # fmt: skip
    # A fresh name per attempt: a crashed attempt's leftovers never collide with a retry.
    adapter_dir = ws.home.adapters / f"request-{request_id}-{secrets.token_hex(4)}"
    sha = save_adapter(result.model, adapter_dir)
    with ledger.transaction():
        version_id = ledger.versions.add(
            kind="adapter",
            parent=parent,
            status="candidate",
            adapter_path=str(adapter_dir),
            adapter_sha256=sha,
            requests=[request_id],
            metrics=result.stats,
        )
        ledger.requests.set_status(request_id, "applied", version=version_id)
    return version_id
