"""Evaluating a model on prompt items: what the plan's probe, the gate and the benchmark measure.

- **Answer recall** and **key-fact leakage** of the greedy answer (the text rules are
  :mod:`forgetctl.core.facts`').
- **Normalised answer probability**: exp of the mean per-token log-prob of the target,
  the target's **teacher-forced token accuracy** and its **Min-K%++** membership score, from
  one forward pass (:func:`forgetctl.lm.infer.answer_figures`).
- **Degeneracy** of the greedy answer (repetition, non-word share, length; the rules are
  :mod:`forgetctl.core.fluency`').
- **Truth ratio** (TOFU): how much more likely a paraphrased true answer is than wrong
  answers in the same style, where such answers exist.

Generation is the expensive part; ``evaluate`` does it once per (model, item set) and
derives every per-item figure from that single pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from forgetctl.core.facts import item_facts, key_fact_leakage, rouge_l_recall
from forgetctl.core.fluency import nonword_share, repetition, word_count
from forgetctl.core.items import PromptItem
from forgetctl.core.progress import Progress, silent
from forgetctl.lm.infer import answer_figures, answer_logprobs, generate


@dataclass(frozen=True)
class TruthItem:
    """A question with a reworded true answer and wrong answers in the same style."""

    question: str
    paraphrased_answer: str
    perturbed_answers: list[str]


def truth_ratios(model, tokenizer, items: Sequence[TruthItem]) -> list[float]:
    """TOFU's per-item ratio R = P(perturbed) / P(paraphrased), with length-normalised
    probabilities and the perturbed ones averaged in log space. R < 1: the model prefers
    the true answer; R near 1: it cannot tell (what a model that never saw it shows)."""
    pairs: list[tuple[str, str]] = []
    for it in items:
        pairs.append((it.question, it.paraphrased_answer))
        pairs.extend((it.question, a) for a in it.perturbed_answers)
    lps = answer_logprobs(model, tokenizer, pairs)
    out: list[float] = []
    pos = 0
    for it in items:
        para = lps[pos]
        pert = lps[pos + 1 : pos + 1 + len(it.perturbed_answers)]
        pos += 1 + len(it.perturbed_answers)
        out.append(math.exp(sum(pert) / len(pert) - para))
    return out


def truth_ratio_forget(ratios: Sequence[float]) -> float:
    """TOFU's forget-set aggregate: mean of min(R, 1/R); 1.0 = cannot tell true from false."""
    return sum(min(r, 1 / r) for r in ratios) / len(ratios) if ratios else float("nan")


def truth_ratio_retain(ratios: Sequence[float]) -> float:
    """TOFU's retain/utility aggregate: mean of max(0, 1 - R); higher = prefers the truth."""
    return sum(max(0.0, 1 - r) for r in ratios) / len(ratios) if ratios else float("nan")


SCORING_VERSION = "4"
"""Bump when generation or scoring changes: cached scores (``store.scores``) carry it.
2: key-fact leakage ignores diacritics (``core.text.contains_phrase``). 3: token accuracy,
Min-K%++ and the degeneracy figures."""


@dataclass
class ItemScore:
    prompt: str
    target: str
    kind: str
    source: int | None
    output: str
    recall: float
    leakage: float | None
    """None when the target has no key facts beyond what the prompt states."""
    facts: int
    prob: float | None
    acc: float | None = None
    """Teacher-forced token accuracy of the target."""
    mink: float | None = None
    """Min-K%++ membership score of the target."""
    repetition: float = 0.0
    nonword: float = 0.0
    length: float = 0.0
    """The greedy answer's degeneracy figures (:mod:`forgetctl.core.fluency`)."""


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


@dataclass
class EvalResult:
    """Per-item scores of one model on one item set, with per-kind means."""

    items: list[ItemScore]
    wall_s: float = 0.0
    by_kind: dict[str, dict[str, float | int | None]] = field(init=False)
    overall: dict[str, float | int | None] = field(init=False)

    def __post_init__(self) -> None:
        kinds = sorted({s.kind for s in self.items})
        self.by_kind = {k: self._summary([s for s in self.items if s.kind == k]) for k in kinds}
        self.overall = self._summary(self.items)

    @staticmethod
    def _summary(scores: list[ItemScore]) -> dict[str, float | int | None]:
        return {
            "n": len(scores),
            "recall": _mean(s.recall for s in scores),
            "leakage": _mean(s.leakage for s in scores),
            "prob": _mean(s.prob for s in scores),
            "acc": _mean(s.acc for s in scores),
        }

    def mean(self, metric: str = "recall", kinds: Iterable[str] | None = None) -> float | None:
        wanted = set(kinds) if kinds is not None else None
        return _mean(getattr(s, metric) for s in self.items if wanted is None or s.kind in wanted)

    def select(self, indices: Iterable[int]) -> EvalResult:
        return EvalResult([self.items[i] for i in indices])

    def only(self, kinds: Iterable[str]) -> EvalResult:
        wanted = set(kinds)
        return EvalResult([s for s in self.items if s.kind in wanted])

    def to_dict(self, with_items: bool = False) -> dict:
        out: dict = {"overall": self.overall, "by_kind": self.by_kind, "wall_s": self.wall_s}
        if with_items:
            out["items"] = [asdict(s) for s in self.items]
        return out


def _generation_budget(tokenizer, targets: Sequence[str], cap: int) -> list[int]:
    # Enough new tokens to reproduce the target with slack for rewording and for a short
    # answer ("Paris") given as a sentence, never more: decoding time is linear in it and
    # dominates evaluation.
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in targets]
    return [min(cap, int(n * 1.3) + 24) for n in lengths]


def generate_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    targets: Sequence[str] | None = None,
    max_new_tokens: int = 96,
    batch_size: int = 16,
    formats: Sequence[str | None] | None = None,
    progress: Progress = silent,
) -> list[str]:
    """Greedy answers (each question in its format of ``formats``, default the model's);
    with targets, questions are batched by target length and each batch decodes only as
    far as its longest target needs (capped at ``max_new_tokens``), an "answering" bar."""
    fmts = list(formats) if formats is not None else [None] * len(questions)
    if targets is None:
        return generate(
            model, tokenizer, list(questions), max_new_tokens=max_new_tokens,
            batch_size=batch_size, formats=fmts, progress=progress,
        )  # fmt: skip
    budgets = _generation_budget(tokenizer, targets, max_new_tokens)
    order = sorted(range(len(questions)), key=lambda i: budgets[i])
    outputs: list[str] = [""] * len(questions)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        answers = generate(
            model,
            tokenizer,
            [questions[i] for i in chunk],
            max_new_tokens=max(budgets[i] for i in chunk),
            batch_size=batch_size,
            formats=[fmts[i] for i in chunk],
        )
        for i, a in zip(chunk, answers, strict=True):
            outputs[i] = a
        progress("answering", start + len(chunk), len(order))
    return outputs


def score_outputs(items: Sequence[PromptItem], outputs: Sequence[str]) -> list[ItemScore]:
    """Recall and leakage of given outputs (no model needed)."""
    scores: list[ItemScore] = []
    for item, out in zip(items, outputs, strict=True):
        facts = item_facts(item)
        scores.append(
            ItemScore(
                prompt=item.prompt,
                target=item.target,
                kind=item.kind,
                source=item.source,
                output=out,
                recall=rouge_l_recall(item.target, out),
                leakage=key_fact_leakage([out], facts) if facts else None,
                facts=len(facts),
                prob=None,
                repetition=repetition(out),
                nonword=nonword_share(out),
                length=word_count(out),
            )
        )
    return scores


def evaluate(
    model,
    tokenizer,
    items: Sequence[PromptItem],
    with_prob: bool = True,
    max_new_tokens: int = 96,
    batch_size: int = 16,
    progress: Progress = silent,
) -> EvalResult:
    """Generate once for every item and score recall, key-fact leakage, degeneracy and
    (optionally) the teacher-forced figures; per-item scores plus per-kind means."""
    start = time.perf_counter()
    if not items:
        return EvalResult([], 0.0)
    outputs = generate_answers(
        model, tokenizer, [i.prompt for i in items], [i.target for i in items],
        max_new_tokens=max_new_tokens, batch_size=batch_size, formats=[i.format for i in items],
        progress=progress,
    )  # fmt: skip
    scores = score_outputs(items, outputs)
    if with_prob:
        figures = answer_figures(model, tokenizer, [i.pair for i in items])
        for s, (logprob, acc, mink) in zip(scores, figures, strict=True):
            s.prob, s.acc, s.mink = math.exp(logprob), acc, mink
    return EvalResult(scores, time.perf_counter() - start)


NUMBERS = ("recall", "leakage", "facts", "prob", "acc", "mink", "repetition", "nonword", "length")
"""The fields of an ``ItemScore`` that a score store keeps: figures, never text."""


class ScoreStore(Protocol):
    """Where scores persist between runs (:class:`forgetctl.store.scores.ScoreCache`)."""

    def keys(self, model_key: str, items: Sequence[PromptItem], settings: str) -> list[str]: ...

    def get(self, keys: Sequence[str]) -> dict[str, dict[str, float | None]]: ...

    def put(self, scores: Mapping[str, dict[str, float | None]]) -> None: ...


def evaluate_cached(
    store: ScoreStore,
    model_key: str,
    load_model: Callable[[], Any],
    tokenizer: Any,
    items: Sequence[PromptItem],
    with_prob: bool = True,
    progress: Progress = silent,
) -> EvalResult:
    """:func:`evaluate` of the model ``model_key`` names on ``items``, generating only for
    the items ``store`` does not hold; ``load_model`` is called only when some are missing.
    A stored item's ``output`` is empty (answers are not kept)."""
    keys = store.keys(model_key, items, f"{SCORING_VERSION}/prob={with_prob}")
    found = store.get(keys)
    missing = [i for i, k in enumerate(keys) if k not in found]
    fresh = EvalResult([])
    if missing:
        fresh = evaluate(load_model(), tokenizer, [items[i] for i in missing], with_prob,
                         progress=progress)  # fmt: skip
        store.put({keys[i]: {f: getattr(s, f) for f in NUMBERS}
                   for i, s in zip(missing, fresh.items, strict=True)})  # fmt: skip
    measured = dict(zip(missing, fresh.items, strict=True))
    scores = [
        measured.get(i)
        or ItemScore(prompt=item.prompt, target=item.target, kind=item.kind,
                     source=item.source, output="", **found[keys[i]])
        for i, item in enumerate(items)
    ]  # fmt: skip
    return EvalResult(scores, fresh.wall_s)
