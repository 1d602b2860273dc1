"""TU benchmarks in PyG's layout: from the writable cache, an offline source copy, or the official download."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from torch_geometric.datasets import TUDataset

from mempool_cli.errors import DataError

log = logging.getLogger(__name__)

REQUIRED_RAW_FILES = ("A", "graph_indicator", "graph_labels")


class _TUDataset(TUDataset):
    """PyG's TUDataset with the download address taken from the config."""

    def __init__(self, root: str, name: str, url: str) -> None:
        self.url = url.rstrip("/")
        super().__init__(root, name, use_node_attr=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock, so parallel jobs do not download or process one dataset at the same time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "w")
    except OSError as exc:
        raise DataError(f"cannot use {path.parent} as the dataset cache (dataset.root): {exc.strerror}") from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _raw_complete(raw_dir: Path, name: str) -> bool:
    return all((raw_dir / f"{name}_{part}.txt").is_file() for part in REQUIRED_RAW_FILES)


def _seed_from_source(source: Path, raw_dir: Path, name: str) -> None:
    """Copy ``<source>/<name>/raw/`` into the writable cache; the source itself is never written to."""
    src = source / name / "raw"
    if not _raw_complete(src, name):
        return
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=raw_dir.parent, prefix=".raw-"))
    try:
        for file in src.iterdir():
            if file.is_file():
                shutil.copyfile(file, staging / file.name)
        if raw_dir.exists():
            shutil.rmtree(raw_dir)
        staging.rename(raw_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("copied %s raw files from %s", name, src)


def load_tudataset(name: str, root: str, source: str | None, url: str) -> TUDataset:
    """Load a TU benchmark into ``root``: from an offline ``source`` copy when it has it, else by download."""
    root_dir = Path(os.path.expanduser(root)).resolve()
    raw_dir = root_dir / name / "raw"
    with _locked(root_dir / f".{name}.lock"):
        if source and not _raw_complete(raw_dir, name):
            _seed_from_source(Path(os.path.expanduser(source)), raw_dir, name)
        downloading = not _raw_complete(raw_dir, name)
        created = downloading and not raw_dir.exists()
        try:
            return _TUDataset(str(root_dir), name, url)
        except OSError as exc:
            if not downloading:
                raise DataError(f"cannot read dataset {name} in {root_dir / name}: {exc}") from exc
            if created:  # remove only what this attempt made
                shutil.rmtree(raw_dir, ignore_errors=True)
            files = ", ".join(f"{name}_{part}.txt" for part in REQUIRED_RAW_FILES)
            raise DataError(
                f"could not download {name} from {url.rstrip('/')}/{name}.zip ({exc}); "
                f"put its raw files ({files}, ...) in {raw_dir}/ "
                f"or set MEMPOOL_DATA_SOURCE to a folder that holds {name}/raw/"
            ) from exc
        except Exception as exc:  # PyG raises many kinds on malformed files
            raise DataError(f"cannot read dataset {name} in {root_dir / name}: {type(exc).__name__}: {exc}") from exc
