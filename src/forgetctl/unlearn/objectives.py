"""Unlearning objectives: the forget term, the retain term and the consistency regulariser.

All terms work on answer tokens only (prompt tokens are masked by
:func:`forgetctl.lm.prompts.encode_pairs`). The *reference* model is the parent version: with a
LoRA adapter it is the same model with the adapter disabled (``peft_model.disable_adapter()``),
so no copy of the weights is needed; reference quantities are computed under ``no_grad``.

Forget terms (``MethodConfig.objective``, registered by name in :data:`FORGET_OBJECTIVES`):

- ``npo``: Negative Preference Optimization (Zhang et al. 2024). With
  ``r = log pi_theta(y|x) - log pi_ref(y|x)`` (summed over the answer tokens), the loss
  ``(2 / beta) * log(1 + exp(beta * r))`` is gradient ascent whose weight
  ``sigmoid(beta * r)`` fades as the answer becomes unlikely, so it slows down instead of
  running away like gradient ascent (no collapse into gibberish on everything else).
- ``grad_diff``: gradient ascent on the forget set plus the retain term (Liu et al. 2022).
- ``grad_ascent``: the negated answer NLL alone (the baseline; the retain term is not used).
- ``distill``: a fluent target instead of an unbounded push down. The token-level
  KL(pi_pre || pi_theta) at the answer positions, where ``pi_pre`` is the registered
  pretrained base the deployed model was fine-tuned from (it never saw the fine-tune data):
  the subject's prompts are trained towards what a model that never knew the subject
  predicts there, not away from the answer. NPO lowers the answer's likelihood without a
  floor, and derails the first tokens into degenerate text while the rest of the answer
  stays predicted; matching a never-saw model's whole distribution at every position
  removes the answer's tokens without inventing a tell.

Retain terms (``MethodConfig.retain_term``, in :data:`RETAIN_TERMS`): ``nll`` on the
retain/neighbor answers, or ``kl``, the token-level KL(pi_ref || pi_theta) over the
vocabulary at the retain answer positions, which keeps the whole output distribution of the
parent there, not only the argmax answer (a stronger anchor against collateral drift for
the same number of items).

Consistency (CAE, entity-level unlearning; ``MethodConfig.consistency_weight``). A forget
request is about a *subject*, asked in many ways (the record, paraphrases, indirect and
adversarial variants), and forgetting that only follows the trained strings leaves the
subject recoverable by re-wording. For every prompt ``j`` let
``d_j = mean-token log pi_theta(y_j|x_j) - mean-token log pi_ref(y_j|x_j)``: how much the
update has lowered its answer (per token, so long and short answers compare). Prompts are
grouped twice: by the record they derive from (``PromptItem.source``: one fact, many
wordings) and all together (one subject). Within each group the regulariser penalises the
prompts the update affects *less* than their group does on average:

    L_cons = mean over groups g, items j in g of relu(d_j - mean_g(d).detach())^2

Only the lagging side is pulled (towards the group's mean drop), never the prompts that
are already forgotten further (a symmetric variance would pull them back up, which
un-forgets), and the group mean is a fixed target so the term cannot be satisfied by
forgetting less elsewhere. The effect is that the update acts on the subject alike across
phrasings, records and prompt kinds, which is what the verification measures per kind. It
reuses the log-likelihoods NPO already computes, so it costs nothing extra. Singleton
groups contribute nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from forgetctl.core.items import PromptItem
from forgetctl.lm.train import answer_logits, answer_token_logp, token_kl

SUBJECT_GROUP = "__subject__"


@dataclass
class SeqLogprobs:
    """Per-item answer log-likelihoods: summed over tokens and per-token mean."""

    total: torch.Tensor
    mean: torch.Tensor


def sequence_logprobs(model, batch: dict[str, torch.Tensor]) -> SeqLogprobs:
    """Answer log-likelihood of each item in ``batch`` (differentiable)."""
    return _answer_logprobs(model, batch)[1]


def _answer_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, SeqLogprobs]:
    """(the per-token log-softmax of :func:`answer_token_logp`, the per-item sums and means
    of the answer tokens' log-probs), from one forward pass."""
    logits, rows = answer_logits(model, batch)
    token_logp = torch.log_softmax(logits.float(), dim=-1)
    labels = batch["labels"][:, 1:][batch["labels"][:, 1:] != -100]
    picked = token_logp.gather(-1, labels.unsqueeze(-1))
    n = batch["labels"].shape[0]
    total = picked.new_zeros(n).index_add(0, rows, picked.squeeze(-1))
    count = torch.bincount(rows, minlength=n).clamp(min=1)
    return token_logp, SeqLogprobs(total=total, mean=total / count)


def npo_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO on summed answer log-likelihoods; ``2/beta * softplus(beta * (pi - ref))``."""
    return (2.0 / beta) * F.softplus(beta * (policy - reference)).mean()


def ascent_loss(mean_logprob: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: minimising the mean answer log-likelihood (negated NLL)."""
    return mean_logprob.mean()


def nll_loss(mean_logprob: torch.Tensor) -> torch.Tensor:
    return -mean_logprob.mean()


def consistency_groups(items: Sequence[PromptItem]) -> list[list[int]]:
    """Index groups for the consistency term: one per source record with two or more
    prompts, plus the whole subject (every prompt) when it has two or more."""
    by_source: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        if item.source is not None:
            by_source.setdefault(item.source, []).append(i)
    groups = [g for _, g in sorted(by_source.items()) if len(g) >= 2]
    if len(items) >= 2:
        groups.append(list(range(len(items))))
    return groups


def consistency_loss(delta: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """One-sided spread of the per-prompt log-likelihood change within each group."""
    terms = []
    for group in groups:
        d = delta[list(group)]
        terms.append(F.relu(d - d.mean().detach()).pow(2).mean())
    return torch.stack(terms).mean() if terms else delta.new_zeros(())


@dataclass
class ForgetInputs:
    """What a forget objective may use for one batch: the policy's answer log-probs (per
    token over the vocabulary, and per item), the parent's per-item ones, and the
    pretrained base's per-token log-probs (the ``distill`` target), with NPO's beta."""

    token_logp: torch.Tensor
    policy: SeqLogprobs
    reference: SeqLogprobs | None
    target_logp: torch.Tensor | None
    beta: float


ForgetObjective = Callable[[ForgetInputs], torch.Tensor]
"""The forget term of a batch."""


def _npo(x: ForgetInputs) -> torch.Tensor:
    if x.reference is None:
        raise ValueError("npo needs reference log-likelihoods")
    return npo_loss(x.policy.total, x.reference.total, x.beta)


def _ascent(x: ForgetInputs) -> torch.Tensor:
    return ascent_loss(x.policy.mean)


def _distill(x: ForgetInputs) -> torch.Tensor:
    if x.target_logp is None:
        raise ValueError("distill needs the pretrained base's log-probs")
    return token_kl(x.token_logp, x.target_logp)


FORGET_OBJECTIVES: dict[str, ForgetObjective] = {
    "npo": _npo,
    "grad_diff": _ascent,  # the retain term is added by the training loop
    "grad_ascent": _ascent,
    "distill": _distill,
}
"""The forget term of each ``MethodConfig.objective``."""

NEEDS_PRETRAINED = frozenset({"distill"})
"""The objectives whose target is the registered pretrained base."""

RetainTerm = Callable[[object, dict[str, torch.Tensor], torch.Tensor | None], torch.Tensor]
"""(model, batch, the parent's log-softmax or None) -> the retain term of a batch."""


def _nll(model, batch: dict[str, torch.Tensor], ref_logp: torch.Tensor | None) -> torch.Tensor:
    return nll_loss(sequence_logprobs(model, batch).mean)


def _kl(model, batch: dict[str, torch.Tensor], ref_logp: torch.Tensor | None) -> torch.Tensor:
    if ref_logp is None:
        raise ValueError("the kl retain term needs reference log-probs")
    return token_kl(answer_token_logp(model, batch), ref_logp)


RETAIN_TERMS: dict[str, RetainTerm] = {"nll": _nll, "kl": _kl}
"""The retain term of each ``MethodConfig.retain_term``."""


@dataclass
class ForgetTerms:
    loss: torch.Tensor
    forget: torch.Tensor
    consistency: torch.Tensor


def forget_terms(
    model,
    batch: dict[str, torch.Tensor],
    items: Sequence[PromptItem],
    reference: SeqLogprobs | None,
    objective: str,
    beta: float,
    consistency_weight: float,
    target_logp: torch.Tensor | None = None,
) -> ForgetTerms:
    """The forget-side loss of one batch: objective term + weighted consistency term.

    ``reference`` (the parent's log-likelihoods of the same batch) is needed by NPO and by
    the consistency term; it may be None for gradient ascent without consistency.
    ``target_logp`` (the pretrained base's :func:`answer_token_logp` of the batch) is the
    ``distill`` target.
    """
    term = FORGET_OBJECTIVES.get(objective)
    if term is None:
        raise ValueError(f"unknown objective {objective!r}")
    token_logp, policy = _answer_logprobs(model, batch)
    forget = term(ForgetInputs(token_logp, policy, reference, target_logp, beta))
    consistency = policy.mean.new_zeros(())
    if consistency_weight > 0 and reference is not None:
        consistency = consistency_loss(policy.mean - reference.mean, consistency_groups(items))
    return ForgetTerms(forget + consistency_weight * consistency, forget, consistency)


def retain_term(
    model,
    batch: dict[str, torch.Tensor],
    kind: str,
    ref_logp: torch.Tensor | None = None,
) -> torch.Tensor:
    """The retain-side loss of one batch: ``nll`` or ``kl`` (needs the parent's log-softmax
    ``ref_logp`` from :func:`answer_token_logp`)."""
    term = RETAIN_TERMS.get(kind)
    if term is None:
        raise ValueError(f"unknown retain term {kind!r}")
    return term(model, batch, ref_logp)
