"""How an answer reads, apart from what it says: the signals of degenerate text.

Unlearning by pushing an answer's probability down often leaves text that no model that
never saw the subject would write: a word repeated, fragments glued together, an answer
cut short or running on. The gate's no-tell check compares these figures on the forgotten
subject's answers with those on the control subjects' answers.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"^[^\w]*(?:[^\W\d_]+(?:['’-][^\W\d_]+)*|\d+(?:[.,:/-]\d+)*)[^\w]*$")
_LONGEST_WORD = 18
"""Longer letter runs are glued fragments ("ThereforeTherefore"), not words."""


def _words(text: str) -> list[str]:
    return text.split()


def repetition(text: str) -> float:
    """Share of the answer's word bigrams that repeat an earlier bigram (0: none repeat)."""
    words = [w.lower() for w in _words(text)]
    bigrams = list(zip(words, words[1:], strict=False))
    return 1 - len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def nonword_share(text: str) -> float:
    """Share of whitespace-separated tokens that are not a word or a number (punctuation
    around them allowed); an empty answer counts as all non-words."""
    tokens = _words(text)
    if not tokens:
        return 1.0
    bad = sum(1 for t in tokens if not _WORD.match(t) or len(t) > _LONGEST_WORD)
    return bad / len(tokens)


def word_count(text: str) -> int:
    """The answer's length in words. Not relative to the reference answer: a model that
    never saw a person answers at its own length, and people's reference answers differ
    (measured: 17.5 words for a TOFU author, 28.5 for two others)."""
    return len(_words(text))


TELLS = ("repetition", "nonword", "length")
"""The per-answer degeneracy figures, by name (fields of ``lm.evaluate.ItemScore``)."""
