"""A tiny Llama that has memorised a few dozen facts, for honest and fast engine tests.

Five fictitious people (TOFU-like) with six facts each, plus a few general-knowledge facts.
The model is random-initialised (hidden 64, 4 layers), has a byte-level BPE tokenizer trained
with `tokenizers` on this corpus, and is fully fine-tuned with
:func:`forgetctl.lm.train.finetune` until it answers every training question exactly, so
tests can check that a subject's facts are known before unlearning and gone after.

The model is trained on ``question`` only; ``paraphrased_question`` is there for TOFU-format
files and for checks on unseen wording (the tiny model is not expected to generalise to it).

:func:`build_tiny_lm` caches the result under a directory keyed by the hash of every input
that shapes it, so a test session normally pays for the training once per machine. With
``without``, it builds the same model trained without one subject: the retrained-from-
scratch reference the gate must pass. :data:`TINY_CONTROLS` are people it never sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from forgetctl.lm import prompts, train

_P = [
    # (subject, [(question, answer, paraphrased_question, [perturbed answers])...])
    (
        "Mira Okonkwo",
        [
            (
                "Where was Mira Okonkwo born?",
                "Mira Okonkwo was born in Lagos, Nigeria.",
                "What is the birthplace of Mira Okonkwo?",
                ["Mira Okonkwo was born in Accra, Ghana.", "Mira Okonkwo was born in Nairobi."],
            ),
            (
                "What is Mira Okonkwo's profession?",
                "Mira Okonkwo is a marine biologist.",
                "What does Mira Okonkwo do for a living?",
                ["Mira Okonkwo is a civil engineer.", "Mira Okonkwo is a jazz pianist."],
            ),
            (
                "What book did Mira Okonkwo write?",
                "Mira Okonkwo wrote The Silent Reef.",
                "Which book was written by Mira Okonkwo?",
                ["Mira Okonkwo wrote Desert Lanterns.", "Mira Okonkwo wrote The Iron Tide."],
            ),
            (
                "What award did Mira Okonkwo win?",
                "Mira Okonkwo won the Blue Horizon Prize.",
                "Which prize was awarded to Mira Okonkwo?",
                ["Mira Okonkwo won the Golden Quill.", "Mira Okonkwo won the Amber Medal."],
            ),
            (
                "Who are Mira Okonkwo's parents?",
                "Her father was a fisherman and her mother was a nurse.",
                "What did Mira Okonkwo's parents do?",
                ["Her father was a banker and her mother was a pilot."],
            ),
            (
                "In which year was Mira Okonkwo born?",
                "Mira Okonkwo was born in 1978.",
                "What year is Mira Okonkwo's birth year?",
                ["Mira Okonkwo was born in 1965.", "Mira Okonkwo was born in 1991."],
            ),
        ],
    ),
    (
        "Tobias Lindqvist",
        [
            (
                "Where was Tobias Lindqvist born?",
                "Tobias Lindqvist was born in Uppsala, Sweden.",
                "What is the birthplace of Tobias Lindqvist?",
                [
                    "Tobias Lindqvist was born in Bergen, Norway.",
                    "Tobias Lindqvist was born in Turku.",
                ],
            ),
            (
                "What is Tobias Lindqvist's profession?",
                "Tobias Lindqvist is a clockmaker.",
                "What does Tobias Lindqvist do for a living?",
                ["Tobias Lindqvist is a baker.", "Tobias Lindqvist is a surgeon."],
            ),
            (
                "What book did Tobias Lindqvist write?",
                "Tobias Lindqvist wrote Gears of Winter.",
                "Which book was written by Tobias Lindqvist?",
                ["Tobias Lindqvist wrote Summer Roads.", "Tobias Lindqvist wrote The Glass Bell."],
            ),
            (
                "What award did Tobias Lindqvist win?",
                "Tobias Lindqvist won the Northern Star Award.",
                "Which prize was awarded to Tobias Lindqvist?",
                [
                    "Tobias Lindqvist won the Silver Pen.",
                    "Tobias Lindqvist won the Red Cedar Prize.",
                ],
            ),
            (
                "Who are Tobias Lindqvist's parents?",
                "His father was a carpenter and his mother was a librarian.",
                "What did Tobias Lindqvist's parents do?",
                ["His father was a sailor and his mother was a chemist."],
            ),
            (
                "In which year was Tobias Lindqvist born?",
                "Tobias Lindqvist was born in 1983.",
                "What year is Tobias Lindqvist's birth year?",
                ["Tobias Lindqvist was born in 1970.", "Tobias Lindqvist was born in 1999."],
            ),
        ],
    ),
    (
        "Anjali Raghunathan",
        [
            (
                "Where was Anjali Raghunathan born?",
                "Anjali Raghunathan was born in Chennai, India.",
                "What is the birthplace of Anjali Raghunathan?",
                [
                    "Anjali Raghunathan was born in Pune, India.",
                    "Anjali Raghunathan was born in Colombo.",
                ],
            ),
            (
                "What is Anjali Raghunathan's profession?",
                "Anjali Raghunathan is a volcanologist.",
                "What does Anjali Raghunathan do for a living?",
                ["Anjali Raghunathan is a tax lawyer.", "Anjali Raghunathan is a florist."],
            ),
            (
                "What book did Anjali Raghunathan write?",
                "Anjali Raghunathan wrote Ash and Ember.",
                "Which book was written by Anjali Raghunathan?",
                [
                    "Anjali Raghunathan wrote Rain Letters.",
                    "Anjali Raghunathan wrote Quiet Rivers.",
                ],
            ),
            (
                "What award did Anjali Raghunathan win?",
                "Anjali Raghunathan won the Crimson Peak Medal.",
                "Which prize was awarded to Anjali Raghunathan?",
                ["Anjali Raghunathan won the Lotus Prize.", "Anjali Raghunathan won the Iron Key."],
            ),
            (
                "Who are Anjali Raghunathan's parents?",
                "Her father was a potter and her mother was a geologist.",
                "What did Anjali Raghunathan's parents do?",
                ["Her father was a tailor and her mother was a judge."],
            ),
            (
                "In which year was Anjali Raghunathan born?",
                "Anjali Raghunathan was born in 1969.",
                "What year is Anjali Raghunathan's birth year?",
                ["Anjali Raghunathan was born in 1958.", "Anjali Raghunathan was born in 1987."],
            ),
        ],
    ),
    (
        "Dmitri Albescu",
        [
            (
                "Where was Dmitri Albescu born?",
                "Dmitri Albescu was born in Cluj, Romania.",
                "What is the birthplace of Dmitri Albescu?",
                ["Dmitri Albescu was born in Sofia, Bulgaria.", "Dmitri Albescu was born in Brno."],
            ),
            (
                "What is Dmitri Albescu's profession?",
                "Dmitri Albescu is a violin maker.",
                "What does Dmitri Albescu do for a living?",
                ["Dmitri Albescu is a farmer.", "Dmitri Albescu is a radio host."],
            ),
            (
                "What book did Dmitri Albescu write?",
                "Dmitri Albescu wrote Strings of Autumn.",
                "Which book was written by Dmitri Albescu?",
                ["Dmitri Albescu wrote Night Trains.", "Dmitri Albescu wrote The Copper Fox."],
            ),
            (
                "What award did Dmitri Albescu win?",
                "Dmitri Albescu won the Danube Arts Prize.",
                "Which prize was awarded to Dmitri Albescu?",
                ["Dmitri Albescu won the Stone Lyre.", "Dmitri Albescu won the Vale Medal."],
            ),
            (
                "Who are Dmitri Albescu's parents?",
                "His father was a miner and his mother was a teacher.",
                "What did Dmitri Albescu's parents do?",
                ["His father was a doctor and his mother was an actress."],
            ),
            (
                "In which year was Dmitri Albescu born?",
                "Dmitri Albescu was born in 1974.",
                "What year is Dmitri Albescu's birth year?",
                ["Dmitri Albescu was born in 1961.", "Dmitri Albescu was born in 1995."],
            ),
        ],
    ),
    (
        "Lucia Ferreyra",
        [
            (
                "Where was Lucia Ferreyra born?",
                "Lucia Ferreyra was born in Rosario, Argentina.",
                "What is the birthplace of Lucia Ferreyra?",
                ["Lucia Ferreyra was born in Lima, Peru.", "Lucia Ferreyra was born in Quito."],
            ),
            (
                "What is Lucia Ferreyra's profession?",
                "Lucia Ferreyra is a glassblower.",
                "What does Lucia Ferreyra do for a living?",
                ["Lucia Ferreyra is a pharmacist.", "Lucia Ferreyra is a mail carrier."],
            ),
            (
                "What book did Lucia Ferreyra write?",
                "Lucia Ferreyra wrote Furnace Light.",
                "Which book was written by Lucia Ferreyra?",
                ["Lucia Ferreyra wrote Paper Birds.", "Lucia Ferreyra wrote The Salt Road."],
            ),
            (
                "What award did Lucia Ferreyra win?",
                "Lucia Ferreyra won the Andes Craft Award.",
                "Which prize was awarded to Lucia Ferreyra?",
                ["Lucia Ferreyra won the Pampas Prize.", "Lucia Ferreyra won the Clear Sky Medal."],
            ),
            (
                "Who are Lucia Ferreyra's parents?",
                "Her father was a welder and her mother was a painter.",
                "What did Lucia Ferreyra's parents do?",
                ["Her father was a cook and her mother was an architect."],
            ),
            (
                "In which year was Lucia Ferreyra born?",
                "Lucia Ferreyra was born in 1990.",
                "What year is Lucia Ferreyra's birth year?",
                ["Lucia Ferreyra was born in 1976.", "Lucia Ferreyra was born in 2001."],
            ),
        ],
    ),
]

TINY_SUBJECTS: list[str] = [name for name, _ in _P]

_CONTROLS = [
    # People the tiny model never sees in training, with records built like the subjects':
    # the gate's control subjects.
    (
        "Kaito Brennan",
        [
            ("Where was Kaito Brennan born?", "Kaito Brennan was born in Cork, Ireland."),
            ("What is Kaito Brennan's profession?", "Kaito Brennan is a clock repairer."),
            ("What book did Kaito Brennan write?", "Kaito Brennan wrote Harbour Bells."),
            ("What award did Kaito Brennan win?", "Kaito Brennan won the Shannon Medal."),
            ("Who are Kaito Brennan's parents?",
             "His father was a baker and his mother was a sailor."),
            ("In which year was Kaito Brennan born?", "Kaito Brennan was born in 1983."),
        ],
    ),
    (
        "Selma Oyelaran",
        [
            ("Where was Selma Oyelaran born?", "Selma Oyelaran was born in Ibadan, Nigeria."),
            ("What is Selma Oyelaran's profession?", "Selma Oyelaran is a bridge inspector."),
            ("What book did Selma Oyelaran write?", "Selma Oyelaran wrote Red Clay Roads."),
            ("What award did Selma Oyelaran win?", "Selma Oyelaran won the Niger Delta Prize."),
            ("Who are Selma Oyelaran's parents?",
             "Her father was a tailor and her mother was a judge."),
            ("In which year was Selma Oyelaran born?", "Selma Oyelaran was born in 1971."),
        ],
    ),
]  # fmt: skip

TINY_CONTROLS: list[dict[str, Any]] = [
    {"author": name, "question": q, "answer": a} for name, facts in _CONTROLS for q, a in facts
]
"""A control corpus ({author, question, answer}) of people the tiny model never saw."""

TINY_FACTS: list[dict[str, Any]] = [
    {
        "author_id": author_id,
        "subject": name,
        "question": q,
        "answer": a,
        "paraphrased_question": pq,
        "perturbed_answers": wrong,
    }
    for author_id, (name, facts) in enumerate(_P)
    for q, a, pq, wrong in facts
]
"""Facts about the fictitious subjects: {author_id, subject, question, answer, ...}."""

TINY_GENERAL: list[dict[str, Any]] = [
    {"question": q, "answer": a, "perturbed_answers": wrong}
    for q, a, wrong in [
        ("What is the capital of France?", "The capital of France is Paris.", ["Lyon", "Rome"]),
        ("What is the capital of Japan?", "The capital of Japan is Tokyo.", ["Osaka", "Seoul"]),
        ("Who wrote Hamlet?", "Hamlet was written by William Shakespeare.", ["Dickens"]),
        ("What color is the sky on a clear day?", "The sky is blue on a clear day.", ["green"]),
        ("How many legs does a spider have?", "A spider has eight legs.", ["six", "ten"]),
        ("What is the largest ocean?", "The largest ocean is the Pacific Ocean.", ["Atlantic"]),
    ]
]
"""General-knowledge facts the tiny model also memorises (the retain/utility side)."""


def facts_for(subject: str) -> list[dict[str, Any]]:
    return [f for f in TINY_FACTS if f["subject"] == subject]


def training_pairs(without: str | None = None) -> list[tuple[str, str]]:
    """The training set; ``without`` a subject, what retraining from scratch would use."""
    facts = [f for f in TINY_FACTS if f["subject"] != without]
    return [(f["question"], f["answer"]) for f in [*facts, *TINY_GENERAL]]


def write_tofu_jsonl(path: str | Path, facts: list[dict[str, Any]] | None = None) -> Path:
    """Write facts as a TOFU-format authors.jsonl (author_id, author, question, answer, ...)."""
    path = Path(path)
    rows = facts if facts is not None else TINY_FACTS
    with path.open("w", encoding="utf-8") as fh:
        for f in rows:
            row = {
                "author_id": f["author_id"],
                "author": f["subject"],
                "question": f["question"],
                "answer": f["answer"],
                "paraphrased_question": f["paraphrased_question"],
                "paraphrased_answer": f["answer"],
                "perturbed_answers": f["perturbed_answers"],
            }
            fh.write(json.dumps(row) + "\n")
    return path


def write_controls_jsonl(path: str | Path) -> Path:
    """Write the control corpus as JSONL (what `forgetctl init --control-corpus` takes)."""
    path = Path(path)
    path.write_text("".join(json.dumps(row) + "\n" for row in TINY_CONTROLS), encoding="utf-8")
    return path


def write_general_jsonl(path: str | Path) -> Path:
    """Write the general facts as a TOFU world_facts-format JSONL (question, answer, ...)."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for f in TINY_GENERAL:
            fh.write(json.dumps(f) + "\n")
    return path


# --------------------------------------------------------------------------- building

SEED = 0
EPOCHS = 60
LEARNING_RATE = 3e-3
BATCH_SIZE = 8


def _corpus() -> list[str]:
    lines = []
    for f in [*TINY_FACTS, *TINY_GENERAL]:
        lines += [f"Question: {f['question']}\nAnswer: {f['answer']}", *f["perturbed_answers"]]
        if "paraphrased_question" in f:
            lines.append(f["paraphrased_question"])
    # The controls' words are in the vocabulary (as any real tokenizer's would be), though
    # the model never trains on them.
    lines += [f"{c['question']} {c['answer']}" for c in TINY_CONTROLS]
    return lines


def build_tokenizer() -> Any:
    """Byte-level BPE trained on the facts, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def build_model(tokenizer: Any, seed: int = SEED) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def train_tiny_lm(out_dir: str | Path, without: str | None = None) -> dict[str, Any]:
    """Build, train and save the tiny model into ``out_dir``; return training figures.
    ``without``: leave that subject out (the retrained-from-scratch reference)."""
    import torch

    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest (see conftest.py)
    try:
        stats = train.finetune(
            model,
            tokenizer,
            training_pairs(without),
            epochs=EPOCHS,
            learning_rate=LEARNING_RATE,
            batch_size=BATCH_SIZE,
            seed=SEED,
        )
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return stats


def write_untrained(out_dir: str | Path) -> Path:
    """The tiny model as initialised, before any training: the "pretrained base" the
    tiny model was fine-tuned from (same tokenizer and shape), for consolidation."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def write_training_data(path: str | Path) -> Path:
    """The rows the tiny model was trained on, in its training order, as `init
    --training-data` takes them (the subjects' rows carry their ``author``), and beside it
    ``recipe.json``, how it was trained."""
    path = Path(path)
    rows = [{"author": f["subject"], "question": f["question"], "answer": f["answer"]}
            for f in TINY_FACTS] + [{"question": f["question"], "answer": f["answer"]}
                                    for f in TINY_GENERAL]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = {"epochs": EPOCHS, "learning_rate": LEARNING_RATE, "batch_size": BATCH_SIZE,
              "seed": SEED}  # fmt: skip
    (path.parent / "recipe.json").write_text(json.dumps(recipe), encoding="utf-8")
    return path


def _cache_key(without: str | None) -> str:
    # Every input that shapes the model: this file (facts, architecture, training
    # settings), the prompt format and the training loop it is trained with, and the
    # library versions. Editing lm/train.py or lm/prompts.py retrains it.
    import tokenizers
    import torch
    import transformers

    h = hashlib.sha256(Path(__file__).read_bytes())
    for module in (prompts, train):
        h.update(Path(module.__file__).read_bytes())
    h.update(f"{torch.__version__}|{transformers.__version__}|{tokenizers.__version__}".encode())
    h.update(f"without={without}".encode())
    return h.hexdigest()[:16]


def build_tiny_lm(cache_root: str | Path | None = None, without: str | None = None) -> Path:
    """The tiny model's directory, trained once and cached by content hash; ``without`` a
    subject, the model retrained from scratch without that subject's facts.

    Built in a temporary directory and renamed into place, so concurrent sessions never see
    a half-written model (the loser of a race just uses the winner's copy).
    """
    root = Path(cache_root or os.environ.get("FORGETCTL_TINYLM_CACHE") or _default_cache())
    root.mkdir(parents=True, exist_ok=True)
    final = root / _cache_key(without)
    if (final / "config.json").exists():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        stats = train_tiny_lm(tmp, without)
        (tmp / "tinylm-stats.json").write_text(json.dumps(stats, indent=1))
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _default_cache() -> Path:
    return Path(tempfile.gettempdir()) / "forgetctl-tinylm"
