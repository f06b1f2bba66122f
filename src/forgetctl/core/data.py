"""Question/answer data files: JSONL loading with its checks, and the packaged sets.

The packaged sets, under ``forgetctl/data/``, so that the gate works on a clean machine;
``builtin:NAME`` names them wherever a data file is accepted:

- general knowledge (``question``, ``answer``, ``perturbed_answers``): ``world_facts`` and
  ``real_authors`` from TOFU (Maini et al. 2024, MIT licence), and ``basic_facts``, written
  for forgetctl (capitals, symbols, basic science, well-known works);
- ``controls``: fictitious people no model has seen, with TOFU-shaped records (``author``,
  ``question``, ``answer``), the default control corpus of the gate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgetctl.core.errors import BadInput, NotFound
from forgetctl.core.files import read_text
from forgetctl.core.inputs import loads_json

BUILTIN_DIR = Path(__file__).parents[1] / "data"


BUILTIN_PREFIX = "builtin:"


REQUIRED_FIELDS = ("question", "answer")


MAX_DATA_BYTES = 512 * 1024 * 1024
"""Corpora (retain, control, general sets) are larger than request files, but bounded."""


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl"))


def builtin_path(name: str) -> Path:
    path = BUILTIN_DIR / f"{name.removeprefix(BUILTIN_PREFIX)}.jsonl"
    if not path.is_file():
        raise NotFound(f"no builtin data set {name!r} (known: {', '.join(builtin_names())})")
    return path


def load_builtin(name: str) -> list[dict[str, Any]]:
    """A packaged data set by name (``builtin_names()``; the prefix is optional)."""
    return load_jsonl(builtin_path(name))


def resolve_data(ref: str | Path) -> Path:
    """A data file path, or the packaged file for ``builtin:NAME``."""
    text = str(ref)
    if text.startswith(BUILTIN_PREFIX):
        return builtin_path(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise NotFound(f"no data file at {path}")
    return path


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a question/answer JSONL file (``builtin:NAME`` accepted); blank lines skipped.

    Every row must be an object with string ``question`` and ``answer``.
    """
    path = resolve_data(path)
    rows: list[dict[str, Any]] = []
    # The bounded reader refuses FIFOs and devices; lines split at "\n" only (U+2028 and
    # U+0085 are valid inside a JSON string).
    for lineno, line in enumerate(read_text(path, MAX_DATA_BYTES).split("\n"), 1):
        if line.strip():
            row = loads_json(line, f"{path.name}:{lineno}")
            if not isinstance(row, dict):
                raise BadInput(f"{path.name}:{lineno}: expected a JSON object")
            for field in REQUIRED_FIELDS:
                if not isinstance(row.get(field), str) or not row[field].strip():
                    raise BadInput(f"{path.name}:{lineno}: missing or empty {field!r}")
            rows.append(row)
    if not rows:
        raise BadInput(f"{path.name}: no rows")
    return rows


def check_control_corpus(rows: list[dict[str, Any]], where: str | Path) -> None:
    """A control corpus names its people: every row has an ``author``, and there are at
    least two of them (a request is compared with two control subjects by default)."""
    for i, row in enumerate(rows, 1):
        if not str(row.get("author") or "").strip():
            raise BadInput(f"{where}: row {i} has no 'author' (a control corpus names its people)")
    if len({row["author"] for row in rows}) < 2:
        raise BadInput(f"{where}: a control corpus needs at least two people")
