"""Typed configuration schema, registered with Hydra's ConfigStore, and its value checks.

The dataclasses give every key a type, so Hydra refuses unknown keys and ill-typed values while composing;
:func:`validate` then refuses impossible values (naming the key) before any work starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from mempool_cli.errors import ConfigError

ENCODERS = ("gat", "gcn", "gin")
NORMS = ("batch", "layer", "none")
MEMORY_IMPLS = ("fast", "pyg")
DEGREE_FEATURES = ("none", "onehot")
KL_SCHEDULES = ("paper", "joint")
OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("none", "plateau", "cosine")
PROTOCOLS = ("holdout", "kfold")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = "${oc.env:MEMPOOL_DATA_ROOT,'~/.cache/mempool/TUDataset'}"
    source: Optional[str] = "${oc.env:MEMPOOL_DATA_SOURCE,null}"
    url: str = "https://www.chrsmrrs.com/graphkerneldatasets"
    node_attributes: bool = True
    node_labels: bool = True
    degree: str = "none"
    max_degree: int = 64


@dataclass
class MemoryConfig:
    clusters: List[int] = field(default_factory=lambda: [10, 1])
    hidden: int = 64
    heads: int = 5
    tau: float = 1.0
    heads_per_layer: Optional[List[int]] = None
    tau_per_layer: Optional[List[float]] = None
    impl: str = "fast"


@dataclass
class ModelConfig:
    encoder: str = "gin"
    hidden: int = 64
    layers: int = 3
    dropout: float = 0.5
    norm: str = "batch"
    memory: MemoryConfig = field(default_factory=MemoryConfig)


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "plateau"
    factor: float = 0.5
    scheduler_patience: int = 10
    min_lr: float = 1e-5


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 32
    patience: int = 50
    kl_schedule: str = "paper"
    kl_weight: float = 1.0
    resume: Optional[str] = None
    progress: bool = True


@dataclass
class ProtocolConfig:
    name: str = "holdout"
    folds: int = 10
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_file: Optional[str] = None


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
    ConfigStore.instance().store(name="schema", node=Config)


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r}; choose one of: {', '.join(choices)}")


def _positive(key: str, value: Any, strict: bool = True) -> None:
    if value <= 0 if strict else value < 0:
        raise ConfigError(f"{key}: must be {'> 0' if strict else '>= 0'}, got {value}")


def _fraction(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{key}: must be in [0, 1), got {value}")


def _per_layer(key: str, values: Optional[list], num_layers: int) -> None:
    if values is None:
        return
    if len(values) != num_layers:
        raise ConfigError(f"{key}: needs one entry per memory layer ({num_layers}), got {len(values)}")
    for i, value in enumerate(values):
        _positive(f"{key}[{i}]", value)


def validate(cfg: DictConfig) -> None:
    """Refuse impossible values with a :class:`ConfigError` that names the key."""
    _choice("dataset.degree", cfg.dataset.degree, DEGREE_FEATURES)
    _positive("dataset.max_degree", cfg.dataset.max_degree)

    model = cfg.model
    _choice("model.encoder", model.encoder, ENCODERS)
    _choice("model.norm", model.norm, NORMS)
    _positive("model.hidden", model.hidden)
    _positive("model.layers", model.layers)
    _fraction("model.dropout", model.dropout)
    memory = model.memory
    if len(memory.clusters) == 0:
        raise ConfigError("model.memory.clusters: needs at least one memory layer, got []")
    for i, clusters in enumerate(memory.clusters):
        _positive(f"model.memory.clusters[{i}]", clusters)
    _positive("model.memory.hidden", memory.hidden)
    _positive("model.memory.heads", memory.heads)
    _positive("model.memory.tau", memory.tau)
    _per_layer("model.memory.heads_per_layer", memory.heads_per_layer, len(memory.clusters))
    _per_layer("model.memory.tau_per_layer", memory.tau_per_layer, len(memory.clusters))
    _choice("model.memory.impl", memory.impl, MEMORY_IMPLS)

    _choice("optim.name", cfg.optim.name, OPTIMIZERS)
    _choice("optim.scheduler", cfg.optim.scheduler, SCHEDULERS)
    _positive("optim.lr", cfg.optim.lr)
    _positive("optim.weight_decay", cfg.optim.weight_decay, strict=False)
    _fraction("optim.factor", cfg.optim.factor)
    _positive("optim.scheduler_patience", cfg.optim.scheduler_patience)

    _positive("train.epochs", cfg.train.epochs)
    _positive("train.batch_size", cfg.train.batch_size)
    _positive("train.patience", cfg.train.patience)
    _choice("train.kl_schedule", cfg.train.kl_schedule, KL_SCHEDULES)
    _positive("train.kl_weight", cfg.train.kl_weight, strict=False)

    protocol = cfg.protocol
    _choice("protocol.name", protocol.name, PROTOCOLS)
    _fraction("protocol.val_fraction", protocol.val_fraction)
    _fraction("protocol.test_fraction", protocol.test_fraction)
    _positive("protocol.val_fraction", protocol.val_fraction)
    if protocol.name == "holdout":
        _positive("protocol.test_fraction", protocol.test_fraction)
        if protocol.val_fraction + protocol.test_fraction >= 1.0:
            raise ConfigError("protocol.val_fraction + protocol.test_fraction: must be < 1")
    if protocol.name == "kfold" and protocol.folds < 2:
        raise ConfigError(f"protocol.folds: must be >= 2, got {protocol.folds}")
    _choice("device", cfg.device, DEVICES)
    if cfg.threads is not None:
        _positive("threads", cfg.threads)
