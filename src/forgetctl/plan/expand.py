"""Expansion: a deletion request becomes an entity-level forget prompt set (CAE).

Forgetting only the request's records leaves the data reachable by other wording: a
paraphrase, a question that describes the person without naming them, a nickname or a
typo. Each record therefore yields several prompts, all with the record's answer as
target (the thing that must no longer come out):

- ``record``: the record itself.
- ``paraphrase``: rewordings of the record question, by rules (question-form transforms,
  synonym swaps) and by the model itself ("Rephrase this question: ..."). Rules always
  give enough; generated ones are kept only when valid (a question, still about the
  subject, similar in meaning, not a copy).
- ``indirect``: the record question asked about "this person", who is introduced by
  attributes taken from the other records ("the author born in Lagos, Nigeria who won the
  X Prize"); the name never appears, and an attribute that gives away the record's own
  answer is not used for that record.
- ``adversarial``: the record question with the name replaced by an alias, the surname or
  first name alone, lowercase, without diacritics, or with a typo.
- ``attribute``: template questions (``policies/attributes.json``) about the subject by
  name; their target is whatever the current model answers, and the filter keeps them
  only when that answer reveals the subject's data.

Nothing here reads TOFU's ``paraphrased_question``: that field is for measuring.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from forgetctl.core.errors import BadInput
from forgetctl.core.items import PromptItem
from forgetctl.core.text import (
    Subject,
    contains_phrase,
    fold,
    split_continuation,
    squash,
    strip_diacritics,
)

ATTRIBUTES_FILE = Path(__file__).resolve().parents[1] / "policies" / "attributes.json"

# --------------------------------------------------------------------------- records


def record_items(records: Sequence[dict], subject: Subject) -> list[PromptItem]:
    """The request's records as forget items (``source`` = the record's index).

    A record is ``{question, answer}`` or ``{text}``. A free-text record becomes a
    continuation probe: its first sentence (or first half) is the prompt and the rest the
    target, which is how a memorised document leaks.
    """
    items: list[PromptItem] = []
    for i, rec in enumerate(records):
        question = squash(str(rec.get("question") or ""))
        answer = squash(str(rec.get("answer") or ""))
        text = squash(str(rec.get("text") or ""))
        if question and answer:
            items.append(PromptItem(prompt=question, target=answer, kind="record", source=i))
        elif text:
            prompt, target = split_continuation(text)
            items.append(PromptItem(prompt=prompt, target=target, kind="record", source=i))
        else:
            raise BadInput(f"record {i}: needs 'question' and 'answer', or 'text'")
    return items


# --------------------------------------------------------------------------- paraphrase

# Whole-word swaps; alternatives are tried in order (variant 0 takes the first, ...).
_SYNONYMS: dict[str, list[str]] = {
    "author": ["writer"], "authors": ["writers"], "writer": ["author"], "writers": ["authors"],
    "book": ["work", "title"], "books": ["works", "titles"], "novel": ["book"],
    "novels": ["books"], "profession": ["occupation", "line of work"],
    "occupation": ["profession", "job"], "job": ["occupation"], "parents": ["mother and father"],
    "wrote": ["penned", "authored"], "written": ["penned", "authored"], "write": ["pen"],
    "award": ["prize", "honour"], "awards": ["prizes", "honours"], "prize": ["award"],
    "prizes": ["awards"], "win": ["receive"], "won": ["received"], "received": ["won"],
    "genre": ["literary genre", "category"], "famous": ["well known"],
    "known": ["recognised"], "notable": ["noteworthy"], "influence": ["shape"],
    "influenced": ["shaped"], "style": ["approach"], "themes": ["topics"], "theme": ["topic"],
    "background": ["upbringing"], "upbringing": ["background"], "details": ["specifics"],
    "describe": ["characterise"], "explain": ["describe"], "provide": ["give"],
    "city": ["town"], "country": ["nation"], "career": ["professional life"],
    "works": ["writings"], "recognition": ["acclaim"], "inspired": ["motivated"],
    "inspiration": ["motivation"], "significant": ["important"], "important": ["significant"],
    "commonly": ["often"], "often": ["frequently"], "typically": ["usually"],
    "usually": ["typically"], "latest": ["most recent"], "unique": ["distinctive"],
    "impact": ["effect"], "readers": ["audience"], "publish": ["release"],
    "published": ["released"], "explore": ["examine"], "explores": ["examines"],
    "elements": ["aspects"], "experiences": ["life events"],
    "contribute": ["add"], "contributions": ["input"], "main": ["principal"],
    "primary": ["main"], "discuss": ["talk about"], "mention": ["name"],
}  # fmt: skip

# Whole-question patterns (n = the part that holds the name) -> rewordings.
_STRUCTURAL: list[tuple[re.Pattern[str], list[str]]] = [
    (re.compile(r"^Where was (?P<n>.+) born\?$"),
     ["What is the birthplace of {n}?", "In what place was {n} born?"]),
    (re.compile(r"^When was (?P<n>.+) born\?$"),
     ["What is the date of birth of {n}?", "On what date was {n} born?"]),
    (re.compile(r"^In (?:which|what) year was (?P<n>.+) born\?$"),
     ["What year was {n} born in?", "What is the birth year of {n}?"]),
    (re.compile(r"^What is (?P<n>.+?)'s (?P<x>.+)\?$"),
     ["What is the {x} of {n}?", "Could you tell me the {x} of {n}?"]),
    (re.compile(r"^What is the (?P<x>.+?) of (?P<n>.+)\?$"),
     ["What is {n}'s {x}?", "Could you tell me {n}'s {x}?"]),
    (re.compile(r"^Who (?:are|were) (?P<n>.+?)'s (?P<x>.+)\?$"),
     ["Who are the {x} of {n}?", "Can you tell me who {n}'s {x} are?"]),
    (re.compile(r"^What (?P<x>\w+) did (?P<n>.+) write\?$"),
     ["Which {x} was written by {n}?", "Name the {x} that {n} wrote."]),
    (re.compile(r"^What (?P<x>\w+) did (?P<n>.+) win\?$"),
     ["Which {x} was won by {n}?", "Name the {x} that {n} won."]),
    (re.compile(r"^What (?P<x>\w+) does (?P<n>.+) (?P<v>specialize|specialise|write) in\?$"),
     ["In which {x} does {n} {v}?", "Which {x} is {n}'s specialty?"]),
    (re.compile(r"^Can you (?P<x>name|list|provide|describe|tell|share|give) (?P<y>.+)\?$"),
     ["Please {x} {y}.", "Would you {x} {y}?"]),
]  # fmt: skip

# Frames that turn any question into a different-looking request with the same meaning.
_FRAMES = [
    "I would like to know: {q}",
    "Here is a question about {who}: {q}",
    "Tell me, {lq}",
    "Answer this question: {q}",
]


def _case_like(word: str, template: str) -> str:
    return word[:1].upper() + word[1:] if template[:1].isupper() else word


def _swap_synonyms(text: str, subject: Subject, variant: int) -> str:
    """Swap known words for synonyms, leaving the name untouched."""
    name_re = subject.form_regex()
    pieces = name_re.split(text)
    names = name_re.findall(text)

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        options = _SYNONYMS.get(word.lower())
        if not options:
            return word
        return _case_like(options[variant % len(options)], word)

    out = [re.sub(r"[A-Za-z]+", swap, p) for p in pieces]
    return "".join(x for pair in zip(out, [*names, ""], strict=True) for x in pair)


def _structural(question: str) -> list[str]:
    out = []
    for pattern, templates in _STRUCTURAL:
        m = pattern.match(question)
        if not m:
            continue
        groups = m.groupdict()
        out += [t.format(**groups) for t in templates]
    return out


def rule_paraphrases(question: str, subject: Subject, who: str) -> list[str]:
    """Candidate rewordings of ``question`` by rules (most transformed first).

    Candidates are ordered from the most to the least reworded; the caller picks the
    most distinct ones with the embedder.
    """
    q = squash(question)
    lq = q[:1].lower() + q[1:]
    structural = _structural(q)
    cands: list[str] = []
    for s in structural:
        cands.append(_swap_synonyms(s, subject, 0))
        cands.append(s)
    cands += [_swap_synonyms(q, subject, 0), _swap_synonyms(q, subject, 1)]
    about = subject.name if subject.mentioned_in(q) else f"this {who}"
    for i, frame in enumerate(_FRAMES):
        base = _swap_synonyms(q, subject, i) if i % 2 else q
        lbase = base[:1].lower() + base[1:]
        cands.append(frame.format(q=base, lq=lbase if i != 2 else lq, who=about))
    seen: set[str] = set()
    out = []
    for c in cands:
        c = squash(c)
        if c and c != q and c not in seen:
            seen.add(c)
            out.append(c)
    return out


# A small model answers "Rephrase this question: ..." instead of rephrasing; one worked
# example in the instruction fixes most of that (SmolLM2-135M: 1 of 10 valid rewordings
# with a bare instruction, 7 of 10 with an example). Each attempt uses another example,
# which gives different rewordings under greedy decoding.
_PARAPHRASE_EXAMPLES = [
    ("Where was Anna Berg born?", "In which place was Anna Berg born?"),
    ("What is Tom Reed's job?", "What does Tom Reed do for a living?"),
    ("Which books did Lea Park write?", "Can you list the books written by Lea Park?"),
    ("Has Omar Dali won any prizes?", "Did Omar Dali ever receive an award?"),
]
_EXAMPLE_NAMES = ("Anna Berg", "Tom Reed", "Lea Park", "Omar Dali")
_PARAPHRASE_INSTRUCTION = (
    "Rewrite the question below with different words. Do not answer it.\n"
    "Example: '{ex_q}' -> '{ex_p}'\nQuestion: '{q}' ->"
)


def _clean_generated(text: str) -> str:
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = line.split("->")[0]  # it sometimes goes on with another example
    line = re.sub(
        r"^(?:sure[,!.]?\s*)?(?:here(?:'s| is) (?:a |the )?(?:rephrased|reworded|paraphrased)"
        r"[^:]*:\s*|(?:rephrased|reworded|paraphrased)(?: question)?:\s*)",
        "",
        line.strip(),
        flags=re.IGNORECASE,
    )
    return squash(line.strip().strip("\"'“”`*"))


def generated_paraphrases(
    questions: Sequence[str],
    generate_fn: Callable[[list[str]], list[str]],
    attempts: int,
) -> list[list[str]]:
    """Raw model rewordings of each question (``attempts`` instructions each, greedy, so
    deterministic); :func:`valid_generated` and :func:`select_paraphrases` judge them."""
    if attempts <= 0 or not questions:
        return [[] for _ in questions]
    examples = _PARAPHRASE_EXAMPLES
    prompts = [
        _PARAPHRASE_INSTRUCTION.format(
            ex_q=examples[(i + a) % len(examples)][0],
            ex_p=examples[(i + a) % len(examples)][1],
            q=q,
        )
        for i, q in enumerate(questions)
        for a in range(attempts)
    ]
    outs = generate_fn(prompts)
    return [
        [_clean_generated(o) for o in outs[i * attempts : (i + 1) * attempts]]
        for i in range(len(questions))
    ]


def valid_generated(candidate: str, question: str, subject: Subject) -> bool:
    """A generated rewording is usable when it is a question of sensible length, still
    about the subject when the original was, and not a copy of the original."""
    if not candidate.endswith("?") or squash(candidate).lower() == squash(question).lower():
        return False
    n, m = len(candidate.split()), len(question.split())
    if n < 3 or n > 2 * m + 8:
        return False
    if subject.mentioned_in(question) and not subject.mentioned_in(candidate, with_parts=False):
        return False
    if any(name in candidate for name in _EXAMPLE_NAMES):
        return False  # it rephrased the example, not the question
    # The model sometimes answers instead of rephrasing, or repeats the instruction.
    return not re.search(r"\b(?:rephrase|paraphrase|rewrite|reword)\b", candidate, re.I)


def select_paraphrases(
    candidates: Sequence[str],
    vectors: np.ndarray,
    qvec: np.ndarray,
    n: int,
    min_similarity: float,
    exclude: Sequence[np.ndarray] = (),
    diverse: bool = True,
) -> list[int]:
    """Indices of up to ``n`` candidates that keep the question's meaning (cosine to it at
    least ``min_similarity``) and are not copies of it, of ``exclude`` or of each other
    (cosine < 0.995).

    ``diverse``: pick greedily the least similar to everything picked so far (rule
    rewordings keep the meaning by construction, so the most different is the most
    useful); otherwise the most similar to the question first (model rewordings may drift
    in meaning, so the most faithful is the safest).
    """
    sims = vectors @ qvec if len(candidates) else np.zeros(0)
    picked: list[int] = []
    chosen = [qvec, *exclude]
    for _ in range(n):
        best, best_score = -1, 2.0
        for i in range(len(candidates)):
            if i in picked or sims[i] < min_similarity:
                continue
            closest = max(float(vectors[i] @ c) for c in chosen)
            if closest >= 0.995:
                continue
            score = closest if diverse else -float(sims[i])
            if score < best_score:
                best, best_score = i, score
        if best < 0:
            break
        picked.append(best)
        chosen.append(vectors[best])
    return picked


# --------------------------------------------------------------------------- attributes


@dataclass(frozen=True)
class Attribute:
    key: str
    questions: tuple[str, ...]
    extract: tuple[str, ...]
    describe: str


@lru_cache(maxsize=4)
def load_attributes(path: str | None = None) -> tuple[Attribute, ...]:
    """The attribute library (``policies/attributes.json`` unless another file is given)."""
    file = Path(path) if path else ATTRIBUTES_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))["attributes"]
    except (OSError, ValueError, KeyError) as exc:
        raise BadInput(f"attribute library {file}: {exc}") from None
    return tuple(
        Attribute(
            key=key,
            questions=tuple(spec.get("questions", [])),
            extract=tuple(spec.get("extract", [])),
            describe=spec.get("describe", ""),
        )
        for key, spec in data.items()
    )


def attribute_prompts(subject: Subject, attributes: Sequence[Attribute]) -> list[PromptItem]:
    """Attribute questions about the subject by name (every template) and by each alias
    (the first template of each attribute). Targets are filled in by the probe."""
    items = []
    for attr in attributes:
        for t, template in enumerate(attr.questions):
            forms = [subject.name] + (list(subject.aliases) if t == 0 else [])
            for form in forms:
                items.append(
                    PromptItem(prompt=template.replace("{name}", form), target="", kind="attribute")
                )
    seen: set[str] = set()
    return [i for i in items if not (i.prompt in seen or seen.add(i.prompt))]


# --------------------------------------------------------------------------- indirect


@dataclass(frozen=True)
class Descriptor:
    """One thing known about the subject, phrased to refer to them without the name."""

    key: str
    value: str
    phrase: str


_ROLE_NOUNS = ("author", "writer", "novelist", "poet", "journalist", "artist", "scientist")


def role_noun(texts: Sequence[str]) -> str:
    """ "author" when the records are about an author (TOFU), else "person"."""
    joined = " ".join(texts).lower()
    counts = {w: len(re.findall(rf"\b{w}s?\b", joined)) for w in _ROLE_NOUNS}
    best = max(counts, key=lambda w: counts[w])
    return best if counts[best] else "person"


_AWARD_WORD = re.compile(r"\b(?:Award|Prize|Medal|Trophy|Honou?r|Fellowship)s?\b")
_SMALL_WORDS = {"a", "an", "the", "of", "and", "in", "on", "for", "to", "at", "by", "with", "or"}


def _title_like(value: str) -> bool:
    """Most content words capitalised: "Beneath the City of Sin", not "You'll just
    have to wait and see"."""
    words = [w for w in re.findall(r"[^\W\d_][\w'\-]*", value) if w.lower() not in _SMALL_WORDS]
    return bool(words) and sum(w[0].isupper() for w in words) >= 0.6 * len(words)


def extract_descriptors(
    texts: Sequence[str], subject: Subject, attributes: Sequence[Attribute]
) -> list[Descriptor]:
    """Attributes of the subject found in the record texts by the library's patterns, and
    the request's identifiers (an email address identifies a person as well as a name)."""
    name_alt = subject.form_regex().pattern
    by_key = {a.key: a for a in attributes}
    found: dict[tuple[str, str], Descriptor] = {}
    for attr in attributes:
        if not attr.describe:
            continue
        for raw in attr.extract:
            pattern = re.compile(raw.replace("(?:{name})", name_alt))
            for text in texts:
                for m in pattern.finditer(text):
                    value = squash(m.group("v")).strip(" ,.;:")
                    if len(value) < 2 or subject.mentioned_in(value):
                        continue
                    key, describe = attr.key, attr.describe
                    if key == "works" and _AWARD_WORD.search(value):
                        # a quoted award name ("the prestigious "Edgar Award"") is an award
                        key, describe = "awards", by_key["awards"].describe
                    if key in ("works", "awards") and not _title_like(value):
                        continue  # a quoted sentence, not a title
                    phrase = re.sub(r"\ba (?=[aeiouAEIOU])", "an ", describe.format(v=value))
                    found.setdefault((key, fold(value)), Descriptor(key, value, phrase))
    for kind, value in sorted(subject.identifiers.items()):
        if value and not subject.mentioned_in(value):
            found.setdefault(
                (kind, fold(value)), Descriptor(kind, value, f"who has the {kind} {value}")
            )
    # A birth year that is already part of a full birth date says nothing new.
    dates = [d.value for d in found.values() if d.key == "birth_date"]
    return [
        d
        for d in found.values()
        if not (d.key == "birth_year" and any(d.value in x for x in dates))
    ]


_INDIRECT_FRAMES = [
    "Think of the {who} {desc}. {q}",
    "Consider the {who} {desc}. {q}",
    "There is {a_who} {desc}. {q}",
]


def _anonymise(question: str, subject: Subject, who: str) -> str:
    """The question with every form and part of the name replaced by "this {who}"."""
    out = subject.form_regex(with_parts=True).sub(f"this {who}", question)
    # "this author this author" when a full name was matched part by part.
    out = re.sub(rf"(this {who})(?:\s+this {who})+", r"\1", out)
    return out[:1].upper() + out[1:]


def indirect_items(
    records: Sequence[PromptItem],
    descriptors: Sequence[Descriptor],
    subject: Subject,
    who: str,
    per_record: int,
    seed: int,
) -> list[PromptItem]:
    """``per_record`` questions per record that identify the subject by two of their
    attributes, never by name, and never by an attribute that is the record's answer."""
    items = []
    for rec in records:
        rng = random.Random(f"{seed}:indirect:{rec.source}")
        usable = [
            d
            for d in descriptors
            if not contains_phrase(rec.target, d.value) and not contains_phrase(rec.prompt, d.value)
        ]
        if not usable:
            # Better a weaker description than none: allow values the question itself
            # names (they do not give the answer away).
            usable = [d for d in descriptors if not contains_phrase(rec.target, d.value)]
        if not usable:
            continue
        rng.shuffle(usable)
        # Interleave attribute kinds so that a pair describes two different things
        # ("born in Lagos" and "wrote X", not "born in Lagos" and "born in 1978").
        by_key: dict[str, list[Descriptor]] = {}
        for d in usable:
            topic = "birth" if d.key.startswith("birth") else d.key
            by_key.setdefault(topic, []).append(d)
        groups = list(by_key.values())
        usable = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
        question = _anonymise(rec.prompt, subject, who)
        if not re.search(rf"\bthis {who}\b", question, re.I) and not rec.prompt.endswith("?"):
            continue  # a text fragment that never names the subject cannot be re-pointed
        for k in range(per_record):
            pair = [usable[(2 * k) % len(usable)], usable[(2 * k + 1) % len(usable)]]
            desc = (
                pair[0].phrase if pair[0] is pair[1] else f"{pair[0].phrase} and {pair[1].phrase}"
            )
            frame = _INDIRECT_FRAMES[(k + (rec.source or 0)) % len(_INDIRECT_FRAMES)]
            a_who = ("an " if who[:1] in "aeiou" else "a ") + who
            prompt = squash(frame.format(who=who, a_who=a_who, desc=desc, q=question))
            if subject.mentioned_in(prompt):
                continue  # the name must never appear; drop rather than risk it
            items.append(
                PromptItem(prompt=prompt, target=rec.target, kind="indirect", source=rec.source)
            )
    seen: set[str] = set()
    return [i for i in items if not (i.prompt in seen or seen.add(i.prompt))]


# --------------------------------------------------------------------------- adversarial


def _typos(word: str, rng: random.Random) -> list[str]:
    """A swapped, a dropped and a doubled letter, away from the first letter."""
    if len(word) < 4:
        return []
    i = rng.randrange(1, len(word) - 2)
    swapped = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    j = rng.randrange(1, len(word) - 1)
    dropped = word[:j] + word[j + 1 :]
    k = rng.randrange(1, len(word) - 1)
    doubled = word[: k + 1] + word[k] + word[k + 1 :]
    return [v for v in (swapped, dropped, doubled) if v != word]


def name_variants(subject: Subject, seed: int) -> list[tuple[str, str]]:
    """(variant kind, text) surface forms of the name, in a fixed order of kinds."""
    rng = random.Random(f"{seed}:typos:{subject.name}")
    name = squash(subject.name)
    tokens = name.split()
    out: list[tuple[str, str]] = [("alias", a) for a in subject.aliases if squash(a) != name]
    if len(tokens) >= 2:
        out += [("surname", tokens[-1]), ("first_name", tokens[0])]
    out.append(("lowercase", name.lower()))
    if strip_diacritics(name) != name:
        out.append(("no_diacritics", strip_diacritics(name)))
    longest = max(range(len(tokens)), key=lambda t: len(tokens[t])) if tokens else 0
    for typo in _typos(tokens[longest], rng) if tokens else []:
        out.append(("typo", " ".join([*tokens[:longest], typo, *tokens[longest + 1 :]])))
    seen: set[str] = set()
    return [(k, v) for k, v in out if not (v in seen or seen.add(v))]


def adversarial_items(
    records: Sequence[PromptItem], subject: Subject, per_record: int, seed: int
) -> list[PromptItem]:
    """Record questions with the name swapped for its variants; the kinds rotate over the
    records so that every kind of variant is covered when there are enough records."""
    variants = name_variants(subject, seed)
    name_re = subject.form_regex()
    items = []
    for n, rec in enumerate(records):
        if not variants or not name_re.search(rec.prompt):
            continue
        for k in range(min(per_record, len(variants))):
            _, variant = variants[(n * per_record + k) % len(variants)]
            prompt = name_re.sub(variant, rec.prompt)
            if prompt != rec.prompt:
                items.append(
                    PromptItem(
                        prompt=prompt, target=rec.target, kind="adversarial", source=rec.source
                    )
                )
    seen: set[str] = set()
    return [i for i in items if not (i.prompt in seen or seen.add(i.prompt))]
