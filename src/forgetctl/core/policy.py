"""Policy schema and loading.

A policy is a TOML file (``policies/gdpr.toml`` ...) that says how a request under one
regulation is handled: its deadline, how long its plaintext payload may be kept, the
unlearning method, and the verification thresholds a candidate must pass before promotion.
"""

# (from verify/step.py)
from __future__ import annotations

import tomllib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forgetctl.core.errors import BadInput

CheckName = Literal["forget", "retain", "utility", "int4", "relearn", "regression"]


ALL_CHECKS: tuple[CheckName, ...] = ("forget", "retain", "utility", "int4", "relearn", "regression")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MethodConfig(_Strict):
    """How one request is unlearned (one LoRA adapter)."""

    objective: Literal["npo", "grad_diff", "grad_ascent"] = "npo"
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
    general_sets: list[str] = ["builtin:world_facts", "builtin:real_authors"]
    neighbors_k: int = Field(8, ge=0)
    paraphrases_per_record: int = Field(2, ge=2)
    near_duplicate_threshold: float = Field(0.9, gt=0, le=1)
    probe_min_recall: float = Field(0.5, ge=0, le=1)
    """A forget item counts as known when the model's answer recall reaches this."""
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
    """General-knowledge items sampled into the retain side (and the utility check). With 32,
    one or two answers decided the check on SmolLM2: two candidates measured drops of 0.070
    and 0.125 there, but 0.012 and 0.019 on all 217 builtin general questions."""
    probe_derived: Literal["source", "item"] = "source"
    """Keep a known record's paraphrase/indirect/adversarial prompts ("source"), or only
    those the model itself answers ("item")."""
    probe_max_new_tokens: int = Field(64, ge=8)
    """Decoding budget of a probe answer (targets cap it further at 1.3x their length)."""
    attribute_min_specificity: float = Field(0.5, ge=0)
    """Without records, an attribute answer counts as the subject's when its mean token
    log-prob exceeds that of the same answer about control names by this much (nats)."""
    seed: int = 0


class VerifyConfig(_Strict):
    """Thresholds a candidate version must pass, and which checks are mandatory."""

    max_forget_recall: float = Field(0.4, ge=0, le=1)
    max_key_fact_leakage: float = Field(0.2, ge=0, le=1)
    max_int4_recovery: float = Field(0.05, ge=0, le=1)
    max_relearn_recovery: float = Field(0.2, ge=0, le=1)
    max_retain_drop: float = Field(0.05, ge=0, le=1)
    max_utility_drop: float = Field(0.05, ge=0, le=1)
    recall_floor: float = Field(0.35, ge=0, le=1)
    """Answer recall a model that never saw the subject reaches (measured); int4 and
    relearning recoveries are counted from max(recall before, this floor)."""
    relearn_fraction: float = Field(0.5, gt=0, lt=1)
    relearn_steps: int = Field(20, ge=1)
    relearn_learning_rate: float = Field(1e-4, gt=0)
    regression_items: int = Field(96, ge=0)
    """Items of each earlier request's forget set that regression answers first (0: all),
    spread over the prompt kinds and drawn anew for each version; the rest too unless the
    sample clears every limit by 2.3 standard errors. Every earlier request's whole set
    would otherwise be answered in every later verification, a cost that grows with the
    lineage. On the demo's request 1 (173 prompts, recall 0.22 under a 0.4 limit) 96 items
    cleared in 76% and 90% of draws (the two demo versions), about 110 answered on average;
    with every recall 0.15 higher, where the whole set fails, no draw cleared."""
    mandatory: list[CheckName] = list(ALL_CHECKS)


class Policy(_Strict):
    name: str = Field(min_length=1)
    regulation: str = Field(min_length=1)
    title: str = ""
    deadline_days: int = Field(ge=1)
    extension_max_days: int = Field(0, ge=0)
    warning_days: int = Field(7, ge=0)
    retention_days: int = Field(ge=0)
    """How long the encrypted plaintext payload is kept after the request closes."""
    require_approval: bool = False
    max_retries: int = Field(2, ge=0)
    method: MethodConfig = MethodConfig()
    plan: PlanConfig = PlanConfig()
    verify: VerifyConfig = VerifyConfig()


def packaged_policy_dir() -> Path:
    return Path(__file__).parents[1] / "policies"


def load_policy(path: Path) -> Policy:
    """Parse and validate one policy file; any problem is a one-line BadInput."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read policy {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"policy {path.name}: invalid TOML: {exc}") from None
    data.setdefault("name", path.stem)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise BadInput(f"policy {path.name}: {where}: {err['msg']}") from None


def load_policies(directory: Path) -> dict[str, Policy]:
    """All policies in a directory, keyed by name."""
    return {p.stem: load_policy(p) for p in sorted(directory.glob("*.toml"))}


def policy_for_regulation(policies: dict[str, Policy], regulation: str) -> Policy:
    """The policy whose regulation (or name) matches, else ``default``."""
    reg = regulation.strip().lower()
    for policy in policies.values():
        if policy.regulation.lower() == reg or policy.name.lower() == reg:
            return policy
    known = ", ".join(sorted(p.regulation for p in policies.values()))
    raise BadInput(f"unknown regulation {regulation!r} (known: {known})")


def strictest(configs: list[VerifyConfig]) -> VerifyConfig:
    """One config for a version covering requests under several policies: the strictest."""
    first = configs[0]
    if len(configs) == 1:
        return first
    data = first.model_dump()
    for cfg in configs[1:]:
        for key, value in cfg.model_dump().items():
            if key.startswith("max_"):
                data[key] = min(data[key], value)
            elif key == "mandatory":
                data[key] = sorted(set(data[key]) | set(value))
            elif key == "regression_items":  # more items is stricter, and 0 means all
                data[key] = 0 if 0 in (data[key], value) else max(data[key], value)
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
