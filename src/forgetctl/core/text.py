"""Text rules shared by the plan and verify steps: the subject's name forms, where they
occur, and when a phrase counts as said.

Everything that must recognise, replace or vary the subject's name goes through
:class:`Subject`, so "the name never appears in an indirect prompt" and "this retain row
is the subject's own" use one definition of what counts as the name; whether an answer
states a fact is :func:`contains_phrase` for both the plan's filter and the gate's
key-fact leakage (:mod:`forgetctl.core.facts`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

# Particles that are part of a name but identify nobody on their own ("Al-", "de la").
_PARTICLES = {
    "al", "el", "bin", "ibn", "de", "del", "della", "der", "den", "la", "le", "van", "von",
    "da", "di", "du", "dos", "das", "y", "mc", "mac", "st", "jr", "sr", "ii", "iii",
}  # fmt: skip


def strip_diacritics(text: str) -> str:
    """ "Skármeta" -> "Skarmeta" (NFKD, combining marks dropped)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def fold(text: str) -> str:
    """Case- and diacritic-insensitive form for comparisons."""
    return strip_diacritics(text).casefold()


def squash(text: str) -> str:
    """Whitespace-normalised text (exact-duplicate key)."""
    return " ".join(text.split())


def split_continuation(text: str) -> tuple[str, str]:
    """``text`` as (prefix, continuation), how a memorised text is probed: its first third
    of sentences, or of one sentence its first half of words, then the rest."""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    if len(sentences) >= 2:
        cut = max(1, len(sentences) // 3)
        return " ".join(sentences[:cut]), " ".join(sentences[cut:])
    words = text.split()
    cut = max(1, len(words) // 2)
    return " ".join(words[:cut]), " ".join(words[cut:])


@dataclass(frozen=True)
class Subject:
    """The data subject of a request: a name, its aliases and optional identifiers."""

    name: str
    aliases: tuple[str, ...] = ()
    identifiers: dict[str, str] = field(default_factory=dict)
    """E.g. {"email": "..."}: used as indirect descriptors and as forget targets."""

    def forms(self) -> list[str]:
        """Full name and aliases, longest first (so replacements take the longest match)."""
        seen: dict[str, str] = {}
        for form in (self.name, *self.aliases):
            form = squash(form)
            if form and fold(form) not in seen:
                seen[fold(form)] = form
        return sorted(seen.values(), key=len, reverse=True)

    def parts(self) -> list[str]:
        """Distinctive single tokens of the name forms ("Basil", "Al-Kuwaiti", "Kuwaiti")."""
        out: dict[str, str] = {}
        for form in self.forms():
            for token in re.findall(r"[^\W\d_][\w'\-]*", form):
                pieces = [token, *token.split("-")] if "-" in token else [token]
                for piece in pieces:
                    if len(piece) >= 3 and piece.lower() not in _PARTICLES:
                        out.setdefault(fold(piece), piece)
        return sorted(out.values(), key=len, reverse=True)

    def form_regex(self, with_parts: bool = False) -> re.Pattern[str]:
        """A case-insensitive regex for any name form (optionally also any single part).

        Matches on diacritic-folded text are handled by :meth:`mentioned_in`; this regex is
        for replacing names in text as written.
        """
        alts = self.forms() + (self.parts() if with_parts else [])
        alts = sorted({a for a in alts if a}, key=len, reverse=True)
        body = "|".join(r"\s+".join(re.escape(w) for w in a.split()) for a in alts)
        return re.compile(rf"(?<![\w-])(?:{body})(?![\w-])", re.IGNORECASE)

    def mentioned_in(self, text: str, with_parts: bool = True) -> bool:
        """Whether any name form (or distinctive part) occurs in ``text``, ignoring case
        and diacritics."""
        folded = Subject(
            fold(self.name), tuple(fold(a) for a in self.aliases), self.identifiers
        ).form_regex(with_parts)
        return folded.search(fold(text)) is not None


def name_matches(a: str, b: str) -> bool:
    """Same person name, ignoring case, diacritics and spacing."""
    return normalise_name(a) == normalise_name(b)


def contains_phrase(text: str, phrase: str) -> bool:
    """``phrase`` occurs in ``text`` as whole words, ignoring case and diacritics."""
    words = fold(phrase).split()
    if not words:
        return False
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
    return re.search(pattern, fold(text)) is not None


def normalise_name(name: str) -> str:
    """Case-, accent- and whitespace-insensitive form of a name for the blind index."""
    return squash(fold(name))
