"""How fast `mempool predict` is: graphs per second (reading, featurising and predicting) on the solubility set and
on a 10,000-molecule CSV made by repeating its SMILES.

    python scripts/bench_predict.py runs/solubility/<time>/checkpoint.pt [--molecules ../shared/data/molecules]
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from mempool_cli.prediction import predict


def _big_csv(source: Path, rows: int, folder: Path) -> Path:
    smiles = [row["smiles"] for row in csv.DictReader(open(source))]
    path = folder / f"molecules_{rows}.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["smiles"])
        writer.writerows([smiles[i % len(smiles)]] for i in range(rows))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--molecules", default=str(Path(__file__).resolve().parents[2] / "shared/data/molecules"))
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    folder = Path(args.molecules)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {"solubility.csv": folder / "solubility.csv",
                  "solubility.train.sdf": folder / "solubility.train.sdf",
                  f"{args.rows} SMILES": _big_csv(folder / "solubility.csv", args.rows, Path(tmp))}
        predict(args.checkpoint, str(inputs["solubility.csv"]))  # warm-up: imports, kernels
        print("| input | graphs | unreadable | seconds | graphs/s |\n|---|---|---|---|---|")
        for name, path in inputs.items():
            start = time.perf_counter()
            result = predict(args.checkpoint, str(path))
            wall = time.perf_counter() - start
            print(f"| {name} | {result['num_graphs']} | {result['unreadable']} | {wall:.2f} | "
                  f"{result['num_graphs'] / wall:.0f} |")


if __name__ == "__main__":
    main()
