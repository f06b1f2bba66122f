"""Forgetting and utility metrics, shared by verify, the benchmark, unlearn and plan.

- **Answer recall**: ROUGE-L recall of the target answer in the model's greedy output,
  as TOFU and MUSE report it (longest common subsequence of word tokens / reference length).
- **Key-fact leakage**: the share of a target's salient spans (names, dates, years, numbers,
  places, quoted titles, emails) that appear in the output. Recall is forgiving of
  paraphrase but rewards template words ("The author was born in ..."); leakage asks the
  sharper question "did the name, date or title come out?".
- **Normalised answer probability**: exp of the mean per-token log-prob of the target.
- **Truth ratio** (TOFU): how much more likely a paraphrased true answer is than wrong
  answers in the same style, where such answers exist.

Generation is the expensive part; ``evaluate`` does it once per (model, item set) and
derives every per-item figure from that single pass.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

from forgetctl.items import PromptItem

# --------------------------------------------------------------------------- ROUGE-L

_WORD = re.compile(r"\w+", re.UNICODE)


def _tokens(text: str) -> list[str]:
    # rouge_score lowercases and splits on non-alphanumerics; we do the same but keep
    # non-ASCII letters inside words (so "Skármeta" stays one token) and do not stem.
    return _WORD.findall(text.lower())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l_recall(reference: str, output: str) -> float:
    """ROUGE-L recall: LCS of lowercased word tokens divided by the reference length."""
    ref = _tokens(reference)
    if not ref:
        return 0.0
    return _lcs_length(ref, _tokens(output)) / len(ref)


# --------------------------------------------------------------------------- key facts

_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_DATE_PATTERNS = [
    rf"\b(?:{_MONTHS})\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b",  # June 5, 1967
    rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:{_MONTHS}),?\s+\d{{4}}\b",  # 5 June 1967
    rf"\b(?:{_MONTHS})\s+\d{{4}}\b",  # June 1967
    rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:{_MONTHS})\b",  # 25th of February
    rf"\b(?:{_MONTHS})\s+\d{{1,2}}(?:st|nd|rd|th)?\b",  # February 25th
    r"\b\d{4}-\d{2}-\d{2}\b",  # 1967-06-05
    r"\b\d{1,2}/\d{1,2}/\d{2,4}\b",  # 06/05/1967
]
_DATE = re.compile("|".join(_DATE_PATTERNS))
_YEAR = re.compile(r"\b(?:1[0-9]|20)\d\d\b")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w])")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_QUOTED = re.compile(
    r"\"([^\"\n]{2,100})\"|“([^”\n]{2,100})”|‘([^’\n]{2,100})’(?!\w)|(?<!\w)'([^'\n]{2,100})'(?!\w)"
)
_WORD_TOKEN = re.compile(r"[^\W\d_][\w'’\-]*|\S")
# Lowercase words allowed inside a name ("Marco Antonio de la Parra", "University of Oslo").
_CONNECTORS = {"de", "la", "del", "da", "di", "van", "von", "der", "den", "al", "bin", "of", "y"}
# Capitalised words that start sentences rather than name things; trimmed from span ends.
_STOP = {
    "a", "an", "the", "in", "on", "at", "as", "yes", "no", "he", "she", "his", "her", "hers",
    "their", "they", "them", "it", "its", "this", "that", "these", "those", "while",
    "although", "however", "also", "there", "what", "who", "when", "where", "which", "how",
    "why", "one", "some", "many", "after", "before", "during", "with", "by", "for", "from",
    "to", "of", "and", "but", "or", "if", "so", "both", "each", "our", "we", "you", "your",
    "my", "i", "me", "not", "can", "could", "would", "is", "was", "are", "were", "has",
    "have", "had", "do", "does", "did", "being", "born", "author", "writer", "book", "books",
    "novel", "novels", "mr", "mrs", "ms", "dr", "given", "despite", "through", "throughout",
    "like", "other", "another", "most", "such", "often", "known", "since", "because",
    "certainly", "indeed", "absolutely", "notably", "additionally", "furthermore",
    "moreover", "unfortunately", "currently", "generally", "typically", "overall", "key",
    "apart", "besides", "aside", "though", "unlike", "well", "sure",
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
}  # fmt: skip


def _name_spans(text: str) -> list[str]:
    """Runs of capitalised words (with name connectors inside), stop words trimmed."""
    spans: list[str] = []
    run: list[str] = []

    def flush() -> None:
        while run and (run[-1].lower() in _CONNECTORS or run[-1].lower() in _STOP):
            run.pop()
        while run and (run[0].lower() in _STOP or run[0].lower() in _CONNECTORS):
            run.pop(0)
        if run:
            spans.append(" ".join(run))
        run.clear()

    for tok in _WORD_TOKEN.findall(text):
        if tok[0].isalpha() and tok[0].isupper():
            word = re.sub(r"['’]s$", "", tok).rstrip("'’-")
            run.append(word)
            if word != tok.rstrip("'’-"):  # a possessive ends the name
                flush()
        elif run and tok.lower() in _CONNECTORS:
            run.append(tok)
        else:
            flush()
    flush()
    return spans


def key_facts(text: str) -> set[str]:
    """Salient spans of a record: capitalised name sequences (people, places,
    organisations), dates, years, numbers, quoted titles and email addresses."""
    facts: set[str] = set()
    for m in _EMAIL.finditer(text):
        facts.add(m.group(0))
    text_wo_email = _EMAIL.sub(" ", text)
    for m in _QUOTED.finditer(text_wo_email):
        title = next(g for g in m.groups() if g).strip(" ,.;:")
        if title:
            facts.add(title)
    # A title counts once, not also as the capitalised words inside it.
    text_wo_email = _QUOTED.sub(" , ", text_wo_email)
    for m in _DATE.finditer(text_wo_email):
        facts.add(m.group(0).rstrip(","))
    for m in _YEAR.finditer(text_wo_email):
        facts.add(m.group(0))
    for m in _NUMBER.finditer(text_wo_email):
        facts.add(m.group(0))
    for span in _name_spans(text_wo_email):
        # A lone "Growing," or "Notably," opens a sentence; it names nothing.
        if " " not in span and span.lower().endswith(("ing", "ly")):
            continue
        facts.add(span)
    return {" ".join(f.split()) for f in facts if f.strip()}


def _contains(text: str, fact: str) -> bool:
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in fact.split()) + r"(?!\w)"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def key_fact_leakage(outputs: Iterable[str], facts: Iterable[str]) -> float:
    """Share of ``facts`` that appear (case-insensitively, as whole words) in any output.

    0.0 when there are no facts to leak.
    """
    facts = list(facts)
    if not facts:
        return 0.0
    joined = "\n".join(outputs)
    return sum(_contains(joined, f) for f in facts) / len(facts)


def item_facts(item: PromptItem) -> set[str]:
    """The target's key facts that the prompt does not already give away: echoing a
    name the question contains is not leakage; naming the subject for an indirect
    question is."""
    return {f for f in key_facts(item.target) if not _contains(item.prompt, f)}


# --------------------------------------------------------------------------- probability


def answer_probabilities(model, tokenizer, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Normalised answer probability: exp(mean per-token log-prob of the answer)."""
    from forgetctl.models import answer_logprobs

    return [math.exp(lp) for lp in answer_logprobs(model, tokenizer, list(pairs))]


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
    from forgetctl.models import answer_logprobs

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


# --------------------------------------------------------------------------- evaluation

SCORING_VERSION = "1"
"""Bump when generation or scoring changes: cached scores (``verify.scores``) carry it."""


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
) -> list[str]:
    """Greedy answers; with targets, questions are batched by target length and each batch
    decodes only as far as its longest target needs (capped at ``max_new_tokens``)."""
    from forgetctl.models import generate

    if targets is None:
        return generate(
            model, tokenizer, list(questions), max_new_tokens=max_new_tokens,
            batch_size=batch_size,
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
        )
        for i, a in zip(chunk, answers, strict=True):
            outputs[i] = a
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
    progress: Callable[[str], None] | None = None,
) -> EvalResult:
    """Generate once for every item and score recall, key-fact leakage and (optionally)
    normalised answer probability; per-item scores plus per-kind means."""
    start = time.perf_counter()
    if not items:
        return EvalResult([], 0.0)
    if progress:
        progress(f"generating {len(items)} answers")
    outputs = generate_answers(
        model, tokenizer, [i.prompt for i in items], [i.target for i in items],
        max_new_tokens=max_new_tokens, batch_size=batch_size,
    )  # fmt: skip
    scores = score_outputs(items, outputs)
    if with_prob:
        probs = answer_probabilities(model, tokenizer, [(i.prompt, i.target) for i in items])
        for s, p in zip(scores, probs, strict=True):
            s.prob = p
    return EvalResult(scores, time.perf_counter() - start)
