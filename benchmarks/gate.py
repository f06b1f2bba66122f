"""Gate calibration: the verification gate run on models whose truth is known.

    python benchmarks/gate.py --deployed DIR --retrained DIR [--forget 1,3] [--items 48]

For each forgotten author (one GDPR request each, planned by forgetctl's own plan step on
the deployed model, with control subjects drawn from authors the deployed model never saw):

- **no-op**: the deployed model itself. The gate must fail it (forget, membership, relearn).
- **retrained**: the base fine-tuned without the forgotten authors (``--retrained``, built
  by ``forgetctl demo build-model`` on the other authors). The gate must pass it.
- **gradient ascent**: the deployed model after full-model gradient ascent on the author's
  records (no retain term): it must fail (forgetting by damage shows as a tell or a drop).
- **forgetctl**: the candidate `forgetctl apply` trains on the plan (first attempt).
  ``forgetctl:key=value:...`` is a candidate trained with those fields of the policy's
  ``MethodConfig`` replaced (``--models forgetctl:objective=distill:reset_strength=0.5``),
  to compare methods; ``--base DIR`` registers the pretrained base the deployed model was
  fine-tuned from (what ``distill`` and ``reset_strength`` need).

Every model is judged by the same gate (``verify.checks.run_checks``, every check but
regression, the gdpr policy's thresholds) against the deployed model as parent. On a CPU
the forget, control and kept sets can be subsampled (``--items``, ``--kept``); the parent's
scores are cached, so it is measured once per author.

Output: ``benchmarks/results/gate-<authors>.json`` and ``.md`` (with the commit, the
command and the machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from forgetctl.app import versions
from forgetctl.app.apply_step import apply_request
from forgetctl.app.home import Home
from forgetctl.app.intake import add_request, parse_request
from forgetctl.app.plan_step import load_plan, plan_request_step
from forgetctl.app.workspace import Workspace
from forgetctl.core.items import sample_by_kind
from forgetctl.core.policy import ALL_CHECKS, AttackConfig, MethodConfig
from forgetctl.demo.tofu import load_authors, pairs_of
from forgetctl.lm.prompts import formats_of
from forgetctl.lm.train import finetune_steps
from forgetctl.lm.weights import load_model
from forgetctl.store.scores import ScoreCache
from forgetctl.verify.checks import ForgetSet, in_formats, run_checks

ROOT = Path(__file__).resolve().parent
CHECKS = [c for c in ALL_CHECKS if c != "regression"]
SWEEP = [
    *(AttackConfig(mode="full", learning_rate=lr, steps=20) for lr in (1e-6, 1e-5, 1e-4, 1e-3)),
    AttackConfig(mode="full", learning_rate=1e-5, steps=60),
    *(AttackConfig(mode="lora", learning_rate=lr, steps=20) for lr in (1e-4, 1e-3)),
    AttackConfig(mode="retain", learning_rate=1e-5, steps=20),
]
"""The attack settings compared to choose the policy's default suite (the literature sweeps
full fine-tuning from 1e-6 to 1e-3; a LoRA attack; benign fine-tuning on retain data)."""


def log(msg: str, done: int | None = None, total: int | None = None, /, **_: float) -> None:
    if done is None:  # a message; bars are for a terminal
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def key_figures(result) -> dict:
    """The figures a reader compares across models, per check (per prompt format, keyed as
    the gate keys a request's formats, for the checks judged per request)."""
    f = result.figures
    if result.name in ("retain", "utility"):
        return {k: f.get(k) for k in ("n", "acc", "recall")}
    return {key: _part_figures(result.name, part) for key, part in f.get("requests", {}).items()}


def _part_figures(name: str, part: dict):
    if name == "forget":
        units = part.get("units", {})
        out = {m: {k: units.get("all", {}).get(m, {}).get(k)
                   for k in ("subject", "control", "gap", "limit", "parent_gap")}
               for m in ("acc", "recall", "leakage")}  # fmt: skip
        out["kinds"] = {
            kind: {"n": u["n"], "control_n": u.get("control_n"), "judged": u["judged"],
                   "acc_gap": u["acc"]["gap"], "acc_limit": u["acc"].get("limit"),
                   "acc_parent_gap": u["acc"].get("parent_gap")}
            for kind, u in units.items() if kind != "all"
        }  # fmt: skip
        return out
    if name in ("membership", "tell"):
        return {k: v for k, v in part.items() if not isinstance(v, dict | list)}
    if name == "int4":
        return part.get("recovery", {})
    if name == "relearn":
        return [
            {"attack": a["attack"], "attack_s": a["attack_s"],
             **{f"{p}_{m}": a[p][m].get("share") for p in ("full", "int4")
                for m in ("acc", "recall", "leakage")},
             "acc": {k: a["full"]["acc"].get(k)
                     for k in ("parent", "subject_before", "subject_after", "control_before",
                               "control_after", "gain", "allowance", "after_gap_share")}}
            for a in part.get("attacks", [])
        ]  # fmt: skip
    return {}


def method_of(ws: Workspace, rid: int, name: str) -> MethodConfig:
    """The policy's method with the overrides of a ``forgetctl:key=value:...`` model name
    (``,`` separates the models of ``--models``)."""
    method = ws.policy_of(ws.ledger.requests.get(rid)).method
    overrides = dict(kv.split("=", 1) for kv in name.split(":")[1:])
    return MethodConfig.model_validate({**method.model_dump(), **overrides})


def candidate(ws: Workspace, rid: int, name: str) -> dict:
    """The version of candidate ``name`` for request ``rid``: trained now unless an earlier
    run trained one with the same method. The request goes back to planned, so that the
    next method is applied to the same plan."""
    method = method_of(ws, rid, name)
    for version in ws.ledger.versions.of_request(rid):
        if version["metrics"].get("method") == method.model_dump():
            return version
    vid = apply_request(ws, rid, method=method)
    ws.ledger.requests.set_status(rid, "planned")
    return ws.ledger.versions.get(vid)


APPLY_FIGURES = ("wall_s", "steps", "stop_reason", "forget_accuracy_before",
                 "forget_accuracy_after", "pretrained_forget_accuracy", "target_forget_accuracy",
                 "retain_accuracy_before", "retain_accuracy_after", "reset_captured",
                 "trainable_params", "layers", "guard_trips", "repaired_at_step")  # fmt: skip


def build(name: str, ws: Workspace, rid: int, deployed: Path, retrained: str, records: list):
    """The model ``name`` for request ``rid``, the seconds it took to make, and for a
    forgetctl candidate its apply figures (with the adapter's size on disk)."""
    t, info = time.perf_counter(), {}
    if name == "no-op":
        model = load_model(deployed)[0]
    elif name == "retrained":
        model = load_model(retrained)[0]
    elif name == "gradient ascent":
        model, tokenizer = load_model(deployed)
        finetune_steps(model, tokenizer, pairs_of(records), 40, learning_rate=1e-5, ascent=True)
    elif name.split(":")[0] == "forgetctl":
        version = candidate(ws, rid, name)
        model = versions.load_version(ws, version["id"])[0]
        info = {k: version["metrics"].get(k) for k in APPLY_FIGURES}
        files = Path(version["adapter_path"]).rglob("*")
        info["adapter_bytes"] = sum(f.stat().st_size for f in files if f.is_file())
    else:
        raise SystemExit(f"unknown model {name!r}")
    return model, time.perf_counter() - t, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deployed", required=True, help="the deployed model directory")
    parser.add_argument("--retrained", required=True, help="the base trained without them")
    parser.add_argument(
        "--data", default=str(ROOT.parent.parent / "shared/data/tofu/authors.jsonl")
    )
    parser.add_argument("--forget", default="1,3", help="author ids, one request each")
    parser.add_argument("--controls", default="10-19", help="author ids never deployed")
    parser.add_argument("--items", type=int, default=48, help="forget/control items per set")
    parser.add_argument("--kept", type=int, default=240,
                        help="retain/utility items per set (utility needs 200)")  # fmt: skip
    parser.add_argument("--models", default="no-op,retrained,gradient ascent,forgetctl")
    parser.add_argument("--checks", default=",".join(CHECKS), help="checks to (re)run")
    parser.add_argument(
        "--formats", default="chat,plain",
        help="the serving formats the gate judges (with the held-out wrappers), as `init` "
        "registers them by default",
    )  # fmt: skip
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="run only the relearning check, with every attack of SWEEP",
    )
    parser.add_argument("--base", help="the pretrained model the deployed one was tuned from")
    parser.add_argument("--work", default=str(ROOT / ".work" / "gate"))
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    lo, hi = (int(x) for x in args.controls.split("-"))
    forget_ids = [int(a) for a in args.forget.split(",")]
    rows = load_authors(args.data)
    deployed = Path(args.deployed)
    manifest = json.loads((deployed / "forgetctl-deployed.json").read_text())
    deployed_ids = {a["author_id"] for a in manifest["authors"]}
    # Neighbours are people both models learned: an author the retrained model lacks (every
    # author of its batch, not only --forget) is no knowledge it could keep.
    retrained_manifest = json.loads((Path(args.retrained) / "forgetctl-deployed.json").read_text())
    kept_ids = deployed_ids & {a["author_id"] for a in retrained_manifest["authors"]}
    control_ids = set(range(lo, hi + 1))
    if control_ids & deployed_ids:
        parser.error("control authors must not be in the deployed model")
    work = Path(args.work)  # kept between runs: plans, candidates and scores are reused
    home = Home(work / "home")
    home.create_dirs()
    ws = Workspace.open(home, create=True)
    # Served in the formats the gate judges: apply trains in those.
    formats = args.formats.split(",")
    versions.register_base(ws.ledger, deployed, formats, pretrained=args.base and Path(args.base))
    (home.root / "retain-corpus.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows if r["author_id"] in kept_ids)
    )
    (home.root / "control-corpus.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows if r["author_id"] in control_ids)
    )
    cache = ScoreCache(work / "scores.sqlite", lambda m: m)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()  # fmt: skip
    # An earlier run's results are kept: a rerun replaces only the checks it runs, each
    # check stamped with the commit and command that measured it.
    stem = Path(args.out) / f"gate-{'-'.join(map(str, forget_ids))}{'-sweep' if args.sweep else ''}"
    old = stem.with_suffix(".json")
    results: dict = json.loads(old.read_text()) if old.exists() else {"authors": {}}
    results.update({
        "command": " ".join(sys.argv), "commit": commit,
        "machine": f"{platform.machine()} {platform.processor()} {torch.get_num_threads()} threads",
        "deployed": str(deployed), "retrained": args.retrained, "sweep": args.sweep,
        "retain_authors": sorted(kept_ids),
    })  # fmt: skip
    wanted = [m.strip() for m in args.models.split(",")]
    for author in forget_ids:
        mine = [r for r in rows if r["author_id"] == author]
        req = parse_request({
            "ref": f"TOFU-{author}", "regulation": "gdpr", "subject": {"name": mine[0]["author"]},
            "records": [{"question": r["question"], "answer": r["answer"]} for r in mine],
        })  # fmt: skip
        rid, _ = add_request(ws, req)
        t = time.perf_counter()
        if ws.ledger.requests.get(rid)["status"] == "received":
            plan_request_step(ws, rid, progress=log)
        plan_s = time.perf_counter() - t
        plan = load_plan(ws, rid)
        seed = f"gate/{author}"
        planned = ForgetSet(plan.forget, plan.control)
        forget = sample_by_kind(planned.items, args.items, seed)
        control = {n: sample_by_kind(i, args.items, seed) for n, i in plan.control.items()}
        _, held = plan.split_retain()
        neighbors = sample_by_kind([i for i in held if i.kind != "general"], args.kept, seed)
        general = sample_by_kind([i for i in held if i.kind == "general"], args.kept, seed)
        cfg = ws.policy_of(ws.ledger.requests.get(rid)).verify
        checks = [c.strip() for c in args.checks.split(",")]
        if args.sweep:
            checks, cfg = ["relearn"], cfg.model_copy(update={"relearn_attacks": SWEEP})
        entry: dict = results["authors"].get(str(author)) or {"models": {}}
        entry.update({"name": mine[0]["author"], "plan_s": round(plan_s, 1),
                       "sizes": {"forget": len(forget), "control": sum(map(len, control.values())),
                                 "retain": len(neighbors), "utility": len(general),
                                 "forget_planned": len(plan.forget),
                                 "not_compared": planned.uncompared}})  # fmt: skip
        parent, tokenizer = load_model(deployed)

        for name in wanted:
            log(f"author {author}: building {name}")
            model, build_s, info = build(name, ws, rid, deployed, args.retrained, mine)
            log(f"author {author}: gate on {name}")
            t = time.perf_counter()
            # The no-op model has the parent's weights: its scores are the parent's.
            key = "deployed" if name == "no-op" else f"{author}/{name}"
            sets = in_formats({str(rid): ForgetSet(forget, control)}, tokenizer,
                              formats_of(tokenizer, formats))  # fmt: skip
            verdicts = run_checks(
                parent, model, tokenizer, sets, neighbors,
                general, {}, cfg, checks=checks, progress=log, cache=cache,
                model_keys=("deployed", key),
            )  # fmt: skip
            row = entry["models"].setdefault(name, {"checks": {}})
            row.update(build_s=round(build_s, 1), gate_s=round(time.perf_counter() - t, 1))
            if info:
                row["apply"] = info
            row["checks"].update({
                r.name: {"verdict": r.verdict, "wall_s": r.figures.get("wall_s"),
                         "figures": key_figures(r), "reasons": r.reasons, "commit": commit[:10]}
                for r in verdicts
            })  # fmt: skip
            log(f"author {author} {name}: " + ", ".join(f"{r.name} {r.verdict}" for r in verdicts))
            del model
            results["authors"][str(author)] = entry
            write(results, stem)


def write(results: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    lines = [f"Gate calibration, last run at commit {results['commit'][:10]} (each check's "
             f"commit is in the .json), {results['machine']}",
             f"command: `{results['command']}`", ""]  # fmt: skip
    for author, entry in results["authors"].items():
        lines += [
            f"## author {author} ({entry['name']}), sizes {entry['sizes']}", "",
            "| model | " + " | ".join(CHECKS) + " | measured at |",
            "|---" * (len(CHECKS) + 2) + "|",
        ]  # fmt: skip
        for name, m in entry["models"].items():
            cells = [m["checks"].get(c, {}).get("verdict", "-") for c in CHECKS]
            # Rows of a run before checks were stamped have no commit of their own.
            at = sorted({c.get("commit", "earlier") for c in m["checks"].values()})
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {', '.join(at)} |")
        lines += [
            "", "Relearning attacks, recovered share (full precision / int4):", "",
            "| model | attack | acc | recall | leakage | seconds |", "|---" * 6 + "|",
        ]  # fmt: skip
        for name, m in entry["models"].items():
            figures = m["checks"].get("relearn", {}).get("figures") or {}
            if isinstance(figures, list):  # results of a run before formats: one request
                figures = {"": figures}
            for key, attacks in figures.items():
                where = f"{name} {key[key.find('[') :]}" if "[" in key else name
                for a in attacks:
                    cells = [f"{a[f'full_{x}']} / {a[f'int4_{x}']}"
                             for x in ("acc", "recall", "leakage")]  # fmt: skip
                    lines.append(f"| {where} | {a['attack']} | " + " | ".join(cells)
                                 + f" | {a['attack_s']} |")  # fmt: skip
        lines.append("")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
