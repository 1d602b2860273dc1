"""Where a run computes: the device, the CPU threads and the seeded generators."""
from __future__ import annotations

import random
from typing import Optional

import torch

from mempool_cli.errors import ConfigError


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when it is present, else the CPU; ``cuda`` or ``cuda:<index>`` must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name} was asked for, but no CUDA device is available")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device: {name} was asked for, but there are {torch.cuda.device_count()} CUDA devices")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device: unknown value {name!r}; choose one of: auto, cpu, cuda, cuda:<index>") from exc


def set_threads(threads: Optional[int]) -> None:
    """Use ``threads`` CPU threads for PyTorch's operations (``None``: PyTorch's default, one per core)."""
    if threads is not None:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """Seed Python's and PyTorch's generators."""
    random.seed(seed)
    torch.manual_seed(seed)
