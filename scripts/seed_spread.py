"""How much a dataset's 10-fold mean moves with the seed: the shipped config's k-fold run at several seeds (each
seed draws its own folds, initialisation, batches and dropout masks), beside the best published fair-protocol rows.

Each (dataset, seed) is one `mempool train dataset=NAME protocol=kfold seed=K` run in OUT/NAME/seed<K>; a rerun
skips finished folds. The table (markdown) goes to --table after every run.

    MEMPOOL_DATA_SOURCE=../shared/data/TUDataset python scripts/seed_spread.py --datasets PROTEINS ENZYMES -- threads=1
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from mempool_cli.artifacts import write_atomic
from results import ERRICA_BEST, LATER_BEST, dataset_overrides, kfold_result, published


def run_seed(name: str, seed: int, out: Path, overrides: list[str]) -> None:
    """Run (or finish) the shipped config's k-fold protocol on one dataset at one seed."""
    command = [sys.executable, "-m", "mempool_cli", "train", *dataset_overrides(name), "protocol=kfold", f"seed={seed}",
               "train.progress=false", f"hydra.run.dir={out / name / f'seed{seed}'}", *overrides]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def spread_row(name: str, results: dict[int, dict], folds: int) -> str:
    """One dataset's row: each seed's mean +- std, then the mean, lowest and highest of the seeds' means."""
    means = [100 * results[seed]["test_acc"] for seed in sorted(results)]
    cells = [f"{100 * r['test_acc']:.1f} +- {100 * r['test_acc_std']:.1f}"
             + ("" if r["finished"] == folds else f" ({r['finished']} of {folds} folds)")
             for _, r in sorted(results.items())]
    spread = f"{statistics.mean(means):.1f} ({min(means):.1f}-{max(means):.1f})"
    return (f"| {name} | {', '.join(map(str, sorted(results)))} | {'; '.join(cells)} | {spread} | "
            f"{published(ERRICA_BEST, name)} | {published(LATER_BEST, name)} |")


def write_table(out: Path, names: list[str], folds: int, target: Path, overrides: list[str]) -> None:
    """The seed-spread table of every dataset with a finished fold in ``out``."""
    rows = []
    for name in names:
        results = {int(run.name.removeprefix("seed")): kfold_result(run)
                   for run in sorted((out / name).glob("seed*")) if run.name.removeprefix("seed").isdigit()}
        results = {seed: result for seed, result in results.items() if result is not None}
        if results:
            rows.append(spread_row(name, results, folds))
    run = f"mempool train dataset=NAME protocol=kfold seed=K {' '.join(overrides)}".rstrip()
    lines = ["# How far a 10-fold mean moves with the seed", "",
             "Each dataset's shipped config, `protocol=kfold` at several seeds: each seed draws its own stratified "
             "folds, initialisation, batch order and dropout masks. Seed 0 is the shipped config's run in "
             "[results.md](results.md). "
             "Test accuracy in %, mean +- sample std over the folds; the spread of the seeds' means is what a "
             "comparison with one published mean has to clear.", "",
             "| dataset | seeds | test accuracy per seed (mean +- std over the folds) | mean of the seeds' means "
             "(lowest-highest) | best row of Errica et al. | best later fair-protocol row |",
             "|---|---|---|---|---|---|", *rows, "", f"Each run: `{run}`.", ""]
    write_atomic(target, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("runs/seeds"))
    parser.add_argument("--table", type=Path, default=Path("docs/seed_spread.md"))
    parser.add_argument("--table-only", action="store_true", help="only rewrite the table from the runs in --out")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (after --)")
    args = parser.parse_args()
    for name in [] if args.table_only else args.datasets:
        for seed in args.seeds:
            try:
                run_seed(name, seed, args.out, [f"protocol.folds={args.folds}", *args.overrides])
            except subprocess.CalledProcessError:
                print(f"{name} seed {seed}: failed (its error is above); going on", flush=True)
            write_table(args.out, args.datasets, args.folds, args.table, args.overrides)
    write_table(args.out, args.datasets, args.folds, args.table, args.overrides)
    print(f"wrote {args.table}")


if __name__ == "__main__":
    main()
