"""The workspace every step works in: the home, its ledger, its keys and its policies.

One object instead of the ``(ledger, home, keys, policies)`` bag: the CLI opens it once per
command and passes it to the steps, the run loop and the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forgetctl.app.home import Home
from forgetctl.core.errors import InvalidState, NotFound
from forgetctl.core.policy import Policy, Resolved, resolve
from forgetctl.store.crypto import Keyring
from forgetctl.store.ledger import Ledger, open_ledger
from forgetctl.store.tables import RequestRow, VersionRow


@dataclass
class Workspace:
    home: Home
    ledger: Ledger
    keys: Keyring
    policies: dict[str, Policy]
    broken_policies: dict[str, str] = field(default_factory=dict)
    """Policy files that do not load (name: the problem): only their own requests stop."""

    @classmethod
    def open(cls, home: Home, *, create: bool = False) -> Workspace:
        """The workspace of an initialised home (``create``: initialise it first)."""
        if create:
            home.create_dirs()
        else:
            home.require()
        keys = Keyring(home.keys)
        # Refuses a damaged ledger or key; creates one only when there is no ledger.db.
        ledger = open_ledger(home.ledger_path, create=create, keys=keys)
        broken: dict[str, str] = {}
        return cls(home, ledger, keys, home.policies(broken), broken)

    def policy_problem(self, row: RequestRow) -> str | None:
        """Why a request's policy file cannot be used (it is broken), or None."""
        if (problem := self.broken_policies.get(row["policy"])) is None:
            return None
        return f"request {row['id']}: {problem} (fix the file)"

    def policy_of(self, request: int | RequestRow) -> Policy:
        row = self.ledger.requests.get(request) if isinstance(request, int) else request
        if (problem := self.policy_problem(row)) is not None:
            raise InvalidState(problem)
        if row["policy"] not in self.policies:
            raise NotFound(
                f"request {row['id']}'s policy {row['policy']!r} is not in "
                f"{self.home.policies_dir} (restore the file, or `forgetctl init`)"
            )
        return self.policies[row["policy"]]

    def resolved(self, version: int | VersionRow) -> Resolved:
        """The one set of rules for a version: its requests' policies, strictest first."""
        row = self.ledger.versions.get(version) if isinstance(version, int) else version
        return resolve([self.policy_of(rid) for rid in row["requests"]])
