"""The packaged control corpus (``builtin:controls``): fictitious authors that no model has
seen, against which the gate compares a forgotten subject. No model is loaded."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from forgetctl.core.data import builtin_names, load_jsonl
from forgetctl.core.facts import item_facts
from forgetctl.core.items import PromptItem
from forgetctl.core.text import contains_phrase

TOFU_SAMPLE = Path(__file__).parents[1] / "examples" / "data" / "tofu" / "authors.jsonl"

ROWS = load_jsonl("builtin:controls")


def _surname(name: str) -> str:
    return name.split()[-1]


def test_controls_is_a_builtin_set() -> None:
    assert "controls" in builtin_names()


def test_eight_authors_with_enough_rows_each() -> None:
    counts = Counter(row["author"] for row in ROWS)
    assert len(counts) == 8
    assert min(counts.values()) >= 12, counts


def test_rows_are_complete_and_name_their_author() -> None:
    for row in ROWS:
        for field in ("author", "question", "answer"):
            assert isinstance(row.get(field), str) and row[field].strip(), row
        name = row["author"]
        assert contains_phrase(row["answer"], name) or contains_phrase(
            row["answer"], _surname(name)
        ), row


def test_every_answer_has_a_key_fact_the_question_does_not_give() -> None:
    # The gate measures key-fact leakage: a control row without facts measures nothing.
    for row in ROWS:
        item = PromptItem(prompt=row["question"], target=row["answer"], kind="attribute")
        assert item_facts(item), row


def test_no_control_author_is_in_the_tofu_sample() -> None:
    sample = TOFU_SAMPLE.read_text(encoding="utf-8")
    tofu_authors = {json.loads(line)["author"] for line in sample.splitlines() if line.strip()}
    for name in {row["author"] for row in ROWS}:
        assert name not in tofu_authors
        # Every part of the name, so the surname of "Duan Qiuyan" is checked too.
        for part in name.split():
            assert not contains_phrase(sample, part), (name, part)


def test_questions_are_unique() -> None:
    questions = Counter(row["question"].strip().lower() for row in ROWS)
    assert [q for q, n in questions.items() if n > 1] == []
