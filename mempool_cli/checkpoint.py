"""Self-describing checkpoints: atomic save, safe load (``weights_only=True``), format check, clear errors."""
from __future__ import annotations

import os
import pickle
import platform
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch_geometric

from mempool_cli.errors import CheckpointError

FORMAT = "mempool-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("model_args", "model_state", "config", "dataset", "split", "metrics", "epoch")


def library_versions() -> dict[str, str]:
    """Versions of the libraries a checkpoint was written with."""
    from mempool_cli import __version__

    return {
        "mempool": __version__,
        "torch": str(torch.__version__),
        "torch_geometric": str(torch_geometric.__version__),
        "python": platform.python_version(),
    }


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` with the format tag through a temporary file and a rename (never half-written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "versions": library_versions(), **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint; a missing, truncated or foreign file raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} is not a mempool checkpoint (it cannot be loaded with weights_only=True)") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated or corrupt") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mempool checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload.get('format_version')}, this mempool reads {FORMAT_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path} is missing {', '.join(missing)}")
    return payload
