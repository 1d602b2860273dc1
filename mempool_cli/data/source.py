"""Graphs as every reader returns them (TU files, molecules, graph files), before featurisation.

Each graph holds its continuous node attributes ``attr`` ``[N, A]``, its categorical node values ``cat`` ``[N, C]``
as codes into the dataset's :attr:`SourceGraphs.cat_values`, optionally categorical edge values ``edge_cat``
``[E, D]`` (codes into ``edge_values``), and its class index ``y`` (-1 where the input has no label).
"""
from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Hashable, Iterator, Optional, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.data.collate import collate
from torch_geometric.data.separate import separate

from mempool_cli.errors import DataError

NO_LABEL = -1


@dataclass
class SourceGraphs:
    """The graphs of one input with their ids, class names, value tables, the input's own split (if it has one)
    and the entries that could not be read (``skipped``: id, reason, and their part of the split or ``None``)."""

    name: str
    graphs: list[Data]
    ids: list[str]
    class_names: list[str]
    attr_names: list[str] = field(default_factory=list)
    cat_names: list[str] = field(default_factory=list)
    cat_values: list[list[str]] = field(default_factory=list)
    edge_names: list[str] = field(default_factory=list)
    edge_values: list[list[str]] = field(default_factory=list)
    split: Optional[dict[str, list[int]]] = None
    skipped: list[tuple[str, str, Optional[str]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.graphs)

    def __getstate__(self) -> dict[str, Any]:
        """The graphs pickled collated, one tensor a field (as PyG stores a dataset). Graph by graph, a view into
        the dataset's large tensors would write the whole large tensor again, and a worker process would receive
        every graph's small tensors one at a time."""
        state = dict(self.__dict__)
        if len({tuple(sorted(g.keys())) for g in self.graphs}) == 1:
            data, slices, _ = collate(Data, data_list=self.graphs, increment=False, add_batch=False)
            state["graphs"] = (data, slices, len(self.graphs))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["graphs"], tuple):
            data, slices, count = state["graphs"]
            state["graphs"] = [separate(Data, batch=data, idx=i, slice_dict=slices, decrement=False)
                               for i in range(count)]
        self.__dict__.update(state)

    def part(self, name: str) -> "SourceGraphs":
        """The graphs (and the unreadable entries) in one part of the input's split; value tables kept."""
        index = self.split[name]
        return replace(self, graphs=[self.graphs[i] for i in index], ids=[self.ids[i] for i in index], split=None,
                       skipped=[entry for entry in self.skipped if str(entry[2]).strip().lower() == name])

    @property
    def labels(self) -> Tensor:
        """The class index of every graph (``-1``: unlabelled)."""
        return torch.cat([g.y.view(-1) for g in self.graphs]) if self.graphs else torch.zeros(0, dtype=torch.long)

    @property
    def labelled(self) -> bool:
        return bool(self.graphs) and bool((self.labels != NO_LABEL).all())


class Codes:
    """Codes for the values of one categorical column, in the order first seen."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, value: Any) -> int:
        return self.index.setdefault(str(value), len(self.index))

    @property
    def values(self) -> list[str]:
        return list(self.index)


def label_graphs(graphs: Sequence[Data], labels: Sequence[Hashable], what: str) -> list[str]:
    """Give each graph the class index of its label as the user wrote it; returns the class names: integers sorted
    as numbers (-1, 1), anything else as text. A label column with one class cannot be learned from and is
    refused."""
    text = [str(label).strip() for label in labels]
    names = sorted(set(text), key=_number_first)
    if len(names) < 2:
        raise DataError(f"{what}: every graph has the label {names[0]!r}; a classifier needs at least two classes"
                        if names else f"{what}: no labelled graphs")
    position = {name: i for i, name in enumerate(names)}
    for g, label in zip(graphs, text):
        g.y = torch.tensor([position[label]])
    return names


def check_read(where: Any, graphs: Sequence[Data], skipped: Sequence[tuple], skip_invalid: bool, noun: str) -> None:
    """Refuse an input whose unreadable entries (``skipped``) may not be left out, or that has nothing readable."""
    if skipped and not skip_invalid:
        raise DataError(f"{where}: {len(skipped)} {noun}s cannot be read, the first {skipped[0][0]!r}: "
                        f"{skipped[0][1]} (dataset.skip_invalid=true leaves them out)")
    if not graphs:
        raise DataError(f"{where}: no {noun} could be read" + (f" ({skipped[0][1]})" if skipped else ""))


@contextlib.contextmanager
def csv_table(path: Path, wanted: Sequence[str]) -> Iterator[csv.DictReader]:
    """The rows of a CSV file whose header has the ``wanted`` columns; a missing column is refused naming the
    columns there are, and a file that is not readable CSV text (binary, an oversized field) in one line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [column for column in wanted if column not in columns]
            if missing:
                raise DataError(f"{path} has no column {missing[0]!r} (its columns: {', '.join(columns) or 'none'})")
            yield reader
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({type(exc).__name__}: {exc})") from exc


def _number_first(text: str) -> tuple:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def user_split(values: Sequence[str], what: str) -> dict[str, list[int]]:
    """The split written in a column (``train``/``val``/``test`` per graph); a part may be empty."""
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, value in enumerate(values):
        part = str(value).strip().lower()
        part = {"valid": "val", "validation": "val", "dev": "val"}.get(part, part)
        if part not in parts:
            raise DataError(f"{what}: graph {i} is in part {value!r}; the parts are train, val, test")
        parts[part].append(i)
    return parts


def graph(edge_index: Tensor, num_nodes: int, y: int, attr: Optional[Tensor] = None, cat: Optional[Tensor] = None,
          edge_cat: Optional[Tensor] = None) -> Data:
    """One source graph with empty attribute or value tables where it has none."""
    attr = attr if attr is not None else torch.zeros(num_nodes, 0)
    cat = cat if cat is not None else torch.zeros(num_nodes, 0, dtype=torch.long)
    data = Data(edge_index=edge_index, attr=attr.float(), cat=cat.long(), y=torch.tensor([y]), num_nodes=num_nodes)
    if edge_cat is not None:
        data.edge_cat = edge_cat.long()
    return data
