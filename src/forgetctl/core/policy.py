"""Policy schema and loading.

A policy is a TOML file (``policies/gdpr.toml`` ...) that says how a request under one
regulation is handled: its deadline, how long its plaintext payload may be kept, the
unlearning method, and the verification thresholds a candidate must pass before promotion.
"""

from __future__ import annotations

import calendar
import tomllib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forgetctl.core.errors import BadInput, InvalidState, NotFound
from forgetctl.core.files import read_text

CheckName = Literal[
    "forget", "retain", "utility", "regression", "membership", "tell", "int4", "relearn"
]


ALL_CHECKS: tuple[CheckName, ...] = get_args(CheckName)
"""Every check, in the gate's order."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MethodConfig(_Strict):
    """How one request is unlearned (one LoRA adapter)."""

    objective: Literal["npo", "grad_diff", "grad_ascent", "distill"] = "npo"
    """The forget term (``unlearn.objectives``); ``distill`` needs a registered pretrained
    base (``forgetctl init --base``)."""
    retain_term: Literal["nll", "kl"] = "kl"
    learning_rate: float = Field(1e-3, gt=0)
    """LoRA on a few layers needs a high rate: on SmolLM2-135M, 2e-4 had forget recall
    at 0.54 after 80 steps, 1e-3 at 0.18 after 30 (retain recall -0.03)."""
    max_steps: int = Field(40, ge=1)
    batch_size: int = Field(8, ge=1)
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    top_k_layers: int = Field(8, ge=1)
    npo_beta: float = Field(0.1, gt=0)
    retain_weight: float = Field(30.0, ge=0)
    """The KL retain term is a per-token mean while NPO sums over the ~30 answer tokens, so
    at weight 1 it hardly competes: on the demo's second request the neighbors' recall fell
    by over 0.3 in 10 steps at weight 1 (forget recall 0.27) and held at 30 (0.40)."""
    consistency_weight: float = Field(0.1, ge=0)
    reset_strength: float = Field(0.0, ge=0, le=1)
    """Start the adapter this share of the way from the parent's weights back to the
    registered pretrained base's on the chosen layers (as far as ``lora_rank`` allows),
    then train: the reset removes what the fine-tune stored there, the retain term repairs
    what must stay (UNDO's damage-then-repair, adapted to a fine-tune). 0: no reset."""
    target_margin: float = Field(0.02, ge=0, le=1)
    """With a pretrained base registered, training also stops once the forget accuracy is
    within this of the base's on the same sample (the base never saw the data: its level is
    what forgotten means, and distilling towards it approaches it only from above)."""
    int4_aware: bool = False
    sam: bool = False
    """Robust training (int4-aware, sharpness-aware) costs 1.8x per step and forgets more
    slowly; a first attempt trains plainly and a retry switches both on (see escalate)."""
    sam_rho: float = Field(0.05, ge=0)
    target_accuracy: float = Field(0.5, ge=0, le=1)
    """Stop early once the forget set's teacher-forced token accuracy (the share of answer
    tokens the model predicts from the question and the true answer so far) is at or under
    this. SmolLM2-135M, never fine-tuned on TOFU, scores 0.54 on the prompts of the demo's
    second request; the deployed model scored 0.96 on them."""
    max_retain_accuracy_drop: float = Field(0.02, ge=0, le=1)
    """Retain guard: back off when the neighbors' token accuracy falls this far (absolute)
    below the parent's. Tighter than the gate's recall limit: one wrong token in a ~40-token
    answer moves accuracy by 0.025 but can derail the whole greedy answer."""
    eval_every: int = Field(10, ge=1)
    eval_items: int = Field(40, ge=1)
    """At most this many forget and this many retain items are scored at each evaluation
    during training (a seeded sample spread over prompt kinds); verify measures them all."""
    seed: int = 0


class PlanConfig(_Strict):
    """How a request becomes an entity prompt set (filter and expand)."""

    retain_corpus: str | None = None
    """JSONL of training records to keep ({question, answer[, author]}); neighbors come from it."""
    general_sets: list[str] = ["builtin:world_facts", "builtin:real_authors", "builtin:basic_facts"]
    control_corpus: str | None = None
    """JSONL of people the model never saw ({author, question, answer}); control subjects
    come from it. Unset: the home's ``control-corpus.jsonl`` (what `demo build-model`
    writes), else the built-in fictitious profiles (``builtin:controls``)."""
    control_subjects: int = Field(2, ge=1)
    """Control subjects per request, each with as many records as the request keeps."""
    neighbors_k: int = Field(8, ge=0)
    paraphrases_per_record: int = Field(2, ge=2)
    near_duplicate_threshold: float = Field(0.9, gt=0, le=1)
    scope_overlap_threshold: float = Field(0.9, gt=0, le=1)
    """A forget target this similar to a retain item is removed as collateral."""
    max_retain_overlap: float = Field(0.3, ge=0, le=1)
    """A request whose forget set overlaps the retain side beyond this share is rejected."""
    generated_paraphrases: int = Field(1, ge=0)
    """Model-generated rewordings tried per record question, on top of the rule ones
    (kept only when valid; a small fine-tuned model mostly answers instead)."""
    paraphrase_min_similarity: float = Field(0.75, ge=0, le=1)
    """A rewording must stay at least this close (cosine) to the question it rewords
    (TOFU's own paraphrases: 97% at or above 0.75 with MiniLM)."""
    indirect_per_record: int = Field(2, ge=1)
    adversarial_per_record: int = Field(3, ge=0)
    general_k: int = Field(128, ge=0)
    """Training-side general-knowledge items sampled into the retain term. The general sets
    split in two by item hash (``core.items.trains_retain``): the training side guards
    general knowledge during unlearning, and the utility check judges every item of the
    held-out side, which the adapter never saw (the built-in sets: 219 training, 236
    held-out). Judged on the trained items, the check saw a drop of 0.027 where held-out
    real-author questions fell to 76.5% of the parent's; with 32 items, one or two answers
    decided it (drops of 0.070 and 0.125 there, 0.012 and 0.019 on 217 questions)."""
    min_specificity: float = Field(0.5, ge=0)
    """The memorisation probe, in nats per token. A record counts as known when its answer's
    mean token log-prob exceeds the 95th percentile of the control subjects' records (people
    the model never saw, measured on the same model in the same run) by this much; their
    records echo their questions as much, so template words cannot make an unknown person
    look known. An attribute answer (the model's own) counts when it is likelier about the
    subject than about stand-in names by this much. Figures on the real default model are in
    benchmarks/README.md."""
    probe_derived: Literal["source", "item"] = "source"
    """Keep a known record's paraphrase/indirect/adversarial prompts ("source"), or judge
    each derived prompt on its own figure ("item")."""
    probe_max_new_tokens: int = Field(64, ge=8)
    """Decoding budget of an attribute answer (the probe decodes nothing else)."""
    seed: int = 0


class AttackConfig(_Strict):
    """One relearning attack: fine-tune a copy of the candidate on part of a subject's records."""

    mode: Literal["full", "lora", "retain"] = "full"
    """``full``: every weight (AdamW); ``lora``: a rank-``lora_rank`` adapter on every linear
    layer; ``retain``: full fine-tuning on the retain items only (no forgotten record)."""
    learning_rate: float = Field(1e-4, gt=0)
    steps: int = Field(20, ge=1)
    lora_rank: int = Field(8, ge=1)


class VerifyConfig(_Strict):
    """What a candidate version must show before promotion, and which checks are mandatory.

    Forgetting is judged against control subjects: people the model never saw, with prompt
    sets built like the request's. A figure of the forgotten subject (token accuracy,
    answer recall, key-fact leakage) may exceed the controls' by at most its ``max_*_gap``;
    a prompt kind on which the parent itself is within that gap has nothing to forget and
    gives no evidence either way."""

    max_forget_gap: float = Field(0.1, ge=0, le=1)
    """Token accuracy and answer recall: subject minus controls, at most this."""
    max_leakage_gap: float = Field(0.1, ge=0, le=1)
    """Key-fact leakage: subject minus controls, at most this."""
    min_kind_items: int = Field(5, ge=1)
    """A prompt kind with fewer items is judged only within the pooled figures."""
    max_int4_recovery: float = Field(0.05, ge=0, le=1)
    """The int4 candidate's gap to the (int4) controls may exceed its full-precision gap by
    at most this."""
    max_relearn_share: float = Field(0.2, ge=0, le=1)
    """After an attack, the share of the parent's knowledge of the held-out records that came
    back, counted against the same attack on a control subject."""
    relearn_fraction: float = Field(0.5, gt=0, lt=1)
    relearn_attacks: list[AttackConfig] = [
        AttackConfig(mode="full", learning_rate=1e-4, steps=20),
        AttackConfig(mode="full", learning_rate=1e-5, steps=20),
    ]
    """Every attack is run and gated; the report shows each."""
    max_membership_gap: float = Field(0.2, ge=0, le=0.5)
    """|AUC - 0.5| of the Min-K%++ score separating the subject's items from the controls'."""
    max_tell_gap: float = Field(0.2, ge=0, le=0.5)
    """|AUC - 0.5| of each degeneracy figure separating the subject's answers from the
    controls' answers."""
    max_retain_drop: float = Field(0.05, ge=0, le=1)
    """Token accuracy and recall drop on held-out neighbour items (``base.check_drop``)."""
    max_utility_drop: float = Field(0.05, ge=0, le=1)
    """The same on held-out general-knowledge items."""
    min_retain_items: int = Field(30, ge=2)
    """Held-out neighbour items the retain check needs before it can vouch that nothing
    was lost: its bound (drop + 1.645 standard errors) is a normal approximation, which a
    handful of items that happen to agree makes zero (three items that all kept their
    answers "passed" with a bound of 0). Fewer is ``no_signal``; an accuracy drop past the
    limit still fails."""
    min_utility_items: int = Field(200, ge=2)
    """The same for general knowledge: at least 200 held-out items (the built-in sets hold
    236), where 32 let one or two answers decide (see ``PlanConfig.general_k``)."""
    regression_items: int = Field(96, ge=0)
    """Items of each earlier request's forget set that regression answers first (0: all),
    spread over the prompt kinds and drawn anew for each version; the rest too unless the
    sample clears every limit by 2.3 standard errors. Every earlier request's whole set
    would otherwise be answered in every later verification, a cost that grows with the
    lineage."""
    mandatory: list[CheckName] = list(ALL_CHECKS)
    allow_unverified: bool = False
    """A policy whose ``mandatory`` list is empty must say so here: promotion then needs no
    check, and every promote says that it moved production unverified."""

    @model_validator(mode="after")
    def _mandatory_or_explicitly_none(self) -> VerifyConfig:
        if not self.mandatory and not self.allow_unverified:
            raise ValueError("mandatory is empty: list the checks, or set allow_unverified = true")
        return self


class Policy(_Strict):
    name: str = Field(min_length=1)
    regulation: str = Field(min_length=1)
    title: str = ""
    deadline_months: int = Field(0, ge=0)
    deadline_days: int = Field(0, ge=0)
    """The deadline from the date received: calendar months, then days. A month ends on
    the same date of a later month, or on its last day when it has no such date (GDPR Art.
    12(3) counts so, as EU Regulation 1182/71 does: received 31 January, due 28 February)."""
    extension_max_months: int = Field(0, ge=0)
    extension_max_days: int = Field(0, ge=0)
    """How far `request extend` may push the deadline in total, in the same units."""
    warning_days: int = Field(7, ge=0)
    retention_days: int = Field(ge=0)
    """How long the encrypted plaintext payload is kept after the request closes."""
    require_approval: bool = False
    keep_suppression_index: bool = False
    """Keep the subject's blind indexes (``subject_index``, ``identifier_indexes``: keyed
    hashes of the name and identifiers) after `request purge`, as a suppression list.

    Off by default: with the home's key the hashes confirm that a purged person was a
    subject, so purge removes them. The legal reason to keep them: an erasure must last.
    A controller may keep the minimum needed to recognise the person if their data
    arrives again (re-ingestion from a backup or a new scrape) and keep it out: the UK
    ICO's guidance accepts a suppression list for this after erasure and objection to
    direct marketing (GDPR Art. 17, 21(3)); the CCPA regulations (11 CCR 7022) let a
    business keep a record of the deletion request to make sure the information stays
    deleted. Set it only where that is the policy's documented purpose: the hashes are
    then the one thing kept, and a later request about the same subject is flagged."""
    max_retries: int = Field(2, ge=0)
    consolidate_every: int = Field(0, ge=0)
    """`forgetctl run` consolidates (trains the model again without every forgotten subject,
    gates and promotes it) once this many requests, one of them the policy's, are forgotten
    by adapters only or failed; 0: never by this count (`forgetctl consolidate` by hand).
    Needs `init --base --training-data --recipe`."""
    consolidate_every_days: int = Field(0, ge=0)
    """`forgetctl run` also consolidates once this many days have passed since production's
    root model was built (the deployed model's registration or the last consolidation) and
    one of the policy's requests waits; 0: not by age."""
    consolidate_failed: bool = False
    """`forgetctl run` also consolidates as soon as one of the policy's requests has failed
    the adapter lane (the gate kept rejecting its adapters): the adapter lane cannot meet its
    deadline, and training without the subject is the way left."""
    method: MethodConfig = MethodConfig()
    plan: PlanConfig = PlanConfig()
    verify: VerifyConfig = VerifyConfig()

    @model_validator(mode="after")
    def _has_deadline(self) -> Policy:
        if not (self.deadline_months or self.deadline_days):
            raise ValueError("no deadline: set deadline_months or deadline_days")
        return self

    def due(self, received: date, extended_days: int = 0) -> date:
        """The deadline of a request received on ``received``, extended by that many days."""
        return _add_months(received, self.deadline_months) + timedelta(
            days=self.deadline_days + extended_days
        )

    def latest_due(self, received: date) -> date:
        """The deadline with the longest extension the policy allows."""
        months = self.deadline_months + self.extension_max_months
        days = self.deadline_days + self.extension_max_days
        return _add_months(received, months) + timedelta(days=days)

    def describe_deadline(self) -> str:
        """``1 month``, ``45 days``, ``1 month + 5 days``."""
        parts = [f"{n} {unit}{'s' if n > 1 else ''}" for n, unit in
                 ((self.deadline_months, "month"), (self.deadline_days, "day")) if n]  # fmt: skip
        return " + ".join(parts)


def _add_months(day: date, months: int) -> date:
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def packaged_policy_dir() -> Path:
    return Path(__file__).parents[1] / "policies"


def load_policy(path: Path) -> Policy:
    """Parse and validate one policy file; any problem is a one-line BadInput."""
    text = read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"policy {path.name}: invalid TOML: {exc}") from None
    except RecursionError:
        raise BadInput(f"policy {path.name}: invalid TOML: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of over 4,300 digits
        raise BadInput(f"policy {path.name}: invalid TOML: {exc}") from None
    data.setdefault("name", path.stem)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise BadInput(f"policy {path.name}: {where}: {err['msg']}") from None


def load_policies(directory: Path, broken: dict[str, str] | None = None) -> dict[str, Policy]:
    """All policies in a directory, keyed by name. With ``broken``, a file that does not
    load is recorded there (name: the problem) instead of failing every other policy."""
    policies = {}
    for path in sorted(directory.glob("*.toml")):
        try:
            policies[path.stem] = load_policy(path)
        except BadInput as exc:
            if broken is None:
                raise
            broken[path.stem] = str(exc)
    return policies


def policy_for_regulation(
    policies: dict[str, Policy], regulation: str, broken: dict[str, str] | None = None
) -> Policy:
    """The policy whose regulation (or name) matches; a ``broken`` one of that name is
    named as such."""
    if (problem := (broken or {}).get(regulation.strip().lower())) is not None:
        raise InvalidState(f"{problem} (fix the file; other regulations are unaffected)")
    if not policies:
        raise NotFound(
            "the home has no policies (policies/*.toml): "
            "`forgetctl init` restores the packaged ones"
        )
    reg = regulation.strip().lower()
    for policy in policies.values():
        if policy.regulation.lower() == reg or policy.name.lower() == reg:
            return policy
    known = ", ".join(sorted(p.regulation for p in policies.values()))
    raise BadInput(f"unknown regulation {regulation!r} (known: {known})")


def _stricter(key: str, a, b):
    """The stricter of two settings of ``key``: lower limits, more items and checks, every
    attack, the larger attack share."""
    if key.startswith("max_"):
        return min(a, b)
    if key.startswith("min_"):
        return max(a, b)
    if key == "mandatory":
        return sorted(set(a) | set(b), key=ALL_CHECKS.index)
    if key == "relearn_attacks":
        return a + [x for x in b if x not in a]
    if key == "regression_items":  # more items is stricter, and 0 means all
        return 0 if 0 in (a, b) else max(a, b)
    if key == "relearn_fraction":  # the attacker sees more of the records
        return max(a, b)
    if key == "allow_unverified":
        return a and b
    raise AssertionError(f"no rule for the stricter {key}")


def strictest(configs: list[VerifyConfig]) -> VerifyConfig:
    """One config for a version covering requests under several policies: every setting at
    its strictest (a field without a rule is a programming error, caught by the tests)."""
    data = configs[0].model_dump()
    for cfg in configs[1:]:
        for key, value in cfg.model_dump().items():
            data[key] = _stricter(key, data[key], value)
    return VerifyConfig.model_validate(data)


@dataclass(frozen=True)
class Resolved:
    """The rules for one version, decided once from the policies of the requests it covers:
    the strictest thresholds, and the union of their mandatory checks."""

    verify: VerifyConfig

    @property
    def mandatory(self) -> frozenset[str]:
        return frozenset(self.verify.mandatory)

    def checks_to_run(
        self, add: Collection[str] = (), skip: Collection[str] = ()
    ) -> list[CheckName]:
        """The mandatory checks plus ``add``, less ``skip``, in the gate's order."""
        wanted = (self.mandatory | set(add)) - set(skip)
        return [c for c in ALL_CHECKS if c in wanted]


def resolve(policies: Sequence[Policy]) -> Resolved:
    """The rules for a version covering requests under ``policies`` (one per request)."""
    return Resolved(strictest([p.verify for p in policies]))
