"""Holdout and k-fold: each draws, saves, checks and reuses its splits, then trains on them.

What a run directory records is always what was trained: a holdout run saves the split it trains (the
checkpoint's own split on resume), and a k-fold rerun in the same directory must have the settings of the folds
it keeps.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from mempool_cli.artifacts import CONFIG, FOLDS, LAST, METRICS, SPLIT, SUMMARY, TENSORBOARD, fold_dir, load_checkpoint
from mempool_cli.artifacts import clear_run, finished_files, locked_run_dir, read_yaml, write_json
from mempool_cli.artifacts import SKIPPED, csv_text, write_atomic, write_yaml
from mempool_cli.callbacks import write_kfold_hparams
from mempool_cli.config import RunSpec, changed_settings, result_settings
from mempool_cli.data import Dataset
from mempool_cli.data.splits import check_same_data, holdout_split, kfold_splits, own_split, read_split_file
from mempool_cli.data.splits import split_metadata
from mempool_cli.device import pick_device, set_threads
from mempool_cli.errors import CheckpointError, ConfigError, RunDirError
from mempool_cli.sweep import read_metrics, summarize_folds
from mempool_cli.training import ProgressFactory, train_split

log = logging.getLogger(__name__)

# what may differ between a checkpoint and the run that resumes it: how long it goes on
RESUMABLE_CHANGES = ("train.epochs", "train.patience")


def _resume_checkpoint(spec: RunSpec) -> dict[str, Any]:
    """The ``last.pt`` named by ``train.resume``, refused unless it was trained with these settings."""
    path = spec.train.resume
    checkpoint = load_checkpoint(path)
    if "optimizer_state" not in checkpoint:
        raise CheckpointError(f"{path} cannot be resumed: pass a last.pt, not a best checkpoint")
    changed = changed_settings(checkpoint["config"], spec.config, allowed=RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(f"train.resume: {path} was trained with other settings ({', '.join(changed)}); "
                          "resume with the same ones (only train.epochs and train.patience may change)")
    return checkpoint


def _check_run_dir(spec: RunSpec, run_dir: Path) -> None:
    """Refuse a run directory that holds another run: a k-fold rerun with the same settings (it skips the finished
    folds) and a resume from that directory's own ``last.pt`` are the same run going on."""
    found = finished_files(run_dir) if run_dir.is_dir() else []
    resuming_here = spec.train.resume and Path(spec.train.resume).resolve().parent == run_dir.resolve()
    if not found or spec.train.overwrite or resuming_here:
        return
    previous = read_yaml(run_dir / CONFIG)
    if spec.protocol.name == "kfold" and FOLDS in found and isinstance(previous, dict):
        changed = changed_settings(previous, spec.config)
        if changed:
            raise ConfigError(f"{run_dir} holds a k-fold run with other settings ({', '.join(changed)}); "
                              "rerun it with the same ones, or use a new directory")
        return
    raise RunDirError(f"{run_dir} already holds a run ({', '.join(found[:4])}); use a new directory "
                      "(hydra.run.dir=...) or replace that run with train.overwrite=true")


def preflight(spec: RunSpec, run_dir: str | Path) -> Optional[dict[str, Any]]:
    """Every check that can refuse ``spec`` before anything is written: the device, the checkpoint to resume
    (returned), and the run directory."""
    pick_device(spec.device)
    resume = _resume_checkpoint(spec) if spec.train.resume else None
    if resume is not None and spec.protocol.name == "kfold":
        raise ConfigError("train.resume: k-fold runs resume by running again in the same run directory")
    _check_run_dir(spec, Path(run_dir))
    return resume


def _holdout_split(spec: RunSpec, dataset: Dataset) -> dict[str, Any]:
    """The split to train: the data's own (a split column), reused from ``protocol.split_file`` when that file
    exists, else drawn (and saved)."""
    name, labels = dataset.name, dataset.labels
    target = Path(spec.protocol.split_file) if spec.protocol.split_file else None
    if dataset.source.split is not None:
        split = own_split(dataset.source.split, labels, spec.protocol.val_fraction, spec.seed)
        return {"meta": split_metadata(name, labels, spec.seed, protocol="holdout", split="the data's own"),
                "split": split}
    if target is not None and target.exists():
        return read_split_file(target, name, labels, "split")
    split = holdout_split(labels, spec.protocol.val_fraction, spec.protocol.test_fraction, spec.seed)
    payload = {"meta": split_metadata(name, labels, spec.seed, protocol="holdout"), "split": split}
    if target is not None:
        write_json(target, payload)
    return payload


def _holdout_payload(spec: RunSpec, dataset: Dataset, resume: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The split to train and its metadata: the checkpoint's own when resuming."""
    if resume is None:
        return _holdout_split(spec, dataset)
    check_same_data(resume["split_meta"], dataset.name, dataset.labels, f"train.resume {spec.train.resume}")
    return {"meta": resume["split_meta"], "split": resume["split"]}


def _folds(spec: RunSpec, dataset: Dataset, run_dir: Path) -> tuple[list[dict], dict]:
    """Fold assignments, written once (``protocol.split_file`` or ``folds.json``) and reused after."""
    name, labels, k = dataset.name, dataset.labels, spec.protocol.folds
    if dataset.source.split is not None:
        raise ConfigError(f"protocol=kfold: dataset.split_column={spec.data.split_column} fixes the split; use "
                          "protocol=holdout with it, or leave the column out to draw the folds")
    target = Path(spec.protocol.split_file) if spec.protocol.split_file else run_dir / FOLDS
    if target.exists():
        payload = read_split_file(target, name, labels, "folds")
        if payload["meta"].get("folds") != k or len(payload.get("folds", [])) != k:
            raise ConfigError(f"protocol.folds: {target} holds {payload['meta'].get('folds')} folds, not {k}")
        return payload["folds"], payload["meta"]
    folds = kfold_splits(labels, k, spec.protocol.val_fraction, spec.seed)
    meta = split_metadata(name, labels, spec.seed, protocol="kfold", folds=k, val_fraction=spec.protocol.val_fraction)
    if target != run_dir / FOLDS:
        write_json(target, {"meta": meta, "folds": folds})
    return folds, meta


def _run_fold(spec: RunSpec, run_dir: Path, dataset: Dataset, fold: int, split: dict, meta: dict,
              progress: Optional[ProgressFactory]) -> dict[str, Any]:
    """One fold: skipped when finished, resumed from its ``last.pt`` when interrupted, else trained."""
    directory = fold_dir(run_dir, fold)
    done = read_metrics(directory / METRICS)
    if done is not None:
        log.info("fold %d already finished, skipped", fold)
        return done
    resume = None
    if (directory / LAST).exists():
        log.info("fold %d resumes from %s", fold, directory / LAST)
        resume = load_checkpoint(directory / LAST)
    return train_split(spec, directory, dataset, split, {**meta, "fold": fold}, progress,
                       title=f"fold {fold + 1}/{spec.protocol.folds}", resume=resume)


def _fold_worker(spec: RunSpec, run_dir: Path, dataset: Dataset, fold: int, split: dict, meta: dict,
                 show: bool) -> dict[str, Any]:
    """One fold in a worker process: its log in its own folder, plain progress lines that name it."""
    from rich.console import Console

    from mempool_cli.parallel import fold_logging
    from mempool_cli.progress import progress_factory

    fold_logging(fold_dir(run_dir, fold))
    return _run_fold(spec, run_dir, dataset, fold, split, meta, progress_factory(Console(soft_wrap=True), show, job=""))


def _run_folds(spec: RunSpec, run_dir: Path, dataset: Dataset, folds: list[dict], meta: dict,
               progress: Optional[ProgressFactory]) -> dict[str, Any]:
    """Every fold (in turn, or ``protocol.workers`` at once), then ``summary.json`` (per fold and aggregated) and
    ``metrics.json`` (the means)."""
    from mempool_cli.parallel import run_parallel, worker_count

    pending = [i for i in range(len(folds)) if read_metrics(fold_dir(run_dir, i) / METRICS) is None]
    workers = worker_count(spec.protocol.workers, len(pending), spec.threads)
    results: dict[int, dict[str, Any]] = {}
    if workers > 1:
        log.info("training %d folds, %d at once", len(pending), workers)
        jobs = [(i, (i, folds[i], meta, progress is not None)) for i in pending]
        results = run_parallel(_fold_worker, (spec, run_dir, dataset), jobs, workers, spec.threads)
    per_fold = [{"fold": i, **(results.get(i) or _run_fold(spec, run_dir, dataset, i, split, meta, progress))}
                for i, split in enumerate(folds)]
    summary = {"dataset": dataset.name, "protocol": "kfold", **summarize_folds(per_fold), "per_fold": per_fold}
    write_json(run_dir / SUMMARY, summary)
    write_kfold_hparams(run_dir / TENSORBOARD, result_settings(spec.config), summary)
    metrics = {key: value for key, value in summary.items() if key != "per_fold"}
    write_json(run_dir / METRICS, metrics)
    return metrics


def _report_skipped(dataset: Dataset, run_dir: Path) -> None:
    """Graphs of the input that could not be read are left out, never silently: a warning and ``skipped.csv``."""
    skipped = dataset.source.skipped
    if skipped:
        write_atomic(run_dir / SKIPPED, csv_text([{"id": i, "reason": r} for i, r, _ in skipped], ("id", "reason")))
        log.warning("left out %d graphs of %s that cannot be read (the first, %s: %s); all in %s", len(skipped),
                    dataset.name, skipped[0][0], skipped[0][1], run_dir / SKIPPED)


def train(spec: RunSpec, run_dir: str | Path, progress: Optional[ProgressFactory] = None) -> dict[str, Any]:
    """Run ``spec``'s protocol in ``run_dir``; returns the run's metrics. Everything that can refuse the run
    (settings, device, resume, run directory, data, splits) is checked before the first file is written."""
    run_dir = Path(run_dir)
    resume = preflight(spec, run_dir)
    set_threads(spec.threads)
    dataset = Dataset.load(spec.data)
    if spec.protocol.name == "holdout":
        payload = _holdout_payload(spec, dataset, resume)
    else:
        folds, meta = _folds(spec, dataset, run_dir)
    with locked_run_dir(run_dir):
        if spec.train.overwrite:
            clear_run(run_dir)
        write_yaml(run_dir / CONFIG, spec.config)
        _report_skipped(dataset, run_dir)
        if spec.protocol.name == "holdout":
            write_json(run_dir / SPLIT, payload)
            return train_split(spec, run_dir, dataset, payload["split"], payload["meta"], progress, resume=resume)
        write_json(run_dir / FOLDS, {"meta": meta, "folds": folds})
        return _run_folds(spec, run_dir, dataset, folds, meta, progress)
