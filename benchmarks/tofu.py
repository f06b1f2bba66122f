"""TOFU benchmark: sequential deletion requests through forgetctl, against baselines.

    python benchmarks/tofu.py [--authors 20] [--forget 4] [--controls IDS] [--data FILE]
                              [--format plain|chat] [--seed S]

Each run writes ``results/runs/tofu-<commit>-<authors>-s<seed>.json`` (with its commit,
command and machine; ``tofu.json`` and ``tofu.md`` are the latest), and
``benchmarks/summarize.py`` makes the tables, mean and spread over seeds, from those files.

1. The deployed model: the default model (SmolLM2-135M) fully fine-tuned on K TOFU authors.
2. forgetctl: M GDPR requests (the first M authors), one after the other on one ledger,
   each driven by `forgetctl run`'s loop through plan, apply, verify (full precision, int4,
   relearning) and promote, with the policy's retries. After each request production is
   measured.
3. Baselines on the same deployed model and authors: no-op; gradient difference with what
   forgetctl had (its planned forget items and retain training items in every served
   format, the same LoRA, the same step budget), at the best of three learning rates, no
   gate; retraining from scratch (the base fine-tuned on the K-M retained authors only:
   the cost to beat). Every model is timed the same way, loading and saving included, and
   forgetctl's requests with their planning.
4. The kept-knowledge rows (other authors, world facts, real authors) are held out: no
   row trained on them (forgetctl's retain term trains on the other side of the same hash
   split, ``core.items.trains_retain``).

Measured per model: forget recall (ROUGE-L recall of the answer) on the original questions,
on TOFU's paraphrased questions (never used by planning) and on the planned indirect
questions, and on the original questions in every prompt format (chat, plain and the
held-out wrappers, ``completion`` among them; the deployed model is fine-tuned in
``--format``, plain by default); TOFU truth ratio on the forgotten authors; recall on
the other authors' questions, on world facts and on real authors; the gate's own int4
and relearn checks against the deployed model, the forgotten authors compared with
control authors of the data file that the deployed model never saw (``--controls``; the
pipeline's gate compares with the same authors): the int4 recovery (how much the gap to
the controls grew under NF4) and the share of the deployed model's knowledge that each
relearning attack brought back; and the field's metrics (``field.py``: TOFU forget
quality and model utility, MUSE KnowMem, VerbMem and PrivLeak against the retrained row).

Output: benchmarks/results/tofu.json, tofu.md and tofu.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from forgetctl.app import versions
from forgetctl.app.home import Home
from forgetctl.app.intake import add_request, parse_request
from forgetctl.app.plan_step import load_plan
from forgetctl.app.runner import Runner
from forgetctl.app.workspace import Workspace
from forgetctl.core.data import load_builtin
from forgetctl.core.formats import HELD_OUT, SERVED
from forgetctl.core.items import PromptItem, in_each_format, in_format, trains_retain
from forgetctl.core.policy import MethodConfig, VerifyConfig
from forgetctl.core.text import squash
from forgetctl.demo.deployed import build_deployed_model, deployed_manifest
from forgetctl.demo.tofu import author_ids, load_authors, pairs_of, select_authors
from forgetctl.lm.evaluate import TruthItem, evaluate, truth_ratio_forget, truth_ratios
from forgetctl.lm.prompts import formats_of, item_format
from forgetctl.lm.pull import pull_default
from forgetctl.lm.train import finetune
from forgetctl.lm.weights import load_model, write_model_files
from forgetctl.store.ledger import open_ledger
from forgetctl.unlearn.train import unlearn
from forgetctl.verify.checks import ForgetSet, run_checks

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import field  # noqa: E402  (benchmarks/field.py: the field's metrics, beside this file)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def items(rows, field: str, kind: str) -> list[PromptItem]:
    return [PromptItem(prompt=squash(r[field]), target=squash(str(r["answer"])), kind=kind)
            for r in rows]  # fmt: skip


def held_out(its: list[PromptItem]) -> list[PromptItem]:
    """The items no retain term trains on (the plan splits its retain side by this rule)."""
    return [i for i in its if not trains_retain(i)]


class Suite:
    """The fixed evaluation sets, measured the same way on every model."""

    def __init__(self, rows, forget_ids, retain_ids, cap: int, seed: int = 0):
        rng = random.Random(seed)
        self.forget_rows = {a: [r for r in rows if r["author_id"] == a] for a in forget_ids}
        # The kept-knowledge rows are held out: items on the side of the hash that forgetctl's
        # retain term never trains on (``core.items.trains_retain``), so no row trained on them.
        others = held_out(items([r for r in rows if r["author_id"] in retain_ids], "question",
                                "neighbor"))  # fmt: skip
        self.others = rng.sample(others, min(cap, len(others)))
        self.world = held_out(items(load_builtin("world_facts"), "question", "general"))[:cap]
        self.real = held_out(items(load_builtin("real_authors"), "question", "general"))[:cap]

    def measure(self, model, tokenizer, forgotten: list[int], indirect=()) -> dict:
        def recall(its):
            return evaluate(model, tokenizer, its, with_prob=False).mean("recall") if its else None

        def by_format() -> dict[str, float | None]:
            # The original questions in every format a server could use and in the held-out
            # wrappers (``completion``: each answer's prefix, continued), the worst decides.
            records = items(rows, "question", "record")
            return {fmt: recall(in_format(records, item_format(tokenizer, fmt)))
                    for fmt in formats_of(tokenizer, [*SERVED, *HELD_OUT])}  # fmt: skip

        def by_author(field: str, kind: str) -> tuple[float | None, dict[int, float | None]]:
            result = evaluate(model, tokenizer, items(rows, field, kind), with_prob=False)
            return result.mean(), {
                a: result.select([i for i, r in enumerate(rows) if r["author_id"] == a]).mean()
                for a in forgotten
            }

        rows = [r for a in forgotten for r in self.forget_rows[a]]
        truth = [
            TruthItem(r["question"], r["paraphrased_answer"], r["perturbed_answers"]) for r in rows
        ]
        original, original_by = by_author("question", "record")
        paraphrased, paraphrased_by = by_author("paraphrased_question", "paraphrase")
        return {
            "forget_original": original,
            "forget_paraphrased": paraphrased,
            "forget_by_author": {
                a: {"original": original_by[a], "paraphrased": paraphrased_by[a]} for a in forgotten
            },
            "forget_indirect": recall(list(indirect)),
            "forget_by_format": (per_format := by_format()),
            "forget_worst_format": max(
                (v for v in per_format.values() if v is not None), default=None
            ),  # fmt: skip
            "truth_ratio": truth_ratio_forget(truth_ratios(model, tokenizer, truth))
            if truth
            else None,
            "other_authors": recall(self.others),
            "world_facts": recall(self.world),
            "real_authors": recall(self.real),
        }


def forget_set(forget_rows, control_rows) -> ForgetSet:
    """The forgotten authors' questions, and each control author's, as the gate takes them."""
    control: dict[str, list[PromptItem]] = {}
    for r in control_rows:
        control.setdefault(r["author"], []).append(
            PromptItem(prompt=r["question"], target=r["answer"], kind="record")
        )
    return ForgetSet(items(forget_rows, "question", "record"), control)


def robustness(parent, model, tokenizer, forget: ForgetSet, suite: Suite, cfg: VerifyConfig):
    """The gate's int4 and relearn checks on ``model`` against ``parent`` (the deployed
    model), with the suite's other authors and general sets as the retain and utility side:
    their verdicts, reasons and figures, and the headline numbers (the int4 recovery of
    recall, the largest share any attack brought back)."""
    results = run_checks(
        parent, model, tokenizer, {"forgotten": forget}, suite.others, suite.world + suite.real,
        {}, cfg, checks=("int4", "relearn"),
    )  # fmt: skip
    by = {r.name: r for r in results}
    int4 = by["int4"].figures["requests"]["forgotten"]
    attacks = [
        {"attack": a["attack"], "attack_s": a["attack_s"],
         **{p: {m: row.get("share") for m, row in a[p].items()} for p in ("full", "int4")}}
        for a in by["relearn"].figures["requests"]["forgotten"].get("attacks", [])
    ]  # fmt: skip
    shares = [v for a in attacks for p in ("full", "int4") for v in a[p].values() if v is not None]
    return {
        "int4_recovery": int4.get("recovery", {}).get("recall", {}).get("recovery"),
        "relearn_share": max(shares, default=None),
        "gate": {
            "int4": {"verdict": by["int4"].verdict, "reasons": by["int4"].reasons,
                     "recovery": int4.get("recovery", {}),
                     "retain": by["int4"].figures.get("retain"),
                     "utility": by["int4"].figures.get("utility")},
            "relearn": {"verdict": by["relearn"].verdict, "reasons": by["relearn"].reasons,
                        "attacks": attacks},
        },
    }  # fmt: skip


def run_forgetctl(
    work: Path,
    deployed: Path,
    corpus: Path,
    suite: Suite,
    forget_ids,
    log,
    policies_dir=None,
    controls: Path | None = None,
    seed: int = 0,
) -> list[dict]:
    """One request per author, each driven to its end by `forgetctl run`'s loop (plan,
    apply, verify, promote, with the policy's retries), production measured after each.
    ``policies_dir``: policy files that replace the packaged ones; ``controls``: the control
    corpus the gate compares the forgotten authors with (else the built-in one); ``seed``:
    every policy's method seed."""
    home = Home(work / "home")
    if home.root.exists():
        shutil.rmtree(home.root)
    home.create_dirs()
    for src in Path(policies_dir).glob("*.toml") if policies_dir else ():
        shutil.copy2(src, home.policies_dir / src.name)
    for policy in home.policies_dir.glob("*.toml"):
        policy.write_text(with_method_seed(policy.read_text(), seed))
    ws = Workspace.open(home, create=True)
    versions.register_base(ws.ledger, deployed)
    (home.root / "retain-corpus.jsonl").write_bytes(corpus.read_bytes())
    if controls:
        (home.root / "control-corpus.jsonl").write_bytes(controls.read_bytes())
    runner = Runner(ws, progress=log)
    per_request, indirect = [], []
    for n, author in enumerate(forget_ids, 1):
        rows = suite.forget_rows[author]
        req = parse_request({
            "ref": f"TOFU-{author}", "regulation": "gdpr",
            "subject": {"name": rows[0]["author"] or f"author {author}"},
            "records": [{"question": r["question"], "answer": r["answer"]} for r in rows],
        })  # fmt: skip
        rid, _ = add_request(ws, req)
        outcome = runner.drive(rid)
        if outcome.end == "promoted":
            indirect += [i for i in load_plan(ws, rid).forget if i.kind == "indirect"]
        model, tokenizer = versions.load_version(ws, ws.ledger.aliases.get("production"))
        metrics = suite.measure(model, tokenizer, forget_ids[:n], indirect)
        per_request.append({
            "author": author, "request": rid, "status": outcome.end, "steps": outcome.steps,
            "seconds": outcome.seconds, "cumulative": metrics, "peak_rss_mb": round(peak_rss_mb()),
        })  # fmt: skip
        log(f"request {n}/{len(forget_ids)} author {author}: {outcome.end} "
            f"{outcome.steps} {outcome.seconds} s {metrics}")  # fmt: skip
    return per_request


def with_method_seed(policy: str, seed: int) -> str:
    """A policy file's text with ``[method] seed`` set (a TOML table's keys may come in any
    order, so the key goes right under the table's header)."""
    lines = [line for line in policy.splitlines() if not line.startswith("seed =")]
    if "[method]" not in lines:
        lines += ["", "[method]"]
    lines.insert(lines.index("[method]") + 1, f"seed = {seed}")
    return "\n".join(lines) + "\n"


def planning_seconds(home: Home) -> float:
    """Seconds the plan step took, over every request of a home (from its events)."""
    events = open_ledger(home.ledger_path).events()
    return sum(e["data"].get("figures", {}).get("timings_s", {}).get("total", 0.0) for e in events
               if e["kind"] == "request.status" and e["data"].get("to") == "planned")  # fmt: skip


def from_home(home: Home) -> list[dict]:
    """Per-version figures of a home that `forgetctl run` processed: what it trained, how
    long each step took, and what the gate decided."""
    ledger = open_ledger(home.ledger_path)
    rows = []
    for version in [v for v in ledger.versions.all() if v["kind"] == "adapter"]:
        checks = {c["check_name"]: c for c in ledger.verifications.of(version["id"])}
        rows.append({
            "version": version["id"], "requests": version["requests"], "status": version["status"],
            "training": version["metrics"],
            "checks": {n: {"passed": bool(c["passed"]), "verdict": c["verdict"],
                           "figures": c["figures"]} for n, c in checks.items()},
        })  # fmt: skip
    return rows


def table(results: dict) -> str:
    cols = ["forget_original", "forget_paraphrased", "forget_indirect", "forget_worst_format",
            "truth_ratio",
            "other_authors", "world_facts", "real_authors", "int4_recovery",
            "relearn_share", "wall_s"]  # fmt: skip
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in results["models"].items():
        cells = [f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, ""))
                 for c in cols]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verify_seconds(version_row: dict) -> float:
    """Seconds the gate spent measuring a version (a ``from_home`` row)."""
    return sum(c["figures"].get("wall_s", 0.0) for c in version_row["checks"].values())


def request_table(version_rows: list[dict]) -> str:
    """One row per version the pipeline built (``from_home``): what the gate decided and
    what it cost."""
    lines = ["| version | requests | status | steps | apply s | verify s | checks not passed |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in version_rows:
        failed = [n if c["verdict"] == "fail" else f"{n} ({c['verdict'].replace('_', ' ')})"
                  for n, c in r["checks"].items() if not c["passed"]]  # fmt: skip
        lines.append(
            f"| {r['version']} | {r['requests']} | {r['status']} | "
            f"{r['training'].get('steps')} | {r['training'].get('wall_s', 0):.0f} | "
            f"{verify_seconds(r):.0f} | {', '.join(failed) or '-'} |"
        )
    return "\n".join(lines)


KEEP_SHARE = 0.9
"""The baseline's best setting keeps at least this share of the deployed model's recall on
the other authors (else the sweep's best is the one that kept most)."""
BASELINE_LEARNING_RATES = (1e-5, 1e-4, 1e-3)


def baseline_sweep(deployed, forget, retain, steps, suite, forget_ids, keep, seed, log):
    """Gradient difference (ascent on the forget items, NLL on the retain items) at each
    learning rate, the same LoRA on the same layers as forgetctl's adapter and the same
    step budget: (row name, model, tokenizer, seconds) of the best setting, and the sweep.
    The best forgets most (recall on the forgotten authors' questions) among the settings
    that keep ``keep`` recall on the other authors."""
    rows = [r for a in forget_ids for r in suite.forget_rows[a]]
    questions = items(rows, "question", "record")
    best, sweep = None, []
    for lr in BASELINE_LEARNING_RATES:
        t = time.perf_counter()
        model, tokenizer = load_model(deployed)
        method = MethodConfig(objective="grad_diff", retain_term="nll", learning_rate=lr,
                              max_steps=steps, seed=seed)  # fmt: skip
        model = unlearn(model, tokenizer, forget, retain, method).model
        wall = time.perf_counter() - t
        forgot = evaluate(model, tokenizer, questions, with_prob=False).mean("recall")
        kept = evaluate(model, tokenizer, suite.others, with_prob=False).mean("recall")
        sweep.append({"learning_rate": lr, "forget_original": forgot, "other_authors": kept,
                      "wall_s": round(wall, 1)})  # fmt: skip
        log(f"baseline lr {lr}: forget {forgot:.3f}, other authors {kept:.3f}, {wall:.0f} s")
        rank = (kept >= keep, -forgot if kept >= keep else kept)
        if best is None or rank > best[0]:
            best = (rank, lr, model, tokenizer, wall)
    _, lr, model, tokenizer, wall = best
    return f"gradient difference (best lr: {lr:g})", model, tokenizer, wall, sweep


def cost_ratio(results: dict, per_request_s: float, records_per_author: int = 20) -> dict:
    """Retraining cost (loading, training and saving, as forgetctl's requests are timed)
    against forgetctl's per-request cost, measured and extrapolated to K=40: retraining
    time is linear in the retained records (fixed epochs and batch)."""
    stats = results.get("retrain_training")
    if not stats or not per_request_s:
        return {}
    per_record = stats["wall_s"] / stats["pairs"]
    k40 = per_record * (40 - results["config"]["forget"]) * records_per_author
    return {
        "retrain_s": stats["wall_s"],
        "retrain_records": stats["pairs"],
        "forgetctl_per_request_s": round(per_request_s, 1),
        "ratio_measured": round(stats["wall_s"] / per_request_s, 2),
        "retrain_s_k40_extrapolated": round(k40, 1),
        "ratio_k40": round(k40 / per_request_s, 2),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["forget_original", "forget_paraphrased", "other_authors", "world_facts"]
    names = list(results["models"])
    fig, ax = plt.subplots(figsize=(9, 3.8), dpi=110)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [results["models"][name].get(m) or 0.0 for m in metrics]
        ax.bar([k + i * width for k in range(len(metrics))], vals, width, label=name)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(metrics))], metrics)
    ax.set_ylabel("answer recall")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(f"TOFU: K={results['config']['authors']} authors, "
                 f"M={results['config']['forget']} forgotten")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", default=str(ROOT.parent.parent / "shared/data/tofu/authors.jsonl")
    )
    parser.add_argument("--authors", type=int, default=20, help="K: authors in the deployed model")
    parser.add_argument("--forget", type=int, default=4, help="M: sequential requests")
    parser.add_argument("--eval-cap", type=int, default=40, help="items per retain/utility set")
    parser.add_argument(
        "--format", default="plain", choices=["plain", "chat"],
        help="the prompt format the deployed model is fine-tuned (and retrained) in; plain, "
        "as many fine-tunes are, is not the one forgetctl would assume (the chat template)",
    )  # fmt: skip
    parser.add_argument("--work", default=str(ROOT / ".work"))
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--skip-retrain", action="store_true")
    parser.add_argument(
        "--seed", type=int, default=0,
        help="seeds the evaluation samples, forgetctl's method, the baseline and the "
        "retraining (the deployed model stays seed 0); run 0, 1 and 2 for the spread",
    )  # fmt: skip
    parser.add_argument(
        "--forget-ids", help="author ids to forget (default: the first M), e.g. 1,3"
    )
    parser.add_argument(
        "--controls",
        help="control author ids, never in the deployed model, e.g. 20,21 (default: the two "
        "authors of --data after the deployed ones)",
    )
    parser.add_argument(
        "--policies", help="a directory of policy files (*.toml) that replace the packaged ones"
    )
    parser.add_argument(
        "--home",
        help="measure a forgetctl home whose `run` already processed --forget-ids (its base "
        "version is the deployed model) instead of running the pipeline here",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str, done: int | None = None, total: int | None = None, /, **_: float) -> None:
        if done is None:  # a message; bars are for a terminal
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    base = pull_default(work / "smollm2-135m", work / "wheels")
    rows = load_authors(args.data)
    if args.home:
        if not args.forget_ids:
            parser.error("--home needs --forget-ids: the authors its requests named")
        home = Home(Path(args.home))
        deployed = Path(open_ledger(home.ledger_path).versions.get(0)["base_path"])
        manifest = deployed_manifest(deployed)
        ids = [a["author_id"] for a in manifest["authors"]]
    else:
        ids = select_authors(rows, args.authors)[0]
        t = time.perf_counter()
        deployed, manifest = build_deployed_model(
            base, args.data, ids, work / f"deployed-{args.authors}-{args.format}", fmt=args.format
        )
        log(f"deployed model: {time.perf_counter() - t:.0f} s (cached if fast)")
    selected = select_authors(rows, ids)[1]
    if args.controls:
        control_ids = [int(a) for a in args.controls.split(",")]
    else:
        known = author_ids(rows)
        after = known[max(known.index(a) for a in ids) + 1 :]
        control_ids = [a for a in after if a not in ids][:2]
    if not control_ids or set(control_ids) & set(ids):
        parser.error("--controls: authors of --data that are not in the deployed model")
    control_rows = select_authors(rows, control_ids)[1]
    controls = work / "controls.jsonl"
    controls.write_text("".join(json.dumps(r) + "\n" for r in control_rows))
    forget_ids = (
        [int(a) for a in args.forget_ids.split(",")] if args.forget_ids else ids[: args.forget]
    )
    retain_ids = [a for a in ids if a not in forget_ids]
    args.authors, args.forget = len(ids), len(forget_ids)
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in selected))
    suite = Suite(selected, forget_ids, retain_ids, args.eval_cap, seed=args.seed)
    # TOFU's and MUSE's metrics on every row; the control authors are PrivLeak's holdout.
    field_sets = field.tofu_sets(rows, forget_ids, retain_ids, control_ids, args.eval_cap)
    cfg = VerifyConfig()
    forget_rows = [r for a in forget_ids for r in suite.forget_rows[a]]
    forgotten = forget_set(forget_rows, control_rows)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False, cwd=ROOT).stdout.strip()  # fmt: skip
    results: dict = {"commit": commit, "command": " ".join(sys.argv),
                     "measured": time.strftime("%Y-%m-%d %H:%M"),
                     "config": vars(args) | {"control_ids": control_ids,
                                              "machine": platform.processor() or platform.machine(),
                                              "threads": torch.get_num_threads()},
                     "deployed_training": manifest["training"], "models": {}}  # fmt: skip

    parent = load_model(deployed)[0]

    def record(name, model, tokenizer, wall, indirect=()):
        row = suite.measure(model, tokenizer, forget_ids, indirect)
        row.update(robustness(parent, model, tokenizer, forgotten, suite, cfg))
        row["field"] = field.measure(model, tokenizer, field_sets)
        row["wall_s"] = round(wall, 1)
        results["models"][name] = row
        log(f"{name}: {row}")

    model, tokenizer = load_model(deployed)
    record("no-op (deployed)", model, tokenizer, 0.0)

    if args.home:
        per_request = from_home(home)
        # plan, apply and verify of every request and version the run built, as the default
        # mode times them (promotion is instant)
        total = planning_seconds(home) + sum(
            r["training"].get("wall_s", 0.0) + verify_seconds(r) for r in per_request
        )
    else:
        per_request = run_forgetctl(work, deployed, corpus, suite, forget_ids, log,
                                    args.policies, controls, args.seed)  # fmt: skip
        home = Home(work / "home")
        # plan, apply, verify and promote of every request, retries included
        total = sum(r["seconds"] for r in per_request)
    results["forgetctl_requests"] = per_request
    # The ledger's per-version rows (already read in --home mode), for the gate's table.
    version_rows = per_request if args.home else from_home(home)
    ws = Workspace.open(home)
    model, tokenizer = versions.load_version(ws, ws.ledger.aliases.get("production"))
    # Every request the pipeline handled (a version row lists its requests, a row built
    # here names one), promoted or not.
    handled = sorted(
        {rid for r in per_request for rid in r.get("requests", [r.get("request")])} - {None}
    )
    indirect = [i for rid in handled for i in load_plan(ws, rid).forget if i.kind == "indirect"]
    record("forgetctl", model, tokenizer, total, indirect)

    # The baseline gets what forgetctl got: the requests' planned prompt sets (the forget
    # items, the retain side's training half) in every served format, forgetctl's step
    # budget for that many requests, and a learning-rate sweep, reported at its best.
    plans = [load_plan(ws, rid) for rid in handled]
    formats = [item_format(tokenizer, f) for f in versions.serving_formats(ws.ledger, tokenizer)]
    keep = KEEP_SHARE * results["models"]["no-op (deployed)"]["other_authors"]
    name, model, tokenizer, wall, results["baseline_sweep"] = baseline_sweep(
        deployed, in_each_format([i for p in plans for i in p.forget], formats),
        in_each_format([i for p in plans for i in p.split_retain()[0]], formats),
        MethodConfig().max_steps * max(1, len(handled)), suite, forget_ids, keep, args.seed, log,
    )  # fmt: skip
    record(name, model, tokenizer, wall, indirect)

    if not args.skip_retrain:
        # Timed as forgetctl's requests are: loading, training and saving the model.
        t = time.perf_counter()
        model, tokenizer = load_model(base)
        retained = [r for r in selected if r["author_id"] in retain_ids]
        epochs = manifest["training"]["epochs"]
        lr = manifest["training"]["learning_rate"]
        pairs = [(q, a, manifest.get("format")) for q, a in pairs_of(retained)]
        stats = finetune(model, tokenizer, pairs, epochs=epochs, learning_rate=lr,
                         batch_size=manifest["training"]["batch_size"], seed=args.seed)  # fmt: skip
        write_model_files(model, tokenizer, work / f"retrained-s{args.seed}", {})
        wall = time.perf_counter() - t
        results["retrain_training"] = stats | {"wall_s": round(wall, 1)}
        record("retrain from scratch", model, tokenizer, wall, indirect)

    field_rows = {name: row["field"] for name, row in results["models"].items()}
    reference = "retrain from scratch"
    if reference in field_rows:
        results["field"] = field.against(field_rows, reference)
    results["peak_rss_mb"] = round(peak_rss_mb())
    # Per request, retries included: a request that needed two candidates cost both.
    results["cost"] = cost_ratio(results, total / max(1, len(handled)))
    # Every run keeps its own file; tofu.json and tofu.md are the latest run's.
    run_name = f"tofu-{commit}-{'-'.join(map(str, forget_ids))}-s{args.seed}"
    for path in (out / "tofu.json", out / "runs" / f"{run_name}.json"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(results, indent=1, default=str))
    md = [table(results), "", request_table(version_rows), "", f"cost: {results['cost']}"]
    if "field" in results:
        md += ["", "In the field's metrics (benchmarks/field.py):", "",
               field.table(field_rows, reference)]  # fmt: skip
    (out / "tofu.md").write_text("\n".join(md) + "\n")
    plot(results, out / "tofu.png")
    log("\n" + table(results))


if __name__ == "__main__":
    main()
