"""A folder of graph files that networkx reads (GraphML, GML, edge lists, adjacency lists) with ``labels.csv``.

``labels.csv`` maps each file (a name inside the folder) to its label, optionally to a part of the user's split.
Node attributes in the files become features: attributes whose values are all floats are continuous, any other
attribute (integers, text, booleans) is categorical. Graphs are read as undirected.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch

from mempool_cli.data.source import NO_LABEL, Codes, SourceGraphs, check_read, csv_table, graph, label_graphs
from mempool_cli.data.source import user_split
from mempool_cli.errors import DataError

LABELS_FILE = "labels.csv"


def _readers() -> dict[str, Callable]:
    import networkx as nx

    def gml(path: Path) -> Any:  # nodes named by their labels where every node has one, else by their ids
        try:
            return nx.read_gml(path)
        except nx.NetworkXError:
            return nx.read_gml(path, label="id")

    return {".graphml": nx.read_graphml, ".gml": gml,
            ".edgelist": lambda path: nx.read_edgelist(path, data=False),
            ".edges": lambda path: nx.read_edgelist(path, data=False), ".adjlist": nx.read_adjlist}


def _file_in(folder: Path, name: str) -> Path:
    """The file ``name`` of ``folder``; a name that leads out of the folder is refused."""
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise DataError(f"{folder / LABELS_FILE}: {name!r} is not a file inside {folder}")
    return path


def _rows(folder: Path, spec: Any, labelled: bool) -> list[dict[str, str]]:
    """The rows of ``labels.csv`` (without one and unlabelled: every graph file of the folder)."""
    table = folder / LABELS_FILE
    if not table.is_file():
        if labelled:
            raise DataError(f"{folder} has no {LABELS_FILE} (columns: file,{spec.label_column}) naming each "
                            "graph file and its label")
        suffixes = set(_readers())
        return [{"file": f.name} for f in sorted(folder.iterdir()) if f.suffix.lower() in suffixes]
    wanted = ["file"] + [c for c in (spec.label_column if labelled else None, spec.split_column) if c]
    with csv_table(table, wanted) as reader:
        return list(reader)


def _read(path: Path, readers: dict[str, Callable]) -> Any:
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"unknown graph file type {path.suffix!r} (read: {', '.join(readers)})")
    if not path.is_file():
        raise ValueError("no such file")
    return reader(path).to_undirected()


def _kinds(nx_graphs: list[Any]) -> tuple[list[str], list[str]]:
    """The continuous and the categorical node attributes of the graphs (names sorted)."""
    values: dict[str, set[type]] = {}
    for g in nx_graphs:
        for _, attrs in g.nodes(data=True):
            for key, value in attrs.items():
                values.setdefault(key, set()).add(type(value))
    continuous = sorted(k for k, types in values.items() if types == {float})
    return continuous, sorted(k for k in values if k not in continuous)


def _to_graph(g: Any, continuous: list[str], categorical: list[str], codes: list[Codes]) -> Any:
    nodes = list(g.nodes)
    position = {node: i for i, node in enumerate(nodes)}
    pairs = [(position[a], position[b]) for a, b in g.edges() if a != b]
    edge_index = torch.tensor(pairs + [(j, i) for i, j in pairs], dtype=torch.long).view(-1, 2).t().contiguous()
    data = [g.nodes[node] for node in nodes]
    missing = next((k for k in continuous for attrs in data if k not in attrs), None)
    if missing is not None:
        raise ValueError(f"a node has no value of the attribute {missing!r}")
    attr = torch.tensor([[attrs[k] for k in continuous] for attrs in data], dtype=torch.float)
    cat = torch.tensor([[code(attrs.get(k, "")) for code, k in zip(codes, categorical)] for attrs in data],
                       dtype=torch.long)
    attr, cat = attr.reshape(len(nodes), len(continuous)), cat.reshape(len(nodes), len(categorical))
    return graph(edge_index, len(nodes), NO_LABEL, attr=attr, cat=cat)


def read_graph_files(spec: Any, labelled: bool = True) -> SourceGraphs:
    """The graphs of the folder ``spec.path`` with their labels from ``labels.csv`` (optional unlabelled)."""
    folder = Path(spec.path).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (dataset=graphs reads a folder of graph files)")
    rows, readers = _rows(folder, spec, labelled), _readers()
    read, skipped = [], []
    for row in rows:
        try:
            read.append((row, _read(_file_in(folder, row["file"]), readers)))
        except DataError:
            raise
        except Exception as exc:  # networkx and the XML parser raise many kinds
            skipped.append((row["file"], f"{type(exc).__name__}: {exc}", row.get(spec.split_column or "")))
    continuous, categorical = _kinds([g for _, g in read])
    codes = [Codes() for _ in categorical]
    graphs, kept = [], []
    for row, g in read:
        try:
            graphs.append(_to_graph(g, continuous, categorical, codes))
            kept.append(row)
        except (ValueError, TypeError) as exc:
            skipped.append((row["file"], str(exc), row.get(spec.split_column or "")))
    check_read(folder, graphs, skipped, spec.skip_invalid, "graph file")
    class_names = _set_labels(graphs, kept, spec, folder, labelled)
    split = user_split([r[spec.split_column] for r in kept], f"{folder / LABELS_FILE} column {spec.split_column!r}") \
        if spec.split_column else None
    return SourceGraphs(name=spec.name, graphs=graphs, ids=[r["file"] for r in kept], class_names=class_names,
                        attr_names=continuous, cat_names=categorical, cat_values=[c.values for c in codes],
                        split=split, skipped=skipped)


def _set_labels(graphs: list, rows: list[dict], spec: Any, folder: Path, labelled: bool) -> list[str]:
    labels: list[Optional[str]] = [row.get(spec.label_column) for row in rows]
    unlabelled = [row["file"] for row, label in zip(rows, labels) if label in (None, "")]
    if unlabelled and not labelled:
        return []
    if unlabelled:
        raise DataError(f"{folder / LABELS_FILE}: {unlabelled[0]} has no {spec.label_column}")
    return label_graphs(graphs, labels, f"{folder / LABELS_FILE} column {spec.label_column!r}")
