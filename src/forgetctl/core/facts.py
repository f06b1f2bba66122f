"""The text metrics of forgetting, shared by the plan's probe, the gate and the benchmark.

- **Answer recall**: ROUGE-L recall of the target answer in the model's greedy output,
  as TOFU and MUSE report it (longest common subsequence of word tokens / reference length).
- **Key-fact leakage**: the share of a target's salient spans (names, dates, years, numbers,
  places, quoted titles, emails) that appear in the output. Recall is forgiving of
  paraphrase but rewards template words ("The author was born in ..."); leakage asks the
  sharper question "did the name, date or title come out?".

Both are pure text rules: :mod:`forgetctl.lm.evaluate` applies them to a model's answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from forgetctl.core.items import PromptItem
from forgetctl.core.text import contains_phrase

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


def key_fact_leakage(outputs: Iterable[str], facts: Iterable[str]) -> float:
    """Share of ``facts`` that appear in any output, as whole words ignoring case and
    diacritics (:func:`~forgetctl.core.text.contains_phrase`, the plan step's rule too).

    0.0 when there are no facts to leak.
    """
    facts = list(facts)
    if not facts:
        return 0.0
    joined = "\n".join(outputs)
    return sum(contains_phrase(joined, f) for f in facts) / len(facts)


def item_facts(item: PromptItem) -> set[str]:
    """The target's key facts that the prompt does not already give away: echoing a
    name the question contains is not leakage; naming the subject for an indirect
    question is."""
    return {f for f in key_facts(item.target) if not contains_phrase(item.prompt, f)}
