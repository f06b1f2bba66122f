"""The field's metrics (benchmarks/field.py) on small cases computed by hand from their
definitions (open-unlearning's TOFU and MUSE metrics), and once on the tiny model."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import tinylm

from forgetctl.lm.weights import load_model

FIELD = Path(__file__).resolve().parent.parent / "benchmarks" / "field.py"


@pytest.fixture(scope="module")
def field():
    spec = importlib.util.spec_from_file_location("field_metrics", FIELD)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_truth_ratio_and_probabilities(field):
    # Mean token log-probs: the true answer -1, the wrong ones -2 and -3: P(wrong) is
    # exp(-2.5), so R = exp(-2.5) / exp(-1) = exp(-1.5).
    assert field.truth_ratio(-1.0, [-2.0, -3.0]) == pytest.approx(math.exp(-1.5))
    # As a utility figure: max(0, 1 - R) averaged; a model preferring the wrong answer gets 0.
    assert field.truth_ratio_true_better([0.5, 2.0]) == pytest.approx(0.25)
    # P(true) 0.5 against two wrong answers of 0.25 each: 0.5 / (0.5 + 0.5).
    half, quarter = math.log(0.5), math.log(0.25)
    assert field.normalised_probability(half, [quarter, quarter]) == pytest.approx(0.5)


def test_forget_quality_is_the_ks_test_p_value(field):
    # Two samples of three with no overlap: D = 1, and 2 of the C(6, 3) = 20 orderings are
    # as extreme, so the exact two-sided p-value is 0.1.
    assert field.forget_quality([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert field.forget_quality([0.2, 0.5, 0.9], [0.2, 0.5, 0.9]) == pytest.approx(1.0)


def test_model_utility_is_a_harmonic_mean(field):
    assert field.model_utility([0.5, 1.0]) == pytest.approx(2 / 3)
    assert field.model_utility([0.0, 1.0]) == 0.0  # one lost figure sinks it


def test_privleak_in_muse_units(field):
    # Members (3, 2) against non-members (1, 2): 3 wins and a tie out of 4 pairs.
    assert field.auc([3, 2], [1, 2]) == pytest.approx(0.875)
    assert field.privleak(1.0, 0.5) == pytest.approx(-100)  # kept everything
    assert field.privleak(0.5, 0.5) == pytest.approx(0.0)  # as the retrained model
    assert field.privleak(0.25, 0.5) == pytest.approx(50.0)  # unlearning overshot


def test_rouge_l_stems_as_open_unlearning_does(field):
    # "cats" stems to "cat": the LCS is "the cat sat", 3 of the reference's 6 words.
    recall, f1 = field.rouge_l("The cat sat on the mat", "the cats sat")
    assert recall == pytest.approx(0.5) and f1 == pytest.approx(2 / 3)


def test_measure_on_the_tiny_model(field, tiny_lm_dir, tmp_path):
    from forgetctl.demo.tofu import load_authors

    rows = load_authors(tinylm.write_tofu_jsonl(tmp_path / "a.jsonl"))
    ids = sorted({r["author_id"] for r in rows})
    sets = field.tofu_sets(rows, ids[:1], ids[1:], [], cap=4)
    holdout = [field.Question(r["question"], r["answer"]) for r in tinylm.TINY_CONTROLS]
    sets = field.Sets(sets.forget, sets.retain, sets.real_authors, sets.world_facts, holdout)
    model, tok = load_model(tiny_lm_dir)
    row = field.measure(model, tok, sets)
    assert len(row["forget_truth_ratios"]) == len(sets.forget)
    # The tiny model learnt its subjects: their answers come back, and a membership score
    # tells their records from people it never saw.
    assert row["forget_rouge_recall"] > 0.5 and row["membership_auc"] > 0.7, row
    # It knows its other subjects too (and no real author or world fact: a 0 sinks the mean).
    assert row["utility"]["retain_rouge"] > 0.5 and len(row["utility"]) == 9, row["utility"]
    assert row["model_utility"] == field.model_utility(list(row["utility"].values()))
    same = field.against({"a": row, "b": row}, "b")["a"]
    assert same["forget_quality"] == 1.0 and same["privleak"] == 0.0
    assert "| a | 1 |" in field.table({"a": row, "b": row}, "b")
