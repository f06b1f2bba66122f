"""The Python API: the command line's operations on one forgetctl home, as methods.

    from forgetctl import Forgetctl

    fc = Forgetctl.init("./.forgetctl", model="smollm2-135m")
    rid = fc.add_request({"regulation": "gdpr", "subject": {"name": "Ada Quill"}})
    summary = fc.run()                       # plan, apply, verify, promote what is due
    html = fc.report(rid, fmt="html")

Each method does what the command of the same name does (``forgetctl run`` is
:meth:`Forgetctl.run`), with the same checks and the same ledger events, and raises the
same ``forgetctl.core.errors.ForgetctlError`` subclasses whose ``exit_code`` the CLI
returns. Requests are named by id or ref, versions by id. Long steps take a ``progress``
callback (``forgetctl.core.progress.Progress``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from forgetctl.app import plan_step, promote, requests, runner
from forgetctl.app.apply_step import apply_request
from forgetctl.app.home import Home, resolve_home
from forgetctl.app.intake import add_request, import_requests, load_request_file, parse_request
from forgetctl.app.report import build_report
from forgetctl.app.setup import init_home
from forgetctl.app.verify_step import verify_version
from forgetctl.app.workspace import Workspace
from forgetctl.core.progress import Progress, silent
from forgetctl.store.ledger import Audit
from forgetctl.verify.checks import CheckResult


@dataclass
class Forgetctl:
    """An open forgetctl home: its ledger, keys and policies (``app.workspace``)."""

    ws: Workspace

    @classmethod
    def open(cls, home: str | Path | None = None) -> Forgetctl:
        """An initialised home (default: $FORGETCTL_HOME, else ./.forgetctl)."""
        return cls(Workspace.open(resolve_home(home)))

    @classmethod
    def init(cls, home: str | Path | None = None, **options: Any) -> Forgetctl:
        """``forgetctl init``: ``model``, ``base``, ``retain_corpus``, ``control_corpus``,
        ``formats`` as its options (``app.setup.init_home``)."""
        where: Home = resolve_home(home)
        init_home(where, **options)
        return cls(Workspace.open(where))

    # -- requests ---------------------------------------------------------------------
    def add_request(self, request: dict) -> int:
        """``request add`` from a request document (the format of ``request import``);
        returns its id (the existing one when its ref is known)."""
        return add_request(self.ws, parse_request(request))[0]

    def import_requests(self, path: str | Path) -> list[int]:
        """``request import``: every request of a JSON, JSONL or CSV file, all or none."""
        return [rid for rid, _ in import_requests(self.ws, load_request_file(Path(path)))]

    def requests(self, status: str | None = None, overdue: bool = False) -> list[dict]:
        """``request list``: PII-free summaries in deadline order."""
        return [requests.summary(r, self.ws.policies.get(r["policy"]))
                for r in requests.list_requests(self.ws, status, overdue)]  # fmt: skip

    def request_id(self, request: int | str) -> int:
        return requests.resolve(self.ws, str(request))

    def cancel(self, request: int | str, reason: str) -> None:
        requests.cancel(self.ws, self.request_id(request), reason)

    def extend(self, request: int | str, days: int, reason: str, notified: date) -> date:
        """Returns the new deadline."""
        return requests.extend(self.ws, self.request_id(request), days, reason, notified)

    def approve(self, request: int | str, approver: str) -> None:
        requests.approve(self.ws, self.request_id(request), approver)

    def retry(self, request: int | str, reason: str) -> str:
        """Reopen a failed request; returns the status it is back in."""
        return requests.retry(self.ws, self.request_id(request), reason)

    def purge(self, request: int | str, *, now: bool = False, reason: str | None = None) -> dict:
        return requests.purge(self.ws, self.request_id(request), now_=now, reason=reason)

    # -- the steps --------------------------------------------------------------------
    def plan(self, request: int | str, progress: Progress = silent) -> dict:
        return plan_step.plan_request_step(self.ws, self.request_id(request), progress=progress)

    def apply(self, request: int | str, progress: Progress = silent) -> int:
        """Unlearn a planned request; returns the candidate version's id."""
        return apply_request(self.ws, self.request_id(request), progress=progress)

    def verify(
        self,
        version: int,
        *,
        add: Collection[str] = (),
        skip: Collection[str] = (),
        reason: str | None = None,
        progress: Progress = silent,
    ) -> tuple[str, list[CheckResult]]:
        """Returns the version's status (verified, candidate or rejected) and the results."""
        return verify_version(self.ws, version, add=add, skip=skip, reason=reason,
                              progress=progress)  # fmt: skip

    def promote(self, version: int, *, force: bool = False, reason: str | None = None) -> None:
        promote.promote(self.ws, version, force=force, reason=reason)

    def rollback(self, to: int | None = None, reason: str = "rollback") -> int:
        """Production back to an ancestor (default: its parent); returns its id."""
        return promote.rollback(self.ws.ledger, to, reason)

    def run(
        self, *, max_requests: int | None = None, dry_run: bool = False,
        progress: Progress = runner.log_messages,
    ) -> runner.RunSummary:  # fmt: skip
        """``forgetctl run``: every due request through its remaining steps, locked."""
        return runner.run(self.ws, max_requests=max_requests, dry_run=dry_run,
                          progress=progress)  # fmt: skip

    # -- evidence ---------------------------------------------------------------------
    def report(self, target: int | str, fmt: str = "json") -> dict | str:
        """The audit report of a request (id or ref) or a version (``v<N>``): the document
        with ``fmt="json"``, else its Markdown or HTML."""
        doc = build_report(self.ws, str(target))
        if fmt == "json":
            return doc
        from forgetctl.cli.report_render import render

        return render(doc, fmt)

    def verify_ledger(self, against: dict | None = None) -> Audit:
        """``ledger verify``: the chain, its signed head, every row explained by the events
        (``against``: an earlier ``ledger export`` document whose head must be in it)."""
        return self.ws.ledger.audit(against)
