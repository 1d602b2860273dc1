"""Run the k-fold protocol on the TU benchmarks and write docs/results.md next to published numbers.

Each dataset is one `mempool train dataset=NAME protocol=kfold` run (the default per-dataset config plus any
extra overrides given here) in OUT/NAME; a rerun skips finished folds and resumes an interrupted one, so the
script can be stopped and started again. A dataset that cannot be loaded is reported and skipped. The table is
rewritten after every dataset from the runs' files.

With --sweep, each dataset is also a Hydra multirun of k-fold jobs over that grid in SELECT/NAME, and the table adds
Errica et al.'s model selection: in each fold, the job with the best validation accuracy, and its test accuracy.

    MEMPOOL_DATA_SOURCE=../shared/data/TUDataset python scripts/results.py
    python scripts/results.py --datasets MUTAG PROTEINS --folds 10 -- model.hidden=128
    python scripts/results.py --datasets ENZYMES --sweep model.hidden=64,128 model.dropout=0.5,0.2 \
        -- hydra/launcher=parallel threads=1
"""
from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from mempool_cli import figures
from mempool_cli.artifacts import write_atomic
from mempool_cli.sweep import fold_rows, fold_selection, fold_summary, job_dirs, sweep_rows

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
ERRICA_BEST = {"PROTEINS": (75.8, 3.7), "ENZYMES": (65.2, 6.4), "NCI1": (80.0, 1.4), "DD": (78.4, 4.5),
               "IMDB-BINARY": (71.2, 3.9)}
# the best later fair-protocol rows known (see issue 14): ENZYMES SPN (k=5), NCI1 and IMDB-BINARY Co-GNN
LATER_BEST = {"ENZYMES": (69.4, 6.2), "NCI1": (80.6, 1.1), "IMDB-BINARY": (72.2, 4.1)}
# Khasahmadi et al., "Memory-Based Graph Networks" (ICLR 2020): accuracy selected on the held-out fold.
MEMGNN = {"PROTEINS": "81.35", "ENZYMES": "75.50", "DD": "82.92"}


def raw_present(name: str) -> bool:
    """Whether the offline copy (MEMPOOL_DATA_SOURCE) or the cache (MEMPOOL_DATA_ROOT) holds the dataset."""
    roots = [os.environ.get("MEMPOOL_DATA_SOURCE"), os.environ.get("MEMPOOL_DATA_ROOT", "~/.cache/mempool/TUDataset")]
    return any(root and (Path(root).expanduser() / name / "raw" / f"{name}_A.txt").exists() for root in roots)


def run_dataset(name: str, out: Path, folds: int, overrides: list[str], sweep: list[str]) -> float:
    """Run (or finish) the k-fold protocol on one dataset, as a multirun over ``sweep`` when given; returns this
    invocation's wall time in seconds."""
    directory = f"hydra.sweep.dir={out / name}" if sweep else f"hydra.run.dir={out / name}"
    command = [sys.executable, "-m", "mempool_cli", "train", *(["-m"] if sweep else []), f"dataset={name}",
               "protocol=kfold", f"protocol.folds={folds}", "train.progress=false", directory, *overrides, *sweep]
    print("$", " ".join(command[2:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def percent(summary: dict, key: str) -> str:
    return f"{100 * summary[key]:.1f} +- {100 * summary[key + '_std']:.1f}"


def kfold_result(run_dir: Path) -> Optional[dict]:
    """Mean +- std over the finished folds of a k-fold run, with ``finished``; None when nothing has finished."""
    return fold_summary(fold_rows(run_dir)) if (run_dir / "folds.json").exists() else None


def selection_result(sweep_dir: Path) -> Optional[dict]:
    """Per-fold model selection over a sweep of k-fold jobs, with ``finished``, the time of all its jobs and
    its ``grid``; None when there is no such sweep."""
    rows = sweep_rows(sweep_dir) if sweep_dir.is_dir() else []
    selection = fold_selection(sweep_dir, rows) if rows else None
    if selection is None:
        return None
    jobs = [kfold_result(job) for job in job_dirs(sweep_dir)]
    return {**selection["summary"], "finished": selection["summary"]["folds"], "grid": grid_of(rows),
            "train_time_s": sum(job["train_time_s"] for job in jobs if job)}


def grid_of(rows: list[dict]) -> str:
    """The grid a sweep ran, from its rows, as sweep overrides (``model.hidden=64,128 model.dropout=0.5,0.2``)."""
    values: dict[str, list[str]] = {}
    for row in sorted(rows, key=lambda row: int(row["job"]) if row["job"].isdigit() else 0):
        for token in row["overrides"].split():
            key, _, value = token.partition("=")
            if value not in values.setdefault(key, []):
                values[key].append(value)
    return " ".join(f"{key}={','.join(options)}" for key, options in values.items())


def selection_cell(selected: Optional[dict], folds: int) -> str:
    if selected is None:
        return "not run"
    done = "" if selected["finished"] == folds else f" ({selected['finished']} of {folds} folds)"
    return f"**{percent(selected, 'test_acc')}**{done} over `{selected['grid']}`"


def _header(folds: int, overrides: list[str]) -> list[str]:
    """The introduction and the column heads of docs/results.md."""
    return [
        "# Results on TU benchmarks",
        "",
        f"Stratified {folds}-fold cross-validation (Errica et al., 2020): for each fold a stratified 10% of the",
        "training part is held out for early stopping and checkpoint selection; the test fold is evaluated once,",
        "at the best-validation epoch. Accuracy in %, mean +- sample std over the folds. **Defaults**: the",
        "per-dataset configs of `configs/`, untuned. **Selected per fold**: Errica et al.'s model selection over",
        "a small grid, where each fold takes the grid point with the best accuracy on that fold's validation",
        "split and reports its test accuracy; test folds never choose anything.",
        "",
        f"Command: `python scripts/results.py --folds {folds}{' -- ' + ' '.join(overrides) if overrides else ''}`"
        f" (torch {torch.__version__}, {os.cpu_count()} CPU cores), and for a dataset's grid"
        " `--datasets NAME --sweep <grid>` with the grid shown in its row.",
        "",
        "| dataset | defaults | val acc (defaults) | selected per fold | Errica et al. (fair protocol) "
        "| beats Errica's best row? | MemGNN paper (selected on the held-out fold) "
        "| train time (defaults; all grid jobs) |",
        "|---|---|---|---|---|---|---|---|",
    ]


def _row(name: str, default: Optional[dict], selected: Optional[dict], folds: int) -> tuple[str, str]:
    """One dataset's row and its verdict against Errica et al.'s best row (``yes``, ``no`` or another note)."""
    errica, memgnn = ERRICA.get(name, "not reported"), MEMGNN.get(name, "not reported")
    if default is None and selected is None:
        reason = "not run: raw data not present here" if not raw_present(name) else "not run yet"
        return f"| {name} | ({reason}) | | | {errica} | | {memgnn} | |", "n/a"
    final = selected or default
    verdict = "n/a"
    if final["finished"] < folds:
        verdict = f"unfinished: {final['finished']} of {folds} folds"
    elif name in ERRICA_BEST:
        verdict = "yes" if 100 * final["test_acc"] > ERRICA_BEST[name][0] else "no"
    times = [f"{label}{r['train_time_s'] / 60:.1f} min" for label, r in (("", default), ("grid ", selected)) if r]
    cells = [percent(default, "test_acc") if default else "", percent(default, "val_acc") if default else "",
             selection_cell(selected, folds)]
    return f"| {name} | {' | '.join(cells)} | {errica} | {verdict} | {memgnn} | {'; '.join(times)} |", verdict


def write_table(out: Path, select: Path, names: list[str], folds: int, overrides: list[str], target: Path) -> None:
    """docs/results.md from the runs (and sweeps) of every dataset."""
    lines = _header(folds, overrides)
    verdicts = {}
    for name in names:
        row, verdicts[name] = _row(name, kfold_result(out / name), selection_result(select / name), folds)
        lines.append(row)
    beaten = [name for name, verdict in verdicts.items() if verdict == "yes"]
    short = [name for name, verdict in verdicts.items() if verdict == "no"]
    lines += [
        "",
        f"Above Errica et al.'s best row: {', '.join(beaten) or 'none'}. Below it: {', '.join(short) or 'none'}."
        " (The verdict uses the per-fold selection where it was run, the defaults elsewhere.)",
        "",
        "Train times are the sums of the folds' training times; jobs that shared the cores with other jobs took",
        "longer than they would alone.",
        "",
        "The MemGNN paper's numbers are the best test-fold accuracy over training epochs, which selects on the",
        "test data and overstates; they are shown for reference only. Per-fold results: `mempool summarize "
        "OUT/<dataset>` for the defaults and `mempool summarize SELECT/<dataset>` for the grid, where OUT and",
        "SELECT are the script's `--out` and `--select-out`.",
        "",
    ]
    figure_rows = _figure_rows(out, names)
    if figure_rows:
        figures.save(figures.results_figure(figure_rows, "10-fold test accuracy: mempool defaults and published rows"),
                     target.with_suffix(".png"))
        lines += [f"![accuracy per dataset]({target.with_suffix('.png').name})", ""]
    write_atomic(target, "\n".join(lines))


def _figure_rows(out: Path, names: list[str]) -> list[dict]:
    """The bars of the results figure: mempool's defaults, Errica et al.'s best row, the best later row."""
    rows = []
    for name in names:
        default = kfold_result(out / name)
        if default is None:
            continue
        rows.append({"dataset": name, "label": "mempool defaults", "mean": 100 * default["test_acc"],
                     "std": 100 * default["test_acc_std"]})
        for label, table in (("Errica et al. best", ERRICA_BEST), ("best later fair-protocol row", LATER_BEST)):
            if name in table:
                rows.append({"dataset": name, "label": label, "mean": table[name][0], "std": table[name][1]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("runs/results"))
    parser.add_argument("--sweep", nargs="+", default=[], help="Hydra sweep overrides of the selection grid")
    parser.add_argument("--select-out", type=Path, default=Path("runs/results-select"))
    parser.add_argument("--table", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--table-only", action="store_true", help="only rewrite the table from the runs in --out")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (after --)")
    args = parser.parse_args()
    table = functools.partial(write_table, args.out, args.select_out, args.datasets, args.folds, args.overrides,
                              args.table)
    if args.table_only:
        table()
        return
    for name in args.datasets:
        plan = [(args.out, [])] + ([(args.select_out, args.sweep)] if args.sweep else [])
        for out, sweep in plan:
            try:
                seconds = run_dataset(name, out, args.folds, args.overrides, sweep)
            except subprocess.CalledProcessError:
                print(f"{name}: failed (its error is above); going on", flush=True)
                continue
            print(f"{name}{' grid' if sweep else ''}: {seconds / 60:.1f} min", flush=True)
            table()
    table()
    print(f"wrote {args.table}")


if __name__ == "__main__":
    main()
