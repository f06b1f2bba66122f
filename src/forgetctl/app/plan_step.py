"""The plan step bound to the ledger: plan a request, store its prompt set encrypted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from forgetctl.app import versions
from forgetctl.app.home import Home
from forgetctl.app.requests import payload
from forgetctl.app.workspace import Workspace
from forgetctl.core.data import BUILTIN_PREFIX, load_jsonl
from forgetctl.core.errors import InvalidState, NotFound
from forgetctl.core.items import PromptSet
from forgetctl.core.lifecycle import OPEN_STATUSES, require_status
from forgetctl.core.policy import Policy
from forgetctl.core.progress import Progress, silent
from forgetctl.plan.planner import plan_request


def store_plan(ws: Workspace, request_id: int, prompt_set: PromptSet) -> dict:
    """Encrypt the prompt set with the request's key; counts and hash stay in clear."""
    doc = prompt_set.model_dump(mode="json")
    sha = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    counts = prompt_set.counts()
    counts["dropped"] = len(prompt_set.dropped)
    ws.ledger.plans.put(request_id, ws.keys.encrypt(request_id, doc), counts, sha)
    return {"counts": counts, "sha256": sha}


def load_plan(ws: Workspace, request_id: int) -> PromptSet:
    plan = ws.ledger.plans.get(request_id)
    if plan is None:
        raise NotFound(f"request {request_id} has no plan (run `forgetctl plan {request_id}`)")
    if plan["payload"] is None or not ws.keys.has_request_key(request_id):
        raise InvalidState(f"request {request_id}: prompt set purged; only counts remain")
    return PromptSet.model_validate(ws.keys.decrypt(request_id, plan["payload"]))


def retain_corpus_path(home: Home, policy: Policy) -> Path | None:
    """The policy's retain corpus (relative paths are inside the home), else the home's
    ``retain-corpus.jsonl`` (what `demo build-model` writes: the deployed model's data)."""
    configured = policy.plan.retain_corpus
    if configured:
        path = Path(configured).expanduser()
        return path if path.is_absolute() else home.root / path
    default = home.retain_corpus
    return default if default.exists() else None


def control_corpus(home: Home, policy: Policy) -> str | Path:
    """The policy's control corpus (relative paths are inside the home), else the home's
    ``control-corpus.jsonl``, else the built-in fictitious profiles."""
    configured = policy.plan.control_corpus
    if configured:
        if configured.startswith(BUILTIN_PREFIX):
            return configured
        path = Path(configured).expanduser()
        return path if path.is_absolute() else home.root / path
    default = home.control_corpus
    return default if default.exists() else f"{BUILTIN_PREFIX}controls"


def _general_rows(policy: Policy) -> list[dict]:
    return [row for name in policy.plan.general_sets for row in load_jsonl(name)]


def plan_request_step(ws: Workspace, request_id: int, *, progress: Progress = silent) -> dict:
    """Plan a received request against production; sets planned, not_present, rejected
    or duplicate. Returns {status, counts, reasons, figures}."""
    ledger, keys = ws.ledger, ws.keys
    row = ledger.requests.get(request_id)
    require_status(row, {"received"}, "plan")
    policy = ws.policy_of(row)
    production = ledger.aliases.get("production")
    # Subjects already forgotten in production's lineage, by blind index: no plaintext.
    forgotten = {
        ledger.requests.get(earlier)["subject_index"]: earlier
        for earlier in ledger.versions.forgotten_requests(production)
    }
    if row["subject_index"] in forgotten:
        earlier = forgotten[row["subject_index"]]
        why = "subject already forgotten in production"
        ledger.requests.mark_duplicate(request_id, earlier, reason=why)
        return {"status": "duplicate", "reasons": [f"already forgotten by request {earlier}"]}

    # A forgotten subject's own training rows are not knowledge to keep: as neighbors they
    # anchor the parent's noise on them and, in attribution, their large retain loss masks
    # the layers the earlier adapter changed (measured on the demo's second request: 10 of
    # 73 neighbors were the first subject's). Nor are those of another open request, to be
    # forgotten in the same batch: this adapter would hold on to what the next one removes.
    leaving = set(forgotten) | {
        r["subject_index"] for r in ledger.requests.all()
        if r["status"] in OPEN_STATUSES and r["id"] != request_id
    }  # fmt: skip

    def kept(record: dict) -> bool:
        author = record.get("author")
        return not (author and keys.blind_index(str(author)) in leaving)

    data = payload(ws, request_id)
    corpus = retain_corpus_path(ws.home, policy)
    model, tokenizer = versions.load_version(ws, production)
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
        control_rows=load_jsonl(control_corpus(ws.home, policy)),
    )
    result = {"status": outcome.verdict, "reasons": list(outcome.reasons),
              "figures": outcome.figures}  # fmt: skip
    with ledger.transaction():
        # Reasons can quote prompts or other people's names: they are kept only inside
        # the encrypted prompt set; the event carries the PII-free figures.
        outcome.prompt_set.probe["reasons"] = list(outcome.reasons)
        result.update(store_plan(ws, request_id, outcome.prompt_set))
        ledger.requests.set_status(request_id, outcome.verdict, figures=outcome.figures,
                                  reasons=len(outcome.reasons))  # fmt: skip
    return result
