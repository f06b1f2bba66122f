"""The field's own metrics, so that forgetctl's figures can sit next to published tables.

TOFU (Maini et al., 2024), as open-unlearning computes them (``src/evals/metrics/``:
``memorization.py`` for probability, ROUGE and truth ratio, ``utility.py`` for the harmonic
mean, ``privacy.py`` for the KS test and PrivLeak):

- **Probability** of an answer: ``exp(-mean token NLL)`` of the answer given the question.
- **Truth ratio** of a question: ``P(wrong) / P(true)``, where ``P(wrong)`` is ``exp(-mean
  over the perturbed answers of their mean token NLL)`` and ``P(true)`` is the paraphrased
  answer's on the author sets, the answer's own on real authors and world facts.
- **Forget quality**: the p-value of the two-sample Kolmogorov-Smirnov test between the
  candidate's and the retain model's truth ratios on the forget questions
  (``scipy.stats.ks_2samp``, as there). 1.0: indistinguishable from the model retrained
  without the data.
- **Model utility**: the harmonic mean of nine figures: on the retain set (the other
  authors' questions), real authors and world facts, each of probability (on the retain
  set of the answer, on the other two normalised: ``P(true) / (P(true) + sum P(wrong))``),
  ROUGE-L recall of the greedy answer, and the truth ratio aggregated as ``mean(max(0,
  1 - R))``.

MUSE (Shi et al., 2024), as open-unlearning computes it:

- **KnowMem**: ROUGE-L F1 of the greedy answers to the forget questions.
- **VerbMem**: ROUGE-L F1 of the greedy continuation of a prefix of the forget text
  against the true continuation. TOFU has no documents: the text is each record's answer,
  cut as forgetctl's ``completion`` probe cuts it (``core.items.in_format``).
- **PrivLeak**: ``(AUC - AUC_retrain) / AUC_retrain * 100``, where AUC is MUSE's (one
  minus the conventional AUC of a membership score separating the forget records from
  holdout records the model never saw): about -100 for a model that kept everything, 0
  for the retrained model, positive when unlearning overshot. The holdout is the control
  authors; the membership score is Min-K%++ (forgetctl's membership check), where MUSE's
  table used Min-K% Prob.

ROUGE is Google's ``rouge-score`` with the Porter stemmer, as in open-unlearning.
Comparable with published tables: the definitions. Not comparable: the model (SmolLM2-135M,
not Llama), the number of authors, the prompt format, and a retain set of the deployed
model's other authors rather than TOFU's fixed 400 questions.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rouge_score import rouge_scorer
from scipy import stats

from forgetctl.app import versions
from forgetctl.app.home import Home
from forgetctl.app.workspace import Workspace
from forgetctl.core.data import load_builtin
from forgetctl.core.items import PromptItem, in_format
from forgetctl.demo.deployed import deployed_manifest
from forgetctl.demo.tofu import load_authors
from forgetctl.lm.infer import answer_figures, generate

# --------------------------------------------------------------------------- definitions


def truth_ratio(true_logprob: float, wrong_logprobs: Sequence[float]) -> float:
    """``P(wrong) / P(true)`` from mean per-token log-probabilities (open-unlearning
    averages the wrong answers' mean token losses, then exponentiates)."""
    return math.exp(sum(wrong_logprobs) / len(wrong_logprobs) - true_logprob)


def truth_ratio_true_better(ratios: Sequence[float]) -> float:
    """The truth ratio as a utility figure: ``mean(max(0, 1 - R))``."""
    return sum(max(0.0, 1 - r) for r in ratios) / len(ratios)


def normalised_probability(true_logprob: float, wrong_logprobs: Sequence[float]) -> float:
    """``P(true) / (P(true) + sum P(wrong))``, each ``exp`` of a mean token log-prob."""
    true = math.exp(true_logprob)
    return true / (true + sum(math.exp(w) for w in wrong_logprobs) + 1e-10)


def forget_quality(candidate_ratios: Sequence[float], retrained_ratios: Sequence[float]) -> float:
    """The KS test's p-value between two models' truth ratios on the forget questions."""
    return float(stats.ks_2samp(candidate_ratios, retrained_ratios).pvalue)


def model_utility(figures: Sequence[float]) -> float:
    """The harmonic mean of the utility figures (0 when one of them is 0)."""
    return 0.0 if min(figures) <= 0 else float(stats.hmean(figures))


def auc(members: Sequence[float], non_members: Sequence[float]) -> float:
    """The conventional ROC AUC of a score that is higher for members (ties count half)."""
    wins = sum((m > n) + 0.5 * (m == n) for m in members for n in non_members)
    return wins / (len(members) * len(non_members))


def privleak(auc_model: float, auc_retrained: float) -> float:
    """MUSE's PrivLeak from conventional AUCs: MUSE reports ``1 - AUC``, so a model that
    kept the data (AUC near 1) scores about -100 against a retrained model near 0.5."""
    ours, reference = 1 - auc_model, 1 - auc_retrained
    return (ours - reference) / (reference + 1e-10) * 100


_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(reference: str, output: str) -> tuple[float, float]:
    """(recall, F1) of ROUGE-L."""
    score = _ROUGE.score(reference, output)["rougeL"]
    return score.recall, score.fmeasure


# --------------------------------------------------------------------------- the sets


@dataclass(frozen=True)
class Question:
    """A question with its answer and, where TOFU has them, a paraphrased true answer and
    wrong answers in the same style."""

    question: str
    answer: str
    true: str | None = None
    wrong: tuple[str, ...] = ()


def author_questions(rows: Sequence[dict]) -> list[Question]:
    """TOFU author rows: the truth ratio compares the paraphrased answer with the perturbed."""
    return [Question(r["question"], r["answer"], r["paraphrased_answer"],
                     tuple(r["perturbed_answers"])) for r in rows]  # fmt: skip


def fact_questions(rows: Sequence[dict]) -> list[Question]:
    """Real authors and world facts: the answer itself against the perturbed answers."""
    return [Question(r["question"], r["answer"], r["answer"], tuple(r["perturbed_answers"]))
            for r in rows]  # fmt: skip


@dataclass(frozen=True)
class Sets:
    forget: list[Question]
    retain: list[Question]
    real_authors: list[Question]
    world_facts: list[Question]
    holdout: list[Question]
    """Records of people the model never saw (PrivLeak's non-members)."""


# --------------------------------------------------------------------------- measuring


def _logprobs(model, tokenizer, pairs: list[tuple[str, str]]) -> list[float]:
    return [f[0] for f in answer_figures(model, tokenizer, pairs)] if pairs else []


def _truth(model, tokenizer, questions: Sequence[Question]) -> list[tuple[float, list[float]]]:
    """Per question: (the true answer's mean token log-prob, the wrong answers')."""
    pairs = [(q.question, a) for q in questions for a in (q.true, *q.wrong)]
    lps, out, pos = _logprobs(model, tokenizer, pairs), [], 0
    for q in questions:
        out.append((lps[pos], lps[pos + 1 : pos + 1 + len(q.wrong)]))
        pos += 1 + len(q.wrong)
    return out


def _greedy_rouge(model, tokenizer, questions: Sequence[Question]) -> list[tuple[float, float]]:
    answers = generate(model, tokenizer, [q.question for q in questions])
    return [rouge_l(q.answer, a) for q, a in zip(questions, answers, strict=True)]


def _verbatim(model, tokenizer, questions: Sequence[Question]) -> list[float]:
    records = [PromptItem(prompt=q.question, target=q.answer, kind="record") for q in questions]
    probes = in_format(records, "completion")
    outputs = generate(model, tokenizer, [p.prompt for p in probes],
                       formats=["completion"] * len(probes))  # fmt: skip
    return [rouge_l(p.target, o)[1] for p, o in zip(probes, outputs, strict=True)]


def _min_k(model, tokenizer, questions: Sequence[Question]) -> list[float]:
    pairs = [(q.question, q.answer) for q in questions]
    return [f[2] for f in answer_figures(model, tokenizer, pairs)]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def measure(model, tokenizer, sets: Sets) -> dict:
    """One model's per-item figures and its own aggregates (forget quality and PrivLeak
    need the retrained model's: :func:`against`)."""
    utility: dict[str, float] = {}
    for name in ("retain", "real_authors", "world_facts"):
        questions = getattr(sets, name)
        truth = _truth(model, tokenizer, questions)
        if name == "retain":  # the answer's own probability; the others' against the wrong
            answers = _logprobs(model, tokenizer, [(q.question, q.answer) for q in questions])
            utility[f"{name}_prob"] = _mean([math.exp(lp) for lp in answers])
        else:
            utility[f"{name}_prob"] = _mean([normalised_probability(t, w) for t, w in truth])
        utility[f"{name}_rouge"] = _mean([r for r, _ in _greedy_rouge(model, tokenizer, questions)])
        utility[f"{name}_truth_ratio"] = truth_ratio_true_better([truth_ratio(*t) for t in truth])
    knowmem = _greedy_rouge(model, tokenizer, sets.forget)
    verbmem = _verbatim(model, tokenizer, sets.forget)
    members, holdout = _min_k(model, tokenizer, sets.forget), _min_k(model, tokenizer, sets.holdout)
    return {
        "forget_truth_ratios": [truth_ratio(*t) for t in _truth(model, tokenizer, sets.forget)],
        "forget_rouge_recall": _mean([r for r, _ in knowmem]),
        "knowmem_f1": _mean([f for _, f in knowmem]),
        "verbmem_f1": _mean(verbmem) if verbmem else None,
        "membership_auc": auc(members, holdout),
        "utility": utility,
        "model_utility": model_utility(list(utility.values())),
    }


def against(rows: Mapping[str, dict], reference: str) -> dict[str, dict]:
    """Per row, the figures that compare it with the ``reference`` row (the model retrained
    without the forgotten data): forget quality, PrivLeak, and model utility as a share of
    the reference's."""
    ref = rows[reference]
    return {
        name: {
            "forget_quality": forget_quality(
                row["forget_truth_ratios"], ref["forget_truth_ratios"]
            ),
            "privleak": privleak(row["membership_auc"], ref["membership_auc"]),
            "utility_share": row["model_utility"] / ref["model_utility"]
            if ref["model_utility"]
            else None,
        }
        for name, row in rows.items()
    }


def table(rows: Mapping[str, dict], reference: str) -> str:
    """The Markdown table of every row's field figures."""
    compared = against(rows, reference)
    head = ("| model | forget quality | model utility (share of retrained) | forget ROUGE-L "
            "recall | KnowMem F1 | VerbMem F1 | PrivLeak |")  # fmt: skip
    lines = [head, "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        c = compared[name]
        verb = "-" if row["verbmem_f1"] is None else f"{row['verbmem_f1']:.3f}"
        share = "-" if c["utility_share"] is None else f"{c['utility_share']:.1%}"
        lines.append(
            f"| {name} | {c['forget_quality']:.3g} | {row['model_utility']:.3f} "
            f"({share}) | {row['forget_rouge_recall']:.3f} | "
            f"{row['knowmem_f1']:.3f} | {verb} | {c['privleak']:+.1f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- a home's versions


def tofu_sets(rows: Sequence[dict], forget_ids: Sequence[int], retain_ids: Sequence[int],
              holdout_ids: Sequence[int], cap: int, seed: int = 0) -> Sets:  # fmt: skip
    """The field's sets from TOFU rows: the forgotten authors' questions, at most ``cap``
    of the other deployed authors' (seeded sample) and of the built-in real-author and
    world-fact sets (their first ``cap``), and the holdout authors' records."""

    def of(ids):
        return [r for r in rows if r["author_id"] in ids]

    retain = of(retain_ids)
    retain = random.Random(seed).sample(retain, min(cap, len(retain)))
    return Sets(
        forget=author_questions(of(forget_ids)),
        retain=author_questions(retain),
        real_authors=fact_questions(load_builtin("real_authors")[:cap]),
        world_facts=fact_questions(load_builtin("world_facts")[:cap]),
        holdout=author_questions(of(holdout_ids)),
    )


def main() -> None:
    """Measure versions of a forgetctl home in the field's metrics (no pipeline run)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--home", required=True)
    parser.add_argument("--data", required=True, help="the TOFU authors file")
    parser.add_argument("--forget-ids", required=True, help="the forgotten authors, e.g. 1")
    parser.add_argument("--holdout-ids", required=True,
                        help="authors the deployed model never saw, e.g. 10,11")  # fmt: skip
    parser.add_argument("--version", action="append", required=True,
                        help="NAME=ID, a row: a version of the home (repeat)")  # fmt: skip
    parser.add_argument("--reference", required=True,
                        help="NAME of the row retrained without the forgotten data")  # fmt: skip
    parser.add_argument("--cap", type=int, default=100, help="items per utility set")
    parser.add_argument("--out", required=True, help="result path without suffix")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ws = Workspace.open(Home(Path(args.home)))
    rows = load_authors(args.data)
    forget = [int(a) for a in args.forget_ids.split(",")]
    deployed = deployed_manifest(ws.ledger.versions.get(0)["base_path"])
    retain = [a["author_id"] for a in deployed["authors"] if a["author_id"] not in forget]
    holdout = [int(a) for a in args.holdout_ids.split(",")]
    sets = tofu_sets(rows, forget, retain, holdout, args.cap)
    rows_out, seconds = {}, {}
    for entry in args.version:
        name, vid = entry.rsplit("=", 1)
        start = time.perf_counter()
        model, tokenizer = versions.load_version(ws, int(vid))
        rows_out[name] = measure(model, tokenizer, sets)
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"{name}: {seconds[name]} s, model utility {rows_out[name]['model_utility']:.3f}",
              flush=True)  # fmt: skip
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()  # fmt: skip
    doc = {
        "command": " ".join(sys.argv), "commit": commit, "measured": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "sizes": {k: len(v) for k, v in vars(sets).items()}, "seconds": seconds,
        "rows": rows_out, "against_reference": against(rows_out, args.reference),
    }  # fmt: skip
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    out.with_suffix(".md").write_text(table(rows_out, args.reference) + "\n")
    print(table(rows_out, args.reference))


if __name__ == "__main__":
    main()
