"""What datasets there are: the shipped presets, the datasets in the cache and in the offline source (reads files
only; no torch)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Optional


CONFIG_GROUPS = ("dataset", "model", "optim", "train", "protocol", "hydra/launcher", "hydra/sweeper")


def configs_root() -> Any:
    """The shipped configs: the installed package's ``mempool_cli.configs``, or ``configs/`` of a source checkout
    run without installing."""
    try:
        return resources.files("mempool_cli.configs")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "configs"


def _choices(group: str) -> list[str]:
    """The choices of one config group: the YAML files of ``configs/<group>/``, sorted."""
    folder = configs_root().joinpath(*group.split("/"))
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def config_choices() -> dict[str, list[str]]:
    """Each config group's choices."""
    return {group: _choices(group) for group in CONFIG_GROUPS}


def preset_names() -> set[str]:
    """The datasets with a config in ``configs/dataset/`` (found in the installed package)."""
    from mempool_cli.config import DATA_KINDS  # entries of configs/dataset/ that are kinds of input, not presets

    return set(_choices("dataset")) - set(DATA_KINDS)


def _raw_datasets(folder: Optional[Path]) -> dict[str, Path]:
    """The TU datasets under ``folder`` (``<NAME>/raw/<NAME>_graph_labels.txt``), by name."""
    if folder is None or not folder.is_dir():
        return {}
    return {d.name: d / "raw" for d in folder.iterdir() if (d / "raw" / f"{d.name}_graph_labels.txt").is_file()}


def _counts(raw: Path, name: str) -> tuple[int, int]:
    """Graphs and classes of a dataset's raw files."""
    labels = [line.strip() for line in (raw / f"{name}_graph_labels.txt").read_text().splitlines() if line.strip()]
    return len(labels), len(set(labels))


def dataset_rows(root: Path, source: Optional[Path]) -> list[dict[str, Any]]:
    """One row per dataset that has a preset, is in the cache ``root`` or in the offline ``source``."""
    presets = preset_names()
    cached, offline = _raw_datasets(root), _raw_datasets(source)
    rows = []
    for name in sorted(presets | cached.keys() | offline.keys()):
        raw = cached.get(name) or offline.get(name)
        graphs, classes = _counts(raw, name) if raw else ("", "")
        rows.append({"dataset": name, "preset": "yes" if name in presets else "",
                     "cache": "yes" if name in cached else "", "source": "yes" if name in offline else "",
                     "graphs": graphs, "classes": classes})
    return rows
