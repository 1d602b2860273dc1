"""Run the k-fold protocol on the TU benchmarks and write docs/results.md next to published numbers.

Each dataset is one `mempool train dataset=NAME protocol=kfold` run (the default per-dataset config plus any
extra overrides given here) in OUT/NAME; a rerun skips finished folds and resumes an interrupted one, so the
script can be stopped and started again. A dataset that cannot be loaded is reported and skipped. The table is rewritten after every dataset from the runs' summary.json files.

    MEMPOOL_DATA_SOURCE=../shared/data/TUDataset python scripts/results.py
    python scripts/results.py --datasets MUTAG PROTEINS --folds 10 -- model.hidden=128
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from mempool_cli.sweep import fold_rows, fold_summary

DATASETS = ["MUTAG", "PROTEINS", "PROTEINS_full", "ENZYMES", "NCI1", "IMDB-BINARY", "DD"]

# Errica et al., "A Fair Comparison of Graph Neural Networks for Graph Classification" (ICLR 2020): stratified
# 10-fold CV, model selection inside the training folds, mean +- std of test accuracy (%).
ERRICA = {
    "PROTEINS": "baseline 75.8 +- 3.7; GIN 73.3 +- 4.0",
    "ENZYMES": "baseline 65.2 +- 6.4; GIN 59.6 +- 4.5",
    "NCI1": "GIN 80.0 +- 1.4",
    "DD": "baseline 78.4 +- 4.5",
    "IMDB-BINARY": "GIN 71.2 +- 3.9",
}
ERRICA_BEST = {"PROTEINS": 75.8, "ENZYMES": 65.2, "NCI1": 80.0, "DD": 78.4, "IMDB-BINARY": 71.2}
# Khasahmadi et al., "Memory-Based Graph Networks" (ICLR 2020): accuracy selected on the held-out fold.
MEMGNN = {"PROTEINS": "81.35", "ENZYMES": "75.50", "DD": "82.92"}


def raw_present(name: str) -> bool:
    """Whether the offline copy (MEMPOOL_DATA_SOURCE) or the cache (MEMPOOL_DATA_ROOT) holds the dataset."""
    roots = [os.environ.get("MEMPOOL_DATA_SOURCE"), os.environ.get("MEMPOOL_DATA_ROOT", "~/.cache/mempool/TUDataset")]
    return any(root and (Path(root).expanduser() / name / "raw" / f"{name}_A.txt").exists() for root in roots)


def run_dataset(name: str, out: Path, folds: int, overrides: list[str]) -> float:
    """Run (or finish) the k-fold protocol on one dataset; returns this invocation's wall time in seconds."""
    command = [sys.executable, "-m", "mempool_cli", "train", f"dataset={name}", "protocol=kfold",
               f"protocol.folds={folds}", "train.progress=false", f"hydra.run.dir={out / name}", *overrides]
    print("$", " ".join(command[2:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def percent(summary: dict, key: str) -> str:
    return f"{100 * summary[key]:.1f} +- {100 * summary[key + '_std']:.1f}"


def write_table(out: Path, names: list[str], folds: int, overrides: list[str], target: Path) -> None:
    """docs/results.md from the summary.json of every finished dataset."""
    lines = [
        "# Results on TU benchmarks",
        "",
        f"Stratified {folds}-fold cross-validation (Errica et al., 2020): for each fold a stratified 10% of the",
        "training part is held out for early stopping and checkpoint selection; the test fold is evaluated once,",
        "at the best-validation epoch. Accuracy in %, mean +- sample std over the folds. Hyperparameters are the",
        "defaults of `configs/` (no tuning on test folds, none on these runs at all).",
        "",
        f"Command: `python scripts/results.py --folds {folds}{' -- ' + ' '.join(overrides) if overrides else ''}`"
        f" (torch {torch.__version__}, {os.cpu_count()} CPU cores).",
        "",
        "| dataset | mempool (ours) | val acc | Errica et al. (fair protocol) | beats Errica's best row? "
        "| MemGNN paper (selected on the held-out fold) | train time, all folds | config |",
        "|---|---|---|---|---|---|---|---|",
    ]
    beaten, short = [], []
    for name in names:
        summary_path = out / name / "summary.json"
        partial = fold_summary(fold_rows(out / name)) if (out / name / "folds.json").exists() else None
        if not summary_path.exists() and partial is None:
            reason = "not run: raw data not present here" if not raw_present(name) else "not run yet"
            lines.append(f"| {name} | ({reason}) | | {ERRICA.get(name, 'not reported')} | "
                         f"| {MEMGNN.get(name, 'not reported')} | | |")
            continue
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else partial
        mean = 100 * summary["test_acc"]
        verdict = ("yes" if mean > ERRICA_BEST[name] else "no") if name in ERRICA_BEST else "n/a"
        if not summary_path.exists():
            verdict = f"unfinished: {summary['finished']} of {folds} folds"
        elif name in ERRICA_BEST:
            (beaten if mean > ERRICA_BEST[name] else short).append(name)
        config = f"`dataset={name} protocol=kfold{' ' + ' '.join(overrides) if overrides else ''}`"
        minutes = summary["train_time_s"] / 60
        lines.append(f"| {name} | **{percent(summary, 'test_acc')}** | {percent(summary, 'val_acc')} | "
                     f"{ERRICA.get(name, 'not reported')} | {verdict} | {MEMGNN.get(name, 'not reported')} | "
                     f"{minutes:.1f} min | {config} |")
    lines += [
        "",
        f"Above Errica et al.'s best row: {', '.join(beaten) or 'none'}. Below it: {', '.join(short) or 'none'}.",
        "",
        "The MemGNN paper's numbers are the best test-fold accuracy over training epochs, which selects on the",
        "test data and overstates; they are shown for reference only. Per-fold results: `mempool summarize "
        "OUT/<dataset>`, where OUT is the script's `--out` (default `runs/results`).",
        "",
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("runs/results"))
    parser.add_argument("--table", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--table-only", action="store_true", help="only rewrite the table from the runs in --out")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every dataset (after --)")
    args = parser.parse_args()
    if args.table_only:
        write_table(args.out, args.datasets, args.folds, args.overrides, args.table)
        return
    for name in args.datasets:
        try:
            seconds = run_dataset(name, args.out, args.folds, args.overrides)
        except subprocess.CalledProcessError:
            print(f"{name}: failed (its error is above); going on with the next dataset", flush=True)
            continue
        print(f"{name}: {seconds / 60:.1f} min", flush=True)
        write_table(args.out, args.datasets, args.folds, args.overrides, args.table)
    write_table(args.out, args.datasets, args.folds, args.overrides, args.table)
    print(f"wrote {args.table}")


if __name__ == "__main__":
    main()
