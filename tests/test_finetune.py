"""Full fine-tuning, TOFU data loading and the deployed-model builder, on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from tinylm import TINY_FACTS, TINY_SUBJECTS, build_model, build_tokenizer, write_tofu_jsonl

from forgetctl.core.data import builtin_names, load_builtin, load_jsonl
from forgetctl.core.errors import BadInput, NotFound
from forgetctl.core.hashing import weights_sha256
from forgetctl.demo.deployed import DEPLOYED_MANIFEST, build_deployed_model
from forgetctl.demo.tofu import author_ids, load_authors, parse_authors, select_authors
from forgetctl.lm.train import finetune, finetune_steps, train_loop
from forgetctl.lm.weights import WEIGHTS_FILE, load_model, read_manifest


def _pairs(n: int = 8) -> list[tuple[str, str]]:
    return [(f["question"], f["answer"]) for f in TINY_FACTS[:n]]


def test_finetune_lowers_loss_and_reports_progress(progress_log):
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    stats = finetune(
        model, tokenizer, _pairs(), epochs=3, learning_rate=3e-3, batch_size=4,
        progress=progress_log,
    )  # fmt: skip
    seen = progress_log.bars
    assert stats["steps"] == 6 == len(seen)
    assert [b[:3] for b in seen[-2:]] == [("fine-tuning", 5, 6), ("fine-tuning", 6, 6)]
    assert seen[-1][3]["epoch"] == 3 and seen[-1][3]["loss"] > 0
    assert stats["epoch_losses"][-1] < stats["epoch_losses"][0]
    assert not model.training


def test_finetune_is_deterministic_for_a_seed():
    tokenizer = build_tokenizer()
    results = []
    for seed in (0, 0, 1):
        model = build_model(tokenizer)
        finetune(model, tokenizer, _pairs(), epochs=2, learning_rate=3e-3, batch_size=4, seed=seed)
        results.append(model.model.layers[0].mlp.down_proj.weight.detach().clone())
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])


def test_finetune_rejects_empty():
    tokenizer = build_tokenizer()
    with pytest.raises(BadInput):
        finetune(build_model(tokenizer), tokenizer, [], epochs=1)


def test_train_loop_zeroes_clips_and_stops_on_a_callback():
    w = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = torch.optim.SGD([w], lr=0.1)

    def step_loss(x: float) -> dict[str, float]:
        (w * x).sum().backward()
        return {"x": x}

    seen = []
    steps = train_loop(
        [w],
        optimizer,
        iter([0.5, 10.0, 0.25, 4.0]),
        step_loss,
        [lambda step, _: step == 3, lambda step, figures: seen.append((step, figures["x"]))],
        clip=1.0,
    )
    # Stopped after the third batch, which every callback still saw.
    assert steps == 3 and seen == [(1, 0.5), (2, 10.0), (3, 0.25)]
    # Fresh gradients each step, the 10 clipped to 1: 1 - 0.1 * (0.5 + 1 + 0.25).
    assert w.item() == pytest.approx(0.825)


def test_finetune_steps_ascent_climbs(tiny_lm):
    model, tokenizer = tiny_lm
    losses = finetune_steps(model, tokenizer, _pairs(4), steps=4, learning_rate=1e-3, ascent=True)
    assert len(losses) == 4 and losses[-1] > losses[0]
    assert not model.training


def test_load_and_select_authors(tmp_path):
    path = write_tofu_jsonl(tmp_path / "authors.jsonl")
    rows = load_authors(path)
    assert len(rows) == len(TINY_FACTS)
    assert author_ids(rows) == list(range(len(TINY_SUBJECTS)))
    ids, picked = select_authors(rows, 2)
    assert ids == [0, 1] and {r["author"] for r in picked} == set(TINY_SUBJECTS[:2])
    ids, picked = select_authors(rows, [3, 1])
    assert ids == [3, 1] and len(picked) == 12
    with pytest.raises(BadInput, match="not in the data"):
        select_authors(rows, [99])
    with pytest.raises(BadInput):
        select_authors(rows, 0)
    assert parse_authors("10") == 10
    assert parse_authors("3,7,12-14") == [3, 7, 12, 13, 14]
    with pytest.raises(BadInput):
        parse_authors("ten")


def test_load_jsonl_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "answer": "A."}\n{"question": "Q?"}\n')
    with pytest.raises(BadInput, match="bad.jsonl:2: missing or empty 'answer'"):
        load_jsonl(bad)
    bad.write_text("not json\n")
    with pytest.raises(BadInput, match="invalid JSON"):
        load_jsonl(bad)
    with pytest.raises(NotFound):
        load_jsonl(tmp_path / "absent.jsonl")


def test_builtin_sets():
    assert builtin_names() == ["basic_facts", "controls", "real_authors", "world_facts"]
    facts = load_builtin("world_facts")
    assert len(facts) == 117 and facts[0]["answer"] == "Paris"
    assert len(load_jsonl("builtin:real_authors")) == 100
    with pytest.raises(NotFound):
        load_builtin("nope")


def test_build_deployed_model_and_cache(tiny_lm_dir, tmp_path, progress_log):
    path = write_tofu_jsonl(tmp_path / "authors.jsonl")
    out = tmp_path / "deployed"
    calls = progress_log.bars
    kwargs = dict(epochs=1, learning_rate=1e-3, batch_size=6, progress=progress_log)
    got, manifest = build_deployed_model(tiny_lm_dir, path, [1, 2], out, **kwargs)
    assert got == out and calls
    on_disk = json.loads((out / DEPLOYED_MANIFEST).read_text())
    assert on_disk == manifest
    assert [a["author"] for a in manifest["authors"]] == TINY_SUBJECTS[1:3]
    assert manifest["records"] == 12 and manifest["key"]["epochs"] == 1
    assert read_manifest(out)["weights_sha256"] == weights_sha256(out)
    load_model(out)

    # Same inputs: nothing is trained again.
    calls.clear()
    stamp = (out / WEIGHTS_FILE).stat().st_mtime_ns
    build_deployed_model(tiny_lm_dir, path, [1, 2], out, **kwargs)
    assert not calls and (out / WEIGHTS_FILE).stat().st_mtime_ns == stamp

    # Other authors: rebuilt in place, no leftovers beside it.
    _, manifest = build_deployed_model(tiny_lm_dir, path, 1, out, **kwargs)
    assert calls and manifest["key"]["author_ids"] == [0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["authors.jsonl", "deployed"]


def _killed_in_epoch(epoch: int):
    """A progress callback that interrupts fine-tuning once it reaches ``epoch``."""

    def progress(label, done=None, total=None, /, **figures):
        if figures.get("epoch") == epoch:
            raise KeyboardInterrupt

    return progress


def test_finetune_carries_on_from_its_checkpoint(tmp_path):
    """Killed in its third epoch, a fine-tune resumes from the end of the second and ends
    with the weights and figures of an uninterrupted run; another run's checkpoint is not
    resumed from."""
    tokenizer = build_tokenizer()
    args = dict(epochs=4, learning_rate=3e-3, batch_size=4, seed=0)
    whole = build_model(tokenizer)
    expected = finetune(whole, tokenizer, _pairs(), **args)
    checkpoint = tmp_path / "ft.ckpt"

    with pytest.raises(KeyboardInterrupt):
        finetune(build_model(tokenizer), tokenizer, _pairs(), checkpoint=checkpoint,
                 progress=_killed_in_epoch(3), **args)  # fmt: skip
    assert checkpoint.exists()
    resumed_model = build_model(tokenizer)
    resumed = finetune(resumed_model, tokenizer, _pairs(), checkpoint=checkpoint, **args)
    assert resumed["resumed_epochs"] == 2 and resumed["steps"] == expected["steps"] == 8
    assert resumed["epoch_losses"] == expected["epoch_losses"]
    for a, b in zip(whole.state_dict().values(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # The checkpoint of other inputs (another seed) is not resumed from.
    other = finetune(build_model(tokenizer), tokenizer, _pairs(), checkpoint=checkpoint,
                     **{**args, "seed": 1})  # fmt: skip
    assert other["resumed_epochs"] == 0


def test_a_distillation_checkpoint_is_resumed_only_with_its_own_teacher(tmp_path):
    """The checkpoint's key covers the teacher's weights, not only that there is one."""
    tokenizer = build_tokenizer()
    args = dict(epochs=3, learning_rate=3e-3, batch_size=4, seed=0)
    teacher = build_model(tokenizer)
    other_teacher = build_model(tokenizer)
    with torch.no_grad():
        next(other_teacher.parameters()).add_(0.01)
    checkpoint = tmp_path / "distill.ckpt"

    with pytest.raises(KeyboardInterrupt):
        finetune(build_model(tokenizer), tokenizer, _pairs(), checkpoint=checkpoint,
                 teacher=teacher, progress=_killed_in_epoch(2), **args)  # fmt: skip
    assert checkpoint.exists() and not list(tmp_path.glob(".*.tmp"))
    with_other = finetune(build_model(tokenizer), tokenizer, _pairs(), checkpoint=checkpoint,
                          teacher=other_teacher, **args)  # fmt: skip
    assert with_other["resumed_epochs"] == 0
    with pytest.raises(KeyboardInterrupt):  # the other teacher's run wrote its own checkpoint
        finetune(build_model(tokenizer), tokenizer, _pairs(), checkpoint=checkpoint,
                 teacher=teacher, progress=_killed_in_epoch(2), **args)  # fmt: skip
    resumed = finetune(build_model(tokenizer), tokenizer, _pairs(), checkpoint=checkpoint,
                       teacher=teacher, **args)  # fmt: skip
    assert resumed["resumed_epochs"] == 1
