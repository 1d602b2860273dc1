"""TU benchmarks: raw text files from the writable cache, an offline source copy, or the official download.

The graphs are parsed from the raw text files (PyG's parser) and checked for consistency. The parsed tensors are
cached beside them in a file that is only ever loaded with ``weights_only=True``: a cache file that cannot be loaded
that way, or that was made from other raw files, is rebuilt from the raw files, so nothing in a data folder is ever
unpickled. PyG's own ``processed/data.pt`` is never read.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch_geometric.data.download import download_url
from torch_geometric.data.extract import extract_zip
from torch_geometric.io import read_tu_data

from mempool_cli.artifacts import waiting_lock, write_atomic
from mempool_cli.data.source import NO_LABEL, SourceGraphs, graph
from mempool_cli.errors import DataError

log = logging.getLogger(__name__)

REQUIRED_RAW_FILES = ("A", "graph_indicator", "graph_labels")
CACHE_FILE = "mempool-graphs.pt"
CACHE_VERSION = 3  # 2: the class names; 3: node attributes and raw node labels apart


def _raw_files(raw_dir: Path, name: str) -> list[Path]:
    return sorted(raw_dir.glob(f"{name}_*.txt")) if raw_dir.is_dir() else []


def _raw_complete(raw_dir: Path, name: str) -> bool:
    return all((raw_dir / f"{name}_{part}.txt").is_file() for part in REQUIRED_RAW_FILES)


def _digest(files: list[Path]) -> str:
    """A fingerprint of the files' names and contents."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _copy_from_source(source: Path, raw_dir: Path, name: str) -> Optional[str]:
    """Copy ``<source>/<name>/raw/`` into the cache when the cache lacks it or holds other files (a corrupt or
    older copy); the source is only read, and nothing in the cache but the copied names is replaced. Returns the
    digest of the raw files now in the cache (``None`` where the source lacks the dataset)."""
    src = source / name / "raw"
    if not src.is_dir():
        return None
    if not _raw_complete(src, name):
        missing = [f"{name}_{part}.txt" for part in REQUIRED_RAW_FILES if not (src / f"{name}_{part}.txt").is_file()]
        raise DataError(f"the offline source {src} is incomplete: {', '.join(missing)} missing")
    files = _raw_files(src, name)
    digest = _digest(files)
    if _raw_files(raw_dir, name) and _digest(_raw_files(raw_dir, name)) == digest:
        return digest
    raw_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=raw_dir.parent, prefix=".raw-"))
    try:
        for file in files:  # each file replaced whole; other files in raw/ are left alone
            shutil.copyfile(file, staging / file.name)
            os.replace(staging / file.name, raw_dir / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("copied %s raw files from %s", name, src)
    return _digest(_raw_files(raw_dir, name))


def _download(name: str, url: str, raw_dir: Path, source: Optional[Path]) -> None:
    """Download ``<url>/<name>.zip`` into ``raw_dir``, through a staging folder removed on failure."""
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=raw_dir.parent, prefix=".download-"))
    address = f"{url.rstrip('/')}/{name}.zip"
    try:
        extract_zip(download_url(address, str(staging), log=False), str(staging), log=False)
        files = list((staging / name).glob(f"{name}_*.txt")) if (staging / name).is_dir() else []
        if not files:
            raise OSError(f"{name}.zip holds no {name}_*.txt files")
        raw_dir.mkdir(exist_ok=True)
        for file in files:
            os.replace(file, raw_dir / file.name)
    except Exception as exc:  # the network and zip libraries raise many kinds
        files = ", ".join(f"{name}_{part}.txt" for part in REQUIRED_RAW_FILES)
        if source is None:
            where = f"or set MEMPOOL_DATA_SOURCE to a folder that holds {name}/raw/"
        elif source.is_dir():
            where = f"(the offline source MEMPOOL_DATA_SOURCE={source} has no {name}/raw/)"
        else:
            where = f"(the offline source MEMPOOL_DATA_SOURCE={source} does not exist)"
        raise DataError(f"could not download {name} from {address} ({type(exc).__name__}: {exc}); put its raw "
                        f"files ({files}, ...) in {raw_dir}/ {where}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def _check_line_counts(raw_dir: Path, name: str) -> None:
    """Refuse raw files whose line counts disagree (one cut short), naming the file, before parsing them."""
    indicator = _lines(raw_dir / f"{name}_graph_indicator.txt")
    nodes, graphs = len(indicator), int(indicator[-1]) if indicator else 0
    expected = {"graph_labels": graphs, "node_labels": nodes, "node_attributes": nodes}
    for part, count in expected.items():
        path = raw_dir / f"{name}_{part}.txt"
        if path.is_file() and len(found := _lines(path)) != count:
            raise DataError(f"{path.name} has {len(found)} lines but {name}_graph_indicator.txt names {nodes} "
                            f"nodes in {graphs} graphs: a raw file is incomplete or corrupt")
    text = (raw_dir / f"{name}_A.txt").read_bytes().replace(b",", b" ")
    ids = np.array(text.split(), dtype=np.int64) if text.strip() else np.zeros(0, dtype=np.int64)
    if ids.size % 2 or (ids.size and (ids.min() < 1 or ids.max() > nodes)):
        raise DataError(f"{name}_A.txt names nodes outside 1..{nodes} (or has a line without two ids)")


def _check_consistent(name: str, data: Any, slices: dict, labelled: bool) -> None:
    """Refuse raw files that do not describe the same graphs (a file cut short, ids out of range)."""
    counts = slices["x"].diff() if "x" in slices else torch.as_tensor(data._num_nodes)
    graphs, nodes = counts.numel(), int(counts.sum())
    if labelled and (data.y is None or data.y.size(0) != graphs):
        found = 0 if data.y is None else data.y.size(0)
        raise DataError(f"{name}_graph_labels.txt has {found} labels but {name}_graph_indicator.txt "
                        f"names {graphs} graphs: a raw file is incomplete")
    if data.x is not None and data.x.size(0) != nodes:
        raise DataError(f"{name}_node_labels.txt or _node_attributes.txt has {data.x.size(0)} rows but "
                        f"{name}_graph_indicator.txt has {nodes} nodes: a raw file is incomplete")
    edge_graph = torch.repeat_interleave(torch.arange(graphs), slices["edge_index"].diff())
    local = data.edge_index
    if local.numel() and ((local < 0).any() or (local >= counts[edge_graph]).any()):
        raise DataError(f"{name}_A.txt names nodes outside their graph (or outside 1..{nodes})")


def _node_labels(path: Path, nodes: int) -> Optional[torch.Tensor]:
    """The node labels as the file writes them (``[N, columns]`` integers), or ``None`` without the file."""
    if not path.is_file():
        return None
    try:
        values = np.array(path.read_bytes().replace(b",", b" ").split(), dtype=np.int64)
        return torch.from_numpy(values.reshape(nodes, -1))
    except ValueError as exc:
        raise DataError(f"{path.name}: node labels must be integers, one row per node ({exc})") from exc


def _parse(raw_dir: Path, name: str) -> dict[str, Any]:
    """Parse and check the raw files; returns the tensors that the cache file holds."""
    labelled = (raw_dir / f"{name}_graph_labels.txt").is_file()
    try:
        _check_line_counts(raw_dir, name)
        data, slices, sizes = read_tu_data(str(raw_dir), name)
    except DataError:
        raise
    except Exception as exc:  # malformed numbers; PyG's parser raises many kinds
        raise DataError(f"cannot read dataset {name} in {raw_dir}: {type(exc).__name__}: {exc}") from exc
    _check_consistent(name, data, slices, labelled)
    node_counts = slices["x"].diff() if "x" in slices else torch.as_tensor(data._num_nodes)
    num_attr = sizes["num_node_attributes"]
    return {"attr": data.x[:, :num_attr] if num_attr else None, "edge_index": data.edge_index,
            "y": data.y if labelled else None, "node_counts": node_counts, "edge_counts": slices["edge_index"].diff(),
            "node_labels": _node_labels(raw_dir / f"{name}_node_labels.txt", int(node_counts.sum())),
            "class_names": _class_names(raw_dir / f"{name}_graph_labels.txt") if labelled else []}


def _class_names(path: Path) -> list[str]:
    """The labels as the file writes them, in the order of the class indices (PyG sorts them: -1, 1 -> 0, 1)."""
    return [str(label) for label in sorted({int(line) for line in _lines(path)})]


def _load_cache(path: Path, fingerprint: str) -> Optional[dict[str, Any]]:
    """The cached tensors, or ``None`` where the file is missing, not loadable as plain tensors, or stale."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # corrupt, truncated or not plain tensors: never loaded any other way
        log.warning("ignoring the dataset cache %s (%s); rebuilding it from the raw files", path, type(exc).__name__)
        return None
    if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION:
        return None
    return payload["graphs"] if payload.get("fingerprint") == fingerprint else None


def _save_cache(path: Path, fingerprint: str, graphs: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"version": CACHE_VERSION, "fingerprint": fingerprint, "graphs": graphs}, buffer)
    try:
        write_atomic(path, buffer.getvalue())
    except OSError as exc:  # a read-only or full cache: the parsed graphs are still good
        log.warning("could not write the dataset cache %s (%s)", path, exc.strerror or exc)


def _source(name: str, parsed: dict[str, Any]) -> SourceGraphs:
    """The parsed tensors as source graphs (node labels as codes into their values as written)."""
    node_counts, edge_counts = parsed["node_counts"].tolist(), parsed["edge_counts"].tolist()
    labels, attr = parsed["node_labels"], parsed["attr"]
    cat_values: list[list[str]] = []
    if labels is not None:
        columns = [labels[:, c].unique(return_inverse=True) for c in range(labels.size(1))]
        cat_values = [[str(v) for v in values.tolist()] for values, _ in columns]
        labels = torch.stack([codes for _, codes in columns], dim=1)
    no_parts = [None] * len(node_counts)
    cats = labels.split(node_counts) if labels is not None else no_parts
    attrs = attr.split(node_counts) if attr is not None else no_parts
    edges = parsed["edge_index"].split(edge_counts, dim=1)
    y = parsed["y"].tolist() if parsed["y"] is not None else [NO_LABEL] * len(node_counts)
    graphs = [graph(e, n, label, attr=a, cat=c) for n, e, label, a, c in zip(node_counts, edges, y, attrs, cats)]
    return SourceGraphs(
        name=name, graphs=graphs, ids=[str(i) for i in range(len(graphs))], class_names=parsed["class_names"],
        attr_names=[f"attribute {i}" for i in range(attr.size(1))] if attr is not None else [],
        cat_names=[f"node label {c}" if len(cat_values) > 1 else "node label" for c in range(len(cat_values))],
        cat_values=cat_values)


def _graphs(name: str, raw_dir: Path, fingerprint: Optional[str] = None) -> SourceGraphs:
    """The dataset from the cache file when it was made from these raw files (``fingerprint``: their digest,
    computed here when not given), else parsed from them."""
    fingerprint = fingerprint or _digest(_raw_files(raw_dir, name))
    cache = raw_dir.parent / "processed" / CACHE_FILE
    parsed = _load_cache(cache, fingerprint)
    if parsed is None:
        parsed = _parse(raw_dir, name)
        _save_cache(cache, fingerprint, parsed)
    return _source(name, parsed)


def load_tu_folder(path: str, name: Optional[str] = None) -> SourceGraphs:
    """A TU-format folder at any path (``NAME_A.txt``, ...; or those files under ``raw/``), read in place: nothing
    is written there. ``name`` picks the files when the folder holds several datasets."""
    folder = Path(os.path.expanduser(path))
    raw_dir = next((d for d in (folder, folder / "raw") if d.is_dir() and list(d.glob("*_A.txt"))), None)
    if raw_dir is None:
        raise DataError(f"{folder} holds no TU files (NAME_A.txt, NAME_graph_indicator.txt, ...)")
    names = sorted(f.name[: -len("_A.txt")] for f in raw_dir.glob("*_A.txt"))
    if name not in names:
        if len(names) != 1:
            raise DataError(f"{raw_dir} holds the TU datasets {', '.join(names)}; name one with dataset.name=...")
        name = names[0]
    missing = [part for part in ("A", "graph_indicator") if not (raw_dir / f"{name}_{part}.txt").is_file()]
    if missing:
        raise DataError(f"{raw_dir}: {name}_{missing[0]}.txt is missing")
    return _source(name, _parse(raw_dir, name))


def load_tudataset(name: str, root: str, source: Optional[str], url: str) -> SourceGraphs:
    """Load a TU benchmark into ``root``: from an offline ``source`` copy when it has it, else by download."""
    root_dir = Path(os.path.expanduser(root)).resolve()
    if root_dir.exists() and not root_dir.is_dir():
        raise DataError(f"the dataset cache {root_dir} (dataset.root) is a file, not a folder")
    raw_dir = root_dir / name / "raw"
    source_dir = Path(os.path.expanduser(source)) if source else None
    with waiting_lock(root_dir / f".{name}.lock"):
        digest = None
        if source_dir is not None and source_dir.is_dir():
            digest = _copy_from_source(source_dir, raw_dir, name)
        if not _raw_complete(raw_dir, name):
            _download(name, url, raw_dir, source_dir)
        return _graphs(name, raw_dir, digest)
