"""The run directory's files: their names, the one atomic writer every file goes through, and the checkpoint.

A reader never sees half a file: each write goes to a uniquely named temporary file in the same folder, is
flushed to disk, then renamed over the target. Checkpoints are self-describing (model spec, resolved config,
dataset recipe and feature statistics, split, metrics, library versions) and load with ``weights_only=True``.
Torch is imported only by the checkpoint functions, so the summaries that read JSON stay light.
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import math
import os
import pickle
import platform
import secrets
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import yaml

from mempool_cli.errors import CheckpointError, RunDirError

CHECKPOINT = "checkpoint.pt"  # best-validation model
LAST = "last.pt"  # last epoch, with the training state to resume from
METRICS = "metrics.json"
HISTORY = "history.csv"  # one row per epoch: every scalar that goes to TensorBoard
SPLIT = "split.json"  # holdout: the split that was trained
FOLDS = "folds.json"  # k-fold: the fold assignments
SUMMARY = "summary.json"  # k-fold: per fold and aggregated
CONFIG = "config.yaml"  # the resolved config
TENSORBOARD = "tensorboard"
FAILED = "failed.json"  # a sweep job that failed: its reason
SKIPPED = "skipped.csv"  # the input's graphs that could not be read (left out): id, reason

RUN_FILES = (CHECKPOINT, LAST, METRICS, HISTORY, SPLIT, FOLDS, SUMMARY)  # what a finished run leaves
LOCK = ".mempool.lock"

FORMAT = "mempool-checkpoint"
FORMAT_VERSION = 2  # 2: a checksum of the weights; 1 (without it) is still read
READABLE_VERSIONS = (1, 2)
CHECKSUMMED = ("model_state", "best_model_state")
REQUIRED_KEYS = ("model_args", "model_state", "config", "dataset", "split", "metrics", "epoch")


def fold_dir(run_dir: Path, fold: int) -> Path:
    """The folder of one fold of a k-fold run (numbered from 0)."""
    return Path(run_dir) / f"fold_{fold}"


@contextlib.contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Wait for and hold an exclusive lock on ``path`` (released when the holder exits, even when killed), so that
    parallel jobs do not download, parse or build the same thing at once. Where the lock file cannot be made
    (a read-only folder) nothing is held: nobody can change what is there."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def locked_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold the run directory for this process; another process writing into it is refused."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"{run_dir} is in use by another mempool process") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def finished_files(run_dir: Path) -> list[str]:
    """The files of a run (or its folds) already in ``run_dir``."""
    run_dir = Path(run_dir)
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    return found + sorted(p.name for p in run_dir.glob("fold_*") if p.is_dir())


def clear_run(run_dir: Path) -> None:
    """Delete a previous run's files from ``run_dir``: only the names mempool writes, nothing else."""
    run_dir = Path(run_dir)
    for folder in [run_dir, *sorted(run_dir.glob("fold_*"))]:
        for name in (*RUN_FILES, SKIPPED):
            (folder / name).unlink(missing_ok=True)
        shutil.rmtree(folder / TENSORBOARD, ignore_errors=True)
        if folder != run_dir and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a unique temporary file in the same folder, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # named before it exists, so that an interrupt (Ctrl-C) at any point of the write finds it to remove
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _strict(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by ``None``, so that the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value


def write_json(path: Path, payload: Any) -> None:
    """Write strict JSON atomically."""
    write_atomic(path, json.dumps(_strict(payload), indent=2, allow_nan=False))


def read_json(path: Path) -> Optional[Any]:
    """The JSON in ``path``, or ``None`` where it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as CSV with a header; keys outside ``columns`` are left out."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header (values as strings), or none where there is no file."""
    try:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        return []


def write_yaml(path: Path, payload: Any) -> None:
    """Write plain values as YAML atomically."""
    write_atomic(path, yaml.safe_dump(payload, sort_keys=False))


def read_yaml(path: Path) -> Optional[Any]:
    """The YAML in ``path`` (plain values only), or ``None`` where it is missing or unreadable."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def library_versions() -> dict[str, str]:
    """Versions of the libraries a checkpoint is written with."""
    import torch
    import torch_geometric

    from mempool_cli import __version__

    return {"mempool": __version__, "torch": str(torch.__version__),
            "torch_geometric": str(torch_geometric.__version__), "python": platform.python_version()}


def weights_checksum(payload: dict[str, Any]) -> str:
    """SHA-256 of every tensor of the payload's weights (names, dtypes, shapes and bytes)."""
    import torch

    digest = hashlib.sha256()
    for part in CHECKSUMMED:
        for name, tensor in sorted((payload.get(part) or {}).items()):
            tensor = torch.as_tensor(tensor).detach().cpu().contiguous()
            digest.update(f"{part}.{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (see :data:`REQUIRED_KEYS`) with the format tag, library versions and a checksum of the
    weights, atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "versions": library_versions(), **payload,
                "weights_sha256": weights_checksum(payload)}, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint; a missing, truncated or foreign file raises :class:`CheckpointError`."""
    import torch

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give the checkpoint file in it ({CHECKPOINT} or {LAST})")
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
    if payload.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has checkpoint format {payload.get('format_version')}, this mempool reads {FORMAT_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path} is missing {', '.join(missing)}")
    if payload["format_version"] >= 2 and payload.get("weights_sha256") != weights_checksum(payload):
        raise CheckpointError(f"{path} is corrupt: its weights do not match their checksum")
    return payload
