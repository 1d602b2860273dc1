"""The callbacks that leave a run's files: checkpoints, TensorBoard events and the per-epoch history."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from mempool_cli.artifacts import CHECKPOINT, LAST, csv_text, save_checkpoint, write_atomic
from mempool_cli.loop import Callback, TrainState

log = logging.getLogger(__name__)


class Checkpointer(Callback):
    """``checkpoint.pt``: the best-validation model, rewritten when the best improves and with the final metrics;
    ``last.pt``: the latest epoch with the whole training state, every epoch. ``base`` describes the run
    (model args, config, dataset, split) and goes into both."""

    def __init__(self, run_dir: Path, base: dict[str, Any]):
        self.run_dir, self.base = Path(run_dir), base

    def _save_best(self, state: TrainState, epoch: int, metrics: dict[str, Any]) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT, {**self.base, "model_state": state.best_model_state,
                                                    "epoch": epoch, "metrics": metrics})

    def on_epoch_end(self, state: TrainState, stats: dict[str, float]) -> None:
        if state.best["epoch"] == state.epoch:
            self._save_best(state, state.epoch, dict(state.best))
        save_checkpoint(self.run_dir / LAST, {**self.base, **state.state_dict(), "metrics": dict(state.best)})

    def on_results(self, state: TrainState, metrics: dict[str, Any]) -> None:
        self._save_best(state, state.best["epoch"], metrics)


HPARAM_METRICS = ("hparam/val_acc", "hparam/test_acc")


def write_hparams(writer: SummaryWriter, hparams: dict[str, Any]) -> None:
    """Start a row of TensorBoard's HPARAMS tab: the run's settings, its metrics filled in as scalars later."""
    experiment, start, end = hparams_summary(hparams, dict.fromkeys(HPARAM_METRICS, 0.0))
    for summary in (experiment, start, end):
        writer.file_writer.add_summary(summary)


def write_kfold_hparams(log_dir: Path, hparams: dict[str, Any], summary: dict[str, Any]) -> None:
    """One HPARAMS row for a whole k-fold run: its settings with the folds' mean accuracies."""
    with SummaryWriter(str(log_dir)) as writer:
        write_hparams(writer, {**hparams, "folds": summary["folds"]})
        writer.add_scalar("hparam/val_acc", summary["val_acc"], 0)
        writer.add_scalar("hparam/test_acc", summary["test_acc"], 0)
        writer.add_scalar("hparam/test_acc_std", summary["test_acc_std"], 0)


class TensorBoardLogger(Callback):
    """Every epoch scalar under its name; the run's settings as a row of the HPARAMS tab from the start, with the
    best validation accuracy so far after every epoch (so interrupted runs compare too) and ``test/acc`` at the
    end."""

    def __init__(self, log_dir: Path, hparams: dict[str, Any]):
        self.log_dir, self.hparams = Path(log_dir), hparams
        self.writer = None

    def on_fit_start(self, state: TrainState) -> None:
        self.writer = SummaryWriter(str(self.log_dir))
        write_hparams(self.writer, self.hparams)

    def on_epoch_end(self, state: TrainState, stats: dict[str, float]) -> None:
        for tag, value in stats.items():
            self.writer.add_scalar(tag, value, state.epoch)
        self.writer.add_scalar("hparam/val_acc", state.best["val_acc"], state.epoch)

    def on_fit_end(self, state: TrainState) -> None:
        self.writer.flush()

    def on_results(self, state: TrainState, metrics: dict[str, Any]) -> None:
        self.writer.add_scalar("test/acc", metrics["test_acc"], state.best["epoch"])
        self.writer.add_scalar("hparam/test_acc", metrics["test_acc"], state.epoch)
        self.writer.close()


class HistoryLogger(Callback):
    """``history.csv``: the state's history, one row per epoch with every scalar that goes to TensorBoard,
    rewritten atomically each epoch (a resumed run's file starts with the epochs it restored)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_epoch_end(self, state: TrainState, stats: dict[str, float]) -> None:
        write_atomic(self.path, csv_text(state.history, list(state.history[-1])))


def epoch_line(epoch: int, stats: dict[str, float], best: dict) -> str:
    """One epoch's figures on one line."""
    return (f"epoch {epoch:4d}  loss {stats['train/loss']:.4f}  train_acc {stats['train/acc']:.3f}  "
            f"val_loss {stats['val/loss']:.4f}  val_acc {stats['val/acc']:.3f}  "
            f"best {best['val_acc']:.3f}@{best['epoch']}  lr {stats['lr']:.2e}")


class EpochLog(Callback):
    """Every epoch's line and the final metrics in the log (``train.log`` of the run)."""

    def __init__(self, title: str = ""):
        self.prefix = f"[{title}] " if title else ""

    def on_epoch_end(self, state: TrainState, stats: dict[str, float]) -> None:
        log.info("%s%s", self.prefix, epoch_line(state.epoch, stats, state.best))

    def on_results(self, state: TrainState, metrics: dict[str, Any]) -> None:
        shown = {key: value for key, value in metrics.items() if not isinstance(value, (list, dict))}
        log.info("%sfinal metrics: %s", self.prefix, shown)
