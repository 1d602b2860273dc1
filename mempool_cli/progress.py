"""Live training progress on the console: a rich display on a terminal, plain lines otherwise."""
from __future__ import annotations

from typing import Optional

from rich.console import Console
from mempool_cli.run import SilentReporter
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _summary(epoch: int, stats: dict[str, float]) -> str:
    return (f"epoch {epoch:4d}  loss {stats['loss']:.4f}  train_acc {stats['train_acc']:.3f}  "
            f"val_loss {stats['val_loss']:.4f}  val_acc {stats['val_acc']:.3f}  "
            f"best {stats['best_val_acc']:.3f}@{stats['best_epoch']}  lr {stats['lr']:.2e}")


class RichReporter:
    """Epoch and batch bars with live loss and accuracy and the time left (terminal)."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Optional[Progress] = None

    def start(self, title: str, epochs: int, batches: int, first_epoch: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, transient=False,
        )
        self.progress.start()
        self.epochs = self.progress.add_task(f"{title} epochs".strip(), total=epochs, completed=first_epoch - 1,
                                             info="")
        self.batches = self.progress.add_task("batches", total=batches, info="")

    def batch(self, step: int, loss: float) -> None:
        self.progress.update(self.batches, completed=step, info=f"loss {loss:.4f}")

    def epoch(self, epoch: int, stats: dict[str, float]) -> None:
        info = (f"loss {stats['loss']:.4f} acc {stats['train_acc']:.3f} | val {stats['val_acc']:.3f} "
                f"| best {stats['best_val_acc']:.3f}@{stats['best_epoch']}")
        self.progress.update(self.epochs, completed=epoch, info=info)
        self.progress.reset(self.batches, info="")

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class PlainReporter:
    """About twenty plain lines per run, for logs and pipes."""

    def __init__(self, console: Console):
        self.console = console

    def start(self, title: str, epochs: int, batches: int, first_epoch: int) -> None:
        self.every = max(1, epochs // 20)
        self.title = f"[{title}] " if title else ""

    def batch(self, step: int, loss: float) -> None:
        pass

    def epoch(self, epoch: int, stats: dict[str, float]) -> None:
        if epoch == 1 or epoch % self.every == 0:
            self.console.print(self.title + _summary(epoch, stats), highlight=False)

    def finish(self) -> None:
        pass


def make_reporter(console: Console, enabled: bool):
    """The display that suits the console: rich on a terminal, plain lines otherwise, none if disabled."""
    if not enabled:
        return SilentReporter()
    return RichReporter(console) if console.is_terminal else PlainReporter(console)
