"""The forgetctl home directory: where the ledger, keys, policies, models and adapters live."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from forgetctl.core.errors import LedgerCorrupt, NotFound
from forgetctl.core.policy import Policy, load_policies, packaged_policy_dir


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.db"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def policies_dir(self) -> Path:
        return self.root / "policies"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def lock_path(self) -> Path:
        return self.root / "run.lock"

    def exists(self) -> bool:
        return self.ledger_path.exists()

    def require(self) -> Home:
        if not self.exists():
            if self.keys.is_dir() and any(self.keys.glob("*.key")):
                # Its keys are here: this home had a ledger, and `init` would start a new
                # history, so say what was lost instead.
                raise LedgerCorrupt(
                    f"{self.ledger_path} is missing from an initialised home (keys/ holds "
                    "its keys): restore ledger.db from backup (`forgetctl doctor`)"
                )
            raise NotFound(f"no forgetctl home at {self.root} (run `forgetctl init`)")
        return self

    def policies(self) -> dict[str, Policy]:
        return load_policies(self.policies_dir)

    def create_dirs(self) -> None:
        for path in (self.root, self.keys, self.models, self.adapters, self.cache, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        self.keys.chmod(0o700)
        # Copy the packaged policies once; an operator's edits in the home are kept.
        self.policies_dir.mkdir(exist_ok=True)
        for src in packaged_policy_dir().iterdir():
            dest = self.policies_dir / src.name
            if src.is_file() and not dest.exists():
                shutil.copy2(src, dest)


def resolve_home(explicit: str | Path | None = None) -> Home:
    """--home, else $FORGETCTL_HOME, else ./.forgetctl."""
    raw = explicit or os.environ.get("FORGETCTL_HOME") or ".forgetctl"
    return Home(Path(raw).expanduser().resolve())
