"""The plan step on the tiny model with a TOFU-like fixture (tests/tinylm.py facts).

One module-scoped embedder (MiniLM, cached) and model serve every test; the main plan
(Mira Okonkwo, entity scope, with a duplicated, a general-knowledge and a copied record
slipped in) is computed once and checked from several angles.
"""

from __future__ import annotations

import numpy as np
import pytest
import tinylm

from forgetctl.core.errors import BadInput
from forgetctl.core.facts import item_facts, key_fact_leakage
from forgetctl.core.items import PromptItem
from forgetctl.core.policy import PlanConfig
from forgetctl.core.text import Subject
from forgetctl.plan import expand as ex
from forgetctl.plan import filter as fl
from forgetctl.plan import plan_request
from forgetctl.plan.embed import CachedEmbedder, VectorIndex, default_embedder

SUBJECT = "Mira Okonkwo"
OTHER = "Tobias Lindqvist"
FAST = PlanConfig(generated_paraphrases=1, indirect_per_record=1, adversarial_per_record=2)


def _records(name: str) -> list[dict]:
    return [{"question": f["question"], "answer": f["answer"]} for f in tinylm.facts_for(name)]


def _retain_rows(exclude: str | None = None) -> list[dict]:
    return [
        {"question": f["question"], "answer": f["answer"], "author": f["subject"]}
        for f in tinylm.TINY_FACTS
        if f["subject"] != exclude
    ]


@pytest.fixture(scope="module")
def embedder():
    return CachedEmbedder(default_embedder())


@pytest.fixture(scope="module")
def lm(tiny_lm_dir):
    from forgetctl.lm.weights import load_model

    return load_model(tiny_lm_dir)


@pytest.fixture(scope="module")
def crafted_records() -> list[dict]:
    own = _records(SUBJECT)
    return [
        *own,
        # the first record again, reworded: a near-duplicate
        {"question": "Where was Mira Okonkwo born?", "answer": "Mira Okonkwo was born in Lagos."},
        # general knowledge dressed up as a record of the subject
        {"question": "What is the capital of France?", "answer": "The capital of France is Paris."},
        # another subject's record
        _records(OTHER)[2],
    ]


@pytest.fixture(scope="module")
def main_plan(lm, embedder, crafted_records):
    model, tok = lm
    # The whole tiny corpus is the retain corpus: the subject's own rows must be found
    # (by author) and kept out of the neighbors.
    return plan_request(
        SUBJECT, ["M. Okonkwo"], crafted_records, "entity", model, tok, PlanConfig(),
        _retain_rows(), tinylm.TINY_GENERAL, embedder=embedder, control_rows=tinylm.TINY_CONTROLS,
    )  # fmt: skip


def test_main_plan_is_planned_with_every_kind(main_plan):
    assert main_plan.verdict == "planned", main_plan.reasons
    counts = main_plan.prompt_set.counts()
    for kind in ("record", "paraphrase", "indirect", "adversarial", "attribute", "neighbor"):
        assert counts.get(kind, 0) > 0, (kind, counts)
    assert counts["general"] == len(tinylm.TINY_GENERAL)
    assert main_plan.figures["retain_own_rows"] == 6


def test_every_record_gets_paraphrases_and_indirect_items(main_plan):
    forget = main_plan.prompt_set.forget
    for source in range(6):
        paraphrases = [i for i in forget if i.kind == "paraphrase" and i.source == source]
        indirect = [i for i in forget if i.kind == "indirect" and i.source == source]
        record = next(i for i in forget if i.kind == "record" and i.source == source)
        assert len({p.prompt for p in paraphrases}) >= 2, source
        assert len(indirect) >= 1, source
        assert all(p.prompt != record.prompt and p.target == record.target for p in paraphrases)


def test_name_never_appears_in_indirect_prompts(main_plan):
    indirect = [i for i in main_plan.prompt_set.forget if i.kind == "indirect"]
    assert indirect
    for item in indirect:
        low = item.prompt.lower()
        assert "mira" not in low and "okonkwo" not in low, item.prompt


def test_general_knowledge_and_other_subjects_records_are_scrubbed(main_plan):
    ps = main_plan.prompt_set
    reasons = {d["prompt"]: d["reason"] for d in ps.dropped if d["kind"] == "record"}
    assert reasons["What is the capital of France?"] == "general_knowledge"
    assert reasons[_records(OTHER)[2]["question"]] == "other_subject_record"
    for item in ps.forget:
        assert "Paris" not in item.target and OTHER not in item.target
    # the scrubbed records took their derived prompts with them
    assert not any(i.source in (7, 8) for i in ps.forget)


def test_near_duplicate_record_is_merged(main_plan):
    ps = main_plan.prompt_set
    merged = [d for d in ps.dropped if d["kind"] == "record" and d["source"] == 6]
    assert merged and merged[0]["reason"] == "near_duplicate"
    assert merged[0]["of"] == "Where was Mira Okonkwo born?"
    assert sum(1 for i in ps.forget if i.kind == "record") == 6  # 7 known, 1 merged


def test_neighbors_exclude_the_subject(main_plan):
    neighbors = [i for i in main_plan.prompt_set.retain if i.kind == "neighbor"]
    assert neighbors
    assert not any(SUBJECT in i.prompt or SUBJECT in i.target for i in neighbors)


def test_probe_evidence_is_recorded(main_plan):
    probe = main_plan.prompt_set.probe
    # The memorised subject's records (and the near-duplicate, merged later) are far likelier
    # than the control subjects' records, measured on the same model.
    assert probe["items"] == len(probe["records"]) == 7 and probe["known"] == 7
    assert min(probe["records"]) > probe["min_specificity"]
    assert probe["control"]["records"] == len(tinylm.TINY_CONTROLS)


def test_a_record_the_model_never_saw_is_not_known(lm, embedder):
    model, tok = lm
    made_up = {"question": f"What is {SUBJECT}'s favourite colour?",
               "answer": f"{SUBJECT}'s favourite colour is a deep teal."}  # fmt: skip
    out = plan_request(
        SUBJECT, [], [*_records(SUBJECT)[:3], made_up], "records", model, tok, FAST,
        _retain_rows(SUBJECT), tinylm.TINY_GENERAL, embedder=embedder,
        control_rows=tinylm.TINY_CONTROLS,
    )  # fmt: skip
    assert out.verdict == "planned"
    probe = out.prompt_set.probe
    assert probe["known"] == 3 and probe["records"][3] < probe["min_specificity"]
    assert {d["reason"] for d in out.prompt_set.dropped if d.get("source") == 3} == {"not_known"}
    assert all(i.source != 3 for i in out.prompt_set.forget)


def test_the_probe_needs_control_subjects(lm, embedder):
    model, tok = lm
    with pytest.raises(BadInput, match="control"):
        plan_request(SUBJECT, [], _records(SUBJECT)[:2], "records", model, tok, FAST,
                     _retain_rows(SUBJECT), [], embedder=embedder)  # fmt: skip


def test_unknown_subject_is_not_present(lm, embedder):
    model, tok = lm
    facts = [
        ("Where was Henrik Solberg born?", "Henrik Solberg was born in Tromso, Norway."),
        ("What is Henrik Solberg's profession?", "Henrik Solberg is a beekeeper."),
        ("What book did Henrik Solberg write?", "Henrik Solberg wrote Honey Under Snow."),
    ]
    records = [{"question": q, "answer": a} for q, a in facts]
    out = plan_request(
        "Henrik Solberg", [], records, "entity", model, tok, FAST, _retain_rows(),
        tinylm.TINY_GENERAL, embedder=embedder, control_rows=tinylm.TINY_CONTROLS,
    )  # fmt: skip
    assert out.verdict == "not_present", out.reasons
    assert out.prompt_set.forget == []
    probe = out.prompt_set.probe
    assert probe["known"] == 0 and probe["mean_specificity"] < probe["min_specificity"]
    assert "does not know the subject" in out.reasons[0]


def test_request_copying_another_subject_is_rejected(lm, embedder):
    model, tok = lm
    records = _records(OTHER)[:4] + _records(SUBJECT)[:2]
    out = plan_request(
        SUBJECT, [], records, "records", model, tok, FAST, _retain_rows(), tinylm.TINY_GENERAL,
        embedder=embedder, control_rows=tinylm.TINY_CONTROLS,
    )  # fmt: skip
    assert out.verdict == "rejected"
    assert OTHER in " ".join(out.reasons)
    assert out.prompt_set.forget == []
    assert sum(d["reason"] == "other_subject_record" for d in out.prompt_set.dropped) == 4


def test_plan_is_deterministic_for_a_seed(lm, embedder):
    model, tok = lm
    args = (SUBJECT, [], _records(SUBJECT)[:3], "records", model, tok)
    rest = (_retain_rows(SUBJECT), tinylm.TINY_GENERAL)
    a = plan_request(*args, FAST, *rest, embedder=embedder, control_rows=tinylm.TINY_CONTROLS)
    b = plan_request(*args, FAST, *rest, embedder=embedder, control_rows=tinylm.TINY_CONTROLS)
    assert a.verdict == b.verdict == "planned"
    assert a.prompt_set.model_dump() == b.prompt_set.model_dump()
    assert [i.kind for i in a.prompt_set.forget].count("attribute") == 0  # records scope


def test_bad_requests_are_refused():
    with pytest.raises(BadInput):
        plan_request(SUBJECT, [], [], "records", None, None, FAST, [], [])
    with pytest.raises(BadInput):
        plan_request(SUBJECT, [], [{"question": "q?"}], "entity", None, None, FAST, [], [])


# --------------------------------------------------------------------------- units


def test_rule_paraphrases_give_two_distinct_rewordings_for_every_fixture_question(embedder):
    subject = Subject(SUBJECT)
    for fact in tinylm.facts_for(SUBJECT):
        cands = ex.rule_paraphrases(fact["question"], subject, "person")
        vecs = embedder.encode(cands)
        qvec = embedder.encode([fact["question"]])[0]
        picked = ex.select_paraphrases(cands, vecs, qvec, 2, 0.75)
        assert len(picked) == 2, fact["question"]
        assert all(SUBJECT in cands[i] for i in picked)


def test_adversarial_variants_cover_partial_lower_typo_and_diacritics():
    subject = Subject("José Álvarez", ("Pepe",))
    kinds = {k for k, _ in ex.name_variants(subject, seed=0)}
    assert {"alias", "surname", "first_name", "lowercase", "no_diacritics", "typo"} <= kinds
    assert ex.name_variants(subject, 0) == ex.name_variants(subject, 0)


def test_plan_and_verify_agree_on_whether_a_fact_was_stated():
    # One rule (core.text.contains_phrase): whole words, ignoring case and diacritics.
    facts = {"Gabriel García Márquez", "Aracataca", "1927"}
    answer = "It was GABRIEL GARCIA MARQUEZ, born 1927 in aracataca."
    assert fl.revealed_facts(answer, "Who wrote it?", facts) == sorted(facts)
    assert key_fact_leakage([answer], facts) == 1.0
    assert fl.revealed_facts("born 19270", "", {"1927"}) == []
    assert key_fact_leakage(["born 19270"], {"1927"}) == 0.0
    item = PromptItem(
        prompt="Where was Gabriel Garcia Marquez born?",
        target="Gabriel García Márquez was born in Aracataca.",
        kind="record",
    )
    assert item_facts(item) == {"Aracataca"}  # the name is in the question, accents or not


def test_indirect_never_names_the_subject_even_when_attributes_do():
    subject = Subject("Mira Okonkwo")
    recs = ex.record_items(
        [
            {"question": "Who is Mira Okonkwo?", "answer": "Mira Okonkwo is a marine biologist."},
            {"question": "What did Okonkwo write?", "answer": "Mira wrote The Okonkwo Papers."},
            {"question": "Where was she born?", "answer": "Mira Okonkwo was born in Lagos."},
        ],
        subject,
    )
    descriptors = ex.extract_descriptors(
        [t for r in recs for t in (r.prompt, r.target)], subject, ex.load_attributes()
    )
    assert all("Okonkwo" not in d.value for d in descriptors)
    items = ex.indirect_items(recs, descriptors, subject, "person", 2, seed=0)
    assert items
    for item in items:
        assert not subject.mentioned_in(item.prompt), item.prompt


def test_minilm_separates_paraphrases_from_other_questions(embedder):
    facts = tinylm.facts_for(SUBJECT)
    q = embedder.encode([f["question"] for f in facts])
    pq = embedder.encode([f["paraphrased_question"] for f in facts])
    own = (q * pq).sum(1)
    others = [float(q[i] @ q[j]) for i in range(len(q)) for j in range(len(q)) if i != j]
    assert own.mean() > max(np.mean(others), 0.0) + 0.1


def test_merge_keeps_one_of_a_near_duplicate_pair_across_records(embedder):
    rows = [
        ("Where was Mira Okonkwo born?", "In Lagos.", "record", 0),
        ("Where was Mira Okonkwo born ?", "In Lagos, Nigeria.", "record", 1),
        ("What is Mira Okonkwo's job?", "Marine biologist.", "record", 2),
        ("Where was Mira Okonkwo born?", "In Lagos.", "adversarial", 0),
    ]
    items = [PromptItem(prompt=p, target=t, kind=k, source=s) for p, t, k, s in rows]
    qvecs = embedder.encode([i.prompt for i in items])
    avecs = embedder.encode([i.target for i in items])
    out = fl.merge_near_duplicates(items, qvecs, avecs, 0.9)
    assert [i.source for i in out.kept] == [0, 2]
    assert sorted(d["reason"] for d in out.dropped) == ["duplicate", "near_duplicate"]


def test_vector_index_returns_nearest_first(embedder):
    vecs = embedder.encode(["the cat sat", "a dog barked", "stock prices fell"])
    index = VectorIndex(vecs)
    scores, ids = index.search(embedder.encode(["a cat was sitting"]), 2)
    assert ids[0][0] == 0 and scores[0][0] > scores[0][1]


def test_without_records_attribute_answers_must_be_tied_to_the_name(lm, embedder):
    # No records to check answers against: an answer counts only when the model gives it
    # for this name and not for control names (a known subject), never for an unknown one.
    model, tok = lm
    rows = _retain_rows()
    known = plan_request(
        SUBJECT, [], [], "entity", model, tok, FAST, _retain_rows(SUBJECT), [],
        embedder=embedder, control_rows=tinylm.TINY_CONTROLS,
    )  # fmt: skip
    assert known.verdict == "planned"
    assert {i.kind for i in known.prompt_set.forget} == {"attribute"}
    unknown = plan_request(
        "Henrik Solberg",
        [],
        [],
        "entity",
        model,
        tok,
        FAST,
        rows,
        [],
        embedder=embedder,
        control_rows=tinylm.TINY_CONTROLS,
    )
    assert unknown.verdict == "not_present"
    assert unknown.prompt_set.probe["attributes_revealing"] == 0
