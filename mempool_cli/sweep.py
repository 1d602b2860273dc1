"""Read-only summaries of finished or interrupted sweeps and k-fold runs, and the Hydra callback that writes them."""
from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from mempool_cli.artifacts import CHECKPOINT, FAILED, FOLDS, METRICS, csv_text, fold_dir, read_json, read_yaml
from mempool_cli.artifacts import write_atomic, write_json
from mempool_cli.errors import CheckpointError, MempoolError
from mempool_cli.report import mean_std_table, rows_table

log = logging.getLogger(__name__)

failed_jobs: list[str] = []  # jobs of this process's sweep that failed, for the command's exit code

SWEEP_COLUMNS = ("job", "dataset", "overrides", "status", "val_acc", "test_acc", "test_acc_std", "best_epoch",
                 "train_time_s")
FOLD_COLUMNS = ("fold", "status", "val_acc", "test_acc", "best_epoch", "train_time_s")
SELECTION_COLUMNS = ("fold", "job", "overrides", "val_acc", "test_acc")


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


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a Hydra sweep (those with .hydra/overrides.yaml), in job order."""
    jobs = [d for d in sweep_dir.iterdir() if d.is_dir() and (d / ".hydra" / "overrides.yaml").exists()]
    return sorted(jobs, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))


def read_metrics(path: Path) -> Optional[dict[str, Any]]:
    """A ``metrics.json`` with numeric accuracies, or ``None`` (missing, unreadable, or not mempool's)."""
    metrics = read_json(path)
    numeric = isinstance(metrics, dict) and all(
        isinstance(metrics.get(key), (int, float)) and not isinstance(metrics.get(key), bool)
        for key in ("val_acc", "test_acc"))
    return metrics if numeric else None


def _overrides(job: Path) -> list[str]:
    overrides = read_yaml(job / ".hydra" / "overrides.yaml")
    return [str(o) for o in overrides] if isinstance(overrides, list) else []


def _job_dataset(job: Path) -> str:
    """The dataset a job was composed with (for jobs that have no metrics)."""
    config = read_yaml(job / ".hydra" / "config.yaml")
    dataset = config.get("dataset") if isinstance(config, dict) else None
    return str(dataset.get("name") or "") if isinstance(dataset, dict) else ""


def sweep_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job of a Hydra sweep: the overrides that vary between jobs (all of them under
    ``all_overrides``) and its metrics, best validation accuracy first, unfinished jobs last."""
    jobs = job_dirs(sweep_dir)
    overrides = [_overrides(job) for job in jobs]
    common = set.intersection(*map(set, overrides)) if len(overrides) > 1 else set()
    rows = []
    for job, job_overrides in zip(jobs, overrides):
        metrics = read_metrics(job / METRICS)
        status = "done" if metrics else "failed" if (job / FAILED).exists() else "unfinished"
        row: dict[str, Any] = {"job": job.name,
                               "overrides": " ".join(short_override(o) for o in job_overrides if o not in common),
                               "all_overrides": " ".join(job_overrides), "status": status}
        row.update(metrics or {"dataset": _job_dataset(job)})
        rows.append(row)
    return sorted(rows, key=lambda r: (r["status"] != "done", str(r.get("dataset", "")), -r.get("val_acc", 0.0),
                                       r["job"]))


def short_override(override: str) -> str:
    """``key=value`` with a long float value rounded to 4 significant digits (Optuna's trials)."""
    key, _, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return f"{key}={number:.4g}" if "." in value and len(value) > 8 else override


def common_overrides(rows: list[dict[str, Any]]) -> str:
    """The overrides shared by every job of a sweep."""
    if not rows:
        return ""
    varying = {o for row in rows for o in row["overrides"].split()}
    return " ".join(o for o in rows[0]["all_overrides"].split() if short_override(o) not in varying)


def fold_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per fold of a k-fold run, finished or not."""
    rows = []
    folds = read_json(run_dir / FOLDS)
    count = len(folds["folds"]) if folds else len(list(run_dir.glob("fold_*")))
    for i in range(count):
        metrics = read_metrics(fold_dir(run_dir, i) / METRICS)
        rows.append({"fold": i, "status": "done" if metrics else "unfinished", **(metrics or {})})
    return rows


def finished_folds(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a k-fold run's finished folds (a fold still training has a checkpoint too, but no metrics)."""
    return [row for row in fold_rows(run_dir) if row["status"] == "done"]


def run_checkpoints(path: Path) -> list[Path]:
    """The checkpoints that ``path`` names: a checkpoint file, a run directory (its ``checkpoint.pt``), or a k-fold
    run directory (the best checkpoint of every finished fold, in fold order)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / CHECKPOINT).is_file():
        return [path / CHECKPOINT]
    if (path / FOLDS).is_file() and (done := finished_folds(path)):
        return [fold_dir(path, row["fold"]) / CHECKPOINT for row in done]
    raise CheckpointError(f"{path}: not a checkpoint, a run directory or a k-fold run directory with finished folds")


def fold_summary(rows: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """Mean and standard deviation over the finished folds, or None when none has finished."""
    done = [r for r in rows if r["status"] == "done"]
    return {"finished": len(done), **summarize_folds(done)} if done else None


def is_kfold_run(path: Path) -> bool:
    return (path / FOLDS).exists() or any(path.glob("fold_*"))


def select_folds(runs: list[tuple[str, Path]]) -> Optional[dict[str, Any]]:
    """Model selection per fold over named k-fold runs (Errica et al.'s protocol): in each fold, the run with the
    best validation accuracy (the first on a tie) and its test accuracy.

    Returns ``{"rows": one per selected fold (with the run's name as ``job``), "summary": mean +- std over them,
    "folds": k}``, or ``None`` unless there are two or more runs on the same fold assignments. Folds that a run
    has not finished yet are left out.
    """
    assignments = {json.dumps((read_json(run / FOLDS) or {}).get("folds")) for _, run in runs}
    if len(runs) < 2 or len(assignments) != 1 or assignments == {"null"}:
        return None
    per_run = [(name, fold_rows(run)) for name, run in runs]
    k = len(per_run[0][1])
    rows = []
    for i in range(k):
        candidates = [(name, folds[i]) for name, folds in per_run]
        if all(fold["status"] == "done" for _, fold in candidates):
            name, best = max(candidates, key=lambda candidate: candidate[1]["val_acc"])
            rows.append({**best, "job": name})
    return {"rows": rows, "summary": summarize_folds(rows), "folds": k} if rows else None


def fold_selection(sweep_dir: Path, rows: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """:func:`select_folds` over the k-fold jobs of a sweep; each selected row names its job's varying
    ``overrides`` (``rows`` are the sweep's :func:`sweep_rows`)."""
    selection = select_folds([(job.name, job) for job in job_dirs(sweep_dir)])
    varying = {row["job"]: row["overrides"] for row in rows}
    for row in selection["rows"] if selection else []:
        row["overrides"] = varying[row["job"]]
    return selection


def to_markdown(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def present_columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """The sweep columns that at least one row fills (``test_acc_std`` only for k-fold jobs, ``dataset`` only when
    the sweep has several)."""
    several = len({row.get("dataset") for row in rows}) > 1
    return tuple(c for c in SWEEP_COLUMNS if any(c in row for row in rows) and (c != "dataset" or several))


def _write_summary_files(sweep_dir: Path, rows: list[dict[str, Any]], selection: Optional[dict[str, Any]]) -> None:
    """Write ``summary.csv`` and ``summary.md`` (and ``selection.json`` for a sweep of k-fold jobs) into the sweep
    directory."""
    write_atomic(sweep_dir / "summary.csv", csv_text(rows, SWEEP_COLUMNS + ("all_overrides",)))
    markdown = (f"# Sweep {sweep_dir.name} (best validation accuracy first)\n\n"
                f"Common overrides: `{common_overrides(rows)}`\n\n" + to_markdown(rows, present_columns(rows)))
    if selection:
        write_json(sweep_dir / "selection.json", selection)
        summary = selection["summary"]
        markdown += (f"\n## Model selection per fold (on validation accuracy)\n\n"
                     f"test_acc {summary['test_acc']:.4f} +- {summary['test_acc_std']:.4f} over "
                     f"{summary['folds']} of {selection['folds']} folds\n\n"
                     + to_markdown(selection["rows"], SELECTION_COLUMNS))
    write_atomic(sweep_dir / "summary.md", markdown)


def _sweep_tables(sweep_dir: Path, rows: list[dict[str, Any]], selection: Optional[dict[str, Any]]) -> list[Table]:
    """The rich table of a sweep (its common overrides in the caption) and, for a sweep of k-fold jobs, the
    per-fold model selection with its mean +- std."""
    table = rows_table(rows, present_columns(rows), title=f"sweep {sweep_dir} (best validation first)")
    table.caption = f"common overrides: {common_overrides(rows)}"
    if not selection:
        return [table]
    done, k = selection["summary"]["folds"], selection["folds"]
    title = f"model selection per fold on validation accuracy ({done} of {k} folds)"
    return [table, rows_table(selection["rows"], SELECTION_COLUMNS, title=title),
            mean_std_table(selection["summary"], title="selected models: mean +- std over folds")]


def summarize_sweep(sweep_dir: Path, rows: list[dict[str, Any]]) -> list[Table]:
    """Write a sweep's summary files (its :func:`sweep_rows` and per-fold selection) and return its tables."""
    selection = fold_selection(sweep_dir, rows)
    _write_summary_files(sweep_dir, rows, selection)
    return _sweep_tables(sweep_dir, rows, selection)


def collect(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """What ``mempool summarize`` shows: ``("kfold", fold rows)`` or ``("sweep", job rows)``."""
    if not path.is_dir():
        raise MempoolError(f"not a directory: {path}")
    if is_kfold_run(path):
        return "kfold", fold_rows(path)
    rows = sweep_rows(path)
    if not rows:
        raise MempoolError(f"{path} holds neither a sweep (job folders with .hydra/) nor a k-fold run (fold_*/)")
    return "sweep", rows


class SweepSummaryCallback(Callback):
    """At the end of a multirun, write the sweep's summary files and show its table."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = sweep_rows(sweep_dir)
        failed_jobs.extend(row["job"] for row in rows if row["status"] == "failed")
        Console().print(*summarize_sweep(sweep_dir, rows))
        log.info("sweep summary written to %s", sweep_dir / "summary.md")
