"""Shared fixtures: a tiny TU-format dataset written to disk, helpers to run the CLI offline, and the choice
between the compiled CPU kernels and PyTorch operations."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_TU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "TUDataset"


def write_tu_dataset(root: Path, name: str = "TINY", num_graphs: int = 48, seed: int = 0) -> Path:
    """Write a learnable two-class TU dataset: class 1 graphs are cycles, class 0 graphs are paths.

    Nodes carry 2 labels and 2 continuous attributes (offset so that standardisation matters).
    Returns the folder that holds ``<name>/raw/``.
    """
    rng = random.Random(seed)
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    edges, indicator, graph_labels, node_labels, node_attrs = [], [], [], [], []
    offset = 0
    for g in range(num_graphs):
        label = g % 2
        n = rng.randint(3, 12)
        pairs = [(i, i + 1) for i in range(n - 1)] + ([(n - 1, 0)] if label == 1 else [])
        for a, b in pairs:
            edges += [(offset + a + 1, offset + b + 1), (offset + b + 1, offset + a + 1)]
        for i in range(n):
            indicator.append(g + 1)
            node_labels.append(rng.randint(0, 1))
            node_attrs.append((100.0 + rng.random(), label + rng.gauss(0.0, 0.5)))
        graph_labels.append(label)
        offset += n
    (raw / f"{name}_A.txt").write_text("".join(f"{a}, {b}\n" for a, b in edges))
    (raw / f"{name}_graph_indicator.txt").write_text("".join(f"{g}\n" for g in indicator))
    (raw / f"{name}_graph_labels.txt").write_text("".join(f"{y}\n" for y in graph_labels))
    (raw / f"{name}_node_labels.txt").write_text("".join(f"{y}\n" for y in node_labels))
    (raw / f"{name}_node_attributes.txt").write_text("".join(f"{a:.6f}, {b:.6f}\n" for a, b in node_attrs))
    return root


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory) -> Path:
    """A read-only-by-convention folder holding ``TINY/raw/``."""
    return write_tu_dataset(tmp_path_factory.mktemp("tu_source"))


@pytest.fixture
def data_env(tmp_path, tiny_source, monkeypatch) -> dict[str, str]:
    """Environment pointing the dataset cache at a fresh folder and the offline source at the tiny dataset."""
    env = {"MEMPOOL_DATA_ROOT": str(tmp_path / "cache"), "MEMPOOL_DATA_SOURCE": str(tiny_source)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


TINY_ARGS = [  # k-fold runs of the tiny set train their folds in turn (workers cost a few seconds to start)
    "dataset=MUTAG", "dataset.name=TINY", "dataset.node_attributes=true", "model=small",
    "train.batch_size=8", "train.progress=false", "protocol.workers=1",
]


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300):
    """Run ``mempool ARGS`` in a subprocess, as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "mempool_cli", *args], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.fixture(params=["compiled", "torch"])
def implementation(request, monkeypatch):
    """The compiled CPU kernels, or PyTorch operations (what other devices and machines without a compiler use)."""
    from mempool_cli.nn import kernels

    if request.param == "torch":
        monkeypatch.setattr(kernels, "cpu_kernels", lambda: None)
    else:
        assert kernels.cpu_kernels() is not None, "the compiled kernels did not build; see the warning logged"
    return request.param
