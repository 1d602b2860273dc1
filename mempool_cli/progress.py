"""Live training progress on the console: a rich display on a terminal, plain lines otherwise."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mempool_cli.callbacks import epoch_line
from mempool_cli.loop import Callback, TrainState


def early_stop_line(state: TrainState) -> str:
    return (f"early stop at epoch {state.epoch}: no better validation result since epoch {state.best['epoch']} "
            f"(train.patience)")


class RichReporter(Callback):
    """Epoch and batch bars with the time spent and left, and a status line below them with the live loss and
    accuracy (terminal); fits 80 columns."""

    def __init__(self, console: Console, title: str, epochs: int, batches: int):
        self.console, self.title, self.epochs, self.batches = console, title, epochs, batches
        self.live: Optional[Live] = None
        self.status, self.summary = Text(""), ""  # the live status line, the last epoch's figures

    def on_fit_start(self, state: TrainState) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(), console=self.console,
        )
        self.epoch_task = self.progress.add_task(f"{self.title} epochs".strip(), total=self.epochs,
                                                 completed=state.epoch)
        self.batch_task = self.progress.add_task("batches".rjust(len(f"{self.title} epochs".strip())),
                                                 total=self.batches)
        self.live = Live(Group(self.progress, self.status), console=self.console, refresh_per_second=4)
        self.live.start()

    def on_batch(self, step: int, loss: float) -> None:
        self.progress.update(self.batch_task, completed=step)
        self.status.plain = f"{self.summary}  batch loss {loss:.4f}".strip()

    def on_epoch_end(self, state: TrainState, stats: dict[str, float]) -> None:
        self.summary = (f"loss {stats['train/loss']:.4f} acc {stats['train/acc']:.3f} | val {stats['val/acc']:.3f}"
                        f" | best {state.best['val_acc']:.3f}@{state.best['epoch']}")
        self.status.plain = self.summary
        self.progress.update(self.epoch_task, completed=state.epoch)
        self.progress.reset(self.batch_task)

    def on_fit_end(self, state: TrainState) -> None:
        if self.live is not None:
            self.progress.remove_task(self.batch_task)  # the epoch bar and the last status stay on screen
            self.live.refresh()
            self.live.stop()
            self.live = None
        if state.stopped:
            self.console.print(f"{self.title} {early_stop_line(state)}".strip(), highlight=False, markup=False)


class PlainReporter(Callback):
    """About twenty plain lines per run, for logs and pipes."""

    def __init__(self, console: Console, title: str, epochs: int, batches: int):
        self.console = console
        self.every = max(1, epochs // 20)
        self.prefix = f"[{title}] " if title else ""
        self.last: Optional[tuple] = None  # the last epoch and its figures

    def on_epoch_end(self, state: TrainState, stats: dict[str, float]) -> None:
        self.last = (state.epoch, stats)
        if state.epoch == 1 or state.epoch % self.every == 0:
            self._print(epoch_line(state.epoch, stats, state.best))

    def on_fit_end(self, state: TrainState) -> None:
        last = self.last
        if last and last[0] != 1 and last[0] % self.every:  # the last epoch, when not printed already
            self._print(epoch_line(*last, state.best))
        if state.stopped:
            self._print(early_stop_line(state))

    def _print(self, line: str) -> None:
        self.console.print(self.prefix + line, highlight=False, markup=False)  # "[fold 1/3]" is not markup


def progress_factory(console: Console, enabled: bool, job: Optional[str] = None):
    """What makes the display of each training: rich on a terminal, plain lines otherwise (and for ``job``, one
    of several running at once: its lines carry its number), none if disabled."""
    if not enabled:
        return None
    reporter = RichReporter if console.is_terminal and job is None else PlainReporter
    prefix = f"job {job} " if job else ""
    return lambda title, epochs, batches: reporter(console, f"{prefix}{title}".strip(), epochs, batches)


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
