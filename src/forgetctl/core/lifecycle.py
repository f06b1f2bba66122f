"""The lifecycles of requests and versions: every status, and every move allowed between them.

This module is the one place that says which status may follow which. The store checks
every status change against these tables before it writes it, so a step that tries an
illegal move gets :class:`IllegalTransition` and nothing is written.

Requests::

    received -> planned -> applied -> verified -> promoted
        |          |          |           |          |
        |          +----------+-----------+          +--> received      (rollback)
        |          (applied, verified -> planned: production moved, or a retry)
        +--> not_present | duplicate | rejected     (the plan step's verdicts)
    any open status -> cancelled | failed           (by hand; retries used up)
    planned | applied | failed -> promoted          (a forced promotion)
    failed -> received | planned                    (`request retry`: at its failed step)
    duplicate -> received                           (its original was cancelled)

Versions::

    candidate <-> verified <-> rejected     (each verification sets one of the three)
    candidate | verified | rejected -> promoted -> retired -> promoted (rollback)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from forgetctl.core.errors import InvalidState


class IllegalTransition(InvalidState):
    """A status change that the lifecycle does not allow."""


REQUEST_STATUSES = (
    "received",
    "planned",
    "applied",
    "verified",
    "promoted",
    "not_present",
    "duplicate",
    "rejected",
    "failed",
    "cancelled",
)
OPEN_STATUSES = frozenset({"received", "planned", "applied", "verified"})
"""Requests still being worked on: they count for duplicates."""
OWED_STATUSES = OPEN_STATUSES | {"failed"}
"""The deletion is still owed: open, or failed and waiting for `request retry` or
`request cancel`. They count for deadlines (overdue until closed) and keep their data."""

_CLOSE_BY_HAND = {"cancelled", "failed"}
REQUEST_MOVES: Mapping[str, frozenset[str]] = {
    "received": frozenset({"planned", "not_present", "duplicate", "rejected", *_CLOSE_BY_HAND}),
    "planned": frozenset({"applied", *_CLOSE_BY_HAND, "promoted"}),
    "applied": frozenset({"verified", "planned", "promoted", *_CLOSE_BY_HAND}),
    "verified": frozenset({"promoted", "planned", *_CLOSE_BY_HAND}),
    "promoted": frozenset({"received"}),
    "not_present": frozenset(),
    "duplicate": frozenset({"received"}),
    "rejected": frozenset(),
    "failed": frozenset({"promoted", "received", "planned", "cancelled"}),
    "cancelled": frozenset(),
}
"""Allowed moves. ``planned``/``applied``/``failed`` -> ``promoted`` is a forced promotion
of a candidate that did not pass (recorded as such)."""

STEPS = ("plan", "apply", "verify", "promote")
"""The run loop's steps, in order."""

NEXT_STEP: Mapping[str, str] = {
    "received": "plan",
    "planned": "apply",
    "applied": "verify",
    "verified": "promote",
}
"""The step of the run loop that takes an open request out of each status."""

ROOT_KINDS = frozenset({"base", "consolidated"})
"""Versions that hold whole weights (``base_path``); the others (``adapter``) are one
adapter on their parent."""

VERSION_STATUSES = ("candidate", "verified", "rejected", "promoted", "retired")
_JUDGED = {"candidate", "verified", "rejected"}
VERSION_MOVES: Mapping[str, frozenset[str]] = {
    "candidate": frozenset(_JUDGED - {"candidate"} | {"promoted"}),
    "verified": frozenset(_JUDGED - {"verified"} | {"promoted"}),
    "rejected": frozenset(_JUDGED - {"rejected"} | {"promoted"}),
    "promoted": frozenset({"retired"}),
    "retired": frozenset({"promoted"}),
}
JUDGED_STATUSES = frozenset(_JUDGED)
"""A version in one of these can be verified (again) and proposed for promotion."""


def check_request_move(request_id: int, old: str, new: str) -> None:
    if new not in REQUEST_MOVES.get(old, ()):
        raise IllegalTransition(f"request {request_id}: {old} -> {new} is not allowed")


def check_version_move(version_id: int, old: str, new: str) -> None:
    if new not in VERSION_MOVES.get(old, ()):
        raise IllegalTransition(f"version {version_id}: {old} -> {new} is not allowed")


def require_status(row: Mapping, allowed: Collection[str], action: str) -> None:
    """Refuse ``action`` on a request whose status is not in ``allowed``."""
    if row["status"] not in allowed:
        raise InvalidState(
            f"request {row['id']} is {row['status']}; cannot {action} "
            f"(allowed from: {', '.join(sorted(allowed))})"
        )
