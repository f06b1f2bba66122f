"""Promotion and rollback: the only moves of the ``production`` alias after registration.

``promote`` moves production to a candidate built on it once every check its policies make
mandatory has passed (or, with ``--force --reason``, records why not); ``rollback`` moves it
back to an ancestor and sends the rolled-back requests back to ``received``.
"""

from __future__ import annotations

from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import InvalidState, PromotionRefused
from forgetctl.core.lifecycle import JUDGED_STATUSES
from forgetctl.store.ledger import Ledger


def promote(
    ws: Workspace, version_id: int, *, force: bool = False, reason: str | None = None
) -> None:
    """Move ``production`` to a version that passed every check its policies require."""
    ledger = ws.ledger
    version = ledger.versions.get(version_id)
    production = ledger.aliases.get("production")
    if version_id == production:
        raise InvalidState(f"version {version_id} is already production")
    if version["parent"] != production:
        raise InvalidState(
            f"version {version_id} was built on version {version['parent']}, but production "
            f"is now {production}: apply its requests again on top of production"
        )
    if version["status"] not in JUDGED_STATUSES:
        raise InvalidState(f"version {version_id} is {version['status']}; cannot promote")
    verdicts = ledger.verifications.verdicts(version_id)
    needed = ws.resolved(version).mandatory
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
        ledger.versions.set_status(production, "retired", reason=f"replaced by {version_id}")
        ledger.versions.set_status(version_id, "promoted", forced=force)
        ledger.aliases.move(
            "production", version_id, reason or "verified", forced=force, problems=problems
        )
        for request_id in version["requests"]:
            ledger.requests.set_status(request_id, "promoted", version=version_id)


def rollback(ledger: Ledger, to: int | None = None, reason: str = "rollback") -> int:
    """Move production back to an ancestor; the rolled-back requests go back to `received`.

    Their plans were made against the rolled-back model, so the run loop plans and applies
    them again from the start.
    """
    production = ledger.aliases.get("production")
    chain = ledger.versions.lineage(production)
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
            if version["status"] == "promoted":  # the others were retired when replaced
                ledger.versions.set_status(version["id"], "retired", reason=reason)
            for request_id in version["requests"]:
                ledger.requests.set_status(request_id, "received", reason=reason)
        ledger.versions.set_status(to, "promoted", reason=reason)
        ledger.aliases.move("production", to, reason)
    return to
