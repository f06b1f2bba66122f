"""The model layer on the tiny memorising model (and one slow test on the real default)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tinylm import TINY_FACTS, TINY_GENERAL, TINY_SUBJECTS, facts_for, training_pairs
from transformers import AutoTokenizer

from forgetctl.core.errors import ModelMissing
from forgetctl.core.hashing import lineage_key, sha256_tree, weights_sha256
from forgetctl.lm.infer import answer_logprobs, answer_token_accuracy, generate
from forgetctl.lm.int4 import quantize_model_int4
from forgetctl.lm.prompts import SYSTEM_PROMPT, encode_pairs, format_prompt, set_serving_template
from forgetctl.lm.train import finetune_steps
from forgetctl.lm.weights import (
    WEIGHTS_FILE,
    cached_merged,
    load_model,
    merged_model,
    read_manifest,
    save_merged,
)


def test_tiny_model_knows_its_facts(tiny_lm):
    model, tokenizer = tiny_lm
    pairs = training_pairs()
    answers = generate(model, tokenizer, [q for q, _ in pairs])
    exact = sum(a == target for a, (_, target) in zip(answers, pairs, strict=True))
    assert exact >= 0.95 * len(pairs)
    assert len(TINY_SUBJECTS) == 5 and len(facts_for(TINY_SUBJECTS[0])) == 6
    assert len(TINY_FACTS) == 30 and TINY_GENERAL


def test_format_prompt_plain_and_chat(tiny_lm, chat_tokenizer):
    _, tokenizer = tiny_lm
    assert format_prompt(tokenizer, "Who?") == "Question: Who?\nAnswer:"
    # SmolLM2's real template: forgetctl's empty system message replaces the default one.
    assert SYSTEM_PROMPT == ""
    chat = format_prompt(chat_tokenizer, "Who?")
    expected = "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWho?<|im_end|>\n"
    assert chat == expected + "<|im_start|>assistant\n"
    assert "SmolLM" not in chat
    # Prompt and answer are joined with no space in the chat format, and the prompt tokens
    # are exactly the masked ones.
    enc = encode_pairs(chat_tokenizer, [("Who?", "Eva.")])
    n = len(chat_tokenizer(chat, add_special_tokens=True)["input_ids"])
    assert (enc["labels"][0, :n] == -100).all()
    supervised = enc["labels"][0][enc["labels"][0] != -100].tolist()
    assert chat_tokenizer.decode(supervised[:-1]) == "Eva."


def test_serving_template_serves_the_verified_prompt(chat_tokenizer, tmp_path):
    question = "Where was Eva Lindqvist born?"
    verified = format_prompt(chat_tokenizer, question)
    user_only = [{"role": "user", "content": question}]

    def served(tokenizer):
        return tokenizer.apply_chat_template(user_only, add_generation_prompt=True, tokenize=False)

    assert served(chat_tokenizer) != verified  # SmolLM2's own default system prompt
    set_serving_template(chat_tokenizer)
    set_serving_template(chat_tokenizer)  # once is enough; a second call changes nothing
    chat_tokenizer.save_pretrained(tmp_path)
    exported = AutoTokenizer.from_pretrained(str(tmp_path))
    assert served(exported) == verified
    assert format_prompt(exported, question) == verified  # the gate on an exported model
    # A server's own system message is still the server's.
    own = [{"role": "system", "content": "Be brief."}, *user_only]
    rendered = exported.apply_chat_template(own, add_generation_prompt=True, tokenize=False)
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_encode_pairs_masks_prompt_and_padding(tiny_lm):
    _, tokenizer = tiny_lm
    pairs = [("Who wrote Hamlet?", "Hamlet was written by William Shakespeare."), ("Q?", "A.")]
    enc = encode_pairs(tokenizer, pairs)
    prompt_len = len(tokenizer(format_prompt(tokenizer, pairs[0][0]))["input_ids"])
    labels, ids, mask = enc["labels"], enc["input_ids"], enc["attention_mask"]
    assert ids.shape == labels.shape == mask.shape
    assert (labels[0, :prompt_len] == -100).all()
    supervised = labels[0][labels[0] != -100].tolist()
    assert supervised[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(supervised[:-1]).strip() == pairs[0][1]
    # Right padding: the shorter row ends in unsupervised, unattended padding.
    assert mask[1, -1] == 0 and labels[1, -1] == -100
    assert (labels[mask == 0] == -100).all()


def test_encode_pairs_truncates_answer_not_prompt(tiny_lm):
    _, tokenizer = tiny_lm
    enc = encode_pairs(tokenizer, [("Who?", "word " * 100)], max_length=32)
    assert enc["input_ids"].shape[1] == 32
    assert (enc["labels"][0] != -100).sum() > 0


def test_generate_batched_equals_one_by_one(tiny_lm):
    model, tokenizer = tiny_lm
    questions = [f["question"] for f in TINY_FACTS[::3]] + ["Who?", "A question never seen?"]
    batched = generate(model, tokenizer, questions, batch_size=16, max_new_tokens=24)
    single = generate(model, tokenizer, questions, batch_size=1, max_new_tokens=24)
    assert batched == single


def test_answer_logprobs_true_beats_wrong(tiny_lm):
    model, tokenizer = tiny_lm
    fact = TINY_FACTS[0]
    true, wrong = answer_logprobs(
        model,
        tokenizer,
        [(fact["question"], fact["answer"]), (fact["question"], fact["perturbed_answers"][0])],
    )
    assert true > -0.5 > wrong
    # Batching does not change the figures.
    pairs = training_pairs()[:7]
    together = answer_logprobs(model, tokenizer, pairs, batch_size=4)
    apart = [answer_logprobs(model, tokenizer, [p])[0] for p in pairs]
    assert together == pytest.approx(apart, abs=1e-4)


def test_answer_token_accuracy_matches_greedy_answers(tiny_lm):
    model, tokenizer = tiny_lm
    pairs = training_pairs()[:7]
    answers = generate(model, tokenizer, [q for q, _ in pairs])
    scores = answer_token_accuracy(model, tokenizer, pairs, batch_size=4)
    # A memorised answer is what greedy decoding reproduces, token for token.
    for (_, target), answer, score in zip(pairs, answers, scores, strict=True):
        assert (score == 1.0) == (answer == target)
    assert sum(s == 1.0 for s in scores) >= 6
    # An answer the model does not hold scores low; batching keeps the order.
    fact = TINY_FACTS[0]
    wrong = (fact["question"], "Nobody has ever written that down anywhere.")
    mixed = answer_token_accuracy(model, tokenizer, [wrong, *pairs[:2]], batch_size=2)
    assert mixed[0] < 0.5 and mixed[1:] == scores[:2]


def test_load_model_missing_says_how_to_pull(tmp_path):
    with pytest.raises(ModelMissing, match="forgetctl model pull smollm2-135m"):
        load_model(tmp_path / "nothing")


def test_load_model_default_float32_cpu_or_as_asked(tiny_lm_dir):
    model, _ = load_model(tiny_lm_dir)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cpu", torch.float32)}
    half, tokenizer = load_model(tiny_lm_dir, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16} and not half.training
    pairs = training_pairs()[:4]
    assert encode_pairs(tokenizer, pairs, device="meta")["input_ids"].device.type == "meta"
    # bfloat16 keeps what the tiny model memorised (figures computed in float32).
    assert min(answer_token_accuracy(half, tokenizer, pairs)) >= 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_layer_on_cuda(tiny_lm_dir):
    model, tokenizer = load_model(tiny_lm_dir, device="cuda", dtype=torch.bfloat16)
    assert next(model.parameters()).is_cuda
    pairs = training_pairs()[:6]
    answers = generate(model, tokenizer, [q for q, _ in pairs])
    assert sum(a == t for a, (_, t) in zip(answers, pairs, strict=True)) >= 5
    cpu, _ = load_model(tiny_lm_dir)
    assert answer_logprobs(model, tokenizer, pairs) == pytest.approx(
        answer_logprobs(cpu, tokenizer, pairs), abs=0.1
    )
    quantized = quantize_model_int4(model)
    assert next(quantized.parameters()).is_cuda
    assert min(answer_token_accuracy(quantized, tokenizer, pairs)) > 0.5
    losses = finetune_steps(model, tokenizer, pairs, steps=3, learning_rate=1e-4)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


def _tiny_adapter(model, out: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():  # LoRA B starts at zero; make the adapter actually do something
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.save_pretrained(out)
    return out


def test_merged_model_equals_peft_forward(tiny_lm_dir, tmp_path):
    from peft import PeftModel

    first = _tiny_adapter(load_model(tiny_lm_dir)[0], tmp_path / "a1", seed=1)
    # The second adapter is trained on the weights with the first merged in.
    merged_once = merged_model(tiny_lm_dir, [first])
    second = _tiny_adapter(merged_once, tmp_path / "a2", seed=2)

    merged = merged_model(tiny_lm_dir, [first, second])
    reference = PeftModel.from_pretrained(merged_model(tiny_lm_dir, [first]), second)
    reference.eval()
    _, tokenizer = load_model(tiny_lm_dir)
    batch = encode_pairs(tokenizer, training_pairs()[:4])
    with torch.no_grad():
        got = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        want = reference(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
        base = load_model(tiny_lm_dir)[0](input_ids=batch["input_ids"]).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, base, atol=1e-3)  # the adapters changed something


def test_cached_merged_reuses_and_keys_by_lineage(tiny_lm_dir, tmp_path):
    adapter = _tiny_adapter(load_model(tiny_lm_dir)[0], tmp_path / "a1", seed=1)
    cache = tmp_path / "cache"

    def key() -> str:
        return lineage_key([weights_sha256(tiny_lm_dir), sha256_tree(adapter)])

    assert cached_merged(tiny_lm_dir, [], cache, key()) == tiny_lm_dir
    first = cached_merged(tiny_lm_dir, [adapter], cache, key())
    stamp = (first / WEIGHTS_FILE).stat().st_mtime_ns
    assert cached_merged(tiny_lm_dir, [adapter], cache, key()) == first
    assert (first / WEIGHTS_FILE).stat().st_mtime_ns == stamp
    manifest = read_manifest(first)
    assert manifest["weights_sha256"] == weights_sha256(first)
    # Any change to the adapter directory gives another lineage key.
    (adapter / "README.md").write_text("changed")
    assert cached_merged(tiny_lm_dir, [adapter], cache, key()) != first
    loaded, _ = load_model(first)
    assert isinstance(loaded, torch.nn.Module)


def test_save_merged_is_atomic(tiny_lm, tmp_path, monkeypatch):
    model, tokenizer = tiny_lm
    out = tmp_path / "export"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        save_merged(model, tokenizer, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    save_merged(model, tokenizer, out, {"note": "export"})
    again, _ = load_model(out)
    assert read_manifest(out)["note"] == "export"
    with torch.no_grad():
        x = torch.tensor([[1, 2, 3]])
        assert torch.equal(again(input_ids=x).logits, model(input_ids=x).logits)


@pytest.mark.slow
def test_real_default_model_answers(real_model_dir, smollm2_chat_template):
    model, tokenizer = load_model(real_model_dir)
    assert model.config.model_type == "llama"
    # The template the fast tests stand on (``chat_tokenizer``) is the real one.
    assert tokenizer.chat_template == smollm2_chat_template
    answers = generate(
        model,
        tokenizer,
        ["What is the capital of France?", "Who wrote the play 'Romeo and Juliet'?"],
        max_new_tokens=24,
    )
    assert "paris" in answers[0].lower()
    assert "shakespeare" in answers[1].lower()
    (logp,) = answer_logprobs(model, tokenizer, [("What is 2+2?", "4")])
    assert -20 < logp < 0
