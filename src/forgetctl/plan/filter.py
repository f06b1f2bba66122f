"""Filtering (FIT): keep only what the model knows, once, and only what is the subject's.

- **Memorisation probe** (in :mod:`forgetctl.plan.planner`): a record is known when the
  model ties its answer to the subject: the answer's mean token log-prob about the subject
  exceeds that of the same record about stand-in names by ``PlanConfig.min_specificity``.
  An answer any name would get (a question's words echoed back) is not knowledge. The
  derived prompts of a known record are kept even where the model does not answer that
  wording, because they are views of a fact the model holds and training on them is what
  makes forgetting reach unseen wording (``PlanConfig.probe_derived = "item"`` judges
  each derived prompt on its own figure instead).
- **Attribute answers** have no given target: the model's own answer counts as revealing
  when it is specific to the subject in the same sense and, when there are records, names
  a key fact of them (a place, date, title, number ...) that the question did not contain.
- **Near-duplicates**: items of *different* origin whose question and answer both embed
  within ``near_duplicate_threshold`` of each other are one item (the same record given twice, an
  attribute question that restates a record). Variants of one record are never merged by
  embedding, because being near in meaning is what a paraphrase is, and the sentence
  embedder cannot see the case and spelling differences adversarial variants are about;
  they are only de-duplicated on identical text.
- **Scope guard**: a forget item that is general knowledge, or another subject's record
  (near a retain-corpus row of someone else, or naming someone else in the corpus), is
  removed with its derived items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from forgetctl.core.facts import key_facts
from forgetctl.core.items import PromptItem
from forgetctl.core.progress import Progress, silent
from forgetctl.core.text import Subject, contains_phrase, name_matches, squash
from forgetctl.lm.evaluate import generate_answers
from forgetctl.plan.embed import Embedder, VectorIndex

# Kind order decides which of two duplicates survives (the record itself first).
KIND_PRIORITY = {"record": 0, "attribute": 1, "paraphrase": 2, "indirect": 3, "adversarial": 4}


def qa_text(item: PromptItem) -> str:
    """What an item is about, for embedding: its question and its answer."""
    return f"{item.prompt} {item.target}".strip()


def dropped(item: PromptItem, reason: str, figure: float | None = None, **extra) -> dict:
    out = {"prompt": item.prompt, "kind": item.kind, "source": item.source, "reason": reason}
    if figure is not None:
        out["figure"] = round(float(figure), 4)
    out.update(extra)
    return out


# --------------------------------------------------------------------------- probe


def probe_answers(
    model,
    tokenizer,
    items: Sequence[PromptItem],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: Progress = silent,
) -> list[str]:
    """Greedy answers to every item; items with a target decode only as far as the target
    needs (decoding time dominates the probe), attribute items up to ``max_new_tokens``."""
    with_target = [i for i, it in enumerate(items) if it.target]
    without = [i for i, it in enumerate(items) if not it.target]
    outputs = [""] * len(items)
    if with_target:
        answers = generate_answers(
            model,
            tokenizer,
            [items[i].prompt for i in with_target],
            [items[i].target for i in with_target],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
        )
        for i, a in zip(with_target, answers, strict=True):
            outputs[i] = a
    if without:
        answers = generate_answers(
            model,
            tokenizer,
            [items[i].prompt for i in without],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
        )
        for i, a in zip(without, answers, strict=True):
            outputs[i] = a
    return outputs


def record_facts(records: Sequence[PromptItem], subject: Subject) -> set[str]:
    """Key facts of the records (names, places, dates, titles, numbers), minus the
    subject's own name forms: an answer that echoes the name reveals nothing."""
    facts: set[str] = set()
    for rec in records:
        facts |= key_facts(rec.target)
    # Short numbers ("2 to 3 years") and two-letter spans match too much by chance.
    return {
        f
        for f in facts
        if not subject.mentioned_in(f) and len(f) >= 3 and not (f.isdigit() and len(f) < 4)
    }


def revealed_facts(answer: str, question: str, facts: set[str]) -> list[str]:
    """Facts of the records that ``answer`` states and ``question`` did not give away."""
    return sorted(
        f for f in facts if contains_phrase(answer, f) and not contains_phrase(question, f)
    )


# --------------------------------------------------------------------------- near-duplicates


@dataclass
class MergeResult:
    kept: list[PromptItem]
    dropped: list[dict]


def _family(item: PromptItem, position: int) -> tuple:
    # Items derived from one record are one family; every other item is its own.
    return ("record", item.source) if item.source is not None else ("item", position)


def merge_near_duplicates(
    items: Sequence[PromptItem],
    question_vectors: np.ndarray,
    answer_vectors: np.ndarray,
    threshold: float,
) -> MergeResult:
    """Drop exact duplicates (same prompt and target) and near-duplicates across
    families: the question *and* the answer each within cosine ``threshold`` of a kept
    item's. The higher-priority kind survives, then the earlier item.

    Both sides are compared separately because a long question (an indirect one) would
    otherwise drown a short answer: two items with different answers are two facts.
    """
    order = sorted(range(len(items)), key=lambda i: (KIND_PRIORITY.get(items[i].kind, 9), i))
    kept_idx: list[int] = []
    seen_text: set[tuple[str, str]] = set()
    out_dropped: list[dict] = []
    for i in order:
        item = items[i]
        key = (squash(item.prompt), squash(item.target))
        if key in seen_text:
            out_dropped.append(dropped(item, "duplicate", 1.0))
            continue
        match = None
        if kept_idx:
            q_sims = question_vectors[kept_idx] @ question_vectors[i]
            a_sims = answer_vectors[kept_idx] @ answer_vectors[i]
            for j, qs, as_ in zip(kept_idx, q_sims, a_sims, strict=True):
                if min(qs, as_) >= threshold and _family(items[j], j) != _family(item, i):
                    match = (j, float(min(qs, as_)))
                    break
        if match:
            j, s = match
            out_dropped.append(
                dropped(item, "near_duplicate", s, of=items[j].prompt, of_kind=items[j].kind)
            )
            continue
        seen_text.add(key)
        kept_idx.append(i)
    kept_idx.sort()
    return MergeResult([items[i] for i in kept_idx], out_dropped)


# --------------------------------------------------------------------------- retain corpus


@dataclass
class RetainCorpus:
    """The retain corpus with its embeddings and faiss index, built once per plan run."""

    rows: list[dict]
    vectors: np.ndarray
    index: VectorIndex
    own: list[int]
    """Rows recognised as the subject's own (excluded from neighbors and from the guard)."""

    @property
    def others(self) -> list[int]:
        own = set(self.own)
        return [i for i in range(len(self.rows)) if i not in own]


def row_text(row: dict) -> str:
    return f"{row.get('question', '')} {row.get('answer', '')}".strip()


def build_retain_corpus(
    rows: Sequence[dict],
    subject: Subject,
    embedder: Embedder,
    records: Sequence[PromptItem],
    record_vectors: np.ndarray,
    threshold: float,
) -> RetainCorpus:
    """Embed the corpus and find the subject's own rows: rows whose ``author`` is the
    subject, and author-less rows that are near a request record *and* name the subject.
    An author-less near copy that does not name the subject stays "someone else's": the
    guard then treats the request as reaching into the retain side."""
    rows = [r for r in rows if r.get("question") and r.get("answer")]
    vectors = embedder.encode([row_text(r) for r in rows])
    index = VectorIndex(vectors)
    own: set[int] = set()
    forms = [subject.name, *subject.aliases]
    for i, row in enumerate(rows):
        author = row.get("author")
        if author and any(name_matches(author, f) for f in forms):
            own.add(i)
    if len(records) and len(rows):
        sims, ids = index.search(record_vectors, min(5, len(rows)))
        for row_sims, row_ids in zip(sims, ids, strict=True):
            for s, j in zip(row_sims, row_ids, strict=True):
                if (
                    j >= 0
                    and s >= threshold
                    and not rows[j].get("author")
                    and subject.mentioned_in(row_text(rows[j]), with_parts=False)
                ):
                    own.add(int(j))
    return RetainCorpus(list(rows), vectors, index, sorted(own))


# --------------------------------------------------------------------------- scope guard


def other_subject_names(corpus: RetainCorpus, subject: Subject) -> list[str]:
    """Names of the other subjects in the retain corpus (from its ``author`` field)."""
    names: dict[str, str] = {}
    forms = [subject.name, *subject.aliases]
    for i in corpus.others:
        author = corpus.rows[i].get("author")
        if author and not any(name_matches(author, f) for f in forms):
            names.setdefault(squash(author).casefold(), squash(author))
    return sorted(names.values())


def scope_check(
    items: Sequence[PromptItem],
    vectors: np.ndarray,
    corpus: RetainCorpus | None,
    general_items: Sequence[dict],
    general_vectors: np.ndarray,
    general_question_vectors: np.ndarray,
    question_vectors: np.ndarray,
    subject: Subject,
    threshold: float,
) -> list[dict | None]:
    """For each item, None if it is the subject's, else the reason it is not:

    - ``general_knowledge``: near a general-set item (question+answer), or its question
      is near a general question and the target states that question's answer;
    - ``other_subject_record``: near a retain-corpus row that is not the subject's;
    - ``names_other_subject``: the item names another subject of the retain corpus.
    """
    reasons: list[dict | None] = [None] * len(items)
    if len(general_items) and len(items):
        sim_qa = vectors @ general_vectors.T
        sim_q = question_vectors @ general_question_vectors.T
        for i, item in enumerate(items):
            j = int(sim_qa[i].argmax())
            if sim_qa[i, j] >= threshold:
                reasons[i] = dropped(
                    item, "general_knowledge", sim_qa[i, j], matches=general_items[j]["question"]
                )
                continue
            for j in np.argsort(-sim_q[i])[:3]:
                answer = str(general_items[j].get("answer", ""))
                if sim_q[i, j] >= threshold and answer and contains_phrase(item.target, answer):
                    reasons[i] = dropped(
                        item, "general_knowledge", sim_q[i, j],
                        matches=general_items[j]["question"],
                    )  # fmt: skip
                    break
    if corpus is not None and corpus.others and len(items):
        others = corpus.others
        other_vectors = corpus.vectors[others]
        sims = vectors @ other_vectors.T
        names = other_subject_names(corpus, subject)
        for i, item in enumerate(items):
            if reasons[i] is not None:
                continue
            j = int(sims[i].argmax())
            if sims[i, j] >= threshold:
                row = corpus.rows[others[j]]
                reasons[i] = dropped(
                    item, "other_subject_record", sims[i, j],
                    matches=row.get("question"), subject=row.get("author"),
                )  # fmt: skip
                continue
            text = qa_text(item)
            named = [n for n in names if contains_phrase(text, n)]
            if named:
                reasons[i] = dropped(item, "names_other_subject", None, subject=named[0])
    return reasons
