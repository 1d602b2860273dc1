"""One training run: seeds, data, split, early stopping, checkpoints, TensorBoard and ``metrics.json``."""
from __future__ import annotations

import copy
import json
import logging
import math
import random
import statistics
import time
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from mempool_cli.checkpoint import load_checkpoint, save_checkpoint
from mempool_cli.config import validate
from mempool_cli.data import (
    GraphSet,
    featurize,
    fit_feature_stats,
    holdout_split,
    kfold_splits,
    load_tudataset,
    make_loader,
    read_split_file,
    split_metadata,
    write_json_atomic,
)
from mempool_cli.engine import evaluate, train_epoch
from mempool_cli.errors import CheckpointError, ConfigError
from mempool_cli.model import build_model

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """What the training loop tells whoever shows progress (the CLI's rich display, or nothing)."""

    def start(self, title: str, epochs: int, batches: int, first_epoch: int) -> None: ...
    def batch(self, step: int, loss: float) -> None: ...
    def epoch(self, epoch: int, stats: dict[str, float]) -> None: ...
    def finish(self) -> None: ...


class SilentReporter:
    """A reporter that shows nothing."""

    def start(self, title: str, epochs: int, batches: int, first_epoch: int) -> None:
        pass

    def batch(self, step: int, loss: float) -> None:
        pass

    def epoch(self, epoch: int, stats: dict[str, float]) -> None:
        pass

    def finish(self) -> None:
        pass


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when it is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for, but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's and PyTorch's generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def model_args(cfg: DictConfig, num_features: int, num_classes: int) -> dict[str, Any]:
    """The model's constructor arguments from the config, per-layer lists spelled out."""
    model, memory = cfg.model, cfg.model.memory
    num_layers = len(memory.clusters)
    return {
        "num_features": num_features,
        "num_classes": num_classes,
        "encoder": model.encoder,
        "hidden": model.hidden,
        "layers": model.layers,
        "dropout": model.dropout,
        "norm": model.norm,
        "clusters": list(memory.clusters),
        "memory_hidden": memory.hidden,
        "heads": list(memory.heads_per_layer or [memory.heads] * num_layers),
        "tau": [float(t) for t in (memory.tau_per_layer or [memory.tau] * num_layers)],
        "memory_impl": memory.impl,
    }


def dataset_recipe(cfg: DictConfig) -> dict[str, Any]:
    """The feature recipe of the dataset config, as plain values."""
    keys = ("name", "node_attributes", "node_labels", "degree", "max_degree")
    return {key: cfg.dataset[key] for key in keys}


def load_raw(cfg: DictConfig):
    """The dataset named by the config, with its label vector."""
    ds = cfg.dataset
    dataset = load_tudataset(ds.name, ds.root, ds.source, ds.url)
    return dataset, torch.cat([g.y.view(-1) for g in dataset])


def _flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The settings that shape a run's results, as dotted keys (paths, threads, device and display left out)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            flat[prefix[:-1]] = node if isinstance(node, (int, float, str, bool)) else str(node)

    container = OmegaConf.to_container(cfg, resolve=True)
    for key in ("dataset", "model", "optim", "train", "protocol"):
        walk(f"{key}.", container[key])
    flat["seed"] = container["seed"]
    for key in ("dataset.root", "dataset.source", "dataset.url", "train.resume", "train.progress"):
        flat.pop(key, None)
    return flat


def _optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    kind = torch.optim.Adam if cfg.optim.name == "adam" else torch.optim.AdamW
    return kind(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)


def _scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer):
    if cfg.optim.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.optim.factor, patience=cfg.optim.scheduler_patience,
            min_lr=cfg.optim.min_lr,
        )
    if cfg.optim.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs, eta_min=cfg.optim.min_lr)
    return None


def _better(val: dict, best: dict) -> bool:
    return val["acc"] > best["val_acc"] or (val["acc"] == best["val_acc"] and val["loss"] < best["val_loss"])


def train_split(
    cfg: DictConfig,
    run_dir: Path,
    raw_dataset,
    split: dict[str, list[int]],
    split_meta: dict[str, Any],
    reporter: Optional[Reporter] = None,
    title: str = "",
) -> dict[str, Any]:
    """Train one model on one train/val/test split; writes checkpoints, TensorBoard events and metrics.json."""
    reporter = reporter or SilentReporter()
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    recipe = dataset_recipe(cfg)
    resume = load_checkpoint(cfg.train.resume) if cfg.train.resume else None
    if resume is not None:
        if "optimizer_state" not in resume:
            raise CheckpointError(f"{cfg.train.resume} cannot be resumed: pass a last.pt, not a best checkpoint")
        split, stats = resume["split"], resume["dataset"]["feature_stats"]
    else:
        stats = fit_feature_stats(raw_dataset, recipe, split["train"])
    graphs: GraphSet = featurize(raw_dataset, recipe, stats)

    seed_everything(cfg.seed)
    args = model_args(cfg, graphs.num_features, graphs.num_classes)
    model = build_model(**args).to(device)
    optimizer = _optimizer(cfg, model)
    scheduler = _scheduler(cfg, optimizer)
    train_loader = make_loader(graphs.graphs, split["train"], cfg.train.batch_size, shuffle=True, seed=cfg.seed)
    val_loader = make_loader(graphs.graphs, split["val"], cfg.train.batch_size, shuffle=False)

    best = {"epoch": 0, "val_acc": -1.0, "val_loss": math.inf}
    best_state = copy.deepcopy(model.state_dict())
    first_epoch, elapsed = 1, 0.0
    if resume is not None:
        if resume["model_args"] != args:
            raise ConfigError(f"train.resume: {cfg.train.resume} was trained with another model config")
        model.load_state_dict(resume["model_state"])
        optimizer.load_state_dict(resume["optimizer_state"])
        if scheduler is not None and resume.get("scheduler_state"):
            scheduler.load_state_dict(resume["scheduler_state"])
        torch.set_rng_state(resume["rng_state"])
        train_loader.generator.set_state(resume["loader_rng_state"])
        best, best_state = resume["best"], resume["best_model_state"]
        first_epoch, elapsed = resume["epoch"] + 1, resume["train_time_s"]

    config = OmegaConf.to_container(cfg, resolve=True)
    dataset_info = {**recipe, "num_graphs": len(graphs), "num_classes": graphs.num_classes,
                    "num_features": graphs.num_features, "feature_stats": stats,
                    "labels_hash": split_meta["labels_hash"]}
    base = {"model_args": args, "config": config, "dataset": dataset_info, "split": split, "split_meta": split_meta}

    writer = SummaryWriter(str(run_dir / "tensorboard"))
    reporter.start(title, cfg.train.epochs, len(train_loader), first_epoch)
    epoch = first_epoch - 1
    started = time.perf_counter() - elapsed
    try:
        for epoch in range(first_epoch, cfg.train.epochs + 1):
            train_stats = train_epoch(model, train_loader, optimizer, device, cfg.train.kl_schedule,
                                      cfg.train.kl_weight, on_batch=reporter.batch)
            val = evaluate(model, val_loader, device, cfg.train.kl_weight)
            lr = optimizer.param_groups[0]["lr"]
            for key in ("loss", "ce", "kl", "acc"):
                writer.add_scalar(f"train/{key}", train_stats[key], epoch)
            writer.add_scalar("val/loss", val["loss"], epoch)
            writer.add_scalar("val/acc", val["acc"], epoch)
            writer.add_scalar("lr", lr, epoch)
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val["loss"])
            elif scheduler is not None:
                scheduler.step()
            if _better(val, best):
                best = {"epoch": epoch, "val_acc": val["acc"], "val_loss": val["loss"]}
                best_state = copy.deepcopy(model.state_dict())
                save_checkpoint(run_dir / "checkpoint.pt", {**base, "model_state": best_state, "epoch": epoch,
                                                             "metrics": dict(best)})
            save_checkpoint(run_dir / "last.pt", {
                **base, "model_state": model.state_dict(), "epoch": epoch, "metrics": dict(best),
                "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
                "rng_state": torch.get_rng_state(), "loader_rng_state": train_loader.generator.get_state(),
                "best": best, "best_model_state": best_state, "train_time_s": time.perf_counter() - started,
            })
            reporter.epoch(epoch, {"loss": train_stats["loss"], "train_acc": train_stats["acc"],
                                   "val_loss": val["loss"], "val_acc": val["acc"], "lr": lr,
                                   "best_val_acc": best["val_acc"], "best_epoch": best["epoch"]})
            if epoch - best["epoch"] >= cfg.train.patience:
                log.info("early stop at epoch %d: no better validation accuracy for %d epochs",
                         epoch, cfg.train.patience)
                break
    finally:
        reporter.finish()
    train_time = time.perf_counter() - started

    model.load_state_dict(best_state)
    test_loader = make_loader(graphs.graphs, split["test"], cfg.train.batch_size, shuffle=False)
    results = {name: evaluate(model, loader, device, cfg.train.kl_weight) for name, loader in
               (("train", make_loader(graphs.graphs, split["train"], cfg.train.batch_size, shuffle=False)),
                ("val", val_loader), ("test", test_loader))}
    metrics = {
        "dataset": recipe["name"],
        "best_epoch": best["epoch"],
        "epochs_run": epoch,
        **{f"{name}_acc": r["acc"] for name, r in results.items()},
        **{f"{name}_loss": r["loss"] for name, r in results.items()},
        "num_params": sum(p.numel() for p in model.parameters()),
        "train_time_s": round(train_time, 3),
        "device": device.type,
        "seed": cfg.seed,
    }
    writer.add_scalar("test/acc", metrics["test_acc"], best["epoch"])
    writer.add_hparams(_flat_hparams(cfg), {"hparam/val_acc": metrics["val_acc"], "hparam/test_acc": metrics["test_acc"]},
                       run_name=".")
    writer.close()
    save_checkpoint(run_dir / "checkpoint.pt", {**base, "model_state": best_state, "epoch": best["epoch"],
                                                 "metrics": metrics})
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


def _holdout(cfg: DictConfig, labels: torch.Tensor, run_dir: Path) -> tuple[dict, dict]:
    """The run's split: reused from ``protocol.split_file`` when that file exists, else drawn and saved."""
    name = cfg.dataset.name
    target = Path(cfg.protocol.split_file) if cfg.protocol.split_file else None
    if target is not None and target.exists():
        payload = read_split_file(target, name, labels)
    else:
        split = holdout_split(labels, cfg.protocol.val_fraction, cfg.protocol.test_fraction, cfg.seed)
        payload = {"meta": split_metadata(name, labels, cfg.seed, protocol="holdout"), "split": split}
        if target is not None:
            write_json_atomic(target, payload)
    write_json_atomic(run_dir / "split.json", payload)
    return payload["split"], payload["meta"]


def _folds(cfg: DictConfig, labels: torch.Tensor, run_dir: Path) -> tuple[list[dict], dict]:
    """Fold assignments, written once (``protocol.split_file`` or ``folds.json``) and reused after."""
    name, k = cfg.dataset.name, cfg.protocol.folds
    target = Path(cfg.protocol.split_file) if cfg.protocol.split_file else run_dir / "folds.json"
    if target.exists():
        payload = read_split_file(target, name, labels)
        if payload["meta"].get("folds") != k or len(payload.get("folds", [])) != k:
            raise ConfigError(f"protocol.folds: {target} holds {payload['meta'].get('folds')} folds, not {k}")
    else:
        folds = kfold_splits(labels, k, cfg.protocol.val_fraction, cfg.seed)
        meta = split_metadata(name, labels, cfg.seed, protocol="kfold", folds=k,
                              val_fraction=cfg.protocol.val_fraction)
        payload = {"meta": meta, "folds": folds}
        write_json_atomic(target, payload)
    return payload["folds"], payload["meta"]


def _check_kfold_rerun(cfg: DictConfig, run_dir: Path) -> None:
    """A k-fold rerun keeps the folds already finished, so it must have the settings they were trained with."""
    previous = run_dir / "config.yaml"
    if not previous.exists():
        return
    old, new = _flat_hparams(OmegaConf.load(previous)), _flat_hparams(cfg)
    changed = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    if changed:
        raise ConfigError(f"{run_dir} holds a k-fold run with other settings ({', '.join(changed)}); "
                          "rerun it with the same ones, or use a new directory")


def summarize_folds(fold_metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Each accuracy's mean over the folds (under its own name, e.g. ``test_acc``) and its sample standard
    deviation (``test_acc_std``), so that sweeps sort k-fold jobs like holdout ones."""
    summary: dict[str, Any] = {"folds": len(fold_metrics)}
    for key in ("val_acc", "test_acc", "train_acc"):
        values = [m[key] for m in fold_metrics]
        summary[key] = statistics.fmean(values)
        summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    summary["train_time_s"] = sum(m["train_time_s"] for m in fold_metrics)
    return summary


def train(cfg: DictConfig, run_dir: str | Path, reporter: Optional[Reporter] = None) -> dict[str, Any]:
    """Validate the config and run its protocol in ``run_dir``; returns the run's metrics."""
    validate(cfg)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    if cfg.protocol.name == "kfold":
        _check_kfold_rerun(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    raw_dataset, labels = load_raw(cfg)
    if cfg.protocol.name == "holdout":
        split, meta = _holdout(cfg, labels, run_dir)
        return train_split(cfg, run_dir, raw_dataset, split, meta, reporter)

    if cfg.train.resume:
        raise ConfigError("train.resume: k-fold runs resume by running again in the same run directory")
    folds, meta = _folds(cfg, labels, run_dir)
    fold_metrics = []
    for i, split in enumerate(folds):
        fold_dir = run_dir / f"fold_{i}"
        done = fold_dir / "metrics.json"
        if done.exists():
            log.info("fold %d already finished, skipped", i)
            fold_metrics.append({"fold": i, **json.loads(done.read_text())})
            continue
        fold_cfg = cfg
        if (fold_dir / "last.pt").exists():  # interrupted: continue where it stopped
            log.info("fold %d resumes from %s", i, fold_dir / "last.pt")
            fold_cfg = copy.deepcopy(cfg)
            fold_cfg.train.resume = str(fold_dir / "last.pt")
        metrics = train_split(fold_cfg, fold_dir, raw_dataset, split, {**meta, "fold": i}, reporter,
                              title=f"fold {i + 1}/{len(folds)}")
        fold_metrics.append({"fold": i, **metrics})
    summary = {"dataset": cfg.dataset.name, "protocol": "kfold", **summarize_folds(fold_metrics),
               "per_fold": fold_metrics}
    write_json_atomic(run_dir / "summary.json", summary)
    metrics = {key: value for key, value in summary.items() if key != "per_fold"}
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics
