"""The training loop: one training state that saves and restores as one thing, a short ``fit``, and callbacks.

Checkpoints, TensorBoard, the history file and the progress display observe the loop as callbacks
(:mod:`mempool_cli.callbacks`, :mod:`mempool_cli.progress`); early stopping is one too. Resuming a run is
restoring its state: the loop then goes on exactly as it would have.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from mempool_cli.config import OptimSpec, TrainSpec, registry
from mempool_cli import config
from mempool_cli.data.batching import GraphLoader
from mempool_cli.engine import evaluate, train_epoch

log = logging.getLogger(__name__)

FUSED_DEVICES = ("cpu", "cuda")  # where torch has a fused Adam/AdamW step
OPTIMIZERS = registry(config.OPTIMIZERS, adam=torch.optim.Adam, adamw=torch.optim.AdamW)
SCHEDULERS = registry(
    config.SCHEDULERS,
    none=lambda optimizer, spec, epochs: None,
    plateau=lambda optimizer, spec, epochs: torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=spec.factor, patience=spec.scheduler_patience, min_lr=spec.min_lr),
    cosine=lambda optimizer, spec, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs, eta_min=spec.min_lr),
)


def no_best() -> dict[str, Any]:
    return {"epoch": 0, "val_acc": -1.0, "val_loss": math.inf}


@dataclass
class TrainState:
    """Everything that changes while a model trains. ``best`` holds the best validation epoch (its accuracy,
    loss ties broken by the lower loss) and ``best_model_state`` its weights."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[Any]
    generator: torch.Generator  # the training loader's shuffling
    epoch: int = 0
    best: dict[str, Any] = field(default_factory=no_best)
    best_model_state: dict[str, Any] = field(default_factory=dict)
    train_time_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)  # every epoch's scalars
    stopped: bool = False

    @classmethod
    def create(cls, model: torch.nn.Module, optim: OptimSpec, epochs: int, seed: int) -> "TrainState":
        """A fresh state: the optimiser and scheduler of ``optim``, shuffling seeded with ``seed``."""
        keys = {id(key) for key in model.memory_keys()}
        groups = [{"params": [p for p in model.parameters() if id(p) not in keys]},
                  {"params": model.memory_keys(), "lr": optim.memory_lr or optim.lr}]
        fused = next(model.parameters()).device.type in FUSED_DEVICES  # one fused step for all parameters
        optimizer = OPTIMIZERS[optim.name](groups, lr=optim.lr, weight_decay=optim.weight_decay, fused=fused)
        scheduler = SCHEDULERS[optim.scheduler](optimizer, optim, epochs)
        state = cls(model, optimizer, scheduler, torch.Generator().manual_seed(seed))
        state.best_model_state = copy.deepcopy(model.state_dict())
        return state

    def record(self, val: dict[str, Any]) -> bool:
        """Take the epoch's validation result; returns whether it is the new best."""
        better = val["acc"] > self.best["val_acc"] or (
            val["acc"] == self.best["val_acc"] and val["loss"] < self.best["val_loss"])
        if better:
            self.best = {"epoch": self.epoch, "val_acc": val["acc"], "val_loss": val["loss"]}
            self.best_model_state = copy.deepcopy(self.model.state_dict())
        return better

    def state_dict(self) -> dict[str, Any]:
        """The state as tensors and plain values (what ``last.pt`` holds besides the run's description)."""
        return {
            "model_state": self.model.state_dict(), "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng_state": torch.get_rng_state(), "loader_rng_state": self.generator.get_state(),
            "epoch": self.epoch, "best": dict(self.best), "best_model_state": self.best_model_state,
            "train_time_s": self.train_time_s, "history": list(self.history),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (a ``last.pt``)."""
        self.model.load_state_dict(saved["model_state"])
        self.optimizer.load_state_dict(saved["optimizer_state"])
        if self.scheduler is not None and saved.get("scheduler_state"):
            self.scheduler.load_state_dict(saved["scheduler_state"])
        torch.set_rng_state(saved["rng_state"])
        self.generator.set_state(saved["loader_rng_state"])
        self.epoch, self.best = saved["epoch"], dict(saved["best"])
        self.best_model_state, self.train_time_s = saved["best_model_state"], saved["train_time_s"]
        self.history = list(saved.get("history", []))


class Callback:
    """Observes the loop; every hook does nothing unless overridden."""

    def on_fit_start(self, state: TrainState) -> None: ...

    def on_batch(self, step: int, loss: float) -> None: ...

    def on_epoch_end(self, state: TrainState, stats: dict[str, float]) -> None: ...

    def on_fit_end(self, state: TrainState) -> None: ...

    def on_results(self, state: TrainState, metrics: dict[str, Any]) -> None: ...


class EarlyStopping(Callback):
    """Stop once ``patience`` epochs have passed without a better validation result. Checked at the start too,
    so a resumed run that had already stopped finishes instead of training on (a larger patience goes on)."""

    def __init__(self, patience: int):
        self.patience = patience

    def _check(self, state: TrainState) -> None:
        if state.epoch and state.epoch - state.best["epoch"] >= self.patience and not state.stopped:
            state.stopped = True
            log.info("early stop at epoch %d: %d epochs without a better validation result",
                     state.epoch, self.patience)

    def on_fit_start(self, state: TrainState) -> None:
        self._check(state)

    def on_epoch_end(self, state: TrainState, stats: dict[str, float]) -> None:
        self._check(state)


def _step_scheduler(scheduler: Optional[Any], val_loss: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    elif scheduler is not None:
        scheduler.step()


def reseed_starved_keys(state: TrainState, counts: torch.Tensor, train_loader: GraphLoader,
                        device: torch.device) -> None:
    """Move the memory keys that too few training nodes picked this epoch onto nodes of a random batch of
    training graphs (drawn, like the shuffling, from the state's generator, so a resumed run does the same)."""
    starved = state.model.starved_keys(counts)
    if starved:
        ids = torch.randperm(train_loader.num_graphs, generator=state.generator)[:train_loader.batch_size]
        sample = train_loader.gather(ids).to(device)
        state.model.reseed_keys(starved, sample.x, sample.edge_index, sample.edge_attr, state.generator)
        log.debug("epoch %d: keys %s reseeded", state.epoch, starved)


def run_epoch(state: TrainState, train_loader: GraphLoader, val_loader: GraphLoader, spec: TrainSpec,
              device: torch.device, callbacks: Sequence[Callback]) -> dict[str, float]:
    """Train one epoch, validate, step the scheduler, reseed starved keys; returns the epoch's scalars, named as
    in TensorBoard."""
    def on_batch(step: int, loss: float) -> None:
        for callback in callbacks:
            callback.on_batch(step, loss)

    train = train_epoch(state.model, train_loader, state.optimizer, device, spec.kl_schedule, spec.kl_weight,
                        on_batch=on_batch)
    val = evaluate(state.model, val_loader, device, spec.kl_weight)
    lr = state.optimizer.param_groups[0]["lr"]
    _step_scheduler(state.scheduler, val["loss"])
    state.record(val)
    reseed_starved_keys(state, train["key_counts"], train_loader, device)
    stats = {f"train/{key}": train[key] for key in ("loss", "ce", "kl", "acc")}
    stats["train/keys_used"] = int((train["key_counts"] > 0).sum())
    stats.update({f"val/{key}": val[key] for key in ("loss", "ce", "kl", "acc")})
    return {**stats, "lr": lr}


def fit(state: TrainState, train_loader: GraphLoader, val_loader: GraphLoader, spec: TrainSpec,
        device: torch.device, callbacks: Sequence[Callback]) -> TrainState:
    """Train from ``state.epoch`` to ``spec.epochs`` or an early stop, telling ``callbacks`` as it goes."""
    for callback in callbacks:
        callback.on_fit_start(state)
    started = time.perf_counter() - state.train_time_s
    try:
        while state.epoch < spec.epochs and not state.stopped:
            state.epoch += 1
            stats = run_epoch(state, train_loader, val_loader, spec, device, callbacks)
            state.train_time_s = time.perf_counter() - started
            state.history.append({"epoch": state.epoch, **stats})
            for callback in callbacks:
                callback.on_epoch_end(state, stats)
    finally:
        for callback in callbacks:
            callback.on_fit_end(state)
    return state
