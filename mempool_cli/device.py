"""Where a run computes: the device, the CPU threads and the seeded generators."""
from __future__ import annotations

import os
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


def free_cores() -> int:
    """The cores not busy with other work right now (at least 1): all of them less the 1-minute load average."""
    cores = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except OSError:  # no load average on this platform
        busy = 0
    return max(1, cores - busy)


def set_threads(threads: Optional[int]) -> None:
    """Use ``threads`` CPU threads for PyTorch's operations; ``None``: as many as there are free cores, so that
    threads do not wait on cores that other processes hold."""
    torch.set_num_threads(threads if threads is not None else min(torch.get_num_threads(), free_cores()))


def seed_everything(seed: int) -> None:
    """Seed Python's and PyTorch's generators."""
    random.seed(seed)
    torch.manual_seed(seed)
