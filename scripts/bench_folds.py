"""Wall time of a k-fold run with its folds in turn against the same run with folds in parallel worker processes,
side by side (each in a fresh process and run folder), and the per-fold metrics compared.

    MEMPOOL_DATA_SOURCE=../shared/data/TUDataset python scripts/bench_folds.py --workers 2 -- train.epochs=30
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(folder: Path, workers: int, dataset: str, overrides: list[str]) -> tuple[float, list[dict]]:
    command = [sys.executable, "-m", "mempool_cli", "train", f"dataset={dataset}", "protocol=kfold", "threads=1",
               f"protocol.workers={workers}", "train.progress=false", f"hydra.run.dir={folder}", *overrides]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return seconds, json.loads((folder / "summary.json").read_text())["per_fold"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="PROTEINS")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sequential, seq_folds = run(Path(tmp) / "seq", 1, args.dataset, args.overrides)
        parallel, par_folds = run(Path(tmp) / "par", args.workers, args.dataset, args.overrides)
    differences = [(a["fold"], key, a[key], b.get(key)) for a, b in zip(seq_folds, par_folds) for key in a
                   if key != "train_time_s" and a[key] != b.get(key)]
    for fold, key, in_turn, at_once in differences:
        print(f"fold {fold}: {key} in turn {in_turn}, in parallel {at_once}")
    same = not differences
    per_fold = sum(f["train_time_s"] for f in seq_folds) / len(seq_folds)
    print(f"| {args.dataset} {len(seq_folds)} folds | in turn {sequential:.1f} s | {args.workers} workers "
          f"{parallel:.1f} s | x{sequential / parallel:.2f} | per-fold training {per_fold:.1f} s | "
          f"same per-fold metrics: {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
