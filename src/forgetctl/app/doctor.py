"""`forgetctl doctor`: what is wrong with a home, and how to restore it.

Every read command refuses a damaged home with one line; this step looks at all of it
(the directory, the ledger file, its schema, the keys, the evidence chain, the policies,
the file modes) without changing anything: no ledger is created or migrated, no key is
made. Each finding names what is wrong and what to do.
"""

from __future__ import annotations

import stat
from dataclasses import asdict, dataclass

from forgetctl.app.home import Home
from forgetctl.core.errors import ForgetctlError
from forgetctl.core.files import PRIVATE_DIR, PRIVATE_FILE
from forgetctl.store import schema
from forgetctl.store.crypto import Keyring
from forgetctl.store.ledger import Ledger, file_problem

RESTORE = (
    "restore ledger.db and keys/ from the same backup (taken together: a ledger with "
    "another home's keys does not verify), then run `forgetctl ledger verify` (with "
    "--against an earlier `ledger export` if you anchored one)"
)


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def diagnose(home: Home) -> list[Finding]:
    """Every check of the home, in order; a failed one says how to fix it."""
    root = home.root
    if not root.is_dir():
        return [Finding("home", False, f"{root} is not a directory", "run `forgetctl init`")]
    found = [_mode("home", root, PRIVATE_DIR)]
    path = home.ledger_path
    if not path.exists():
        had_keys = home.keys.is_dir() and any(home.keys.glob("*.key"))
        fix = RESTORE if had_keys else "run `forgetctl init`"
        return [*found, Finding("ledger", False, f"{path} is missing", fix)]
    if problem := file_problem(path):
        return [*found, Finding("ledger", False, f"{path} {problem}", RESTORE)]
    found.append(_mode("ledger file", path, PRIVATE_FILE))
    keys = Keyring(home.keys)
    try:
        keys.check()
        found.append(Finding("keys", True, f"{home.keys}: index and head-signing keys"))
    except ForgetctlError as exc:
        found.append(Finding("keys", False, str(exc), RESTORE))
    try:
        ledger = Ledger(path, keys)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the finding
        return [*found, Finding("ledger", False, f"{path} cannot be opened ({exc})", RESTORE)]
    try:
        found += _ledger(ledger, home)
    finally:
        ledger.close()
    try:
        policies = home.policies()
        ok = bool(policies)
        detail = ", ".join(policies) if ok else f"no policies in {home.policies_dir}"
        found.append(Finding("policies", ok, detail, "" if ok else "run `forgetctl init`"))
    except ForgetctlError as exc:
        found.append(Finding("policies", False, str(exc), "fix the file (`policy check`)"))
    return found


def _ledger(ledger: Ledger, home: Home) -> list[Finding]:
    try:
        ledger.check_schema()
    except ForgetctlError as exc:
        return [Finding("schema", False, str(exc), RESTORE)]
    except Exception as exc:  # noqa: BLE001 - a damaged file raises sqlite errors
        return [Finding("schema", False, f"not a readable SQLite ledger ({exc})", RESTORE)]
    migrations = ledger.applied_migrations()
    pending = len(schema.MIGRATIONS) - len(migrations)
    later = f" ({pending} newer: the next command applies them)" if pending > 0 else ""
    found = [Finding("schema", True, f"{len(migrations)} migrations, last {migrations[-1]}{later}")]
    try:
        audit = ledger.audit()
    except ForgetctlError as exc:  # a missing key stops the audit: already a finding
        return [*found, Finding("evidence", False, str(exc), RESTORE)]
    if audit.ok:
        found.append(Finding("evidence", True, f"{audit.events} events, every row explained"))
    else:
        more = f" (and {len(audit.problems) - 1} more)" if len(audit.problems) > 1 else ""
        found.append(Finding("evidence", False, audit.problems[0] + more, RESTORE))
    ids = {r["id"] for r in ledger.requests.all()}
    orphans = sorted(set(Keyring(home.keys).request_key_ids()) - ids)
    found.append(
        Finding("payload keys", not orphans,
                f"keys of no request: {orphans}" if orphans else "one per request at most",
                "remove those files from keys/requests/" if orphans else "")
    )  # fmt: skip
    return found


def _mode(check: str, path, wanted: int) -> Finding:  # type: ignore[no-untyped-def]
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & ~wanted:
        return Finding(check, False, f"{path} is {mode:o}, readable by others",
                       f"chmod {wanted:o} {path} (`forgetctl init` does it)")  # fmt: skip
    return Finding(check, True, f"{path} is {mode:o}")
