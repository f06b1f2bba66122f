"""The benchmark's tables, generated from its result files: each figure as the mean and the
spread (sample standard deviation) over the runs of one setting, usually its seeds.

    python benchmarks/summarize.py benchmarks/results/runs/tofu-*.json > table.md

Runs are grouped by their setting (authors forgotten, K, prompt format); each row is a
model of the run, each cell ``mean ± sd`` with the number of runs, so README tables come
from committed files rather than by hand.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

COLUMNS = ("forget_original", "forget_paraphrased", "forget_worst_format", "other_authors",
           "world_facts", "real_authors", "relearn_share", "wall_s")  # fmt: skip
FIELD = ("forget_quality", "privleak")


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3g} (1 run)"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g} ({len(values)})"


def figures(runs: list[dict], model: str, key: str) -> list[float]:
    """One figure of one model, per run that has it."""
    found = []
    for run in runs:
        row = run["models"].get(model, {})
        if key in FIELD:  # compared with the run's retrained row
            value = run.get("field", {}).get(model, {}).get(key)
        else:
            value = row.get("field", {}).get(key) if key == "model_utility" else row.get(key)
        if isinstance(value, int | float):
            found.append(float(value))
    return found


def setting(run: dict) -> str:
    config = run["config"]
    ids = config.get("forget_ids") or f"first {config['forget']}"
    return f"K={config['authors']}, forget {ids}, format {config.get('format', 'chat')}"


def tables(runs: list[dict]) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        groups[setting(run)].append(run)
    out = []
    for name, group in sorted(groups.items()):
        commits = sorted({r.get("commit", "?") for r in group})
        seeds = sorted(r["config"].get("seed", 0) for r in group)
        out += [f"### {name} (seeds {seeds}, commits {', '.join(commits)})", ""]
        heads = [*COLUMNS, *FIELD, "model_utility"]
        out += ["| model | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
        models = dict.fromkeys(m for r in group for m in r["models"])
        for model in models:
            out.append(f"| {model} | " + " | ".join(cell(figures(group, model, h))
                                                     for h in heads) + " |")  # fmt: skip
        out.append("")
    return "\n".join(out)


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]]
    if not paths:
        sys.exit("usage: summarize.py RESULT.json ...")
    print(tables([json.loads(p.read_text()) for p in paths]))


if __name__ == "__main__":
    main()
