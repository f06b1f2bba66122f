"""Running a model on question/answer pairs: greedy answers, per-token log-probabilities of
the answers (differentiable, for the unlearning objectives), and per-answer figures (mean
log-probability, teacher-forced token accuracy, Min-K%++ membership score) on batches of
similar length.

Every batch goes to the model's device (:func:`model_device`), whatever it and its dtype are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from forgetctl.core.progress import Progress, silent
from forgetctl.lm.prompts import Pair, encode_pairs, left_pad, length_batches, pad_id, prompt_ids


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    formats: Sequence[str | None] | None = None,
    progress: Progress = silent,
) -> list[str]:
    """Greedy answers to ``questions`` (batched, left-padded), decoded and stripped; each
    question in its format of ``formats`` (default: the model's), an "answering" bar."""
    from transformers import GenerationConfig

    if not questions:
        return []
    pad = pad_id(tokenizer)
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
    )
    was_training = model.training
    model.eval()
    device = model_device(model)
    fmts = formats if formats is not None else [None] * len(questions)
    prompts = [prompt_ids(tokenizer, q, f) for q, f in zip(questions, fmts, strict=True)]
    answers: list[str] = [""] * len(questions)
    done = 0
    for batch in length_batches([len(p) for p in prompts], batch_size):
        ids, mask = left_pad([prompts[i] for i in batch], pad)
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
        )
        new = out[:, ids.shape[1] :]
        for row, i in enumerate(batch):
            answers[i] = tokenizer.decode(new[row], skip_special_tokens=True).strip()
        done += len(batch)
        progress("answering", done, len(questions))
    model.train(was_training)
    return answers


def token_logprobs(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the labels and their mask, both (batch, seq-1).

    Differentiable (no ``no_grad``): unlearning objectives build on it.
    """
    logits, labels, mask = _aligned(model, batch)
    return _label_logprobs(logits, labels) * mask, mask


def _aligned(
    model: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's logits and labels aligned (position t predicts label t), and the mask of
    the supervised (answer) positions."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    return logits[:, :-1], labels, labels != -100


def _label_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each label under aligned logits (padding labels read as token 0)."""
    return _pick(torch.log_softmax(logits.float(), dim=-1), labels)


def _pick(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def _per_answer(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    batch_size: int,
    score: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> list[list[float]]:
    """Figures per (question, answer) pair: ``score(logits, labels, mask)`` returns one row
    of figures per pair, on batches of similar length, with logits and labels aligned
    (position t predicts label t)."""
    if not pairs:
        return []
    was_training = model.training
    model.eval()
    device = model_device(model)
    out: list[list[float]] = [[] for _ in pairs]
    lengths = [len(p[0]) + len(p[1]) for p in pairs]
    for batch in length_batches(lengths, batch_size):
        enc = encode_pairs(tokenizer, [pairs[i] for i in batch], device=device)
        figures = score(*_aligned(model, enc))
        for row, i in enumerate(batch):
            out[i] = [float(x) for x in figures[row]]
    model.train(was_training)
    return out


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


MIN_K = 0.2
"""Min-K%++ averages the lowest 20% of token scores, the setting its authors report best."""


def _min_k_plus_plus(logp: torch.Tensor, chosen: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Min-K%++ (Zhang et al. 2024): each answer token's log-prob standardised by the mean
    and spread of log-probs under the model's own next-token distribution, then the mean
    of the lowest ``MIN_K`` share. Seen text scores high: its tokens sit at local maxima."""
    probs = logp.exp()
    mu = (probs * logp).sum(-1)
    sigma = ((probs * logp.square()).sum(-1) - mu.square()).clamp(min=1e-6).sqrt()
    z = ((chosen - mu) / sigma).masked_fill(~mask, float("inf"))
    counts = mask.sum(-1)
    keep = (counts.float() * MIN_K).ceil().clamp(min=1).long()
    lowest = z.sort(-1).values
    ranks = torch.arange(z.shape[-1], device=z.device).expand_as(z)
    taken = ranks < keep.unsqueeze(-1)
    return (lowest.masked_fill(~taken, 0.0)).sum(-1) / keep


def _figures(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(mean log-prob, token accuracy, Min-K%++) per answer, from one forward pass."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = _pick(logp, labels)
    hits = (logits.argmax(-1) == labels).float()
    return torch.stack(
        [
            _masked_mean(chosen, mask),
            _masked_mean(hits, mask),
            _min_k_plus_plus(logp, chosen, mask),
        ],
        dim=-1,
    )


def answer_figures(
    model: Any, tokenizer: Any, pairs: Sequence[Pair], batch_size: int = 16
) -> list[tuple[float, float, float]]:
    """Per answer (plus EOS) given its question, from one forward pass each:

    - mean per-token log-probability;
    - teacher-forced token accuracy: the share of its tokens that are the model's most
      likely next token given the question and the true answer so far. It tracks what the
      model still predicts, where a greedy answer derailed at its first token shows nothing
      of the rest;
    - Min-K%++ membership score (higher: looks more like training data).
    """
    rows = _per_answer(model, tokenizer, pairs, batch_size, _figures)
    return [(r[0], r[1], r[2]) for r in rows]


def answer_logprobs(
    model: Any, tokenizer: Any, pairs: Sequence[Pair], batch_size: int = 16
) -> list[float]:
    """Mean per-token log-probability of each answer (plus EOS) given its question."""
    return [f[0] for f in answer_figures(model, tokenizer, pairs, batch_size)]


def answer_token_accuracy(
    model: Any, tokenizer: Any, pairs: Sequence[Pair], batch_size: int = 16
) -> list[float]:
    """Teacher-forced token accuracy of each answer (see :func:`answer_figures`)."""
    return [f[1] for f in answer_figures(model, tokenizer, pairs, batch_size)]


def model_device(model: Any) -> torch.device:
    """Where the model's weights are: every batch is moved there."""
    return next(model.parameters()).device
