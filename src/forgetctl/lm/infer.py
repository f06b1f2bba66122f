"""Language-model helpers shared by every step: prompt format, batching, generation,
answer log-probabilities, loading, the embedded default model, and lineage merging.

One prompt format for everything: finetune, unlearn, verify and the plan probe all call
:func:`format_prompt`, so a fact learnt in one format is asked for in the same format.

- Tokenizers with a chat template (SmolLM2-Instruct) get the chat format with an *empty*
  system message (:data:`SYSTEM_PROMPT`). SmolLM2's template otherwise injects a 16-token
  default system prompt ("You are a helpful AI assistant named SmolLM, ...") into every
  prompt (34 instead of 18 tokens for a short question), which raises the CPU cost of every
  forward pass. Measured on the first 40 TOFU world facts (greedy, answer contained): empty
  system message 24/40, the default 21/40, "Answer briefly." 21/40 (and it broke "What is
  the capital of France?").
- Tokenizers without one (the tiny test model) get ``"Question: {q}\\nAnswer:"`` and the
  answer follows after one space.

Prompt and answer are tokenized separately and concatenated, so the token boundary
between them is the same at training time (:func:`encode_pairs`) and at generation time
(:func:`generate`), and prompt tokens can be masked exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from forgetctl.lm.prompts import Pair, encode_pairs, left_pad, length_batches, pad_id, prompt_ids


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    max_new_tokens: int = 48,
    batch_size: int = 16,
) -> list[str]:
    """Greedy answers to ``questions`` (batched, left-padded), decoded and stripped."""
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
    prompts = [prompt_ids(tokenizer, q) for q in questions]
    answers: list[str] = [""] * len(questions)
    for batch in length_batches([len(p) for p in prompts], batch_size):
        ids, mask = left_pad([prompts[i] for i in batch], pad)
        device = _device(model)
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
        )
        new = out[:, ids.shape[1] :]
        for row, i in enumerate(batch):
            answers[i] = tokenizer.decode(new[row], skip_special_tokens=True).strip()
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
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def _per_answer(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    batch_size: int,
    score: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> list[float]:
    """One figure per (question, answer) pair: ``score(logits, labels, mask)`` on batches of
    similar length, with logits and labels aligned (position t predicts label t)."""
    if not pairs:
        return []
    was_training = model.training
    model.eval()
    device = _device(model)
    out: list[float] = [0.0] * len(pairs)
    lengths = [len(q) + len(a) for q, a in pairs]
    for batch in length_batches(lengths, batch_size):
        enc = encode_pairs(tokenizer, [pairs[i] for i in batch])
        enc = {k: v.to(device) for k, v in enc.items()}
        figures = score(*_aligned(model, enc))
        for row, i in enumerate(batch):
            out[i] = float(figures[row])
    model.train(was_training)
    return out


def _mean_logprob(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (_label_logprobs(logits, labels) * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def _token_accuracy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hits = (logits.argmax(-1) == labels) & mask
    return hits.sum(-1) / mask.sum(-1).clamp(min=1)


def answer_logprobs(
    model: Any, tokenizer: Any, pairs: Sequence[Pair], batch_size: int = 16
) -> list[float]:
    """Mean per-token log-probability of each answer (plus EOS) given its question."""
    return _per_answer(model, tokenizer, pairs, batch_size, _mean_logprob)


def answer_token_accuracy(
    model: Any, tokenizer: Any, pairs: Sequence[Pair], batch_size: int = 16
) -> list[float]:
    """Teacher-forced token accuracy of each answer (plus EOS): the share of its tokens that
    are the model's most likely next token given the question and the true answer so far.
    One forward pass, no decoding: it tracks what greedy answers reveal at a fraction of
    the cost of generating them."""
    return _per_answer(model, tokenizer, pairs, batch_size, _token_accuracy)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device
