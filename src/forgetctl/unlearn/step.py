"""The apply step bound to the ledger: one LoRA adapter per request, on top of production.

A candidate is always built on the production version of the moment it starts, never on
another unpromoted candidate: candidates are independent proposals, and the run loop
promotes (or rejects) each before the next request is applied, so requests still stack
sequentially in production's lineage. A candidate whose parent is no longer production
cannot be promoted (``versions.promote`` refuses it) and is applied again.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from forgetctl import versions
from forgetctl.crypto import Keyring
from forgetctl.home import Home
from forgetctl.ledger import Ledger, require_status
from forgetctl.plan.step import load_plan
from forgetctl.policies import MethodConfig, Policy
from forgetctl.unlearn.train import save_adapter, unlearn


def escalate(method: MethodConfig, attempt: int) -> MethodConfig:
    """A retry trains longer with stronger robustness: attempt n gets (n+1)x the steps,
    int4-aware training and SAM switched on, and a doubled SAM radius per attempt."""
    if attempt == 0:
        return method
    return method.model_copy(
        update={
            "max_steps": method.max_steps * (attempt + 1),
            "int4_aware": True,
            "sam": True,
            "sam_rho": method.sam_rho * 2**attempt,
        }
    )


def apply_request(
    ledger: Ledger,
    home: Home,
    keys: Keyring,
    policies: dict[str, Policy],
    request_id: int,
    *,
    attempt: int = 0,
    progress: Callable[[int, int, dict], None] | None = None,
) -> int:
    """Unlearn a planned request; returns the new candidate version's id."""
    row = ledger.request(request_id)
    require_status(row, {"planned"}, "apply")
    method = escalate(policies[row["policy"]].method, attempt)
    plan = load_plan(ledger, keys, request_id)
    parent = ledger.alias("production")
    ledger.append_event(
        "apply.started", request_id=request_id, parent=parent, attempt=attempt,
        method=method.model_dump(),
    )  # fmt: skip
    model, tokenizer = versions.load_version(ledger, home, parent)
    result = unlearn(model, tokenizer, plan.forget, plan.retain, method, progress=progress)
    # A fresh name per attempt: a crashed attempt's leftovers never collide with a retry.
    adapter_dir = home.adapters / f"request-{request_id}-{secrets.token_hex(4)}"
    sha = save_adapter(result.model, adapter_dir)
    with ledger.transaction():
        version_id = ledger.insert_version(
            kind="adapter",
            parent=parent,
            status="candidate",
            adapter_path=str(adapter_dir),
            adapter_sha256=sha,
            requests=[request_id],
            metrics=result.stats,
        )
        ledger.set_request_status(request_id, "applied", version=version_id)
    return version_id
