"""Question/answer data files: JSONL loading with its checks, and the packaged sets.

General-knowledge files (``world_facts.jsonl``, ``real_authors.jsonl``) hold ``question``,
``answer`` and ``perturbed_answers``. These two sets of TOFU (Maini et al. 2024, MIT
licence) ship inside the package under ``forgetctl/data/`` so that retain and utility checks
work on a clean machine; ``builtin:NAME`` names them wherever a data file is accepted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forgetctl.core.errors import BadInput, NotFound

BUILTIN_DIR = Path(__file__).parents[1] / "data"


BUILTIN_PREFIX = "builtin:"


REQUIRED_FIELDS = ("question", "answer")


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl"))


def builtin_path(name: str) -> Path:
    path = BUILTIN_DIR / f"{name.removeprefix(BUILTIN_PREFIX)}.jsonl"
    if not path.is_file():
        raise NotFound(f"no builtin data set {name!r} (known: {', '.join(builtin_names())})")
    return path


def load_builtin(name: str) -> list[dict[str, Any]]:
    """A packaged data set by name: ``world_facts`` or ``real_authors`` (prefix optional)."""
    return load_jsonl(builtin_path(name))


def resolve_data(ref: str | Path) -> Path:
    """A data file path, or the packaged file for ``builtin:NAME``."""
    text = str(ref)
    if text.startswith(BUILTIN_PREFIX):
        return builtin_path(text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise NotFound(f"no data file at {path}")
    return path


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a question/answer JSONL file (``builtin:NAME`` accepted); blank lines skipped.

    Every row must be an object with string ``question`` and ``answer``.
    """
    path = resolve_data(path)
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(f"{path.name}:{lineno}: invalid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise BadInput(f"{path.name}:{lineno}: expected a JSON object")
            for field in REQUIRED_FIELDS:
                if not isinstance(row.get(field), str) or not row[field].strip():
                    raise BadInput(f"{path.name}:{lineno}: missing or empty {field!r}")
            rows.append(row)
    if not rows:
        raise BadInput(f"{path.name}: no rows")
    return rows
