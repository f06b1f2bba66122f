"""The run loop: every due request through plan, apply, verify and promote.

Each step ends in one ledger transaction (the checkpoint), so a run killed at any moment
leaves a ledger that verifies; the next run reads each request's status and continues
from the last completed step. Leftovers of an interrupted step (temporary directories,
adapters that no version row references) are removed at start.

Single instance: an ``fcntl`` lock on ``HOME/run.lock``. The kernel drops the lock of a
dead process; the pid written in the file tells us that a previous run died holding it,
and the takeover is recorded.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from forgetctl.app import consolidate as consolidation
from forgetctl.app.apply_step import apply_request, escalate, failed_checks
from forgetctl.app.plan_step import plan_request_step
from forgetctl.app.promote import promote
from forgetctl.app.requests import days_left, list_requests, purge, retention_ends, summary
from forgetctl.app.verify_step import verify_version
from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import EXIT_FAILED, EXIT_OVERDUE, ForgetctlError, Locked, NotFound
from forgetctl.core.files import clean_partial
from forgetctl.core.lifecycle import NEXT_STEP, OPEN_STATUSES, OWED_STATUSES, STEPS
from forgetctl.core.progress import Progress
from forgetctl.store.tables import RequestRow, VersionRow

log = logging.getLogger("forgetctl.run")


def log_messages(label: str, done: int | None = None, total: int | None = None, /,
                 **figures: float) -> None:  # fmt: skip
    """The default progress: the steps' messages go to the run's log, bars nowhere."""
    if done is None:
        log.info(label)


@dataclass
class Outcome:
    request_id: int
    ref: str
    start: str
    end: str
    steps: list[str] = field(default_factory=list)
    version: int | None = None
    error: str | None = None
    seconds: float = 0.0
    due: str | None = None
    days_left: int | None = None
    why: list[str] = field(default_factory=list)
    """Why its newest candidate was rejected, when this run verified one and none passed:
    each check that did not pass, with its first reason."""


@dataclass
class RunSummary:
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    due_soon: list[dict] = field(default_factory=list)
    overdue: list[dict] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    purged: list[int] = field(default_factory=list)
    lock_takeover: int | None = None
    dry_run: bool = False
    consolidation: dict | None = None
    """When a policy's ``consolidate_every`` made this run consolidate: the version, its
    status after the gate, and what did not pass."""

    @property
    def exit_code(self) -> int:
        if any(o.end == "failed" for o in self.outcomes):
            return EXIT_FAILED
        return EXIT_OVERDUE if self.overdue else 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def run_lock(path: Path) -> Iterator[int | None]:
    """Hold the run lock; yields the pid of a dead previous holder, if there was one."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise Locked(f"another forgetctl run holds {path} (pid {holder})") from None
        previous = os.pread(fd, 32, 0).decode(errors="replace").strip()
        stale = int(previous) if previous.isdigit() and not _pid_alive(int(previous)) else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        os.fsync(fd)
        try:
            yield stale
        finally:
            os.ftruncate(fd, 0)  # a clean exit leaves no pid behind
    finally:
        os.close(fd)


def clean_leftovers(ws: Workspace) -> list[str]:
    """Remove temporary dirs, and adapters and consolidated models no version references
    (a crash mid-apply or mid-consolidation, after the files and before the ledger row)."""
    home, versions_ = ws.home, ws.ledger.versions
    roots = (home.adapters, home.cache, home.models)
    removed = [str(p) for root in roots for p in clean_partial(root)]
    made = [(home.adapters, "", versions_.adapter_paths()),
            (home.models, consolidation.CONSOLIDATED_PREFIX, versions_.base_paths())]  # fmt: skip
    for root, prefix, known in made:
        for path in root.iterdir() if root.exists() else ():
            if path.is_dir() and path.name.startswith(prefix) and str(path) not in known:
                shutil.rmtree(path)
                removed.append(str(path))
    return removed


def purge_expired(ws: Workspace) -> list[int]:
    """Crypto-shred every closed request whose retention period has ended."""
    purged = []
    for row in ws.ledger.requests.not_purged():
        if ws.policy_problem(row):
            continue  # its retention is unknown until the file is fixed (run says so)
        if row["status"] not in OWED_STATUSES and date.today() >= retention_ends(
            row, ws.policy_of(row)
        ):
            purge(ws, row["id"])
            purged.append(row["id"])
    return purged


def _open_version(ws: Workspace, request_id: int) -> VersionRow | None:
    """The newest candidate/verified version built for a request, if any."""
    found = ws.ledger.versions.of_request(request_id, ("candidate", "verified"))
    return found[0] if found else None


def _not_passed(ws: Workspace, version_id: int) -> list[str]:
    """Each check of a version whose latest verdict is not a pass, with its first reason."""
    latest = {r["check_name"]: r for r in ws.ledger.verifications.of(version_id)}
    return [f"{name} {r['verdict']}" + (f": {r['reasons'][0]}" if r["reasons"] else "")
            for name, r in latest.items() if r["verdict"] != "pass"]  # fmt: skip


def _rejection(ws: Workspace, request_id: int) -> list[str]:
    rejected = ws.ledger.versions.of_request(request_id, ("rejected",))
    return _not_passed(ws, rejected[0]["id"]) if rejected else []


def _stale(ws: Workspace, version: VersionRow | None) -> bool:
    """Production moved under this candidate (a rollback or another promotion), or there
    is none: its adapter no longer stacks on what is served, so it is applied again."""
    try:
        production = ws.ledger.aliases.get("production")
    except NotFound:
        return True
    return version is None or version["parent"] != production


class Runner:
    """Drives requests through the steps; one instance per `forgetctl run`."""

    def __init__(
        self,
        ws: Workspace,
        *,
        progress: Progress = log_messages,
    ):
        self.ws, self.ledger = ws, ws.ledger
        self.progress = progress

    def due(self) -> tuple[list[RequestRow], list[dict]]:
        """(requests to work on in deadline order, requests waiting for approval)."""
        ready, waiting = [], []
        for row in list_requests(self.ws):
            if row["status"] not in OPEN_STATUSES:
                continue
            if problem := self.ws.policy_problem(row):  # not the request's fault: no retry spent
                self.progress(f"request {row['id']} skipped: {problem}")
                waiting.append({"id": row["id"], "ref": row["ref"], "reason": problem})
                continue
            policy = self.ws.policy_of(row)
            if policy.require_approval and not row["approved_at"]:
                waiting.append({"id": row["id"], "ref": row["ref"], "reason": "needs approval"})
            else:
                ready.append(row)
        return ready, waiting

    def _step(self, row: RequestRow) -> str:
        """Run the next step of one request; returns the step's name."""
        request_id, step = row["id"], NEXT_STEP[row["status"]]
        if step == "plan":
            self.progress(f"request {request_id}: plan")
            plan_request_step(self.ws, request_id, progress=self.progress)
            return "plan"
        version = _open_version(self.ws, request_id)
        self.ledger.aliases.get("production")  # NotFound: no registered model
        if step in ("verify", "promote") and _stale(self.ws, version):
            self.ledger.requests.set_status(request_id, "planned", reason="production moved")
            return "reapply"
        if step == "apply":
            self.progress(f"request {request_id}: apply (attempt {row['attempts'] + 1})")
            apply_request(self.ws, request_id, attempt=row["attempts"], progress=self.progress)
            return "apply"
        if step == "verify":
            self.progress(f"request {request_id}: verify version {version['id']}")
            verdict, results = verify_version(self.ws, version["id"], progress=self.progress)
            if verdict == "rejected":
                why = ", ".join(f"{r.name} {r.verdict}" for r in results if not r.passed)
                error = f"version {version['id']} rejected: {why}"
                self.progress(f"request {request_id}: {error}")
                self._failed_attempt(row, "verify", error)
            return "verify"
        self.progress(f"request {request_id}: promote version {version['id']}")
        if unverified := promote(self.ws, version["id"], reason="verified by run"):
            # A policy with no mandatory check let production move without the gate.
            self.progress(f"request {request_id}: warning: production moved UNVERIFIED (the policy "
                     f"allows it): not run: {', '.join(unverified)}")  # fmt: skip
        return "promote"

    def preview(self, row: RequestRow) -> Outcome:
        """What :meth:`drive` would do for a request, done nothing (``run --dry-run``): each
        step ahead with what it would use, and the deadline."""
        policy, status = self.ws.policy_of(row), row["status"]
        ahead = list(STEPS[STEPS.index(NEXT_STEP[status]) :])
        version = _open_version(self.ws, row["id"])
        if ahead[0] in ("verify", "promote") and _stale(self.ws, version):
            ahead = ["apply (production moved)", "verify", "promote"]
        elif version is not None and ahead[0] in ("verify", "promote"):
            ahead[0] = f"{ahead[0]} version {version['id']}"
        steps = []
        for step in ahead:
            if step.startswith("apply"):
                attempt = row["attempts"]
                failed = failed_checks(self.ledger, row["id"]) if attempt else set()
                method = escalate(policy.method, attempt, failed)
                step += (f" attempt {attempt + 1} of {policy.max_retries + 1}: {method.objective}, "
                         f"{method.max_steps} steps, lr {method.learning_rate:g}")  # fmt: skip
                if failed:
                    step += f" (aimed at {', '.join(sorted(failed))})"
            elif step.startswith("verify"):
                step += f": {', '.join(policy.verify.mandatory) or 'no mandatory check'}"
            steps.append(step)
        return Outcome(row["id"], row["ref"], status, status, steps=steps, due=row["due"],
                       days_left=days_left(row))  # fmt: skip

    def consolidate(self, job: str, version: int | None) -> dict:
        """Train (or carry on with) the consolidated version of production, take it through
        the gate, and promote it when it passes. A failure is reported, never charged to a
        request: the adapter lane has already done their deletions."""
        try:
            if job == "build":
                self.progress("consolidation due: training the model again without the "
                              "forgotten subjects")  # fmt: skip
                version = consolidation.consolidate(self.ws, progress=self.progress)
            assert version is not None
            status = self.ledger.versions.get(version)["status"]
            if status == "candidate":
                self.progress(f"consolidation: verify version {version}")
                status, _ = verify_version(self.ws, version, progress=self.progress)
            if status == "verified":
                promote(self.ws, version, reason="consolidation verified by run")
                status = "promoted"
            self.progress(f"consolidation: version {version} {status}")
            return {"version": version, "status": status, "why": _not_passed(self.ws, version)}
        except ForgetctlError as exc:
            self.progress(f"consolidation failed: {exc}")
            return {"version": version, "status": "error", "why": [str(exc)]}

    def _failed_attempt(self, row: RequestRow, step: str, error: str) -> None:
        """Count a failed attempt; retry from plan's output, or give up after max_retries."""
        attempts = row["attempts"] + 1
        with self.ledger.transaction():
            self.ledger.requests.record_failure(row["id"], step, attempts)
            if attempts > self.ws.policy_of(row).max_retries:
                self.ledger.requests.set_status(row["id"], "failed", step=step, error=error,
                                                attempts=attempts)  # fmt: skip
            elif row["status"] in ("applied", "verified"):
                self.ledger.requests.set_status(row["id"], "planned", retry=attempts,
                                                step=step, error=error)  # fmt: skip
            else:
                self.ledger.append_event("request.retry", request_id=row["id"], step=step,
                                         error=error, attempts=attempts)  # fmt: skip

    def drive(self, request_id: int) -> Outcome:
        row = self.ledger.requests.get(request_id)
        outcome = Outcome(request_id, row["ref"], row["status"], row["status"], due=row["due"],
                          days_left=days_left(row))  # fmt: skip
        start = time.perf_counter()
        while row["status"] in OPEN_STATUSES:
            try:
                outcome.steps.append(self._step(row))
            except (ForgetctlError, RuntimeError, OSError, ValueError) as exc:
                if "out of memory" in str(exc).lower():
                    raise  # the machine's limit, not the request's: the next run resumes it
                # A step that fails (a refused promotion, a missing file, a torch error)
                # costs the request one attempt; the run goes on with the others.
                step = NEXT_STEP[row["status"]]
                outcome.error = str(exc)
                self.progress(f"request {request_id}: {step} failed: {exc}")
                log.debug("step failure", exc_info=True)
                self._failed_attempt(row, step, str(exc))
            row = self.ledger.requests.get(request_id)
        outcome.end = row["status"]
        if outcome.end != "promoted" and "verify" in outcome.steps:
            outcome.why = _rejection(self.ws, request_id)
        version = _open_version(self.ws, request_id)
        if row["status"] == "promoted":
            outcome.version = self.ledger.aliases.get("production")
        elif version:
            outcome.version = version["id"]
        outcome.seconds = round(time.perf_counter() - start, 1)
        return outcome


def deadline_report(ws: Workspace) -> tuple[list, list]:
    """(due within the policy's warning window, overdue) among open requests."""
    soon, overdue = [], []
    for row in list_requests(ws):
        if row["status"] in OWED_STATUSES:
            # Overdue whatever its policy file's state; "due soon" needs the policy.
            info = summary(row, ws.policies.get(row["policy"]))
            if info["overdue"]:
                overdue.append(info)
            elif info.get("due_soon"):
                soon.append(info)
    return soon, overdue


def run(
    ws: Workspace,
    *,
    max_requests: int | None = None,
    dry_run: bool = False,
    progress: Progress = log_messages,
) -> RunSummary:
    """One cron run. Raises Locked if another run holds the lock."""
    ledger = ws.ledger
    summary_ = RunSummary(dry_run=dry_run)
    with run_lock(ws.home.lock_path) as stale:
        runner = Runner(ws, progress=progress)
        if stale is not None:
            summary_.lock_takeover = stale
            ledger.append_event("run.lock_takeover", dead_pid=stale)
        ready, summary_.skipped = runner.due()
        if max_requests is not None:
            ready = ready[:max_requests]
        if not dry_run:
            summary_.cleaned = clean_leftovers(ws)
            summary_.purged = purge_expired(ws)
            if ready:
                # No registered model is the home's problem, not the requests': refused
                # before any of them spends an attempt (NotFound, one line, exit 3).
                ledger.aliases.get("production")
                ledger.append_event("run.started", requests=[r["id"] for r in ready])
            for row in ready:
                summary_.outcomes.append(runner.drive(row["id"]))
            if (job := consolidation.due(ws)) is not None:
                done = summary_.consolidation = runner.consolidate(*job)
                if done["status"] == "promoted":  # its requests end forgotten, failed or not
                    covered = ledger.versions.get(done["version"])["requests"]
                    for o in summary_.outcomes:
                        if o.request_id in covered:
                            o.end, o.version = "promoted", done["version"]
                            o.steps.append("consolidated")
            if ready:
                ledger.append_event(
                    "run.finished",
                    outcomes={str(o.request_id): o.end for o in summary_.outcomes},
                )
        else:
            summary_.outcomes = [runner.preview(r) for r in ready]
        summary_.due_soon, summary_.overdue = deadline_report(ws)
    return summary_
