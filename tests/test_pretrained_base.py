"""The registered pretrained base (``init --base``): its registration and refusals, and the
unlearning that uses it: the ``distill`` objective and the reset towards its weights."""

from __future__ import annotations

import json
import shutil

import pytest
import tinylm
import torch
from conftest import TINY_METHOD, fact_items

from forgetctl.app import versions
from forgetctl.app.home import Home
from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import BadInput, InvalidState
from forgetctl.core.items import PromptItem
from forgetctl.lm.weights import load_model
from forgetctl.unlearn.train import accuracy, lora_model, reset_toward, unlearn

SUBJECT = tinylm.TINY_SUBJECTS[0]
FORGET = fact_items(tinylm.facts_for(SUBJECT), "record")
RETAIN = [
    PromptItem(prompt=f["question"], target=f["answer"], kind="neighbor")
    for f in tinylm.TINY_FACTS
    if f["subject"] != SUBJECT
]


@pytest.fixture(scope="module")
def never_saw_dir():
    """The tiny model trained from the same initialisation without SUBJECT: a base that
    never saw the subject's facts."""
    return tinylm.build_tiny_lm(without=SUBJECT)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices (see test_unlearn.py)
    yield
    torch.set_num_threads(before)


def test_init_base_registers_or_refuses(tiny_lm_dir, never_saw_dir, forgetctl_home, tmp_path):
    from clirun import cli

    assert "--base needs --model" in cli("init", "--base", str(never_saw_dir), code=2).output
    other = tmp_path / "other-shape"
    shutil.copytree(never_saw_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    refusals = {  # base: (exit code, what the one line says)
        str(tmp_path / "missing"): (9, "no model at"),
        str(tiny_lm_dir): (2, "not itself"),
        str(other): (2, "num_hidden_layers differ"),
    }
    for base, (code, said) in refusals.items():
        out = cli("init", "--model", str(tiny_lm_dir), "--base", base, code=code).output
        assert said in out and len(out.strip().splitlines()) == 1, out
        assert not (forgetctl_home / "ledger.db").exists()  # refused before anything is written
    info = json.loads(
        cli(
            "init",
            "--model",
            str(tiny_lm_dir),
            "--base",
            str(never_saw_dir),
            "--format",
            "plain",
            "--json",
        ).output
    )
    assert info["pretrained_base"] == str(never_saw_dir)
    ws = Workspace.open(Home(forgetctl_home))
    entry = ws.ledger.versions.get(0)["metrics"]["pretrained"]
    assert entry["path"] == str(never_saw_dir.resolve()) and len(entry["sha256"]) == 64
    assert versions.load_pretrained(ws) is not None
    # The registration is the model's: another base needs another home.
    another = shutil.copytree(never_saw_dir, tmp_path / "another")
    with pytest.raises(InvalidState, match="pretrained base"):
        versions.register_base(ws.ledger, tiny_lm_dir, pretrained=another)
    assert versions.register_base(ws.ledger, tiny_lm_dir, pretrained=never_saw_dir) == 0


def test_changed_pretrained_base_is_refused(tiny_lm_dir, never_saw_dir, forgetctl_home, tmp_path):
    copy = tmp_path / "base"
    shutil.copytree(never_saw_dir, copy)
    ws = Workspace.open(Home(forgetctl_home), create=True)
    versions.register_base(ws.ledger, tiny_lm_dir, pretrained=copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    with pytest.raises(InvalidState, match="changed since it was registered"):
        versions.load_pretrained(ws)


def test_methods_needing_the_base_refuse_without_it(tiny_lm):
    model, tokenizer = tiny_lm
    for update in ({"objective": "distill"}, {"reset_strength": 0.5}):
        with pytest.raises(BadInput, match="init --base"):
            unlearn(model, tokenizer, FORGET, RETAIN, TINY_METHOD.model_copy(update=update))


def test_distill_trains_towards_what_the_base_predicts(tiny_lm, never_saw_dir):
    model, tokenizer = tiny_lm
    pretrained = load_model(never_saw_dir)[0]
    before = accuracy(model, tokenizer, FORGET)
    floor = accuracy(pretrained, tokenizer, FORGET)
    assert before - floor > 0.3, "the base should know much less of the subject"
    method = TINY_METHOD.model_copy(
        update={"objective": "distill", "target_accuracy": 0.0, "learning_rate": 5e-3}
    )
    result = unlearn(model, tokenizer, FORGET, RETAIN, method, pretrained=pretrained)
    stats = result.stats
    # Forgotten means as well predicted as by the base, not below it (no collapse).
    assert stats["pretrained_forget_accuracy"] == pytest.approx(floor)
    assert stats["target_forget_accuracy"] == pytest.approx(floor + method.target_margin)
    assert stats["stop_reason"] == "target_accuracy", stats["stop_reason"]
    after = accuracy(result.model, tokenizer, FORGET)
    assert after <= floor + method.target_margin
    assert accuracy(result.model, tokenizer, RETAIN) >= 0.9 * accuracy(
        pretrained, tokenizer, RETAIN
    )


@pytest.mark.parametrize("rank, exact", [(64, True), (2, False)])
def test_reset_moves_the_chosen_layers_towards_the_base(tiny_lm, never_saw_dir, rank, exact):
    model, _ = tiny_lm
    pretrained = load_model(never_saw_dir)[0]
    parent = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_model = lora_model(model, [1], rank, alpha=rank)
    captured = reset_toward(peft_model, pretrained, 0.5)
    merged = peft_model.merge_and_unload()
    pre = dict(pretrained.named_parameters())
    moved = 0
    for name, weight in merged.named_parameters():
        halfway = parent[name] + 0.5 * (pre[name] - parent[name])
        if ".layers.1." in name and name.endswith("proj.weight"):
            moved += 1
            if exact:  # full rank: exactly halfway
                assert torch.allclose(weight, halfway, atol=1e-5), name
            else:  # the best rank-2 part: closer than the parent, not all the way
                assert (weight - halfway).norm() < (parent[name] - halfway).norm(), name
        else:
            assert torch.equal(weight, parent[name]), name
    assert moved == 7  # q, k, v, o, gate, up, down
    if exact:
        assert captured == pytest.approx(1.0)
    else:
        assert 0 < captured < 1


def test_after_a_reset_the_figures_are_those_of_the_adapter_kept(tiny_lm, never_saw_dir):
    """The guard falls back to the reset point; apply must report that point's figures (a
    benchmark run reported the parent's while the adapter kept had lost half its retain)."""
    model, tokenizer = tiny_lm
    pretrained = load_model(never_saw_dir)[0]
    method = TINY_METHOD.model_copy(
        update={"reset_strength": 1.0, "learning_rate": 1e-9, "max_steps": 1, "eval_every": 1,
                "top_k_layers": 8, "lora_rank": 64, "lora_alpha": 64.0}
    )  # fmt: skip
    result = unlearn(model, tokenizer, FORGET, RETAIN, method, pretrained=pretrained)
    stats = result.stats
    assert stats["evals"][0]["step"] == 0
    kept = accuracy(result.model, tokenizer, FORGET)
    assert stats["forget_accuracy_before"] - kept > 0.1, "the reset should move the forget set"
    assert stats["forget_accuracy_after"] == pytest.approx(kept, abs=1e-6)


def _reset_to_init(max_steps: int):
    """NPO after resetting every layer 0.8 of the way to the tiny model's initialisation (a
    base that saw none of the data): the reset costs the neighbours a quarter of their
    accuracy, which the guard alone would only roll back to."""
    return TINY_METHOD.model_copy(
        update={"reset_strength": 0.8, "top_k_layers": 4, "lora_rank": 64, "lora_alpha": 64.0,
                "learning_rate": 5e-3, "max_steps": max_steps, "eval_every": 5}
    )  # fmt: skip


def test_a_damaging_reset_is_repaired_before_the_guard_judges(tiny_lm):
    model, tokenizer = tiny_lm
    init = tinylm.build_model(tokenizer)
    method = _reset_to_init(max_steps=60)
    result = unlearn(model, tokenizer, FORGET, RETAIN, method, pretrained=init)
    stats = result.stats
    reset_point = stats["evals"][0]
    assert stats["retain_accuracy_before"] - reset_point["retain_accuracy"] > 0.1
    assert stats["repaired_at_step"] is not None and stats["guard_trips"] == 0
    assert stats["stop_reason"] == "target_accuracy", stats["stop_reason"]
    assert stats["final_state_step"] >= stats["repaired_at_step"]
    kept_retain = accuracy(result.model, tokenizer, RETAIN)
    assert kept_retain >= stats["retain_accuracy_before"] - method.max_retain_accuracy_drop
    assert accuracy(result.model, tokenizer, FORGET) <= method.target_accuracy


def test_a_repair_cut_short_keeps_where_it_got_and_says_so(tiny_lm):
    model, tokenizer = tiny_lm
    init = tinylm.build_model(tokenizer)
    result = unlearn(model, tokenizer, FORGET, RETAIN, _reset_to_init(max_steps=5),
                     pretrained=init)  # fmt: skip
    stats = result.stats
    assert stats["stop_reason"] == "repair_incomplete" and stats["repaired_at_step"] is None
    assert stats["final_state_step"] == 5
    kept_retain = accuracy(result.model, tokenizer, RETAIN)
    assert kept_retain == pytest.approx(stats["retain_accuracy_after"], abs=1e-6)
    assert kept_retain > stats["evals"][0]["retain_accuracy"]  # not rolled back to the reset
