"""Benchmark a default training epoch (the training pass and the validation pass, as `mempool train` runs them) of
this checkout against a reference revision of mempool, both in one process, in turn, at each thread count.

The reference is the revision's own package (``git archive``), imported as ``mempool_ref`` beside ``mempool_cli``,
so both sides train the same default model on the same data with their own loader, model, optimiser and loop.
Both start from the same seed; the final line compares their accuracies after the timed epochs.

    MEMPOOL_DATA_SOURCE=../shared/data/TUDataset python scripts/bench_epoch.py --ref a839d57
"""
from __future__ import annotations

import argparse
import importlib
import io
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # as the mempool command sets it (threads wait briefly)
import torch  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402

from mempool_cli.config import register_configs, resolve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path("~/.cache/mempool-bench").expanduser()


def extract_reference(rev: str) -> Path:
    """Extract ``rev``'s ``mempool_cli`` as the package ``mempool_ref`` (imports and config targets renamed);
    returns the folder that holds it."""
    commit = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    place = CACHE / commit[:12]
    package = place / "mempool_ref"
    if not package.exists():
        archive = subprocess.run(["git", "archive", commit, "mempool_cli", "configs"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        tarfile.open(fileobj=io.BytesIO(archive)).extractall(place / "tree", filter="data")
        (place / "tree" / "mempool_cli").rename(package)
        (place / "tree" / "configs").rename(package / "configs")
        for source in [*package.rglob("*.py"), *package.rglob("*.yaml")]:
            source.write_text(source.read_text().replace("mempool_cli", "mempool_ref"))
    return place


def reference_package(rev: str) -> str:
    """``rev``'s package (:func:`extract_reference`) put on ``sys.path``; returns its name."""
    sys.path.insert(0, str(extract_reference(rev)))
    return "mempool_ref"


def default_spec(dataset: str, *overrides: str):
    """The run spec of ``mempool train dataset=<dataset> ~tuned model.dropout=0.5 [overrides]`` in this checkout:
    the model the README's figures were measured with, the generic defaults until 2026-12-07 and PROTEINS' shipped
    config (a dataset's tuned settings may change the model, e.g. ENZYMES' width; the generic defaults have had no
    dropout since)."""
    register_configs()
    with initialize_config_module(config_module="mempool_cli.configs", version_base="1.3"):
        return resolve(compose(config_name="config", overrides=[f"dataset={dataset}", "~tuned", "model.dropout=0.5",
                                                                *overrides]))


class Side:
    """One package's default training on a fixed 80/10/10 split, an epoch at a time."""

    def __init__(self, package: str, spec):
        config, data, model, loop = (importlib.import_module(f"{package}.{m}")
                                     for m in ("config", "data", "model", "loop"))
        self.engine = importlib.import_module(f"{package}.engine")
        dataset = data.Dataset.load(config.DataSpec(spec.data.name, root=config.default_data_root(),
                                                    source=config.default_data_source()))
        order = torch.randperm(len(dataset.labels), generator=torch.Generator().manual_seed(0)).tolist()
        cut = len(order) // 10
        self.split = {"test": order[:cut], "val": order[cut:2 * cut], "train": order[2 * cut:]}
        graphs = dataset.featurize(dataset.fit_features(self.split["train"]))
        torch.manual_seed(spec.seed)
        args = spec.model.model_args(graphs.num_features, graphs.num_classes, graphs.num_edge_features)
        self.model = model.model_from_args(args)
        self.state = loop.TrainState.create(self.model, spec.optim, spec.train.epochs, spec.seed)
        batch = spec.train.batch_size
        self.loaders = {part: data.make_loader(graphs, index, batch, shuffle=part == "train",
                                               generator=self.state.generator) for part, index in self.split.items()}
        if hasattr(data, "make_eval_loader"):  # since 2026-12-08 evaluation takes larger batches than training
            self.loaders.update({part: data.make_eval_loader(graphs, self.split[part]) for part in ("val", "test")})
        self.rng = torch.get_rng_state()

    def epoch(self) -> None:
        """One training epoch and one validation pass, on this side's own global RNG stream."""
        torch.set_rng_state(self.rng)
        cpu = torch.device("cpu")
        self.engine.train_epoch(self.model, self.loaders["train"], self.state.optimizer, cpu)
        self.engine.evaluate(self.model, self.loaders["val"], cpu)
        self.rng = torch.get_rng_state()

    def test_acc(self) -> float:
        return self.engine.evaluate(self.model, self.loaders["test"], torch.device("cpu"))["acc"]


def timed(sides: dict[str, Side], epochs: int) -> dict[str, float]:
    """Median seconds per epoch of each side, the sides taking turns every epoch."""
    for side in sides.values():
        side.epoch()  # warm-up (kernel loading, first allocations)
    seconds = {name: [] for name in sides}
    for _ in range(epochs):
        for name, side in sides.items():
            start = time.perf_counter()
            side.epoch()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="the reference revision (a commit, tag or branch)")
    parser.add_argument("--dataset", default="PROTEINS")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--epochs", type=int, default=10, help="timed epochs per thread count")
    args = parser.parse_args()
    spec = default_spec(args.dataset)
    reference = reference_package(args.ref)
    sides = {"reference": Side(reference, spec), "this checkout": Side("mempool_cli", spec)}
    graphs = sum(len(index) for part, index in sides["reference"].split.items() if part != "test")
    print(f"{args.dataset}, default model, torch {torch.__version__}; reference {args.ref}; "
          f"epoch = training pass + validation pass over {graphs} graphs\n")
    print("| threads | reference s / epoch | this checkout s / epoch | speed-up |\n|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        seconds = timed(sides, args.epochs)
        ratio = seconds["reference"] / seconds["this checkout"]
        print(f"| {threads} | {seconds['reference']:.3f} | {seconds['this checkout']:.3f} | **{ratio:.2f}x** |")
    accuracy = {name: side.test_acc() for name, side in sides.items()}
    print(f"\ntest accuracy after {1 + args.epochs * len(args.threads)} epochs: "
          + ", ".join(f"{name} {acc:.3f}" for name, acc in accuracy.items()))


if __name__ == "__main__":
    main()
