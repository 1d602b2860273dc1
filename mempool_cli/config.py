"""Configuration: the Hydra schema, the registries of choices, and the run specification resolved from it.

Hydra composes a config against the schema, refusing unknown keys and ill-typed values. :func:`resolve` then turns
it into frozen specs, once, at the command-line boundary: each spec checks its own values as it is built and names
the key of an impossible one. Checkpoints store the specs' plain values, so a spec read back from a checkpoint is
checked the same way. Nothing here imports torch.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, get_type_hints

from omegaconf import DictConfig, OmegaConf

from mempool_cli.errors import ConfigError

# Registries: the one list of each choice, used by the schema's checks, the error messages and the builders
# (model.py, loop.py, data/), which look their builders up under these names.
ENCODERS = ("gat", "gcn", "gin", "gine")  # gine: GIN with edge features (molecules' bonds)
NORMS = ("batch", "layer", "none")
MEMORY_IMPLS = ("fast", "pyg")
DEGREE_FEATURES = ("auto", "none", "onehot")
DATA_KINDS = ("tu", "molecules", "graphs")
KL_SCHEDULES = ("paper", "assign", "joint")
OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("none", "plateau", "cosine")
PROTOCOLS = ("holdout", "kfold")
MEMORY_NORMS = ("none", "sphere", "batch")
KEY_INITS = ("uniform", "kmeans")
READOUTS = ("none", "sum", "mean", "sum_mean")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def registry(names: tuple[str, ...], **builders: Callable) -> dict[str, Callable]:
    """The builders of one registry above, by name; a builder missing or extra is a programming error."""
    if set(builders) != set(names):
        raise AssertionError(f"builders {sorted(builders)} do not match the registry {sorted(names)}")
    return builders


DEFAULT_DATA_ROOT = "~/.cache/mempool/TUDataset"
DEFAULT_DATA_URL = "https://www.chrsmrrs.com/graphkerneldatasets"
MAX_SEED = 2**32 - 1
# settings that do not change what a run computes: left out when runs are compared (k-fold reruns, resume)
NOT_RESULT_SETTINGS = ("dataset.root", "dataset.source", "dataset.url", "train.resume", "train.progress",
                       "train.overwrite", "protocol.workers")


def default_data_root() -> str:
    """The dataset cache used when none is named: ``$MEMPOOL_DATA_ROOT`` or ``~/.cache/mempool/TUDataset``."""
    return os.environ.get("MEMPOOL_DATA_ROOT", DEFAULT_DATA_ROOT)


def default_data_source() -> Optional[str]:
    """The offline copy of the TU datasets named by ``$MEMPOOL_DATA_SOURCE``, if any."""
    return os.environ.get("MEMPOOL_DATA_SOURCE") or None


# ---------------------------------------------------------------------------------------------------------------
# The Hydra schema: every key typed, so Hydra refuses unknown keys and ill-typed values while composing. The
# model's is written out (its YAML shape differs from ModelSpec: per-layer values are spelled out when resolved);
# the other groups are made from their specs below.


@dataclass
class MemoryConfig:
    clusters: List[int] = field(default_factory=lambda: [10, 1])
    hidden: int = 64
    heads: int = 5
    tau: float = 1.0
    heads_per_layer: Optional[List[int]] = None
    tau_per_layer: Optional[List[float]] = None
    impl: str = "fast"
    norm: str = "none"
    radius: float = 3.0
    head_init: Optional[float] = None
    key_init: str = "uniform"
    reseed: float = 0.0


@dataclass
class ModelConfig:
    encoder: str = "gin"
    hidden: int = 64
    layers: int = 3
    dropout: float = 0.5
    norm: str = "batch"
    readout: str = "none"
    memory: MemoryConfig = field(default_factory=MemoryConfig)


# ---------------------------------------------------------------------------------------------------------------
# Value checks: each raises a ConfigError that starts with the key.


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    """Refuse a value that is not one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r}; choose one of: {', '.join(choices)}")


def _finite(key: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value}")


def _positive(key: str, value: Any, strict: bool = True) -> None:
    _finite(key, value)
    if value <= 0 if strict else value < 0:
        raise ConfigError(f"{key}: must be {'> 0' if strict else '>= 0'}, got {value}")


def _fraction(key: str, value: float) -> None:
    _finite(key, value)
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{key}: must be in [0, 1), got {value}")


MAX_WALK_STEPS = 64  # dataset.random_walk: the longest random walk whose return probabilities are node features

PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def check_plain_name(key: str, value: str) -> None:
    """Refuse a name that could leave its folder when used as a path part (``..``, ``/``, ``~``, spaces)."""
    if not PLAIN_NAME.fullmatch(value or "") or value in (".", "..") or ".." in value:
        raise ConfigError(f"{key}: {value!r} is not a plain name (letters, digits, '_', '-', '.'; no '..')")


# ---------------------------------------------------------------------------------------------------------------
# The run specification: frozen, checked when built.


def dataset_name(name: Optional[str], kind: str, path: Optional[str]) -> str:
    """The dataset's name: ``name`` when given, else taken from ``path`` (a TU folder's file prefix, a file's or
    folder's stem), made a plain name."""
    if name:
        return name
    if not path:
        return kind
    folder = Path(os.path.expanduser(path))
    if kind == "tu":
        prefixes = {f.name[: -len("_graph_indicator.txt")] for d in (folder, folder / "raw") if d.is_dir()
                    for f in d.glob("*_graph_indicator.txt")}
        if len(prefixes) == 1:
            return prefixes.pop()
    stem = folder.parent.name if folder.name == "raw" else folder.stem
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", stem).strip(".") or kind


@dataclass(frozen=True)
class DataSpec:
    """Which dataset (a TU benchmark by name or folder, a molecules file, a folder of graph files), where it is
    cached and found, how its files are read, and its node-feature recipe (``None``/``auto``: what the data has)."""

    name: Optional[str] = None
    kind: str = "tu"
    path: Optional[str] = None
    root: str = DEFAULT_DATA_ROOT
    source: Optional[str] = None
    url: str = DEFAULT_DATA_URL
    smiles_column: str = "smiles"
    label_column: str = "label"
    split_column: Optional[str] = None
    id_column: Optional[str] = None
    skip_invalid: bool = True
    node_attributes: Optional[bool] = None
    node_labels: Optional[bool] = None
    degree: str = "auto"
    max_degree: int = 64
    random_walk: int = 0

    def __post_init__(self) -> None:
        check_choice("dataset.kind", self.kind, DATA_KINDS)
        if self.kind != "tu" and not self.path:
            raise ConfigError(f"dataset.path: dataset={self.kind} reads its graphs from a file or folder; "
                              f"name it with dataset.path=...")
        if self.kind == "tu" and not (self.name or self.path):
            raise ConfigError("dataset.name: name a TU dataset (dataset.name=AIDS) or a folder (dataset.path=DIR)")
        object.__setattr__(self, "name", dataset_name(self.name, self.kind, self.path))
        check_plain_name("dataset.name", self.name)
        check_choice("dataset.degree", self.degree, DEGREE_FEATURES)
        _positive("dataset.max_degree", self.max_degree)
        if not 0 <= self.random_walk <= MAX_WALK_STEPS:
            raise ConfigError(f"dataset.random_walk: must be a number of steps from 0 (off) to {MAX_WALK_STEPS}, "
                              f"got {self.random_walk}")

    # what a checkpoint records to read and featurise new graphs the same way
    RECIPE_KEYS = ("name", "kind", "smiles_column", "label_column", "split_column", "id_column", "node_attributes",
                   "node_labels", "degree", "max_degree", "random_walk")

    def recipe(self) -> dict[str, Any]:
        """The reading and feature settings (what a checkpoint must know to featurise new graphs the same way)."""
        return {key: getattr(self, key) for key in self.RECIPE_KEYS}


@dataclass(frozen=True)
class ModelSpec:
    """The classifier's architecture, per-layer memory settings spelled out (field names as in ``model_args``)."""

    encoder: str = "gin"
    hidden: int = 64
    layers: int = 3
    dropout: float = 0.5
    norm: str = "batch"
    clusters: tuple[int, ...] = (10, 1)
    memory_hidden: int = 64
    heads: tuple[int, ...] = (5, 5)
    tau: tuple[float, ...] = (1.0, 1.0)
    memory_impl: str = "fast"
    memory_norm: str = "none"
    memory_radius: float = 3.0
    head_init: Optional[float] = None
    key_init: str = "uniform"
    key_reseed: float = 0.0
    readout: str = "none"

    def __post_init__(self) -> None:
        check_choice("model.encoder", self.encoder, ENCODERS)
        check_choice("model.readout", self.readout, READOUTS)
        check_choice("model.memory.norm", self.memory_norm, MEMORY_NORMS)
        check_choice("model.memory.key_init", self.key_init, KEY_INITS)
        _positive("model.memory.radius", self.memory_radius)
        _fraction("model.memory.reseed", self.key_reseed)
        if self.head_init is not None:
            _finite("model.memory.head_init", self.head_init)
        check_choice("model.norm", self.norm, NORMS)
        check_choice("model.memory.impl", self.memory_impl, MEMORY_IMPLS)
        _positive("model.hidden", self.hidden)
        _positive("model.memory.hidden", self.memory_hidden)
        _positive("model.layers", self.layers, strict=False)  # 0: no message passing (the paper's GMN)
        _fraction("model.dropout", self.dropout)
        if not self.clusters:
            raise ConfigError("model.memory.clusters: needs at least one memory layer, got []")
        for key, values in (("clusters", self.clusters), ("heads", self.heads), ("tau", self.tau)):
            if len(values) != len(self.clusters):
                raise ConfigError(f"model.memory.{key}_per_layer: needs one entry per memory layer "
                                  f"({len(self.clusters)}), got {len(values)}")
            for i, value in enumerate(values):
                _positive(f"model.memory.{key}[{i}]", value)

    def model_args(self, num_features: int, num_classes: int, num_edge_features: int = 0) -> dict[str, Any]:
        """The model's constructor arguments as plain values (a checkpoint's ``model_args``)."""
        if self.encoder == "gine" and not num_edge_features:
            raise ConfigError("model.encoder: gine uses edge features, and this data has none (molecules have "
                              "bond features); choose gin, gcn or gat")
        plain = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}
        edges = {"num_edge_features": num_edge_features} if self.encoder == "gine" else {}
        return {"num_features": num_features, "num_classes": num_classes, **edges, **plain}

    @classmethod
    def from_model_args(cls, args: Mapping[str, Any]) -> "ModelSpec":
        """The spec inside a checkpoint's ``model_args`` (checked as any spec)."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: tuple(value) if isinstance(value, list) else value
                      for key, value in args.items() if key in names})


@dataclass(frozen=True)
class OptimSpec:
    """Optimiser and learning-rate scheduler."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "plateau"
    factor: float = 0.5
    scheduler_patience: int = 10
    min_lr: float = 1e-5
    memory_lr: Optional[float] = None  # the memory keys' own learning rate (None: lr)

    def __post_init__(self) -> None:
        check_choice("optim.name", self.name, OPTIMIZERS)
        if self.memory_lr is not None:
            _positive("optim.memory_lr", self.memory_lr)
        check_choice("optim.scheduler", self.scheduler, SCHEDULERS)
        _positive("optim.lr", self.lr)
        _positive("optim.weight_decay", self.weight_decay, strict=False)
        _fraction("optim.factor", self.factor)
        _positive("optim.scheduler_patience", self.scheduler_patience)
        _positive("optim.min_lr", self.min_lr, strict=False)


@dataclass(frozen=True)
class TrainSpec:
    """The training loop: length, batches, early stopping, the KL schedule, resume and display."""

    epochs: int = 200
    batch_size: int = 32
    patience: int = 50
    kl_schedule: str = "paper"
    kl_weight: float = 1.0
    resume: Optional[str] = None
    progress: bool = True
    overwrite: bool = False  # replace a finished run in the run directory

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "patience"):
            _positive(f"train.{key}", getattr(self, key))
        check_choice("train.kl_schedule", self.kl_schedule, KL_SCHEDULES)
        _positive("train.kl_weight", self.kl_weight, strict=False)


@dataclass(frozen=True)
class ProtocolSpec:
    """Holdout or k-fold, with the sizes of the parts and an optional split file to reuse."""

    name: str = "holdout"
    folds: int = 10
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_file: Optional[str] = None
    workers: Optional[int] = None  # k-fold: folds trained at once (None: as many as free cores allow)

    def __post_init__(self) -> None:
        check_choice("protocol.name", self.name, PROTOCOLS)
        if self.workers is not None:
            _positive("protocol.workers", self.workers)
        _fraction("protocol.val_fraction", self.val_fraction)
        _fraction("protocol.test_fraction", self.test_fraction)
        _positive("protocol.val_fraction", self.val_fraction)
        if self.name == "holdout":
            _positive("protocol.test_fraction", self.test_fraction)
            if self.val_fraction + self.test_fraction >= 1.0:
                raise ConfigError("protocol.val_fraction + protocol.test_fraction: must be < 1")
        if self.name == "kfold" and self.folds < 2:
            raise ConfigError(f"protocol.folds: must be >= 2, got {self.folds}")


@dataclass(frozen=True)
class RunSpec:
    """Everything a run needs, resolved and checked once; ``config`` is the composed config it came from
    (written to ``config.yaml`` and into checkpoints)."""

    data: DataSpec
    model: ModelSpec
    optim: OptimSpec
    train: TrainSpec
    protocol: ProtocolSpec
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None
    config: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed: must be in [0, {MAX_SEED}], got {self.seed}")
        if not DEVICE_PATTERN.fullmatch(str(self.device)):
            raise ConfigError(f"device: unknown value {self.device!r}; choose one of: auto, cpu, cuda, cuda:<index>")
        if self.threads is not None:
            _positive("threads", self.threads)


# The rest of the Hydra schema: the specs' own fields, as mutable dataclasses (Hydra applies overrides to them).


def _schema(spec: type, **defaults: Any) -> type:
    """A mutable Hydra schema with the fields of a frozen spec (its defaults, or those given)."""
    hints = get_type_hints(spec)
    return make_dataclass(spec.__name__.replace("Spec", "Config"), [
        (f.name, hints[f.name], field(default=defaults.get(f.name, f.default))) for f in fields(spec)])


DatasetConfig = _schema(DataSpec, root=f"${{oc.env:MEMPOOL_DATA_ROOT,'{DEFAULT_DATA_ROOT}'}}",
                        source="${oc.env:MEMPOOL_DATA_SOURCE,null}")
OptimConfig = _schema(OptimSpec)
TrainConfig = _schema(TrainSpec)
ProtocolConfig = _schema(ProtocolSpec)


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None


def register_configs() -> None:
    """Register the schema so that ``configs/config.yaml`` can extend it."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="schema", node=Config)
    OmegaConf.register_new_resolver("mempool.dataset_name", dataset_name, replace=True)


def _model_spec(model: Mapping[str, Any]) -> ModelSpec:
    memory = model["memory"]
    layers = len(memory["clusters"])
    return ModelSpec(
        encoder=model["encoder"], hidden=model["hidden"], layers=model["layers"], dropout=model["dropout"],
        norm=model["norm"], clusters=tuple(memory["clusters"]), memory_hidden=memory["hidden"],
        heads=tuple(memory["heads_per_layer"] or [memory["heads"]] * layers),
        tau=tuple(float(t) for t in (memory["tau_per_layer"] or [memory["tau"]] * layers)),
        memory_impl=memory["impl"], memory_norm=memory["norm"], memory_radius=memory["radius"],
        head_init=memory["head_init"], key_init=memory["key_init"], key_reseed=memory["reseed"],
        readout=model["readout"],
    )


def unknown_keys(config: Mapping[str, Any], schema: type = Config, prefix: str = "") -> list[str]:
    """The dotted keys of ``config`` that the schema does not have (Hydra lets ``+key=value`` add them)."""
    known = {f.name: f for f in fields(schema)}
    unknown = []
    for key, value in config.items():
        if key not in known:
            unknown.append(prefix + key)
        elif isinstance(value, Mapping) and isinstance(known[key].default_factory, type):
            unknown += unknown_keys(value, known[key].default_factory, f"{prefix}{key}.")
    return unknown


def resolve_container(config: Mapping[str, Any]) -> RunSpec:
    """The run specification of a composed config given as plain values (``config.yaml``, a checkpoint)."""
    unknown = unknown_keys(config)
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a mempool setting (see `mempool train --cfg job` for the keys)")
    try:
        return RunSpec(
            data=DataSpec(**config["dataset"]), model=_model_spec(config["model"]), optim=OptimSpec(**config["optim"]),
            train=TrainSpec(**config["train"]), protocol=ProtocolSpec(**config["protocol"]), seed=config["seed"],
            device=config["device"], threads=config["threads"], config=dict(config),
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"config: not a mempool config ({type(exc).__name__}: {exc})") from exc


def resolve(cfg: DictConfig) -> RunSpec:
    """The run specification of a Hydra config (interpolations resolved, every value checked)."""
    keys = [key for key in cfg if key != "hydra"]
    container = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)
    return resolve_container(container)


def result_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that shape a run's results, as dotted keys (paths, device, threads and display left out)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            flat[prefix[:-1]] = node if isinstance(node, (int, float, str, bool)) else str(node)

    for key in ("dataset", "model", "optim", "train", "protocol"):
        walk(f"{key}.", config.get(key, {}))
    flat["seed"] = config.get("seed")
    for key in NOT_RESULT_SETTINGS:
        flat.pop(key, None)
    return flat


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any], allowed: tuple[str, ...] = ()) -> list[str]:
    """The result settings (dotted keys) whose values differ between two configs, ``allowed`` ones left out. A
    setting that one config lacks (written before the setting existed) counts as its default."""
    defaults = result_settings(OmegaConf.to_container(OmegaConf.structured(Config)))
    a, b = ({**defaults, **result_settings(config)} for config in (old, new))
    return sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key) and key not in allowed)
