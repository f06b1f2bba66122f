"""The unlearning loop: one LoRA adapter on the most forget-specific layers.

:func:`unlearn` does, in order:

1. measure the forget and retain token accuracy of the parent (teacher-forced:
   :func:`forgetctl.lm.infer.answer_token_accuracy`);
2. rank the decoder layers by targeted attribution and keep the top ``top_k_layers``
   (:mod:`forgetctl.unlearn.attribution`);
3. wrap the model with a peft LoRA on every Linear of those layers only;
4. train with AdamW on the LoRA weights (:func:`forgetctl.lm.train.train_loop`, with the
   step's loss :class:`_UnlearnLoss` and the callback :class:`_RetainGuard`): each step
   takes a forget batch (objective +
   consistency, :mod:`forgetctl.unlearn.objectives`), optionally at a SAM-perturbed point
   and through NF4 fake quantization (:mod:`forgetctl.unlearn.robust`), plus a retain batch;
5. every ``eval_every`` steps measure forget and retain token accuracy again (on at most
   ``eval_items`` items of each side, a fixed sample spread over kinds): stop once the
   forget accuracy is at or under ``target_accuracy``. The retain set is guarded: when its
   accuracy has dropped by more than ``max_retain_accuracy_drop`` since the parent, the
   adapter goes back to the last evaluated state that was within the guard, the learning
   rate is halved and the retain weight doubled; after ``GUARD_TRIPS`` trips training stops
   there.

Why token accuracy and not the gate's answer recall: on this CPU a forward pass costs about
the same per token whether it decodes or scores, and a greedy answer of a model that is
forgetting runs to its full budget of babble, so scoring 40 prompts took 8 s against 15-32 s
to answer them (SmolLM2-135M, demo request 2). It is also the finer signal: recall had
bottomed out at the never-seen level (0.33) by step 25 while accuracy went on falling from
0.63 to 0.50 by step 40, the depth the relearning check probes. The gate (verify) still
judges by answers.

The parent (the reference of NPO and of the KL retain term) is the same model with the
adapter disabled; its forget log-likelihoods are computed once before training.

With a *pretrained base* (the public model the deployed one was fine-tuned from, registered
by ``forgetctl init --base``) the unlearning has a model that never saw the fine-tune data:
its forget accuracy on the probe sample is the level to stop at (plus
``MethodConfig.target_margin``, when that is above ``target_accuracy``), the ``distill``
objective trains towards its predictions, and ``reset_strength`` starts the adapter part of
the way back to its weights (:func:`reset_toward`: the reset, then the training repairs
what the retain side needs; the guard judges nothing until the repair is done).

:func:`save_adapter` writes the adapter atomically and returns its sha256.
"""

from __future__ import annotations

import copy
import random
import resource
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from forgetctl.core.errors import BadInput
from forgetctl.core.files import atomic_dir
from forgetctl.core.hashing import sha256_tree
from forgetctl.core.items import PromptItem, sample_by_kind
from forgetctl.core.policy import MethodConfig
from forgetctl.core.progress import Progress, silent
from forgetctl.lm.infer import answer_token_accuracy, model_device
from forgetctl.lm.prompts import encode_pairs
from forgetctl.lm.train import Figures, answer_token_logp, train_loop
from forgetctl.unlearn.attribution import layer_linear_names, rank_layers, select_layers
from forgetctl.unlearn.objectives import (
    NEEDS_PRETRAINED,
    ForgetTerms,
    SeqLogprobs,
    forget_terms,
    retain_term,
    sequence_logprobs,
)
from forgetctl.unlearn.robust import int4_aware, lora_linear_layers, sam_perturbation

GUARD_TRIPS = 3
"""How many times the retain guard may roll training back before it stops training."""


@dataclass
class UnlearnResult:
    """The trained peft model (adapter active) and JSON-serialisable training figures."""

    model: Any
    stats: dict[str, Any]

    @property
    def layers(self) -> list[int]:
        return self.stats["layers"]

    @property
    def steps(self) -> int:
        return self.stats["steps"]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def accuracy(model: Any, tokenizer: Any, items: Sequence[PromptItem]) -> float:
    """Mean teacher-forced token accuracy of the items' targets."""
    return _mean(answer_token_accuracy(model, tokenizer, [i.pair for i in items]))


def _encode(tokenizer: Any, items: Sequence[PromptItem], device: torch.device) -> dict:
    return encode_pairs(tokenizer, [i.pair for i in items], device=device)


class _Batches:
    """Endless batches of indices: a fresh seeded shuffle each pass over the items."""

    def __init__(self, n: int, batch_size: int, rng: random.Random) -> None:
        self.n, self.size, self.rng, self.queue = n, min(batch_size, n), rng, []

    def next(self) -> list[int]:
        if len(self.queue) < self.size:
            order = list(range(self.n))
            self.rng.shuffle(order)
            # Items not yet seen in this pass go first, so every item is used equally often.
            self.queue += [i for i in order if i not in self.queue]
        batch, self.queue = self.queue[: self.size], self.queue[self.size :]
        return sorted(batch)


class _Cost:
    """Wall and CPU time of a run, split by phase, and its peak memory.

    Time is charged to the innermost phase: an evaluation inside training counts as
    ``eval_s`` only.
    """

    def __init__(self) -> None:
        self.started = self.since = time.perf_counter()
        self.cpu_start = _cpu_seconds()
        self.phases = {"eval_s": 0.0, "train_s": 0.0}
        self.stack: list[str] = []

    def _charge(self) -> None:
        now = time.perf_counter()
        if self.stack:
            self.phases[self.stack[-1]] = self.phases.get(self.stack[-1], 0.0) + now - self.since
        self.since = now

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        self._charge()
        self.stack.append(phase)
        try:
            yield
        finally:
            self._charge()
            self.stack.pop()

    def figures(self) -> dict[str, Any]:
        return {
            "wall_s": round(time.perf_counter() - self.started, 3),
            "cpu_s": round(_cpu_seconds() - self.cpu_start, 3),
            "timing_s": {k: round(v, 3) for k, v in self.phases.items()},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }


def _cpu_seconds() -> float:
    return sum(resource.getrusage(resource.RUSAGE_SELF)[:2])


@dataclass
class _Probe:
    """The fixed forget and retain samples scored at every evaluation (token accuracy)."""

    tokenizer: Any
    forget: list[PromptItem]
    retain: list[PromptItem]
    cost: _Cost

    def __call__(self, model: Any) -> dict[str, float | None]:
        with self.cost.timed("eval_s"):
            fa = self.forget_accuracy(model)
            ra = accuracy(model, self.tokenizer, self.retain) if self.retain else None
        return {"forget_accuracy": fa, "retain_accuracy": ra}

    def forget_accuracy(self, model: Any) -> float:
        # The worst prompt format: forgotten behind one wrapper is not forgotten.
        by_format: dict[str | None, list[PromptItem]] = {}
        for item in self.forget:
            by_format.setdefault(item.format, []).append(item)
        return max(accuracy(model, self.tokenizer, group) for group in by_format.values())


def _probe(
    tokenizer: Any,
    forget: list[PromptItem],
    retain: list[PromptItem],
    method: MethodConfig,
    cost: _Cost,
) -> _Probe:
    """A bounded, fixed sample of each side, spread over kinds."""
    # The guard watches the neighbors (what the retain check judges): general questions the
    # model answers at ~0.2 recall only add noise to a small threshold on a small sample.
    neighbors = [item for item in retain if item.kind != "general"] or retain
    return _Probe(
        tokenizer,
        sample_by_kind(forget, method.eval_items, method.seed),
        sample_by_kind(neighbors, method.eval_items, method.seed + 1),
        cost,
    )


@torch.no_grad()
def _reference_logprobs(
    model: Any, tokenizer: Any, items: list[PromptItem], batch_size: int
) -> SeqLogprobs:
    device = model_device(model)
    totals, means = [], []
    for start in range(0, len(items), batch_size):
        lp = sequence_logprobs(model, _encode(tokenizer, items[start : start + batch_size], device))
        totals.append(lp.total)
        means.append(lp.mean)
    return SeqLogprobs(total=torch.cat(totals), mean=torch.cat(means))


def lora_model(model: Any, layers: Sequence[int], rank: int, alpha: float) -> Any:
    """``model`` wrapped (in place) with a LoRA adapter on every Linear of ``layers``."""
    from peft import LoraConfig, get_peft_model

    targets = [name for layer in layers for name in layer_linear_names(model, layer)]
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=targets,  # exact qualified names: only the chosen layers
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


@torch.no_grad()
def reset_toward(peft_model: Any, pretrained: Any, strength: float) -> float:
    """Start the adapter ``strength`` of the way from the parent's weights back to the
    pretrained base's, as far as its rank allows: each LoRA Linear's update
    ``scaling * B @ A`` is set to the best rank-r approximation (truncated SVD) of
    ``strength * (W_pretrained - W_parent)``. Returns the share of the reset's squared
    Frobenius norm that the rank captures (1.0: the reset is exact)."""
    pre = dict(pretrained.named_modules())
    names = {module: name for name, module in peft_model.named_modules()}
    kept = total = 0.0
    for module in lora_linear_layers(peft_model):
        name = names[module]
        base = module.get_base_layer().weight
        target = pre[name.removeprefix("base_model.model.")].weight
        delta = strength * (target.float() - base.float())
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        adapter = module.active_adapters[0]
        rank, scaling = module.r[adapter], module.scaling[adapter]
        root = (s[:rank] / scaling).sqrt()
        module.lora_B[adapter].weight.copy_(u[:, :rank] * root)
        module.lora_A[adapter].weight.copy_(root[:, None] * vh[:rank])
        kept, total = kept + float(s[:rank].pow(2).sum()), total + float(s.pow(2).sum())
    return kept / total if total else 1.0


class _UnlearnLoss:
    """One step's loss, back-propagated: the forget terms (their gradient taken again at the
    SAM-perturbed point when asked), then the weighted retain term, all computed through NF4
    fake quantization when int4-aware. ``retain_scale`` is the guard's extra retain weight."""

    def __init__(
        self,
        peft_model: Any,
        tokenizer: Any,
        forget: list[PromptItem],
        retain: list[PromptItem],
        retain_batches: _Batches,
        reference: SeqLogprobs,
        method: MethodConfig,
        params: list[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        pretrained: Any | None,
    ) -> None:
        self.model, self.tokenizer, self.device = peft_model, tokenizer, model_device(peft_model)
        self.pretrained = pretrained if method.objective in NEEDS_PRETRAINED else None
        self.forget, self.retain, self.retain_batches = forget, retain, retain_batches
        self.reference, self.method = reference, method
        self.params, self.optimizer = params, optimizer
        self.use_retain = (
            bool(retain) and method.retain_weight > 0 and method.objective != "grad_ascent"
        )
        self.retain_scale = 1.0

    def __call__(self, idx: list[int]) -> Figures:
        method = self.method
        batch = _encode(self.tokenizer, [self.forget[i] for i in idx], self.device)
        target = None
        if self.pretrained is not None:
            with torch.no_grad():
                target = answer_token_logp(self.pretrained, batch)
        with int4_aware(self.model, method.int4_aware):
            terms = self._forget_terms(idx, batch, target)
            terms.loss.backward()
            if method.sam and method.sam_rho > 0:
                # The forget gradient again, at the worst point within rho (see robust.py).
                with sam_perturbation(self.params, method.sam_rho) as moved:
                    if moved:
                        self.optimizer.zero_grad(set_to_none=True)
                        self._forget_terms(idx, batch, target).loss.backward()
            retain_value = self._retain_backward() if self.use_retain else 0.0
        weight = method.retain_weight * self.retain_scale
        return {
            "loss": float(terms.loss.detach()) + weight * retain_value,
            "forget": float(terms.forget.detach()),
            "consistency": float(terms.consistency.detach()),
            "retain": retain_value,
        }

    def _forget_terms(
        self, idx: list[int], batch: dict[str, torch.Tensor], target: torch.Tensor | None
    ) -> ForgetTerms:
        ref = SeqLogprobs(total=self.reference.total[idx], mean=self.reference.mean[idx])
        return forget_terms(
            self.model,
            batch,
            [self.forget[i] for i in idx],
            ref,
            self.method.objective,
            self.method.npo_beta,
            self.method.consistency_weight,
            target,
        )

    def _retain_backward(self) -> float:
        """Back-propagate the weighted retain term of the next retain batch; its value."""
        method = self.method
        items = [self.retain[i] for i in self.retain_batches.next()]
        batch = _encode(self.tokenizer, items, self.device)
        ref_logp = None
        if method.retain_term == "kl":
            with torch.no_grad(), self.model.disable_adapter():
                ref_logp = answer_token_logp(self.model, batch)
        loss = retain_term(self.model, batch, method.retain_term, ref_logp)
        (method.retain_weight * self.retain_scale * loss).backward()
        return float(loss.detach())


class _RetainGuard:
    """The callback after every step: evaluate every ``eval_every`` steps (and at the last),
    stop at the target forget accuracy, and guard the retain accuracy.

    It keeps a snapshot (LoRA weights and optimiser state) of the last evaluated state within
    the guard; a drop beyond ``max_retain_accuracy_drop`` rolls back to it, halves the
    learning rate and doubles the retain weight, and the ``GUARD_TRIPS``-th trip stops.

    A start outside the guard (a reset that took the retain side with it) is first
    *repaired*: the guard neither rolls back nor stops at the target until the retain
    accuracy is back within ``max_retain_accuracy_drop`` of the parent's; rolling back to
    the reset would only undo the repair. A budget spent before that ends as
    ``repair_incomplete``, with the adapter as far as the repair got.
    """

    def __init__(
        self,
        peft_model: Any,
        probe: _Probe,
        before: dict[str, float | None],
        method: MethodConfig,
        params: list[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        loss: _UnlearnLoss,
        target: float,
    ) -> None:
        self.model, self.probe, self.before, self.method = peft_model, probe, before, method
        self.target = target
        self.params, self.optimizer, self.loss = params, optimizer, loss
        self.lr = method.learning_rate
        self.good = self._snapshot()
        self.good_eval: dict[str, Any] = {"step": 0, **before}
        self.evals: list[dict[str, Any]] = []
        self.trips = 0
        self.latest = {"forget_accuracy": before["forget_accuracy"]}
        at_target = before["forget_accuracy"] <= target
        self.stop_reason = "target_accuracy" if at_target else "max_steps"
        self.repairing = False
        self.repaired_at: int | None = None

    def start_moved(self) -> None:
        """Score the starting point when a reset moved it away from the parent: the guard
        falls back to it, and what it reports must be its own figures, not the parent's."""
        scores = self.probe(self.model)
        self.evals.append({"step": 0, **scores, "lr": self.lr})
        self.good_eval = {"step": 0, **scores}
        self.latest = {k: v for k, v in scores.items() if v is not None}
        self.repairing = self._dropped(scores["retain_accuracy"])
        if self.repairing:
            self.stop_reason = "max_steps"  # the reset's forgetting does not count unrepaired

    def __call__(self, step: int, figures: Figures) -> bool:
        if step % self.method.eval_every and step != self.method.max_steps:
            return False
        scores = self.probe(self.model)
        self.evals.append({"step": step, **scores, "lr": self.lr})
        self.latest = {k: v for k, v in scores.items() if v is not None}
        dropped = self._dropped(scores["retain_accuracy"])
        if self.repairing:
            if dropped:
                return False
            self.repairing, self.repaired_at = False, step
        if dropped:
            self._back_off()
        else:
            self.good, self.good_eval = self._snapshot(), {"step": step, **scores}
            if scores["forget_accuracy"] <= self.target:
                self.stop_reason = "target_accuracy"
        return self.stop_reason != "max_steps"

    def finish(self, step: int) -> None:
        """Leave the adapter at the last evaluated state within the guard (after a repair
        that did not finish: where the repair got, the last state evaluated)."""
        if self.repairing:
            self.stop_reason = "repair_incomplete"
            self.good_eval = {k: v for k, v in self.evals[-1].items() if k != "lr"}
        elif self.good_eval["step"] != step:
            self._restore(self.good)

    def _dropped(self, retain_accuracy: float | None) -> bool:
        before = self.before["retain_accuracy"]
        return (
            before is not None
            and retain_accuracy is not None
            and before - retain_accuracy > self.method.max_retain_accuracy_drop
        )

    def _back_off(self) -> None:
        self.trips += 1
        self._restore(self.good)
        self.lr *= 0.5
        self.loss.retain_scale *= 2.0
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        if self.trips >= GUARD_TRIPS:
            self.stop_reason = "retain_guard"

    def _snapshot(self) -> dict[str, Any]:
        return {
            "params": [p.detach().clone() for p in self.params],
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for p, saved in zip(self.params, state["params"], strict=True):
                p.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])


def unlearn(
    model: Any,
    tokenizer: Any,
    forget: list[PromptItem],
    retain: list[PromptItem],
    method: MethodConfig,
    progress: Progress = silent,
    pretrained: Any | None = None,
) -> UnlearnResult:
    """Train one LoRA adapter that makes ``model`` forget ``forget`` and keep ``retain``.

    ``model`` is wrapped in place (peft injects the LoRA layers into it); the returned
    result's ``model`` is the peft model with the adapter active, ready for
    :func:`save_adapter` or ``merge_and_unload``. ``pretrained`` is the registered
    pretrained base (same tokenizer), needed by ``distill`` and ``reset_strength``.
    """
    if not forget:
        raise BadInput("unlearn: the forget set is empty")
    if pretrained is None and (method.objective in NEEDS_PRETRAINED or method.reset_strength):
        raise BadInput(
            f"the method (objective {method.objective}, reset_strength {method.reset_strength}) "
            "needs the pretrained base the model was fine-tuned from: register it with "
            "`forgetctl init --base`"
        )
    cost = _Cost()
    torch.manual_seed(method.seed)
    rng = random.Random(method.seed)
    model.eval()  # no dropout anywhere: a step depends only on the batch and the seed

    probe = _probe(tokenizer, forget, retain, method, cost)
    before = probe(model)  # the parent's accuracies
    target, pretrained_accuracy = method.target_accuracy, None
    if pretrained is not None:
        # Forgotten means: predicted no better than by a model that never saw the data.
        with cost.timed("eval_s"):
            pretrained_accuracy = probe.forget_accuracy(pretrained)
        target = max(target, pretrained_accuracy + method.target_margin)
    with cost.timed("rank_s"):
        ranking = rank_layers(model, tokenizer, forget, retain, seed=method.seed)
        layers = select_layers(ranking, method.top_k_layers)
    with cost.timed("reference_s"):
        reference = _reference_logprobs(model, tokenizer, forget, method.batch_size)

    peft_model = lora_model(model, layers, method.lora_rank, method.lora_alpha)
    peft_model.eval()
    reset_captured = None
    if method.reset_strength:
        reset_captured = reset_toward(peft_model, pretrained, method.reset_strength)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=method.learning_rate, weight_decay=0.0)
    forget_batches = _Batches(len(forget), method.batch_size, random.Random(rng.random()))
    retain_batches = _Batches(max(1, len(retain)), method.batch_size, random.Random(rng.random()))
    loss = _UnlearnLoss(
        peft_model, tokenizer, forget, retain, retain_batches, reference, method, params,
        optimizer, pretrained,
    )  # fmt: skip
    guard = _RetainGuard(peft_model, probe, before, method, params, optimizer, loss, target)
    if method.reset_strength:
        guard.start_moved()
    history: list[dict[str, float]] = []

    def report(step: int, losses: Figures) -> None:
        history.append({"step": step, **losses})
        progress("unlearning", step, method.max_steps, **{**losses, **guard.latest})

    # A parent already at the target is not trained at all.
    budget = 0 if guard.stop_reason == "target_accuracy" else method.max_steps
    with cost.timed("train_s"):
        steps = train_loop(
            params,
            optimizer,
            (forget_batches.next() for _ in range(budget)),
            loss,
            [guard, report],
        )
    guard.finish(steps)
    peft_model.eval()
    for p in peft_model.parameters():
        p.requires_grad_(False)
    stats = _stats(method, steps, guard, cost, history, ranking, layers, params, forget, retain)
    stats |= {"target_forget_accuracy": target, "reset_captured": reset_captured,
              "pretrained_forget_accuracy": pretrained_accuracy}  # fmt: skip
    return UnlearnResult(model=peft_model, stats=stats)


def _stats(
    method: MethodConfig,
    steps: int,
    guard: _RetainGuard,
    cost: _Cost,
    history: list[dict[str, float]],
    ranking: list[tuple[int, float]],
    layers: list[int],
    params: list[torch.nn.Parameter],
    forget: list[PromptItem],
    retain: list[PromptItem],
) -> dict[str, Any]:
    """The JSON-serialisable figures of a run (what the ledger keeps as the metrics)."""
    return {
        "steps": steps,
        "final_state_step": guard.good_eval["step"],
        "stop_reason": guard.stop_reason,
        **cost.figures(),
        "layers": layers,
        "layer_ranking": [[layer, round(score, 6)] for layer, score in ranking],
        "trainable_params": sum(p.numel() for p in params),
        "forget_items": len(forget),
        "retain_items": len(retain),
        # The accuracies below are over these evaluation samples (all items when small).
        "forget_eval_items": len(guard.probe.forget),
        "retain_eval_items": len(guard.probe.retain),
        "forget_accuracy_before": guard.before["forget_accuracy"],
        "forget_accuracy_after": guard.good_eval["forget_accuracy"],
        "retain_accuracy_before": guard.before["retain_accuracy"],
        "retain_accuracy_after": guard.good_eval["retain_accuracy"],
        "guard_trips": guard.trips,
        "repaired_at_step": guard.repaired_at,
        "final_learning_rate": guard.lr,
        "evals": guard.evals,
        "losses": history,
        "method": method.model_dump(),
    }


def save_adapter(peft_model: Any, dest_dir: str | Path) -> str:
    """Write the LoRA adapter to ``dest_dir`` atomically; return its sha256 (over the
    adapter files, canonical order: :func:`forgetctl.core.hashing.sha256_tree`).

    The files are written to a temporary sibling, fsynced and renamed; on any failure
    nothing is left at ``dest_dir``. ``dest_dir`` must not exist.
    """
    dest = Path(dest_dir)
    with atomic_dir(dest) as tmp:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        digest = sha256_tree(tmp)
    return digest
