"""Wall time of a k-fold run with its folds in turn against the same run with folds in parallel worker processes,
side by side (each in a fresh process and run folder), and the per-fold metrics compared. With ``--ref REV`` the
folds in turn are also run by that revision of mempool (its package extracted beside this one, as
``bench_epoch.py`` does; it must know ``protocol.workers``), in a third process.

    MEMPOOL_DATA_SOURCE=../shared/data/TUDataset python scripts/bench_folds.py --workers 2 --ref a839d57
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from bench_epoch import extract_reference


def run(folder: Path, workers: int, dataset: str, overrides: list[str], package: str = "mempool_cli",
        path: Optional[Path] = None) -> tuple[float, list[dict]]:
    """Seconds and per-fold metrics of ``mempool train dataset=<dataset> protocol=kfold threads=1
    protocol.workers=<workers>`` in ``folder``, by ``package`` (found on ``path`` when given)."""
    command = [sys.executable, "-m", package, "train", f"dataset={dataset}", "protocol=kfold", "threads=1",
               f"protocol.workers={workers}", "train.progress=false", f"hydra.run.dir={folder}", *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(path or ""),
                                                                       os.environ.get("PYTHONPATH", "")]))}
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    seconds = time.perf_counter() - start
    return seconds, json.loads((folder / "summary.json").read_text())["per_fold"]


def mean_training(folds: list[dict]) -> float:
    return sum(f["train_time_s"] for f in folds) / len(folds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="PROTEINS")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ref", help="also time this revision's folds in turn (a commit, tag or branch)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.ref:
            reference, ref_folds = run(Path(tmp) / "ref", 1, args.dataset, args.overrides, "mempool_ref",
                                       extract_reference(args.ref))
        sequential, seq_folds = run(Path(tmp) / "seq", 1, args.dataset, args.overrides)
        parallel, par_folds = run(Path(tmp) / "par", args.workers, args.dataset, args.overrides)
    differences = [(a["fold"], key, a[key], b.get(key)) for a, b in zip(seq_folds, par_folds) for key in a
                   if key != "train_time_s" and a[key] != b.get(key)]
    for fold, key, in_turn, at_once in differences:
        print(f"fold {fold}: {key} in turn {in_turn}, in parallel {at_once}")
    print("| run | wall time | mean training time of a fold | the parallel run's speed-up |\n|---|---|---|---|")
    if args.ref:
        print(f"| {args.ref}, folds in turn | {reference:.1f} s | {mean_training(ref_folds):.1f} s | "
              f"**x{reference / parallel:.2f}** |")
    print(f"| this checkout, folds in turn | {sequential:.1f} s | {mean_training(seq_folds):.1f} s | "
          f"**x{sequential / parallel:.2f}** |")
    print(f"| this checkout, {args.workers} workers | {parallel:.1f} s | {mean_training(par_folds):.1f} s | |")
    print(f"\n{args.dataset}, {len(seq_folds)} folds; the same per-fold metrics in turn and in parallel: "
          f"{'yes' if not differences else 'NO'}")


if __name__ == "__main__":
    main()
