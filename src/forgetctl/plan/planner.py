"""The plan step: a deletion request becomes a verdict and an entity prompt set.

    scope guard on the records (general knowledge, other subjects' rows) -> rejected?
    expand the in-scope records (paraphrase, indirect, adversarial) + attribute prompts
    probe: is each record likelier than the control subjects' records?
    keep what the model knows                                            -> not_present?
    merge near-duplicates
    retain side: faiss neighbors from the retain corpus + general items
    control subjects (drawn before the probe): expanded the same way      -> planned

The guard runs before any generation so that a request reaching into other people's
data costs no model time. Pure: no ledger, no files. Deterministic for ``cfg.seed``
(greedy decoding, seeded choices, exact search).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from forgetctl.core.errors import BadInput
from forgetctl.core.items import FORGET_KINDS, PromptItem, PromptSet, trains_retain
from forgetctl.core.policy import PlanConfig
from forgetctl.core.progress import Progress, silent
from forgetctl.core.text import Subject, squash
from forgetctl.lm.infer import answer_logprobs, generate
from forgetctl.plan import control as ctl
from forgetctl.plan import expand as ex
from forgetctl.plan import filter as fl
from forgetctl.plan.embed import CachedEmbedder, Embedder, default_embedder

Verdict = Literal["planned", "not_present", "rejected"]

# Fictitious names swapped for the subject's in attribute answers (the model's own, which it
# would give about anyone it does not know): only an answer tied to this name is its data.
STAND_IN_NAMES = ("Elena Marwick", "Tomasz Verhoeven", "Ines Caldara")


@dataclass
class PlanOutcome:
    verdict: Verdict
    prompt_set: PromptSet
    """The planned set; for not_present and rejected, an empty forget side with the probe
    and the dropped items as evidence."""
    reasons: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)


class _Run:
    """Timings, dropped items and figures of one plan run, and how it ends."""

    def __init__(self, cfg: PlanConfig, progress: Progress) -> None:
        self.cfg = cfg
        self.say = progress
        self.start = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.dropped: list[dict] = []
        self.probe: dict = {"items": 0, "known": 0, "note": "not run"}
        self.figures: dict = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self.last, 3)
        self.last = now

    def finish(
        self, verdict: Verdict, forget=(), retain=(), reasons=(), control=None
    ) -> PlanOutcome:
        self.timings["total"] = round(time.perf_counter() - self.start, 3)
        figures = {
            **self.figures,
            "counts": dict(Counter(i.kind for i in [*forget, *retain])),
            "dropped": dict(Counter(d["reason"] for d in self.dropped)),
            "probe": {k: v for k, v in self.probe.items() if k != "attributes"},
            "timings_s": self.timings,
        }
        if control:
            figures["control"] = {name: len(items) for name, items in control.items()}
        ps = PromptSet(
            forget=list(forget), retain=list(retain), dropped=self.dropped, probe=self.probe,
            control=control or {},
        )  # fmt: skip
        return PlanOutcome(verdict, ps, list(reasons), figures)

    def reject(self, share: float, reasons_scope: list[dict]) -> PlanOutcome:
        by_reason = Counter(r["reason"] for r in reasons_scope)
        others = sorted({r["subject"] for r in reasons_scope if r.get("subject")})
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(by_reason.items()))
        reasons = [
            f"{share:.0%} of the request's items belong to the retain side "
            f"(limit {self.cfg.max_retain_overlap:.0%}; {detail})"
        ]
        if others:
            reasons.append("records of other subjects: " + ", ".join(others))
        return self.finish("rejected", reasons=reasons)


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 4) if len(values) else None


def plan_request(
    subject: str,
    aliases: Sequence[str],
    records: Sequence[dict],
    scope: Literal["entity", "records"],
    model,
    tokenizer,
    cfg: PlanConfig,
    retain_corpus_rows: Sequence[dict],
    general_items: Sequence[dict],
    embedder: Embedder | None = None,
    progress: Progress = silent,
    identifiers: Mapping[str, str] | None = None,
    control_rows: Sequence[dict] = (),
) -> PlanOutcome:
    """Plan one request.

    ``records``: ``{question, answer}`` or ``{text}`` dicts; ``retain_corpus_rows``:
    ``{question, answer[, author]}``; ``general_items``: ``{question, answer}``;
    ``identifiers``: e.g. ``{"email": ...}``, used to describe the subject indirectly;
    ``control_rows``: ``{author, question, answer}`` of people the model never saw.
    """
    subj = Subject(squash(subject), tuple(a for a in aliases if a.strip()), dict(identifiers or {}))
    if not subj.name:
        raise BadInput("the request names no subject")
    if scope not in ("entity", "records"):
        raise BadInput(f"unknown scope {scope!r} (entity or records)")
    if scope == "records" and not records:
        raise BadInput("a records-scope request needs its records")
    recs = ex.record_items(records, subj)

    run = _Run(cfg, progress)
    emb = CachedEmbedder(embedder or default_embedder())
    run.figures["embedder"] = emb.name

    # ------------------------------------------------------------------ scope guard (records)
    run.say("checking the records against the retain corpus and general knowledge")
    corpus = fl.build_retain_corpus(
        retain_corpus_rows, subj, emb, recs, emb.encode([fl.qa_text(i) for i in recs]),
        cfg.near_duplicate_threshold,
    )  # fmt: skip
    general = [g for g in general_items if g.get("question") and g.get("answer")]
    gen_vecs = emb.encode([f"{g['question']} {g['answer']}" for g in general])
    gen_qvecs = emb.encode([g["question"] for g in general])

    def guard(items: list[PromptItem]) -> list[dict | None]:
        return fl.scope_check(
            items, emb.encode([fl.qa_text(i) for i in items]), corpus, general, gen_vecs,
            gen_qvecs, emb.encode([i.prompt for i in items]), subj, cfg.scope_overlap_threshold,
        )  # fmt: skip

    rec_reasons = guard(recs)
    run.dropped += [r for r in rec_reasons if r]
    run.figures.update(
        retain_corpus_rows=len(corpus.rows),
        retain_own_rows=len(corpus.own),
        out_of_scope_records=sum(1 for r in rec_reasons if r),
    )
    run.lap("scope_guard")
    if recs:
        share = sum(1 for r in rec_reasons if r) / len(recs)
        run.figures["overlap_share"] = round(share, 4)
        if share > cfg.max_retain_overlap:
            return run.reject(share, [r for r in rec_reasons if r])
    recs = [it for it, r in zip(recs, rec_reasons, strict=True) if r is None]

    # ------------------------------------------------------------------ expand
    run.say(f"expanding {len(recs)} records into forget prompts")
    derived, stats = _expand(recs, subj, model, tokenizer, cfg, emb)
    attr_items = ex.attribute_prompts(subj, ex.load_attributes()) if scope == "entity" else []
    run.figures["expanded"] = dict(Counter(i.kind for i in [*recs, *derived, *attr_items]))
    run.figures.update(stats)
    run.lap("expand")

    # ------------------------------------------------------------------ probe
    # Known means the model predicts the record's answer better than it predicts the
    # records of people it never saw: the answer's mean token log-prob exceeds the control
    # subjects' records' 95th percentile by ``min_specificity`` nats, on the same model.
    # Their records echo their questions as much ("<name> works as a ..."), so template
    # words cannot make an unknown person look known. One forward pass per record; only the
    # attribute questions, whose answers come from the model, are decoded.
    people = ctl.control_subjects(control_rows, subj, cfg.control_subjects, cfg.seed)
    if not people:
        raise BadInput("no control subjects: the probe needs a control corpus of people the "
                       "model never saw (`forgetctl init --control-corpus`)")  # fmt: skip
    control_recs = [it for name, rows_of in people.items()
                    for it in ex.record_items(rows_of, Subject(name))]  # fmt: skip
    run.say(f"probing the model on {len(recs)} records against {len(control_recs)} records "
            f"of {len(people)} control subjects")  # fmt: skip
    reference = float(np.quantile(_logprobs(model, tokenizer, control_recs), 0.95))
    figure = dict(zip((it.source for it in recs), _above(model, tokenizer, recs, reference),
                      strict=True))  # fmt: skip
    if cfg.probe_derived == "item" and derived:
        run.say(f"probing {len(derived)} derived prompts")
        item_figure = dict(zip(map(id, derived), _above(model, tokenizer, derived, reference),
                               strict=True))  # fmt: skip
    run.lap("probe")
    attr_pairs = []
    if attr_items:
        run.say(f"asking the model {len(attr_items)} attribute questions")
        outputs = fl.probe_answers(model, tokenizer, attr_items, cfg.probe_max_new_tokens,
                                   progress=run.say)  # fmt: skip
        attr_pairs = list(zip(attr_items, outputs, strict=True))
    attr_kept, attr_evidence = _check_attributes(attr_pairs, recs, subj, model, tokenizer, cfg, run)
    run.probe = _probe_figures(recs, figure, attr_evidence, cfg)
    run.probe["control"] = {"records": len(control_recs), "p95_logprob": round(reference, 4)}
    if attr_kept:
        attr_reasons = guard(attr_kept)
        run.dropped += [r for r in attr_reasons if r]
        if not recs:
            share = sum(1 for r in attr_reasons if r) / len(attr_kept)
            run.figures["overlap_share"] = round(share, 4)
            if share > cfg.max_retain_overlap:
                return run.reject(share, [r for r in attr_reasons if r])
        attr_kept = [it for it, r in zip(attr_kept, attr_reasons, strict=True) if r is None]
    run.lap("attributes")

    # ------------------------------------------------------------------ keep what is known
    kept: list[PromptItem] = []
    for it in [*recs, *derived]:
        # "source": a record and its variants stand or fall together (one fact, many
        # wordings); "item": each derived prompt on its own figure.
        f = item_figure[id(it)] if cfg.probe_derived == "item" and it.kind != "record" else (
            figure[it.source])  # fmt: skip
        if f >= cfg.min_specificity:
            kept.append(it)
        else:
            run.dropped.append(fl.dropped(it, "not_known", f))
    kept.sort(key=lambda it: (FORGET_KINDS.index(it.kind), it.source or 0))
    kept += attr_kept
    if not kept:
        reasons = [
            f"the model does not know the subject: none of {run.probe['items']} records is "
            f"likelier than the control subjects' records by {cfg.min_specificity} nats "
            f"per token (mean {run.probe['mean_specificity']})"
        ]
        return run.finish("not_present", reasons=reasons)

    # ------------------------------------------------------------------ near-duplicates
    run.say(f"merging near-duplicates among {len(kept)} forget prompts")
    merged = fl.merge_near_duplicates(
        kept,
        emb.encode([i.prompt for i in kept]),
        emb.encode([i.target for i in kept]),
        cfg.near_duplicate_threshold,
    )
    run.dropped += merged.dropped
    forget = merged.kept
    run.lap("merge")

    # ------------------------------------------------------------------ retain side
    run.say("selecting neighbors and general items to retain")
    forget_vecs = emb.encode([fl.qa_text(i) for i in forget])
    retain = _neighbors(forget, forget_vecs, corpus, cfg) + _general_sample(general, cfg)
    run.lap("retain")

    # ------------------------------------------------------------------ control subjects
    run.say("expanding the control subjects' records the same way")
    control = _controls(people, forget, model, tokenizer, cfg, emb)
    run.lap("control")
    return run.finish("planned", forget, retain, control=control)


def _controls(people: Mapping[str, list[dict]], forget, model, tokenizer, cfg: PlanConfig, emb):
    """Per control subject, prompts of the forget set's kinds built from as many of their
    records as the request keeps."""
    wanted = ctl.record_count(forget)
    out: dict[str, list[PromptItem]] = {}
    for name, rows_of in people.items():
        person = Subject(name)
        picked = random.Random(f"{cfg.seed}/{name}").sample(rows_of, min(wanted, len(rows_of)))
        recs = ex.record_items(picked, person)
        derived, _ = _expand(recs, person, model, tokenizer, cfg, emb)
        out[name] = ctl.shaped_like([*recs, *derived], forget)
    return out


def _expand(recs, subj: Subject, model, tokenizer, cfg: PlanConfig, emb) -> tuple[list, dict]:
    """Paraphrase, indirect and adversarial items of the records, with figures."""
    texts = [t for r in recs for t in (r.prompt, r.target)]
    who = ex.role_noun(texts)
    questions = [r for r in recs if r.prompt.endswith("?")]
    rule_cands = [ex.rule_paraphrases(r.prompt, subj, who) for r in questions]
    # A rewording is about as long as its question; do not pay for rambling answers.
    budget = max(
        (len(tokenizer(r.prompt, add_special_tokens=False)["input_ids"]) for r in questions),
        default=0,
    )
    gen_raw = ex.generated_paraphrases(
        [r.prompt for r in questions],
        lambda prompts: _generate(model, tokenizer, prompts, min(64, int(budget * 1.5) + 8)),
        cfg.generated_paraphrases,
    )
    gen_cands = [
        [c for c in raw if ex.valid_generated(c, r.prompt, subj)]
        for r, raw in zip(questions, gen_raw, strict=True)
    ]
    # One batch for every candidate; the per-record selection below hits the cache.
    emb.encode(
        [
            t
            for r, a, b in zip(questions, rule_cands, gen_cands, strict=True)
            for t in (r.prompt, *a, *b)
        ]
    )
    paraphrases: list[PromptItem] = []
    picked_counts = Counter()
    for r, rules, gens in zip(questions, rule_cands, gen_cands, strict=True):
        qvec, rvecs, gvecs = emb.encode([r.prompt]), emb.encode(rules), emb.encode(gens)
        picked_rules = ex.select_paraphrases(
            rules, rvecs, qvec[0], cfg.paraphrases_per_record, cfg.paraphrase_min_similarity
        )
        picked_gens = ex.select_paraphrases(
            gens, gvecs, qvec[0], cfg.generated_paraphrases, cfg.paraphrase_min_similarity,
            exclude=[rvecs[i] for i in picked_rules], diverse=False,
        )  # fmt: skip
        picked_counts["rule"] += len(picked_rules)
        picked_counts["generated"] += len(picked_gens)
        for text in [rules[i] for i in picked_rules] + [gens[i] for i in picked_gens]:
            paraphrases.append(
                PromptItem(prompt=text, target=r.target, kind="paraphrase", source=r.source)
            )
    descriptors = ex.extract_descriptors(texts, subj, ex.load_attributes())
    indirect = ex.indirect_items(recs, descriptors, subj, who, cfg.indirect_per_record, cfg.seed)
    adversarial = ex.adversarial_items(recs, subj, cfg.adversarial_per_record, cfg.seed)
    stats = {
        "paraphrases": {
            **picked_counts,
            "generated_raw": sum(map(len, gen_raw)),
            "generated_valid": sum(map(len, gen_cands)),
        },
        "descriptors": len(descriptors),
    }
    return [*paraphrases, *indirect, *adversarial], stats


def _check_attributes(attr_pairs, recs, subj, model, tokenizer, cfg: PlanConfig, run: _Run):
    """Attribute items whose answer reveals the subject's data, and the evidence: the model
    ties the answer to this name (:func:`_name_specificity`) and, when there are records, the
    answer states a key fact of them that the question did not contain."""
    if not attr_pairs:
        return [], []
    figure = _name_specificity(model, tokenizer, subj, attr_pairs)
    known = [f >= cfg.min_specificity for f in figure]
    if recs:  # and the answer states a fact of the records
        facts = fl.record_facts(recs, subj)
        known = [k and bool(fl.revealed_facts(a, it.prompt, facts))
                 for k, (it, a) in zip(known, attr_pairs, strict=True)]  # fmt: skip
    kept, evidence = [], []
    for (it, answer), k, f in zip(attr_pairs, known, figure, strict=True):
        item = PromptItem(prompt=it.prompt, target=answer, kind="attribute")
        evidence.append({"prompt": it.prompt, "figure": round(f, 4), "reveals": k})
        if k and answer.strip():
            kept.append(item)
        else:
            run.dropped.append(fl.dropped(item, "attribute_not_revealing", f))
    return kept, evidence


# --------------------------------------------------------------------------- helpers


def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)


def _logprobs(model, tokenizer, items: Sequence[PromptItem]) -> list[float]:
    return answer_logprobs(model, tokenizer, [(it.prompt, it.target) for it in items])


def _above(model, tokenizer, items: Sequence[PromptItem], reference: float) -> list[float]:
    """Each item's mean token log-prob minus ``reference`` (the controls' records')."""
    return [lp - reference for lp in _logprobs(model, tokenizer, items)]


def _name_specificity(model, tokenizer, subj: Subject, pairs) -> list[float]:
    """Mean token log-prob of each (question, answer) about the subject minus that of the
    same pair with the name swapped for stand-in names: high only when the model ties the
    answer to this name rather than saying it about anyone."""
    name_re = subj.form_regex(with_parts=True)
    own = answer_logprobs(model, tokenizer, [(it.prompt, a) for it, a in pairs])
    names = [n for n in STAND_IN_NAMES if not subj.mentioned_in(n)]
    other = np.zeros(len(pairs))
    for name in names:
        swapped = [(name_re.sub(name, it.prompt), name_re.sub(name, a)) for it, a in pairs]
        other += np.array(answer_logprobs(model, tokenizer, swapped))
    other /= max(1, len(names))
    return [float(o - c) for o, c in zip(own, other, strict=True)]


def _probe_figures(recs, figure: Mapping[int | None, float], attr_evidence, cfg) -> dict:
    """The probe's evidence: each record's specificity, how many are known, the attributes."""
    values = [figure[it.source] for it in recs]
    out = {
        "items": len(recs),
        "known": sum(v >= cfg.min_specificity for v in values),
        "min_specificity": cfg.min_specificity,
        "mean_specificity": _mean(values),
        "records": [round(v, 4) for v in values],
    }
    if attr_evidence:
        out["attributes"] = attr_evidence
        out["attributes_revealing"] = sum(e["reveals"] for e in attr_evidence)
    return out


def _neighbors(forget, forget_vecs, corpus: fl.RetainCorpus, cfg: PlanConfig) -> list[PromptItem]:
    """``neighbors_k`` nearest retain-corpus rows per forget record (or attribute item when
    there are no records), skipping the subject's own rows and rows that are
    near-duplicates of any forget item."""
    if cfg.neighbors_k == 0 or not corpus.rows:
        return []
    own = set(corpus.own)
    too_close = set()
    if len(forget_vecs):
        sims, ids = corpus.index.search(forget_vecs, min(10, corpus.index.size))
        for row_s, row_i in zip(sims, ids, strict=True):
            too_close |= {
                int(j)
                for s, j in zip(row_s, row_i, strict=True)
                if s >= cfg.near_duplicate_threshold
            }
    anchors = [i for i, it in enumerate(forget) if it.kind == "record"] or [
        i for i, it in enumerate(forget) if it.kind == "attribute"
    ]
    k_search = min(corpus.index.size, cfg.neighbors_k + len(own) + len(too_close) + 8)
    sims, ids = corpus.index.search(forget_vecs[anchors], k_search)
    out: list[PromptItem] = []
    taken: set[int] = set()
    for a, row_ids in zip(anchors, ids, strict=True):
        got = 0
        for j in row_ids:
            j = int(j)
            if j < 0 or j in own or j in too_close:
                continue
            if j not in taken:
                row = corpus.rows[j]
                out.append(
                    PromptItem(
                        prompt=squash(row["question"]),
                        target=squash(row["answer"]),
                        kind="neighbor",
                        source=forget[a].source,
                    )  # fmt: skip
                )
                taken.add(j)
            got += 1
            if got >= cfg.neighbors_k:
                break
    return out


def _general_sample(general: Sequence[dict], cfg: PlanConfig) -> list[PromptItem]:
    """The general-knowledge items of the retain side: every held-out one (what the utility
    check judges) and ``general_k`` of the training ones (what the retain term keeps), drawn
    with ``cfg.seed``; in the sets' order."""
    items = [
        PromptItem(prompt=squash(g["question"]), target=squash(str(g["answer"])), kind="general")
        for g in general
    ]
    train = [i for i, item in enumerate(items) if trains_retain(item)]
    picks = random.Random(f"{cfg.seed}:general").sample(train, min(cfg.general_k, len(train)))
    keep = set(picks) | {i for i, item in enumerate(items) if not trains_retain(item)}
    return [items[i] for i in sorted(keep)]
