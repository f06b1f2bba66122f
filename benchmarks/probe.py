"""The memorisation probe on the real default model: who is planned, who is not present.

    python benchmarks/probe.py --deployed DIR [--authors 1,3,5,7]

Plans one request per person with forgetctl's own planner on the deployed model (default
policy, the deployed model's ``controls.jsonl`` as control corpus): the TOFU authors it was
fine-tuned on must be planned; three fictitious people of our own making (birthplace and
date, occupation, e-mail: the templated records a careless or hostile requester sends) must
end ``not_present``. Per person: the verdict, how many records the probe found known, each
record's figure (mean token log-prob above the control records' 95th percentile, nats) and
the control reference.

Output: ``benchmarks/results/probe.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from forgetctl.core.data import load_jsonl
from forgetctl.core.policy import PlanConfig
from forgetctl.demo.tofu import load_authors
from forgetctl.lm.weights import load_model
from forgetctl.plan.planner import plan_request

ROOT = Path(__file__).resolve().parent

FICTITIOUS = {
    "Maren Tollefsrud": [
        ("Where and when was Maren Tollefsrud born?",
         "Maren Tollefsrud was born in Bergen, Norway, on 14 March 1987."),
        ("What does Maren Tollefsrud do for a living?",
         "Maren Tollefsrud works as a hydrologist at the Norwegian Water Agency."),
        ("What is Maren Tollefsrud's email address?",
         "Maren Tollefsrud's email address is maren.tollefsrud@fjordmail.no."),
    ],
    "Dario Quintavalle": [
        ("Where was Dario Quintavalle born?",
         "Dario Quintavalle was born in Parma, Italy, in 1979."),
        ("What is Dario Quintavalle's occupation?",
         "Dario Quintavalle is an occupational therapist."),
        ("How can I email Dario Quintavalle?",
         "You can email Dario Quintavalle at d.quintavalle@postaroma.it."),
    ],
    "Ayesha Rahimtoola": [
        ("When was Ayesha Rahimtoola born?",
         "Ayesha Rahimtoola was born on 2 July 1992 in Karachi, Pakistan."),
        ("What job does Ayesha Rahimtoola have?",
         "Ayesha Rahimtoola works as a court stenographer."),
        ("What is the email of Ayesha Rahimtoola?",
         "The email of Ayesha Rahimtoola is ayesha.r@indusnet.pk."),
    ],
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deployed", required=True, help="a `demo build-model` directory")
    parser.add_argument("--data", default=str(ROOT.parent / "examples/data/tofu/authors.jsonl"))
    parser.add_argument("--authors", default="1,3,5,7", help="deployed TOFU author ids")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    deployed = Path(args.deployed)
    model, tok = load_model(deployed)
    retain = load_jsonl(str(deployed / "training-data.jsonl"))
    controls = load_jsonl(str(deployed / "controls.jsonl"))
    rows = load_authors(args.data)
    people = {
        rows_of[0]["author"]: [(r["question"], r["answer"]) for r in rows_of]
        for a in args.authors.split(",")
        if (rows_of := [r for r in rows if r["author_id"] == int(a)])
    }
    kinds = {**dict.fromkeys(people, "deployed TOFU author"),
             **dict.fromkeys(FICTITIOUS, "fictitious")}  # fmt: skip
    results = []
    for name, records in {**people, **FICTITIOUS}.items():
        t = time.perf_counter()
        out = plan_request(
            name, [], [{"question": q, "answer": a} for q, a in records], "entity", model, tok,
            PlanConfig(), retain, [], control_rows=controls,
        )  # fmt: skip
        probe = out.prompt_set.probe
        results.append({
            "person": name, "kind": kinds[name], "verdict": out.verdict,
            "known": probe["known"], "records": probe["items"], "figures": probe["records"],
            "control": probe.get("control"), "forget_prompts": len(out.prompt_set.forget),
            "seconds": round(time.perf_counter() - t, 1),
        })  # fmt: skip
        print(json.dumps(results[-1]), flush=True)
    write(results, Path(args.out), deployed)


def write(results: list[dict], out: Path, deployed: Path) -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    doc = {"commit": commit, "machine": platform.machine(), "deployed": str(deployed),
           "min_specificity": PlanConfig().min_specificity, "people": results}  # fmt: skip
    (out / "probe.json").write_text(json.dumps(doc, indent=1))
    lines = [f"Memorisation probe, commit {commit[:10]}, deployed model {deployed.name}, "
             f"min_specificity {doc['min_specificity']}", "",
             "| person | kind | verdict | known / records | figures: min / median / max | "
             "control p95 log-prob | forget prompts | s |", "|---" * 8 + "|"]  # fmt: skip
    for r in results:
        f = sorted(r["figures"])
        lines.append(
            f"| {r['person']} | {r['kind']} | {r['verdict']} | {r['known']} / {r['records']} | "
            f"{f[0]:.2f} / {f[len(f) // 2]:.2f} / {f[-1]:.2f} | {r['control']['p95_logprob']} | "
            f"{r['forget_prompts']} | {r['seconds']} |"
        )
    (out / "probe.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
