"""One model trained on one split: build it, fit it with the run's callbacks, evaluate it, write its metrics."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch_geometric.data import Batch

from mempool_cli.artifacts import HISTORY, METRICS, TENSORBOARD, write_json
from mempool_cli.callbacks import Checkpointer, EpochLog, HistoryLogger, TensorBoardLogger
from mempool_cli.config import RunSpec, result_settings
from mempool_cli.data import Dataset, GraphSet, make_eval_loader, make_loader
from mempool_cli.device import pick_device, seed_everything
from mempool_cli.engine import evaluate, memory_stats
from mempool_cli.loop import Callback, EarlyStopping, TrainState, fit
from mempool_cli.model import build_model
from mempool_cli.nn import kernels

# makes the progress display of one training: (title, epochs, batches per epoch) -> callback
ProgressFactory = Callable[[str, int, int], Callback]
PARTS = ("train", "val", "test")
KEY_INIT_GRAPHS = 256  # training graphs whose node embeddings seed the memory keys (key_init=kmeans)


def _final_metrics(spec: RunSpec, name: str, state: TrainState, graphs: GraphSet,
                   split: dict[str, list[int]], device: torch.device) -> dict[str, Any]:
    """Accuracy and loss of the best-validation weights on each part of the split."""
    state.model.load_state_dict(state.best_model_state)
    loaders = {part: make_eval_loader(graphs, split[part]) for part in PARTS}
    results = {part: evaluate(state.model, loader, device, spec.train.kl_weight) for part, loader in loaders.items()}
    memory = memory_stats(state.model, loaders["test"], device)
    return {
        "dataset": name,
        "best_epoch": state.best["epoch"],
        "epochs_run": state.epoch,
        **{f"{part}_acc": result["acc"] for part, result in results.items()},
        **{f"{part}_loss": result["loss"] for part, result in results.items()},
        **{f"memory_{key}": value for key, value in memory[0].items() if key != "layer"},
        "memory": memory,
        "num_params": sum(p.numel() for p in state.model.parameters()),
        "train_time_s": round(state.train_time_s, 3),
        "device": device.type,
        "seed": spec.seed,
    }


def _hparams(spec: RunSpec, split_meta: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run's HPARAMS row; a k-fold fold's row names its fold."""
    fold = {"fold": split_meta["fold"]} if "fold" in split_meta else {}
    return {**result_settings(spec.config), **fold}


def train_split(spec: RunSpec, run_dir: Path, dataset: Dataset, split: dict[str, list[int]],
                split_meta: dict[str, Any], progress: Optional[ProgressFactory] = None, title: str = "",
                resume: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Train on ``split`` in ``run_dir`` (from a ``last.pt``'s state with ``resume``); returns the metrics."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(spec.device)
    stats = resume["dataset"]["feature_stats"] if resume else dataset.fit_features(split["train"])
    graphs = dataset.featurize(stats)
    seed_everything(spec.seed)
    model = build_model(spec.model, graphs.num_features, graphs.num_classes, graphs.num_edge_features).to(device)
    state = TrainState.create(model, spec.optim, spec.train.epochs, spec.seed)
    if resume:
        state.load_state_dict(resume)
    elif spec.model.key_init == "kmeans":
        sample = Batch.from_data_list([graphs.graphs[i] for i in split["train"][:KEY_INIT_GRAPHS]]).to(device)
        model.init_keys(sample.x, sample.edge_index, sample.edge_attr, seed=spec.seed)
    train_loader = make_loader(graphs, split["train"], spec.train.batch_size, shuffle=True, generator=state.generator)
    val_loader = make_eval_loader(graphs, split["val"])
    base = {"model_args": spec.model.model_args(graphs.num_features, graphs.num_classes, graphs.num_edge_features),
            "config": spec.config,
            "dataset": dataset.describe(graphs, stats), "split": split, "split_meta": split_meta}
    callbacks = [EarlyStopping(spec.train.patience), Checkpointer(run_dir, base),
                 TensorBoardLogger(run_dir / TENSORBOARD, _hparams(spec, split_meta)),
                 HistoryLogger(run_dir / HISTORY), EpochLog(title)]
    if progress is not None:
        callbacks.append(progress(title, spec.train.epochs, len(train_loader)))
    if device.type == "cpu" and spec.model.memory_impl == "fast":
        kernels.cpu_kernels()  # a first-use build happens here, outside the timed training
    fit(state, train_loader, val_loader, spec.train, device, callbacks)
    metrics = _final_metrics(spec, dataset.name, state, graphs, split, device)
    for callback in callbacks:
        callback.on_results(state, metrics)
    write_json(run_dir / METRICS, metrics)
    return metrics
