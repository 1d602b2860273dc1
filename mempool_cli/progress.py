"""Live training progress on the console: a rich display on a terminal, plain lines otherwise."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mempool_cli.callbacks import epoch_line
from mempool_cli.loop import Callback, TrainState


def early_stop_line(state: TrainState) -> str:
    return (f"early stop at epoch {state.epoch}: no better validation result since epoch {state.best['epoch']} "
            f"(train.patience)")


class RichReporter(Callback):
    """Epoch and batch bars with live loss and accuracy and the time left (terminal)."""

    def __init__(self, console: Console, title: str, epochs: int, batches: int):
        self.console, self.title, self.epochs, self.batches = console, title, epochs, batches
        self.progress: Optional[Progress] = None

    def on_fit_start(self, state: TrainState) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, transient=False,
        )
        self.progress.start()
        self.epoch_task = self.progress.add_task(f"{self.title} epochs".strip(), total=self.epochs,
                                                 completed=state.epoch, info="")
        self.batch_task = self.progress.add_task("batches", total=self.batches, info="")

    def on_batch(self, step: int, loss: float) -> None:
        self.progress.update(self.batch_task, completed=step, info=f"loss {loss:.4f}")

    def on_epoch_end(self, state: TrainState, stats: dict[str, float]) -> None:
        info = (f"loss {stats['train/loss']:.4f} acc {stats['train/acc']:.3f} | val {stats['val/acc']:.3f} "
                f"| best {state.best['val_acc']:.3f}@{state.best['epoch']}")
        self.progress.update(self.epoch_task, completed=state.epoch, info=info)
        self.progress.reset(self.batch_task, info="")

    def on_fit_end(self, state: TrainState) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if state.stopped:
            self.console.print(f"{self.title} {early_stop_line(state)}".strip(), highlight=False)


class PlainReporter(Callback):
    """About twenty plain lines per run, for logs and pipes."""

    def __init__(self, console: Console, title: str, epochs: int, batches: int):
        self.console = console
        self.every = max(1, epochs // 20)
        self.prefix = f"[{title}] " if title else ""

    def on_epoch_end(self, state: TrainState, stats: dict[str, float]) -> None:
        self.last = (state.epoch, stats)
        if state.epoch == 1 or state.epoch % self.every == 0:
            self.console.print(self.prefix + epoch_line(state.epoch, stats, state.best), highlight=False)

    def on_fit_end(self, state: TrainState) -> None:
        last = getattr(self, "last", None)
        if last and last[0] != 1 and last[0] % self.every:  # the last epoch, when not printed already
            self.console.print(self.prefix + epoch_line(*last, state.best), highlight=False)
        if state.stopped:
            self.console.print(self.prefix + early_stop_line(state), highlight=False)


def progress_factory(console: Console, enabled: bool):
    """What makes the display of each training: rich on a terminal, plain lines otherwise, none if disabled."""
    if not enabled:
        return None
    reporter = RichReporter if console.is_terminal else PlainReporter
    return lambda title, epochs, batches: reporter(console, title, epochs, batches)


@contextlib.contextmanager
def batch_progress(enabled: bool = True, console: Optional[Console] = None) -> Iterator[Optional[Callable]]:
    """A bar of graphs done for long work (``predict``), shown on a terminal only; yields its callback
    ``(done, total)`` or ``None``."""
    console = console or Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield None
        return
    with Progress(TextColumn("graphs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("graphs", total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)
