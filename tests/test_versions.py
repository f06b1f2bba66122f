"""Versions: registering a base, loading a lineage, export, ask, tamper detection, promote
guards. The adapter here is made by hand (no training), so these tests are fast."""

from __future__ import annotations

import json
import shutil

import pytest
import tinylm
import torch
from clirun import cli

from forgetctl.app import versions
from forgetctl.app.home import resolve_home
from forgetctl.app.promote import promote, rollback
from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import InvalidState, PromotionRefused
from forgetctl.lm.prompts import encode_pairs, format_prompt
from forgetctl.lm.weights import load_model, load_tokenizer
from forgetctl.store.ledger import open_ledger
from forgetctl.unlearn.train import lora_model, save_adapter


def app_():
    from forgetctl.cli.app import app

    return app


@pytest.fixture
def home_with_adapter(tiny_lm_dir):
    """A home whose version 1 is the tiny model plus a LoRA adapter with non-zero weights."""
    cli("init", "--model", str(tiny_lm_dir))
    home = resolve_home()
    model, _ = load_model(tiny_lm_dir)
    peft = lora_model(model, [0, 1], rank=4, alpha=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a real change to the weights, so merging matters
    sha = save_adapter(peft, home.adapters / "manual")
    ledger = open_ledger(home.ledger_path)
    ledger.db["requests"].insert({"id": 1, "ref": "R-1", "policy": "gdpr", "regulation": "gdpr",
        "scope": "entity", "status": "applied", "received": "2026-11-01", "due": "2026-12-01",
        "subject_index": "x", "created_at": "t", "updated_at": "t"})  # fmt: skip
    vid = ledger.versions.add(kind="adapter", parent=0, status="candidate",
                                adapter_path=str(home.adapters / "manual"), adapter_sha256=sha,
                                requests=[1])  # fmt: skip
    return home, ledger, vid, peft


def test_lineage_loads_merged_weights(home_with_adapter):
    home, ledger, vid, peft = home_with_adapter
    model, tokenizer = versions.load_version(Workspace.open(home), vid)
    batch = encode_pairs(tokenizer, [("Who wrote Hamlet?", "Shakespeare.")])
    with torch.no_grad():
        expected = peft(input_ids=batch["input_ids"]).logits
        got = model(input_ids=batch["input_ids"]).logits
    assert torch.allclose(expected, got, atol=1e-4)


def test_export_and_ask(home_with_adapter, tmp_path):
    home, ledger, vid, _ = home_with_adapter
    out = tmp_path / "served"
    cli("model", "export", str(vid), "--out", str(out))
    assert (out / "model.safetensors").exists()
    exported, _ = load_model(out)
    merged, _ = versions.load_version(Workspace.open(home), vid)
    for a, b in zip(exported.state_dict().values(), merged.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    cli("model", "export", "--out", str(out), code=2)  # exists: refused, nothing overwritten
    fact = tinylm.TINY_FACTS[0]
    assert fact["answer"] in cli("model", "ask", fact["question"]).stdout
    cli("model", "ask", "  ", code=2)
    rows = json.loads(cli("model", "versions", "--json").stdout)
    assert [r["id"] for r in rows] == [0, vid] and rows[0]["production"]


def test_export_serves_the_prompts_verify_formats(chat_tokenizer, tiny_lm_dir, tmp_path):
    """A server that sends the user's question alone gets the prompt the gate verified,
    not SmolLM2's default system prompt."""
    model_dir = tmp_path / "chat-model"
    shutil.copytree(tiny_lm_dir, model_dir)
    chat_tokenizer.save_pretrained(model_dir)  # the tiny model with SmolLM2's chat template
    cli("init", "--model", str(model_dir))
    cli("model", "export", "--out", str(tmp_path / "served"))
    served = load_tokenizer(tmp_path / "served")
    question = tinylm.TINY_FACTS[0]["question"]
    messages = [{"role": "user", "content": question}]
    text = served.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == format_prompt(chat_tokenizer, question)
    assert format_prompt(served, question) == text  # verifying the export asks the same


def test_tampered_adapter_is_refused(home_with_adapter):
    home, ledger, vid, _ = home_with_adapter
    weights = next((home.adapters / "manual").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(InvalidState, match="hash mismatch"):
        versions.load_version(Workspace.open(home), vid)


def test_promote_needs_every_mandatory_check(home_with_adapter):
    home, ledger, vid, _ = home_with_adapter
    with pytest.raises(PromotionRefused, match="not run"):
        promote(Workspace.open(home), vid)
    for check in ("forget", "retain", "utility", "membership", "tell", "int4", "relearn"):
        ledger.verifications.add(vid, check, "pass", {}, [])
    with pytest.raises(PromotionRefused, match="regression"):
        promote(Workspace.open(home), vid)
    ledger.verifications.add(vid, "regression", "pass", {}, [])
    promote(Workspace.open(home), vid)
    assert ledger.aliases.get() == vid and ledger.requests.get(1)["status"] == "promoted"
    with pytest.raises(InvalidState, match="already production"):
        promote(Workspace.open(home), vid)
    assert rollback(ledger) == 0
    assert ledger.requests.get(1)["status"] == "received"
    assert ledger.verify_chain().ok


def test_init_with_missing_model_says_how_to_pull(home_with_adapter, tmp_path):
    missing = cli("init", "--model", str(tmp_path / "nothing"), code=9)
    assert "forgetctl model pull" in missing.stderr


def test_init_with_a_missing_corpus_writes_nothing(tmp_path):
    home = tmp_path / "new-home"
    corpus = str(tmp_path / "no.jsonl")
    missing = cli("init", "--home", str(home), "--retain-corpus", corpus, code=3)
    assert "no data file" in missing.stderr
    assert not home.exists()
