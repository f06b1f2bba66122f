"""Model versions: the base model and the lineage of unlearning adapters on top of it.

A version's effective weights are the base plus every adapter of its lineage merged in
order. Production's merged weights are cached under ``HOME/cache/merged/<lineage hash>``
so commands do not re-merge them; a candidate (whose parent is production) is production's
cached weights plus its own adapter, merged in memory. Adapters are re-hashed before they
are merged, so a tampered adapter file is refused rather than served.

Version statuses: candidate -> verified | rejected; verified -> promoted; promoted ->
retired (a later version replaced it or a rollback removed it).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forgetctl.app.home import Home
from forgetctl.core.errors import InvalidState, NotFound, PromotionRefused
from forgetctl.core.hashing import lineage_key, sha256_tree
from forgetctl.core.policy import Policy
from forgetctl.lm.weights import (
    cached_merged,
    load_model,
    load_tokenizer,
    merged_model,
    require_model_dir,
)
from forgetctl.store.ledger import Ledger

BASE_VERSION = 0


def register_base(ledger: Ledger, model_dir: Path) -> int:
    """Record a base model as version 0 under ``production``; idempotent for the same model."""
    model_dir = require_model_dir(model_dir).resolve()
    sha = sha256_tree(model_dir)
    rows = list(ledger.db.query("SELECT * FROM versions WHERE id = ?", [BASE_VERSION]))
    if rows:
        if rows[0]["base_sha256"] != sha:
            raise InvalidState(
                f"this home already serves base model {rows[0]['base_path']}; "
                "use a new home for another model"
            )
        return BASE_VERSION
    with ledger.transaction():
        ledger.insert_version(
            id=BASE_VERSION,
            kind="base",
            status="promoted",
            base_path=str(model_dir),
            base_sha256=sha,
        )
        ledger.move_alias("production", BASE_VERSION, "base model registered")
    return BASE_VERSION


def _check_adapter(version: dict) -> Path:
    path = Path(version["adapter_path"])
    if not path.is_dir():
        raise NotFound(f"version {version['id']}: adapter missing at {path}")
    if sha256_tree(path) != version["adapter_sha256"]:
        raise InvalidState(f"version {version['id']}: adapter hash mismatch (tampered?)")
    return path


def version_key(ledger: Ledger, version_id: int) -> str:
    """An identifier of a version's effective weights: the base's hash then each adapter's,
    as recorded in the ledger (files are checked against them when loaded)."""
    chain = ledger.lineage(version_id)
    return lineage_key([chain[0]["base_sha256"]] + [v["adapter_sha256"] for v in chain[1:]])


def production_dir(ledger: Ledger, home: Home) -> Path:
    """A directory with production's merged weights (the base itself for version 0)."""
    production = ledger.alias("production")
    chain = ledger.lineage(production)
    adapters = [_check_adapter(v) for v in chain[1:]]
    cache_root = home.cache / "merged"
    dest = cached_merged(
        chain[0]["base_path"], adapters, cache_root, version_key(ledger, production)
    )
    if adapters:
        # Only production is cached: older merges are dropped to bound disk use.
        for old in cache_root.iterdir():
            if old != dest and not old.name.startswith(".tmp-"):
                shutil.rmtree(old, ignore_errors=True)
    return dest


def load_version(ledger: Ledger, home: Home, version_id: int) -> tuple[Any, Any]:
    """(model, tokenizer) with the effective weights of ``version_id``."""
    chain = ledger.lineage(version_id)
    ids = [v["id"] for v in chain]
    production = ledger.alias("production")
    if production in ids:
        start, rest = production_dir(ledger, home), chain[ids.index(production) + 1 :]
    else:
        start, rest = Path(chain[0]["base_path"]), chain[1:]
    if not rest:
        return load_model(start)
    model = merged_model(start, [_check_adapter(v) for v in rest])
    return model, load_tokenizer(start)


def newest_candidate(ledger: Ledger) -> int:
    rows = list(
        ledger.db.query(
            "SELECT id FROM versions WHERE status IN ('candidate', 'verified') "
            "ORDER BY id DESC LIMIT 1"
        )
    )
    if not rows:
        raise NotFound("no candidate version (run `forgetctl apply`)")
    return rows[0]["id"]


def request_versions(ledger: Ledger, request_id: int, statuses: Sequence[str]) -> list[dict]:
    """The versions built for ``request_id`` whose status is one of ``statuses``, newest first."""
    marks = ", ".join("?" * len(statuses))
    rows = ledger.db.query(
        f"SELECT id FROM versions WHERE status IN ({marks}) ORDER BY id DESC", list(statuses)
    )
    found = (ledger.version(row["id"]) for row in rows)
    return [version for version in found if request_id in version["requests"]]


def required_checks(ledger: Ledger, policies: dict[str, Policy], version: dict) -> set[str]:
    """The union of the mandatory checks of the policies of the version's requests."""
    needed: set[str] = set()
    for request_id in version["requests"]:
        needed |= set(policies[ledger.request(request_id)["policy"]].verify.mandatory)
    return needed


def check_status(ledger: Ledger, version_id: int) -> dict[str, bool]:
    """The latest verdict of each check recorded for a version."""
    latest: dict[str, bool] = {}
    for row in ledger.verifications(version_id):
        latest[row["check_name"]] = row["passed"]
    return latest


def promote(
    ledger: Ledger,
    policies: dict[str, Policy],
    version_id: int,
    *,
    force: bool = False,
    reason: str | None = None,
) -> None:
    """Move ``production`` to a version that passed every check its policies require."""
    version = ledger.version(version_id)
    production = ledger.alias("production")
    if version_id == production:
        raise InvalidState(f"version {version_id} is already production")
    if version["parent"] != production:
        raise InvalidState(
            f"version {version_id} was built on version {version['parent']}, but production "
            f"is now {production}: apply its requests again on top of production"
        )
    if version["status"] not in ("candidate", "verified", "rejected"):
        raise InvalidState(f"version {version_id} is {version['status']}; cannot promote")
    verdicts = check_status(ledger, version_id)
    needed = required_checks(ledger, policies, version)
    missing = sorted(c for c in needed if c not in verdicts)
    failed = sorted(c for c in needed if verdicts.get(c) is False)
    problems = [f"not run: {', '.join(missing)}"] * bool(missing) + [
        f"failed: {', '.join(failed)}"
    ] * bool(failed)
    if problems and not force:
        raise PromotionRefused(
            f"version {version_id} cannot be promoted ({'; '.join(problems)}); "
            "run `forgetctl verify` or force with --force --reason"
        )
    if force and not (reason and reason.strip()):
        raise InvalidState("--force needs --reason")
    with ledger.transaction():
        if force:
            ledger.append_event(
                "version.forced_promotion",
                version_id=version_id,
                reason=reason,
                problems=problems,
            )
        ledger.set_version_status(production, "retired", reason=f"replaced by {version_id}")
        ledger.set_version_status(version_id, "promoted", forced=force)
        ledger.move_alias(
            "production", version_id, reason or "verified", forced=force, problems=problems
        )
        for request_id in version["requests"]:
            ledger.set_request_status(request_id, "promoted", version=version_id)


def rollback(ledger: Ledger, to: int | None = None, reason: str = "rollback") -> int:
    """Move production back to an ancestor; the rolled-back requests go back to `received`.

    Their plans were made against the rolled-back model, so the run loop plans and applies
    them again from the start.
    """
    production = ledger.alias("production")
    chain = ledger.lineage(production)
    ids = [v["id"] for v in chain]
    if to is None:
        if len(chain) < 2:
            raise InvalidState("production is the base model; nothing to roll back")
        to = chain[-2]["id"]
    if to not in ids or to == production:
        raise InvalidState(f"version {to} is not an earlier version in production's lineage")
    removed = chain[ids.index(to) + 1 :]
    with ledger.transaction():
        for version in removed:
            ledger.set_version_status(version["id"], "retired", reason=reason)
            for request_id in version["requests"]:
                ledger.set_request_status(request_id, "received", reason=reason)
        ledger.set_version_status(to, "promoted", reason=reason)
        ledger.move_alias("production", to, reason)
    return to


def forgotten_requests(ledger: Ledger, version_id: int) -> list[int]:
    """Every request covered by the adapters of a version's lineage, oldest first."""
    return [r for v in ledger.lineage(version_id) for r in v["requests"]]
