"""The forgetctl home directory: where the ledger, keys, policies, models and adapters live."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from forgetctl.core.errors import BadInput, LedgerCorrupt, NotFound
from forgetctl.core.files import PRIVATE_DIR, PRIVATE_FILE
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
    def retain_corpus(self) -> Path:
        """The deployed model's training records that `init --retain-corpus` copied in."""
        return self.root / "retain-corpus.jsonl"

    @property
    def control_corpus(self) -> Path:
        """People the model never saw, that `init --control-corpus` copied in."""
        return self.root / "control-corpus.jsonl"

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

    def policies(self, broken: dict[str, str] | None = None) -> dict[str, Policy]:
        """The home's policies; with ``broken``, files that do not load are listed there."""
        return load_policies(self.policies_dir, broken)

    def create_dirs(self) -> None:
        # 0700: the home holds the ledger, the keys, corpora of personal data and reports;
        # tightened on every init, so an older home (0755) is closed too.
        for path in (self.root, self.keys, self.models, self.adapters, self.cache, self.logs):
            if path.exists() and not path.is_dir():
                raise BadInput(f"{path} exists and is not a directory: move it away first")
            path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
            path.chmod(PRIVATE_DIR)
        for path in (self.ledger_path, self.retain_corpus, self.control_corpus):
            if path.is_file() and not path.is_symlink():
                path.chmod(PRIVATE_FILE)
        # Copy the packaged policies once; an operator's edits in the home are kept.
        self.policies_dir.mkdir(exist_ok=True, mode=PRIVATE_DIR)
        for src in packaged_policy_dir().iterdir():
            dest = self.policies_dir / src.name
            if src.is_file() and not dest.exists():
                shutil.copy2(src, dest)


def resolve_home(explicit: str | Path | None = None) -> Home:
    """--home, else $FORGETCTL_HOME, else ./.forgetctl."""
    raw = explicit or os.environ.get("FORGETCTL_HOME") or ".forgetctl"
    return Home(Path(raw).expanduser().resolve())
