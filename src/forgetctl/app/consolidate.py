"""`forgetctl consolidate`: the exact lane. Train the deployed model again from its
pretrained base, with its recipe, on its training rows minus every row of the subjects
forgotten in production's lineage, and of those whose adapters failed the gate; the result
is a new root version (``consolidated``) that replaces the stack of adapters once it
passes the same gate. When the recipe is unknown (``--recipe distill``), the base learns
instead to predict what production predicts on the kept rows' answers: it never sees a
forgotten row either.

A row is left out when its author is a forgotten subject (by blind index: this works
after the request's personal data was purged), or, while the request's payload is still
readable, when its text names the subject. The new model is written atomically under
``HOME/models/``; a crash leaves a temporary directory that the next run removes. Training
keeps a checkpoint at the end of every epoch (``HOME/models/consolidating-<production>.ckpt``:
weights and optimiser state, trained on the kept rows only), so consolidating again after
a crash carries on from the last finished epoch and ends with the model an uninterrupted
run gives.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import date, datetime

from forgetctl.app import versions
from forgetctl.app.requests import payload
from forgetctl.app.workspace import Workspace
from forgetctl.core.data import load_jsonl
from forgetctl.core.errors import InvalidState, NotFound
from forgetctl.core.files import atomic_dir
from forgetctl.core.hashing import sha256_file, sha256_tree
from forgetctl.core.lifecycle import JUDGED_STATUSES
from forgetctl.core.progress import Progress, silent
from forgetctl.core.text import Subject
from forgetctl.lm.prompts import use_templates
from forgetctl.lm.train import finetune
from forgetctl.lm.weights import load_model, write_model_files

CONSOLIDATED_PREFIX = "consolidated-"
"""The name of a consolidated model's directory under ``HOME/models/`` starts so."""
CHECKPOINT_PREFIX = "consolidating-"
"""The name of a consolidation's training checkpoint under ``HOME/models/`` starts so."""


@dataclass
class Plan:
    """What a consolidation would do, and what it trains on (read and checked once)."""

    production: int
    requests: list[int]
    rows: int
    dropped: int
    recipe: dict
    training_data: str
    pretrained: dict = field(repr=False)
    kept: list[dict] = field(repr=False)

    def summary(self) -> dict:
        """The plan in figures, for the ledger and `--json` (no rows)."""
        return {"production": self.production, "requests": self.requests, "rows": self.rows,
                "dropped": self.dropped, "recipe": self.recipe,
                "training_data": self.training_data}  # fmt: skip


def _registered_training(ws: Workspace) -> tuple[dict, dict]:
    base = ws.ledger.versions.get(versions.BASE_VERSION)
    training, pretrained = base["metrics"].get("training"), base["metrics"].get("pretrained")
    if not (training and pretrained):
        raise InvalidState(
            "consolidation needs how the model was fine-tuned: `forgetctl init --base "
            "--training-data --recipe` (a new home registers them with the model)"
        )
    if sha256_file(training["path"]) != training["sha256"]:
        raise InvalidState(f"the training data at {training['path']} changed since it was "
                           "registered")  # fmt: skip
    return training, pretrained


def _kept_rows(ws: Workspace, request_ids: list[int], rows: list[dict]) -> list[dict]:
    keys, ledger = ws.keys, ws.ledger
    indexes = {ledger.requests.get(rid)["subject_index"] for rid in request_ids}
    subjects = []
    for rid in request_ids:
        try:
            who = payload(ws, rid)["subject"]
            subjects.append(Subject(who["name"], tuple(who["aliases"])))
        except InvalidState:
            pass  # purged: its rows are still matched by the author's blind index

    def kept(row: dict) -> bool:
        author = row.get("author")
        if author and keys.blind_index(str(author)) in indexes:
            return False
        text = f"{row.get('question', '')} {row.get('answer', '')}"
        return not any(s.mentioned_in(text, with_parts=False) for s in subjects)

    return [r for r in rows if kept(r)]


def covered_requests(ws: Workspace, production: int) -> list[int]:
    """The requests a consolidation of ``production`` covers: every one forgotten in its
    lineage, and every one the adapter lane gave up on (``failed``, planned): they still
    owe their deletion, and training without them does it exactly."""
    ledger = ws.ledger
    forgotten = ledger.versions.forgotten_requests(production)
    failed = [r["id"] for r in ledger.requests.all("failed")
              if r["id"] not in forgotten and ledger.plans.get(r["id"]) is not None]  # fmt: skip
    return forgotten + failed


def plan_consolidation(ws: Workspace) -> Plan:
    """What a consolidation of production would do; nothing is written."""
    ledger = ws.ledger
    training, pretrained = _registered_training(ws)
    production = ledger.aliases.get("production")
    covered = covered_requests(ws, production)
    if not covered:
        raise InvalidState("production forgot no one and no request failed: nothing to "
                           "consolidate")  # fmt: skip
    rows = load_jsonl(training["path"])
    kept = _kept_rows(ws, covered, rows)
    return Plan(production, covered, len(rows), len(rows) - len(kept), training["recipe"],
                training["path"], pretrained, kept)  # fmt: skip


def due(ws: Workspace, today: date | None = None) -> tuple[str, int | None] | None:
    """Whether `run` should consolidate now, and how: ("build", None) to train one, ("resume",
    version) to carry on with a consolidated candidate of production's; None when it is not
    due (no policy of a waiting request asks, or one was rejected for this production: it
    is tried again once production moves). The policy of a waiting request asks once
    ``consolidate_every`` requests wait, once ``consolidate_every_days`` have passed since
    production's root model was built, or, with ``consolidate_failed``, as soon as one of
    its requests failed."""
    ledger = ws.ledger
    try:
        production = ledger.aliases.get("production")
    except NotFound:
        return None
    for v in reversed(ledger.versions.all()):
        if v["kind"] == "consolidated" and v["parent"] == production:
            return ("resume", v["id"]) if v["status"] in JUDGED_STATUSES - {"rejected"} else None
    root = ledger.versions.weights_chain(production)[0]
    age = ((today or date.today()) - datetime.fromisoformat(root["created_at"]).date()).days
    waiting = [ledger.requests.get(r) for r in covered_requests(ws, production)
               if r not in root["requests"]]  # fmt: skip
    for row in waiting:
        policy = ws.policies.get(row["policy"])
        if policy and (
            0 < policy.consolidate_every <= len(waiting)
            or 0 < policy.consolidate_every_days <= age
            or (policy.consolidate_failed and row["status"] == "failed")
        ):
            return "build", None
    return None


def consolidate(ws: Workspace, plan: Plan | None = None, progress: Progress = silent) -> int:
    """Train the consolidated model (of ``plan``, by default production's now) and record it
    as a candidate version whose parent is production; returns its id. It is verified and
    promoted like any other version."""
    ledger = ws.ledger
    plan = plan or plan_consolidation(ws)
    pretrained, rows = plan.pretrained, plan.kept
    if sha256_tree(pretrained["path"]) != pretrained["sha256"]:
        raise InvalidState(f"the pretrained base at {pretrained['path']} changed since it was "
                           "registered")  # fmt: skip
    recipe = plan.recipe
    ledger.append_event("consolidation.started", version_id=plan.production,
                        requests=plan.requests, rows=plan.rows, dropped=plan.dropped)  # fmt: skip
    progress(f"consolidating: training the base again on {len(rows)} rows ({plan.dropped} "
             f"of {plan.rows} left out, {len(plan.requests)} subjects)")  # fmt: skip
    model, tokenizer = load_model(pretrained["path"])
    if recipe.get("template") is not None:  # fine-tuned in the user's own prompt format
        use_templates(tokenizer, {recipe["format"]: recipe["template"]})
    checkpoint = ws.home.models / f"{CHECKPOINT_PREFIX}{plan.production}.ckpt"
    for stale in ws.home.models.glob(f"{CHECKPOINT_PREFIX}*.ckpt"):
        if stale != checkpoint:  # production moved since: that training is not resumed
            stale.unlink()
    distill = recipe.get("method") == "distill"
    teacher = versions.load_version(ws, plan.production)[0] if distill else None
    stats = finetune(
        model, tokenizer, [(r["question"], r["answer"], recipe["format"]) for r in rows],
        epochs=recipe["epochs"], learning_rate=recipe["learning_rate"],
        batch_size=recipe["batch_size"], seed=recipe["seed"], progress=progress,
        checkpoint=checkpoint, teacher=teacher,
    )  # fmt: skip
    del teacher  # production's copy is not needed for writing the model
    if stats["resumed_epochs"]:
        done = stats["resumed_epochs"]
        ledger.append_event("consolidation.resumed", version_id=plan.production,
                            epochs_done=done, epochs=recipe["epochs"])  # fmt: skip
    out = ws.home.models / f"{CONSOLIDATED_PREFIX}{plan.production}-{secrets.token_hex(4)}"
    with atomic_dir(out) as tmp:
        write_model_files(model, tokenizer, tmp, {"consolidated_from": plan.production})
    figures = {k: v for k, v in stats.items()
               if k in ("steps", "final_loss", "seconds", "resumed_epochs")}  # fmt: skip
    metrics = {**plan.summary(), "training": figures}
    version = ledger.versions.add(
        kind="consolidated", parent=plan.production, status="candidate", base_path=str(out),
        base_sha256=sha256_tree(out), requests=plan.requests, metrics=metrics,
    )  # fmt: skip
    checkpoint.unlink(missing_ok=True)  # the model is written and recorded
    return version
