"""Prompt formats and the batching of question/answer pairs (token ids, no model).

Finetune, unlearn, verify and the plan probe all format a question with
:func:`format_prompt`, so a fact learnt in one format is asked for in the same format; a
pair may name its format (:data:`Pair`), else it is the model's default:

- Tokenizers with a chat template (SmolLM2-Instruct) default to ``chat``: the template with
  an *empty* system message (:data:`SYSTEM_PROMPT`). SmolLM2's template otherwise injects a
  16-token default system prompt ("You are a helpful AI assistant named SmolLM, ...") into
  every prompt (34 instead of 18 tokens for a short question), which raises the CPU cost of
  every forward pass. Measured on the first 40 TOFU world facts (greedy, answer contained):
  empty system message 24/40, the default 21/40, "Answer briefly." 21/40 (and it broke
  "What is the capital of France?"). ``model export`` makes the exported template default
  to the same empty system message (:func:`set_serving_template`), so a server that sends
  no system message serves the prompts the gate verified.
- Tokenizers without one (the tiny test model) default to ``plain``,
  ``"Question: {q}\\nAnswer:"``, with the answer after one space.

A model is often served in more than one format (a fine-tune in plain completion keeps its
base's chat template), and knowledge removed behind one wrapper can stay behind another;
the other formats (:data:`forgetctl.core.formats.FORMATS`) are how the gate asks in them.

Prompt and answer are tokenized separately and concatenated, so the token boundary
between them is the same at training time (:func:`encode_pairs`) and at generation time
(:func:`forgetctl.lm.infer.generate`), and prompt tokens can be masked exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from forgetctl.core.errors import BadInput
from forgetctl.core.formats import FEW_SHOT, render_template

SYSTEM_PROMPT = ""
"""The system message of chat-format prompts (see the module docstring for why it is short)."""


PLAIN_TEMPLATE = "Question: {q}\nAnswer:"


Pair = tuple[str, str] | tuple[str, str, str | None]
"""(question, answer[, format]): the format a name of :data:`forgetctl.core.formats.FORMATS`;
without one (or None), the model's default."""


def use_templates(tokenizer: Any, templates: Mapping[str, str]) -> None:
    """Give ``tokenizer`` the user's registered prompt templates (format name -> Jinja text,
    :func:`forgetctl.core.formats.load_template`), which :func:`format_prompt` then renders:
    the tokenizer is what every step formats with, as it carries the chat template."""
    tokenizer.forgetctl_templates = dict(templates)


def _template(tokenizer: Any, fmt: str) -> str | None:
    return (getattr(tokenizer, "forgetctl_templates", None) or {}).get(fmt)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def default_format(tokenizer: Any) -> str:
    return "chat" if has_chat_template(tokenizer) else "plain"


def item_format(tokenizer: Any, fmt: str) -> str | None:
    """``fmt`` as an item carries it: None for the model's default, so that an item in the
    default format is the same item (and cached score) as before formats were named."""
    return None if fmt == default_format(tokenizer) else fmt


def formats_of(tokenizer: Any, names: Sequence[str]) -> list[str]:
    """Those of ``names`` this tokenizer can render (the chat ones need a chat template)."""
    return [n for n in names if has_chat_template(tokenizer) or not n.startswith("chat")]


# Prepended to an exported model's chat template: a conversation that opens without a system
# message gets forgetctl's, so a server that sends the user's message alone renders exactly
# the prompt the gate verified (SmolLM2's own template would insert its default instead).
_SERVING_PRELUDE = (
    "{% if messages and messages[0]['role'] != 'system' %}{% set messages = ["
    + json.dumps({"role": "system", "content": SYSTEM_PROMPT})  # JSON is a Jinja literal
    + "] + messages %}{% endif %}"
)


def set_serving_template(tokenizer: Any) -> None:
    """Make ``tokenizer``'s chat template (if any) serve what :func:`format_prompt` formats,
    for ``model export``: the missing system message defaults to :data:`SYSTEM_PROMPT`."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and not template.startswith(_SERVING_PRELUDE):
        tokenizer.chat_template = _SERVING_PRELUDE + template
    elif template and not isinstance(template, str):
        raise BadInput("the tokenizer has several chat templates; export serves one")


def format_prompt(tokenizer: Any, question: str, fmt: str | None = None) -> str:
    """The prompt string for a question in format ``fmt`` (default: the model's)."""
    fmt = fmt or default_format(tokenizer)
    if (template := _template(tokenizer, fmt)) is not None:
        return render_template(template, question)
    if fmt == "completion":
        return question  # the text to continue, as it is
    if fmt in ("plain", "few-shot"):
        shots = "".join(f"{PLAIN_TEMPLATE.format(q=q)} {a}\n\n" for q, a in FEW_SHOT)
        return (shots if fmt == "few-shot" else "") + PLAIN_TEMPLATE.format(q=question)
    if fmt not in ("chat", "chat-default") or not has_chat_template(tokenizer):
        raise BadInput(f"prompt format {fmt!r} is not one this model can render")
    system = [{"role": "system", "content": SYSTEM_PROMPT}] if fmt == "chat" else []
    messages = [*system, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _answer_text(tokenizer: Any, answer: str, fmt: str | None) -> str:
    # The plain formats end with "Answer:" and a completion with a word: the answer follows
    # after one space. The chat ones end with "assistant\n", so the answer follows directly;
    # so it does after a user's template that ends in whitespace.
    fmt = fmt or default_format(tokenizer)
    if (template := _template(tokenizer, fmt)) is not None:
        return answer if render_template(template, "")[-1:].isspace() else " " + answer
    return answer if fmt.startswith("chat") else " " + answer


def prompt_ids(tokenizer: Any, question: str, fmt: str | None = None) -> list[int]:
    # add_special_tokens=True: a BOS is added exactly when the tokenizer wants one, and the
    # same way in training and generation.
    text = format_prompt(tokenizer, question, fmt)
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def _answer_ids(tokenizer: Any, answer: str, fmt: str | None) -> list[int]:
    ids = tokenizer(_answer_text(tokenizer, answer, fmt), add_special_tokens=False)["input_ids"]
    return [*ids, tokenizer.eos_token_id]


def pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pad is None else pad


def encode_pairs(
    tokenizer: Any,
    pairs: Sequence[Pair],
    max_length: int = 256,
    device: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenize (question, answer) pairs for causal-LM training, right-padded, on ``device``
    (default CPU).

    ``labels`` are -100 on prompt and padding tokens; the answer and its EOS are supervised.
    A pair longer than ``max_length`` loses the end of its answer (never the prompt).
    """
    if not pairs:
        raise BadInput("encode_pairs: no pairs")
    rows: list[tuple[list[int], list[int]]] = []
    for question, answer, fmt in ((*p, None)[:3] for p in pairs):
        prompt = prompt_ids(tokenizer, question, fmt)
        target = _answer_ids(tokenizer, answer, fmt)
        if len(prompt) >= max_length:
            raise BadInput(f"prompt longer than max_length={max_length}: {question[:60]!r}")
        target = target[: max_length - len(prompt)]
        rows.append((prompt, target))
    width = max(len(p) + len(t) for p, t in rows)
    pad = pad_id(tokenizer)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (prompt, target) in enumerate(rows):
        n, m = len(prompt), len(target)
        input_ids[i, : n + m] = torch.tensor(prompt + target)
        attention[i, : n + m] = 1
        labels[i, n : n + m] = torch.tensor(target)
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    # Built on the CPU row by row, moved in one copy per tensor.
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding, same results)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
