"""The plan step bound to the ledger: plan a request, store its prompt set encrypted."""

from __future__ import annotations

import hashlib
import json

from forgetctl.crypto import Keyring
from forgetctl.errors import InvalidState, NotFound
from forgetctl.items import PromptSet
from forgetctl.ledger import Ledger, now


def store_plan(ledger: Ledger, keys: Keyring, request_id: int, prompt_set: PromptSet) -> dict:
    """Encrypt the prompt set with the request's key; counts and hash stay in clear."""
    doc = prompt_set.model_dump(mode="json")
    sha = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    counts = prompt_set.counts()
    counts["dropped"] = len(prompt_set.dropped)
    with ledger.transaction():
        ledger.db["plans"].upsert(
            {
                "request_id": request_id,
                "payload": keys.encrypt(request_id, doc),
                "counts": json.dumps(counts, sort_keys=True),
                "sha256": sha,
                "created_at": now(),
            },
            pk="request_id",
        )
        ledger.append_event("plan.stored", request_id=request_id, counts=counts, sha256=sha)
    return {"counts": counts, "sha256": sha}


def load_plan(ledger: Ledger, keys: Keyring, request_id: int) -> PromptSet:
    rows = list(ledger.db.query("SELECT * FROM plans WHERE request_id = ?", [request_id]))
    if not rows:
        raise NotFound(f"request {request_id} has no plan (run `forgetctl plan {request_id}`)")
    if rows[0]["payload"] is None or not keys.has_request_key(request_id):
        raise InvalidState(f"request {request_id}: prompt set purged; only counts remain")
    return PromptSet.model_validate(keys.decrypt(request_id, rows[0]["payload"]))


def plan_counts(ledger: Ledger, request_id: int) -> dict | None:
    rows = list(ledger.db.query("SELECT counts FROM plans WHERE request_id = ?", [request_id]))
    return json.loads(rows[0]["counts"]) if rows else None
