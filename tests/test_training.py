"""The training core in-process: learning, schedules, optimisers, early stopping, resume and the run's files."""
from __future__ import annotations

import math

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY_ARGS, write_tu_dataset
from mempool_cli.artifacts import read_csv, read_json
from mempool_cli.config import ModelSpec, OptimSpec, TrainSpec
from mempool_cli.engine import train_epoch
from mempool_cli.errors import ConfigError
from mempool_cli.evaluation import classification_report
from mempool_cli.loop import EarlyStopping, TrainState, fit
from mempool_cli.model import build_model
from mempool_cli.protocols import train
from test_core import _tiny_batch, spec_of


def _state(optim: OptimSpec = OptimSpec(), epochs: int = 10) -> TrainState:
    torch.manual_seed(0)
    model = build_model(ModelSpec(hidden=8, layers=1, dropout=0.0, clusters=(3, 1), memory_hidden=8, heads=(2, 1),
                                  tau=(1.0, 1.0)), num_features=3, num_classes=2)
    return TrainState.create(model, optim, epochs, seed=0)


def test_a_learnable_dataset_is_learned(tmp_path, monkeypatch):
    """Cycles against paths, with a noisy attribute that tells the class: far above chance (0.5)."""
    monkeypatch.setenv("MEMPOOL_DATA_SOURCE", str(write_tu_dataset(tmp_path / "src", "LEARN", num_graphs=160)))
    monkeypatch.setenv("MEMPOOL_DATA_ROOT", str(tmp_path / "cache"))
    spec = spec_of(TINY_ARGS + ["dataset.name=LEARN", "train.epochs=30", "train.batch_size=16", "optim.lr=0.01",
                                "protocol.val_fraction=0.2", "protocol.test_fraction=0.2"])
    metrics = train(spec, tmp_path / "run")
    assert metrics["train_acc"] >= 0.9 and metrics["val_acc"] >= 0.85 and metrics["test_acc"] >= 0.85, metrics


def test_run_files_history_equals_tensorboard_and_config_is_the_resolved_one(tmp_path, data_env):
    spec = spec_of(TINY_ARGS + ["train.epochs=3"])
    train(spec, tmp_path / "run")
    rows = read_csv(tmp_path / "run" / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    for tag in ("train/loss", "train/kl", "train/keys_used", "val/acc", "val/loss", "lr"):
        assert [e.value for e in events.Scalars(tag)] == pytest.approx([float(r[tag]) for r in rows], rel=1e-6)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == spec.config
    assert not list((tmp_path / "run").glob(".*.tmp"))


@pytest.mark.parametrize("override", ["train.kl_schedule=joint", "optim.scheduler=cosine", "optim.scheduler=none",
                                      "optim=adamw"])
def test_schedules_and_optimisers_train(override, tmp_path, data_env):
    spec = spec_of(TINY_ARGS + ["train.epochs=4", "optim.min_lr=0.0", override])
    metrics = train(spec, tmp_path / "run")
    assert metrics["epochs_run"] == 4 and math.isfinite(metrics["val_loss"])
    lrs = [float(r["lr"]) for r in read_csv(tmp_path / "run" / "history.csv")]
    if override == "optim.scheduler=cosine":  # CosineAnnealingLR over train.epochs, logged before each step
        assert lrs == pytest.approx([1e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    elif override == "optim.scheduler=none":
        assert lrs == [1e-3] * 4


def test_adamw_and_joint_schedule_do_what_they_say():
    state = _state(OptimSpec(name="adamw", weight_decay=0.1))
    assert type(state.optimizer) is torch.optim.AdamW and state.optimizer.defaults["weight_decay"] == 0.1
    model, data = state.model, _tiny_batch()
    logits, kls = model(data.x, data.edge_index, data.batch, data.num_graphs)
    loss = torch.nn.functional.cross_entropy(logits, data.y) + kls.sum()
    expected = torch.autograd.grad(loss, model.memory_keys()[0])[0]
    captured = {}

    class Capture(torch.optim.SGD):
        def step(self, closure=None):
            captured["key"] = model.memory_keys()[0].grad.clone()

    train_epoch(model, [data], Capture(model.parameters(), lr=0.0), torch.device("cpu"), "joint", 1.0)
    assert torch.allclose(captured["key"], expected, atol=1e-6)  # joint: the keys learn from CE + KL


def test_best_epoch_tie_break_and_early_stopping():
    state, stopper = _state(), EarlyStopping(patience=2)
    results = [(0.5, 1.0), (0.7, 0.9), (0.7, 0.8), (0.7, 0.85), (0.6, 0.5), (0.6, 0.4)]
    best_epochs = []
    for epoch, (acc, loss) in enumerate(results, start=1):
        state.epoch = epoch
        state.record({"acc": acc, "loss": loss})
        stopper.on_epoch_end(state, {})
        best_epochs.append(state.best["epoch"])
        if state.stopped:
            break
    # a tie in accuracy with a lower loss is better (epoch 3); a tie with a higher loss is not (epoch 4)
    assert best_epochs == [1, 2, 3, 3, 3] and state.stopped and state.epoch == 5


def test_a_resumed_run_that_had_stopped_finishes_instead_of_training_on(tmp_path):
    state = _state()
    state.epoch, state.best = 7, {"epoch": 2, "val_acc": 0.9, "val_loss": 0.1}
    fit(state, [], [], TrainSpec(epochs=20, patience=5), torch.device("cpu"), [EarlyStopping(5)])
    assert state.stopped and state.epoch == 7  # no epoch trained
    state.stopped = False
    EarlyStopping(10).on_fit_start(state)
    assert not state.stopped  # a larger patience goes on


def test_confusion_matrix_and_per_class_values():
    pred, target = torch.tensor([0, 1, 1, 2, 2, 2, 0]), torch.tensor([0, 1, 2, 2, 2, 0, 0])
    report = classification_report(pred, target, ["a", "b", "c"])
    assert report["confusion_matrix"] == [[2, 0, 1], [0, 1, 0], [0, 1, 2]]
    precision = [r["precision"] for r in report["per_class"]]
    recall = [r["recall"] for r in report["per_class"]]
    assert precision == pytest.approx([1.0, 0.5, 2 / 3]) and recall == pytest.approx([2 / 3, 1.0, 2 / 3])
    assert [r["support"] for r in report["per_class"]] == [3, 1, 3]
    assert [r["class"] for r in report["per_class"]] == ["a", "b", "c"]


def test_resume_records_what_was_trained_and_equals_an_uninterrupted_run(tmp_path, data_env):
    args = TINY_ARGS + ["model.memory.reseed=0.3"]  # 4 keys: some key has less than 30% every epoch, reseeded
    first = tmp_path / "first"
    train(spec_of(args + ["train.epochs=3"]), first)
    resumed = tmp_path / "resumed"
    metrics = train(spec_of(args + ["train.epochs=5", f"train.resume={first / 'last.pt'}"]), resumed)
    straight = train(spec_of(args + ["train.epochs=5"]), tmp_path / "straight")
    for key in ("best_epoch", "epochs_run", "train_acc", "val_acc", "test_acc", "val_loss"):
        assert metrics[key] == straight[key], key
    assert read_json(resumed / "split.json") == read_json(first / "split.json")
    config = yaml.safe_load((resumed / "config.yaml").read_text())
    assert config["train"]["epochs"] == 5 and config["seed"] == 0
    assert [int(r["epoch"]) for r in read_csv(resumed / "history.csv")] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("override, keys", [("seed=5", "seed"), ("dataset.name=OTHER", "dataset.name"),
                                            ("protocol.split_file=elsewhere.json", "protocol.split_file")])
def test_resume_with_other_settings_is_refused_before_any_folder(override, keys, tmp_path, data_env):
    train(spec_of(TINY_ARGS + ["train.epochs=2"]), tmp_path / "first")
    spec = spec_of(TINY_ARGS + ["train.epochs=4", f"train.resume={tmp_path / 'first' / 'last.pt'}", override])
    with pytest.raises(ConfigError, match=keys):
        train(spec, tmp_path / "second")
    assert not (tmp_path / "second").exists()


def test_piped_progress_shows_the_last_epoch_and_the_early_stop(tmp_path, data_env):
    import io

    from rich.console import Console

    from mempool_cli.progress import progress_factory

    out = io.StringIO()
    spec = spec_of(TINY_ARGS + ["train.epochs=500", "train.patience=2", "optim.lr=0.0001"])
    metrics = train(spec, tmp_path / "run", progress_factory(Console(file=out, width=200), True))
    lines = out.getvalue().splitlines()
    stopped = metrics["epochs_run"]
    assert stopped < 500 and lines[-1].startswith(f"early stop at epoch {stopped}:")
    assert lines[-2].startswith(f"epoch {stopped:4d}") and lines[0].startswith("epoch    1")


def test_the_live_display_fits_80_columns(tmp_path, data_env):
    import io
    import re

    from rich.console import Console

    from mempool_cli.progress import progress_factory

    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    train(spec_of(TINY_ARGS + ["train.epochs=3", "protocol=kfold", "protocol.folds=2"]), tmp_path / "run",
          progress_factory(console, True))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue()).replace("\r", "\n")
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    assert lines and max(len(line) for line in lines) <= 80
    assert any("fold 2/2 epochs" in line and "3/3" in line for line in lines)
    assert any(line.startswith("loss ") and "| best " in line for line in lines)


def test_eval_omits_a_recorded_accuracy_it_does_not_have_and_one_fold_shows_no_spread(tmp_path, data_env):
    from rich.console import Console

    from mempool_cli.evaluation import evaluate_checkpoint
    from mempool_cli.report import mean_std_table

    train(spec_of(TINY_ARGS + ["train.epochs=2"]), tmp_path / "run")
    assert "recorded_accuracy" not in evaluate_checkpoint(tmp_path / "run" / "last.pt")
    assert "recorded_accuracy" in evaluate_checkpoint(tmp_path / "run" / "checkpoint.pt")
    one = {"val_acc": 0.5, "val_acc_std": 0.0, "test_acc": 0.4, "test_acc_std": 0.0, "train_acc": 0.9,
           "train_acc_std": 0.0, "folds": 1}
    console = Console(record=True, width=100)
    console.print(mean_std_table(one, "t"))
    assert "0.4000 (1 fold)" in console.export_text() and "+-" not in console.export_text().split("\n", 3)[-1]


def test_settings_added_since_a_run_count_as_their_defaults():
    from mempool_cli.config import changed_settings

    new = spec_of(TINY_ARGS).config
    old = {**new, "model": {k: v for k, v in new["model"].items() if k != "readout"}}
    assert changed_settings(old, new) == []
    assert changed_settings(old, {**new, "model": {**new["model"], "readout": "sum"}}) == ["model.readout"]
