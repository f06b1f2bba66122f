"""Promotion and rollback: the only moves of the ``production`` alias after registration.

``promote`` moves production to a candidate built on it once every check its policies make
mandatory has passed (or, with ``--force --reason``, records why not); ``rollback`` moves it
back to an ancestor and sends the rolled-back requests back to ``received``.
"""

from __future__ import annotations

from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import InvalidState, PromotionRefused
from forgetctl.core.lifecycle import JUDGED_STATUSES
from forgetctl.core.policy import ALL_CHECKS
from forgetctl.store.ledger import Ledger


def promote(
    ws: Workspace, version_id: int, *, force: bool = False, reason: str | None = None
) -> list[str]:
    """Move ``production`` to a version that passed every check its policies require.

    A ``rejected`` version (some check failed or had no signal, mandatory or not) needs
    ``force`` and a ``reason``. Returns the checks that never ran when a policy with no
    mandatory check (``allow_unverified``) let production move without them: the caller
    must say so; the alias event records them too.
    """
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
    # The latest verdict of each check: pass, fail or no_signal (nothing to judge).
    verdicts = {r["check_name"]: r["verdict"] for r in ledger.verifications.of(version_id)}
    rules = ws.resolved(version)
    missing = [c for c in ALL_CHECKS if c in rules.mandatory and c not in verdicts]
    failed = [c for c in ALL_CHECKS if verdicts.get(c) == "fail"]
    no_signal = [c for c in ALL_CHECKS if verdicts.get(c) == "no_signal"]
    problems = [
        f"{label}: {', '.join(checks)}"
        for label, checks in (("not run", missing), ("failed", failed), ("no signal", no_signal))
        if checks
    ]
    if version["status"] == "rejected":
        problems.insert(0, "rejected")
    if problems and not force:
        raise PromotionRefused(
            f"version {version_id} cannot be promoted ({'; '.join(problems)}); "
            "run `forgetctl verify` or force with --force --reason"
        )
    if force and not (reason and reason.strip()):
        raise InvalidState("--force needs --reason")
    unverified = [c for c in ALL_CHECKS if c not in verdicts] if not rules.mandatory else []
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
        extra = {"unverified": True, "not_run": unverified} if unverified else {}
        ledger.aliases.move("production", version_id, reason or "verified", forced=force,
                            problems=problems, **extra)  # fmt: skip
        for request_id in version["requests"]:
            if ledger.requests.get(request_id)["status"] != "promoted":  # consolidated: were
                ledger.requests.set_status(request_id, "promoted", version=version_id)
    return unverified


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
    # What production forgets no more: a consolidated version's requests that the adapters
    # it replaced still cover stay forgotten.
    still = set(ledger.versions.forgotten_requests(to))
    reopened = dict.fromkeys(r for v in removed for r in v["requests"] if r not in still)
    with ledger.transaction():
        for version in removed:
            if version["status"] == "promoted":  # the others were retired when replaced
                ledger.versions.set_status(version["id"], "retired", reason=reason)
        for request_id in reopened:
            ledger.requests.set_status(request_id, "received", reason=reason)
        ledger.versions.set_status(to, "promoted", reason=reason)
        ledger.aliases.move("production", to, reason)
    return to
