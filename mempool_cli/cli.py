"""The ``mempool`` command: Typer in front, Hydra's own runner behind ``train``; known errors become one line."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

from mempool_cli.errors import MempoolError

console = Console(soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    help="Graph classification with memory-based pooling (MemPooling) on TU benchmarks and your own graphs.\n\n"
    "Examples:\n\n"
    "  mempool train dataset=MUTAG\n\n"
    "  mempool eval runs/MUTAG/<time>/checkpoint.pt\n\n"
    "  mempool predict runs/MUTAG/<time> new_graphs/ --out predictions.csv\n\n"
    "  mempool show runs/MUTAG/<time>      mempool plot runs/MUTAG/<time>\n\n"
    "  mempool train -m model.memory.tau=0.5,1,2\n\n"
    "  mempool summarize multirun/<time>",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

class _Command(typer.core.TyperCommand):
    """Usage lines that name arguments plainly (``CHECKPOINT``, not Typer's ``{CHECKPOINT}``)."""

    def collect_usage_pieces(self, ctx):
        return [piece.strip("{}") for piece in super().collect_usage_pieces(ctx)]


TRAIN_HELP = """Train a model; every argument is a Hydra override.

\b
Examples:
  mempool train dataset=ENZYMES model.hidden=64 'model.memory.clusters=[10,1]'
  mempool train dataset=MUTAG train.epochs=50 seed=3
  mempool train -m model.memory.tau=10,30,100     (a sweep: one job per value)
  mempool train dataset=PROTEINS protocol=kfold   (stratified 10-fold CV)
  mempool train dataset=molecules dataset.path=mols.csv dataset.label_column=y
  mempool train --cfg job dataset=MUTAG           (print the config and stop)
  mempool train train.resume=runs/MUTAG/<time>/last.pt

\b
Config groups (GROUP=CHOICE; every key: mempool train --cfg job):
{groups}

A dataset's tuned settings (configs/tuned/DATASET/MODEL.yaml) apply on top of the model; ~tuned leaves them out.
Hydra's own flags work as in any Hydra app: -m/--multirun, --cfg job|hydra|all, --info, --hydra-help.
Offline data: MEMPOOL_DATA_SOURCE=<folder with NAME/raw/> copies raw files into the cache
(MEMPOOL_DATA_ROOT, default ~/.cache/mempool/TUDataset) instead of downloading."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line; Hydra and OmegaConf spread theirs (and their causes) over several."""
    from hydra.errors import MissingConfigException

    if isinstance(exc, MissingConfigException) and exc.options:
        first = str(exc).splitlines()[0].removeprefix("In 'config': ")
        return f"{first}; choose one of: {', '.join(exc.options)}"
    messages = [str(exc)]
    if not isinstance(exc, MempoolError) and exc.__cause__ is not None and str(exc.__cause__) not in messages[0]:
        messages.append(str(exc.__cause__))
    lines = [line.strip() for text in messages for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("object_type=", "reference_type=", "Set the environment variable"))]
    return "; ".join(lines) or type(exc).__name__


def _report(exc: BaseException) -> int:
    """Print the one-line message of ``exc`` on stderr; returns the exit code."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    known = isinstance(exc, (MempoolError, HydraException, OmegaConfBaseException))
    prefix = "error" if known else f"unexpected error ({type(exc).__name__}, rerun with --debug for the traceback)"
    err_console.print(f"{prefix}: {one_line(exc)}", markup=False)
    return 2 if known else 1


def _fail(exc: BaseException, debug: bool) -> None:
    if debug or _debug:
        raise exc
    raise typer.Exit(_report(exc))


def _remove_created(run_dir: Path) -> None:
    """After a failed run, remove what it created: its folder (only what Hydra and the run's start wrote in it)
    unless that folder was there before, and the folders above it (such as ``runs/PROTEINS``) left empty, up to
    the working directory."""
    from mempool_cli.artifacts import CONFIG, LOCK, SKIPPED
    from mempool_cli.hydra_guard import existing_run_dirs

    run_dir = run_dir.absolute()
    started = {".hydra", "train.log", CONFIG, LOCK, SKIPPED}
    if run_dir in existing_run_dirs or not run_dir.is_dir() or {p.name for p in run_dir.iterdir()} - started:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    cwd = Path.cwd().absolute()
    for parent in run_dir.parents:
        if parent == cwd or cwd not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


def _how_to_go_on(spec, run_dir: str) -> str:
    """What an interrupted run's user can do next."""
    if spec.protocol.name == "kfold":
        return f"run the same command again with hydra.run.dir={run_dir} (finished folds are kept)"
    from mempool_cli.artifacts import LAST

    if not (Path(run_dir) / LAST).exists():
        return "no epoch had finished; run it again"
    return f"continue with the same overrides and train.resume={Path(run_dir) / LAST}"


def _show_kfold(run_dir: Path) -> None:
    """The per-fold table and the mean +- std over the finished folds of a k-fold run directory."""
    from mempool_cli.report import mean_std_table, rows_table
    from mempool_cli.sweep import FOLD_COLUMNS, fold_rows, fold_summary

    rows = fold_rows(run_dir)
    console.print(rows_table(rows, FOLD_COLUMNS, title=f"k-fold run {run_dir}"))
    summary = fold_summary(rows)
    if summary:
        console.print(mean_std_table(summary, title="mean +- std over finished folds"))


_debug = False  # set by `--debug` (before or after the command): errors keep their traceback


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"mempool {version('mempool')}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error (any command)."),
    show_version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                      help="Print mempool's version and stop."),
) -> None:
    global _debug
    _debug = _debug or debug


@contextlib.contextmanager
def _interrupt_remembered():
    """Ctrl-C raises KeyboardInterrupt as usual and is also remembered (``engine.INTERRUPTED``), so that training
    stops at the next batch where the autograd engine swallowed the exception raised inside a backward pass."""
    import signal
    import threading

    from mempool_cli import engine

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def interrupted(signum, frame):
        engine.INTERRUPTED.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupted)
    engine.INTERRUPTED.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def train_job(cfg) -> float:
    """Hydra's task function: one job of a run or a sweep. Resolves the config once, hands it to the core and
    returns the validation accuracy (for sweepers).

    Kept undecorated at module level so that launchers (joblib, submitit) can pickle it by reference.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mempool_cli.config import resolve
    from mempool_cli.progress import progress_factory
    from mempool_cli.protocols import train
    from mempool_cli.report import metrics_table

    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    spec = None
    try:
        spec = resolve(cfg)
        console.print(f"[bold]mempool[/] {spec.data.name} -> {run_dir}", highlight=False)
        parallel = hydra_cfg.mode == RunMode.MULTIRUN and "BasicLauncher" not in str(hydra_cfg.launcher.get("_target_"))
        job = str(hydra_cfg.job.num) if parallel else None
        with _interrupt_remembered():
            metrics = train(spec, run_dir, progress_factory(console, spec.train.progress, job))
    except (MempoolError, OSError) as exc:
        if _debug:
            raise
        error = exc if isinstance(exc, MempoolError) else MempoolError(f"{exc.strerror or exc}: {exc.filename}")
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return _failed_job(Path(run_dir), error)
        _remove_created(Path(run_dir))
        raise SystemExit(_report(error)) from None
    except KeyboardInterrupt:
        resume = f"; {_how_to_go_on(spec, run_dir)}" if spec else ""
        err_console.print(f"interrupted{resume}", markup=False)
        raise SystemExit(130) from None
    if spec.protocol.name == "kfold":
        _show_kfold(Path(run_dir))
    else:
        console.print(metrics_table(metrics, title=f"{spec.data.name} metrics"))
    return metrics["val_acc"]


def _failed_job(job_dir: Path, error: MempoolError) -> float:
    """A sweep job that failed: its reason goes to ``failed.json`` (the summary marks the job failed) and the
    sweep goes on; the sweeper gets the worst score."""
    from mempool_cli.artifacts import FAILED, write_json

    write_json(job_dir / FAILED, {"error": one_line(error)})
    err_console.print(f"error in sweep job {job_dir.name}: {one_line(error)}", markup=False)
    return float("-inf")


def _hydra_train():
    """``train_job`` behind Hydra's own runner (multirun, launchers, sweepers and output folders included)."""
    import hydra

    from mempool_cli.config import register_configs

    register_configs()
    return hydra.main(version_base="1.3", config_path="pkg://mempool_cli.configs", config_name="config")(train_job)


def _train_help() -> str:
    from mempool_cli.catalog import config_choices

    groups = "\n".join(textwrap.fill(", ".join(names), 78, initial_indent=f"  {group}: ",
                                      subsequent_indent="    ") for group, names in config_choices().items())
    return TRAIN_HELP.format(groups=groups)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, help=_train_help())
def train(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
) -> None:
    global _debug
    _debug = debug = _debug or debug or os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; we report in one line below
    sys.argv = ["mempool train", *ctx.args]
    from mempool_cli.hydra_guard import Refused
    from mempool_cli.sweep import failed_jobs

    try:
        _hydra_train()()
    except Refused as refused:
        _fail(refused.error, debug)
    except Exception as exc:  # noqa: BLE001 - every failure gets one line unless --debug
        _fail(exc, debug)
    if failed_jobs:
        _fail(MempoolError(f"{len(failed_jobs)} sweep job(s) failed ({', '.join(failed_jobs)}); "
                           "see the summary and their failed.json"), debug)


@app.command("eval", cls=_Command)
def evaluate(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help="checkpoint.pt (or last.pt) written by `mempool train`."),
    split: str = typer.Option("test", "--split", help="test | val | train: which stored split to evaluate."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Dataset cache (default: $MEMPOOL_DATA_ROOT or ~/.cache/mempool/TUDataset)."),
    data_path: Optional[str] = typer.Option(None, "--data", help="The file or folder trained on, where it has moved (default: the path the checkpoint records)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
) -> None:
    """Evaluate a checkpoint on its stored split, rebuilding the model from the file alone.

    Example: mempool eval runs/MUTAG/<time>/checkpoint.pt --split test --json
    """
    from mempool_cli.evaluation import evaluate_checkpoint
    from mempool_cli.report import eval_tables

    try:
        if split not in ("test", "val", "train"):
            raise MempoolError(f"--split: unknown value {split!r}; choose one of: test, val, train")
        result = evaluate_checkpoint(checkpoint, split, root=data_root, device=device, data_path=data_path)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for table in eval_tables(result):
            console.print(table)


@app.command(cls=_Command)
def predict(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help="A checkpoint.pt, a run directory, or a k-fold run directory (all folds: mean probabilities)."),
    input_path: str = typer.Argument(..., metavar="INPUT", help="Graphs of the checkpoint's kind: a .csv/.sdf of molecules, a folder of graph files or of TU files, or a TU dataset's name."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the predictions to this CSV file (id, prediction, p_<class>..., label)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result (and every prediction) as JSON."),
    part: Optional[str] = typer.Option(None, "--part", help="train | val | test: only the graphs that the split column trained with puts there."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Graphs per batch."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
) -> None:
    """Predict the class of every graph in INPUT, read and featurised as the checkpoint's training data was.

    Examples: mempool predict runs/solubility/<time>/checkpoint.pt new.csv --out predictions.csv

              mempool predict runs/PROTEINS/<time> PROTEINS --json     (a k-fold run: every fold votes)
    """
    from mempool_cli.prediction import predict as run_predict
    from mempool_cli.prediction import write_predictions
    from mempool_cli.progress import batch_progress
    from mempool_cli.report import prediction_tables

    try:
        with batch_progress(enabled=not as_json) as on_batch:
            result = run_predict(checkpoint, input_path, device=device, batch_size=batch_size, on_batch=on_batch,
                                 part=part)
        if out is not None:
            write_predictions(result, out)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for table in prediction_tables(result, show_rows=out is None):
        console.print(table)
    if out is not None:
        console.print(f"predictions written to {out}")


def _print_written(make: Callable[[], list[Path]], debug: bool) -> None:
    """Run a figure command and print the files it wrote, one per line (nothing else on stdout)."""
    try:
        written = make()
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    print("\n".join(str(path) for path in written))


@app.command(cls=_Command)
def show(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help="A checkpoint.pt, a run directory, or a k-fold run directory."),
    graph: list[str] = typer.Option([], "--graph", help="A graph to draw: its position in the split (3) or its id; repeat for more (default: the first two)."),
    split: str = typer.Option("test", "--split", help="test | val | train: the stored split to draw from."),
    input_path: Optional[str] = typer.Option(None, "--input", help="Draw graphs of this input instead (anything `predict` takes); --graph names their ids."),
    fold: Optional[int] = typer.Option(None, "--fold", help="For a k-fold run: the fold (default: the best validation accuracy)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the figures (default: figures/ beside the checkpoint)."),
    fmt: str = typer.Option("png", "--format", help="png | svg"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
) -> None:
    """Draw what the memory learned: chosen graphs coloured by cluster with their coarsened graph, and for the
    split the mean assignment mass per class and key and each key's usage. Prints the files written.

    Example: mempool show runs/MUTAG/<time> --graph 0 --graph 5
    """
    from mempool_cli.show import pick_checkpoint
    from mempool_cli.show import show as draw

    def make() -> list[Path]:
        folder = out or pick_checkpoint(checkpoint, fold).parent / "figures"
        return draw(checkpoint, graph, split, folder, fmt, fold, input_path, device)

    _print_written(make, debug)


@app.command(cls=_Command)
def plot(
    path: Path = typer.Argument(..., metavar="PATH", help="A run, k-fold run or sweep directory."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the figures (default: PATH/figures)."),
    fmt: str = typer.Option("png", "--format", help="png | svg"),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
) -> None:
    """Plot a run's curves (loss, accuracy, KL, learning rate), a k-fold run's folds, or a sweep's accuracy per
    parameter, from the files they leave. Prints the files written.

    Example: mempool plot runs/PROTEINS/<time>
    """
    from mempool_cli.plots import plot as draw

    _print_written(lambda: draw(path, out, fmt), debug)


@app.command(cls=_Command)
def summarize(
    path: Path = typer.Argument(..., metavar="PATH", help="A sweep directory (multirun/<time>) or a k-fold run directory."),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
) -> None:
    """Summarise a finished or interrupted sweep or k-fold run (reads files only).

    Example: mempool summarize multirun/2026-11-23_10-00-00-000000
    """
    from mempool_cli.sweep import collect, summarize_sweep

    try:
        kind, rows = collect(path)
        tables = summarize_sweep(path, rows) if kind == "sweep" else []
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    if kind == "kfold":
        _show_kfold(path)
    else:
        console.print(*tables)


@app.command()
def datasets(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
) -> None:
    """List the datasets with a shipped preset, in the cache (MEMPOOL_DATA_ROOT) and in the offline source
    (MEMPOOL_DATA_SOURCE), with graph and class counts where the raw files are present.

    Example: MEMPOOL_DATA_SOURCE=../shared/data/TUDataset mempool datasets
    """
    from mempool_cli.catalog import dataset_rows
    from mempool_cli.config import default_data_root, default_data_source
    from mempool_cli.report import rows_table

    root, source = Path(default_data_root()).expanduser(), default_data_source()
    try:
        rows = dataset_rows(root, Path(source).expanduser() if source else None)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, debug)
    title = f"datasets (cache {root}; source {source or 'not set'})"
    console.print(rows_table(rows, ("dataset", "preset", "cache", "source", "graphs", "classes"), title=title))


def main() -> None:
    """Console-script entry point. Unless the user chose a wait policy, OpenMP threads spin only briefly before
    they sleep (set before torch loads): on a machine shared with other work, threads that spin while waiting made
    training up to 80 times slower; sleeping at once made it 2.4 times slower on an idle one."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    app()
