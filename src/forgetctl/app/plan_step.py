"""The plan step bound to the ledger: plan a request, store its prompt set encrypted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from forgetctl.app import intake as rq
from forgetctl.app import versions
from forgetctl.app.home import Home
from forgetctl.core.data import load_jsonl
from forgetctl.core.errors import InvalidState, NotFound
from forgetctl.core.items import PromptSet
from forgetctl.core.policy import Policy
from forgetctl.store.crypto import Keyring
from forgetctl.store.ledger import Ledger, now, require_status


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


def retain_corpus_path(home: Home, policy: Policy) -> Path | None:
    """The policy's retain corpus (relative paths are inside the home), else the home's
    ``retain-corpus.jsonl`` (what `demo build-model` writes: the deployed model's data)."""
    configured = policy.plan.retain_corpus
    if configured:
        path = Path(configured).expanduser()
        return path if path.is_absolute() else home.root / path
    default = home.root / "retain-corpus.jsonl"
    return default if default.exists() else None


def _general_rows(policy: Policy) -> list[dict]:
    return [row for name in policy.plan.general_sets for row in load_jsonl(name)]


def plan_request_step(
    ledger: Ledger,
    home: Home,
    keys: Keyring,
    policies: dict[str, Policy],
    request_id: int,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Plan a received request against production; sets planned, not_present, rejected
    or duplicate. Returns {status, counts, reasons, figures}."""
    from forgetctl.plan.planner import plan_request

    row = ledger.request(request_id)
    require_status(row, {"received"}, "plan")
    policy = policies[row["policy"]]
    production = ledger.alias("production")
    # Subjects already forgotten in production's lineage, by blind index: no plaintext.
    forgotten = {
        ledger.request(earlier)["subject_index"]: earlier
        for earlier in versions.forgotten_requests(ledger, production)
    }
    if row["subject_index"] in forgotten:
        earlier = forgotten[row["subject_index"]]
        ledger.db["requests"].update(request_id, {"duplicate_of": earlier})
        ledger.set_request_status(request_id, "duplicate", duplicate_of=earlier,
                                  reason="subject already forgotten in production")  # fmt: skip
        return {"status": "duplicate", "reasons": [f"already forgotten by request {earlier}"]}

    def kept(record: dict) -> bool:
        # A forgotten subject's own training rows are not knowledge to keep: as neighbors
        # they anchor the parent's noise on them and, in attribution, their large retain
        # loss masks the layers the earlier adapter changed (measured on the demo's second
        # request: 10 of 73 neighbors were the first subject's).
        author = record.get("author")
        return not (author and keys.blind_index(str(author)) in forgotten)

    data = rq.payload(ledger, keys, request_id)
    corpus = retain_corpus_path(home, policy)
    model, tokenizer = versions.load_version(ledger, home, production)
    outcome = plan_request(
        subject=data["subject"]["name"],
        aliases=data["subject"]["aliases"],
        records=data["records"],
        scope=row["scope"],
        model=model,
        tokenizer=tokenizer,
        cfg=policy.plan,
        retain_corpus_rows=[r for r in load_jsonl(corpus) if kept(r)] if corpus else [],
        general_items=_general_rows(policy),
        progress=progress,
        identifiers=data["subject"]["identifiers"],
    )
    result = {"status": outcome.verdict, "reasons": list(outcome.reasons),
              "figures": outcome.figures}  # fmt: skip
    with ledger.transaction():
        # Reasons can quote prompts or other people's names: they are kept only inside
        # the encrypted prompt set; the event carries the PII-free figures.
        outcome.prompt_set.probe["reasons"] = list(outcome.reasons)
        result.update(store_plan(ledger, keys, request_id, outcome.prompt_set))
        ledger.set_request_status(request_id, outcome.verdict, figures=outcome.figures,
                                  reasons=len(outcome.reasons))  # fmt: skip
    return result
