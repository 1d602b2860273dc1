"""Config validation, the model, the KL schedules, checkpoints and one in-process training run."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch_geometric.data import Batch, Data

from mempool_cli.artifacts import load_checkpoint, save_checkpoint
from mempool_cli.config import ModelSpec, register_configs, resolve
from mempool_cli.engine import train_epoch
from mempool_cli.errors import CheckpointError, ConfigError
from mempool_cli.model import build_model
from mempool_cli.protocols import train

from conftest import TINY_ARGS

register_configs()


def compose_cfg(overrides: list[str]):
    with initialize_config_module(config_module="mempool_cli.configs", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def spec_of(overrides: list[str]):
    return resolve(compose_cfg(overrides))


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.memory.clusters=[10,0]", "model.memory.clusters[1]"),
        ("model.memory.heads=0", "model.memory.heads"),
        ("model.memory.tau=0", "model.memory.tau"),
        ("model.dropout=1.0", "model.dropout"),
        ("model.dropout=-0.1", "model.dropout"),
        ("model.memory.heads_per_layer=[5]", "model.memory.heads_per_layer"),
        ("model.encoder=gim", "model.encoder"),
        ("model.layers=-1", "model.layers"),
        ("protocol.val_fraction=0.9", "protocol.val_fraction + protocol.test_fraction"),
    ],
)
def test_impossible_values_are_refused_by_key(override, key):
    with pytest.raises(ConfigError) as info:
        spec_of([override])
    assert str(info.value).startswith(key)


def test_every_dataset_config_composes_and_validates():
    for name in ("PROTEINS", "PROTEINS_full", "ENZYMES", "DD", "MUTAG", "NCI1", "IMDB-BINARY", "IMDB-MULTI",
                 "COLLAB", "REDDIT-BINARY"):
        assert spec_of([f"dataset={name}"]).data.name == name


def _tuned_files(root=None) -> list:
    """(dataset, model) of every tuned file of the installed configs (or of ``root``)."""
    from mempool_cli.catalog import configs_root

    tuned = (root or configs_root()).joinpath("tuned")
    return sorted((folder.name, entry.name[:-5]) for folder in tuned.iterdir()
                  if folder.is_dir() for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def test_the_tuned_files_of_the_checkout_are_installed():
    from pathlib import Path

    assert _tuned_files() == _tuned_files(Path(__file__).resolve().parents[1] / "configs")


def _leaves(tree, prefix=""):
    """Every leaf of a nested mapping by dotted key (the ``# @package _global_`` header dropped)."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {key: value for name, sub in tree.items() for key, value in _leaves(sub, f"{prefix}{name}.").items()}


@pytest.mark.parametrize("dataset, model", _tuned_files())
def test_a_datasets_tuned_settings_apply_to_its_model_only_and_overrides_win(dataset, model):
    import yaml
    from mempool_cli.catalog import configs_root

    tuned = _leaves(yaml.safe_load(configs_root().joinpath("tuned", dataset, f"{model}.yaml").read_text()))
    assert tuned and all(key.startswith(("model.", "train.", "optim.")) for key in tuned)
    composed = compose_cfg([f"dataset={dataset}", f"model={model}"])
    untuned = compose_cfg([f"dataset={dataset}", f"model={model}", "~tuned"])
    other_model = "small" if model != "small" else "default"
    for key, value in tuned.items():
        assert OmegaConf.select(composed, key) == value
        assert OmegaConf.select(untuned, key) != value, f"{key} is already {value} without the tuned file"
        assert OmegaConf.select(compose_cfg([f"dataset={dataset}", f"model={other_model}"]), key) == \
            OmegaConf.select(compose_cfg([f"model={other_model}"]), key)
    key, value = next(iter(tuned.items()))
    override = 0.3 if isinstance(value, float) else value
    assert OmegaConf.select(compose_cfg([f"dataset={dataset}", f"model={model}", f"{key}={override}"]), key) == override
    spec_of([f"dataset={dataset}", f"model={model}"])  # and it validates


def _tiny_batch():
    graphs = [Data(x=torch.randn(n, 3), edge_index=torch.tensor([[i, i + 1] for i in range(n - 1)]).t().reshape(2, -1),
                   y=torch.tensor([n % 2])) for n in (3, 5, 4, 6)]
    return Batch.from_data_list(graphs)


def test_model_shapes_and_per_layer_settings():
    spec = ModelSpec(encoder="gat", hidden=8, layers=2, dropout=0.0, norm="layer", clusters=(4, 2, 1),
                     memory_hidden=6, heads=(3, 2, 1), tau=(1.0, 0.5, 2.0))
    model = build_model(spec, num_features=3, num_classes=2)
    data = _tiny_batch()
    logits, kls = model(data.x, data.edge_index, data.batch, data.num_graphs)
    assert logits.shape == (4, 2) and kls.shape == (3,) and (kls >= 0).all() and kls[-1] == 0
    assert [(m.heads, m.num_clusters, m.tau) for m in model.memory] == [(3, 4, 1.0), (2, 2, 0.5), (1, 1, 2.0)]


def test_no_message_passing_is_the_papers_gmn():
    """``model.layers=0``: the memory sees each node's embedded features alone, so the edges change nothing."""
    model = build_model(ModelSpec(hidden=8, layers=0, clusters=(4, 1), memory_hidden=6, heads=(2, 1),
                                  tau=(1.0, 1.0)), num_features=3, num_classes=2).eval()
    data = _tiny_batch()
    no_edges = torch.zeros(2, 0, dtype=torch.long)
    assert len(model.convs) == 0
    assert torch.equal(model(data.x, data.edge_index, data.batch, data.num_graphs)[0],
                       model(data.x, no_edges, data.batch, data.num_graphs)[0])


@pytest.mark.parametrize("schedule", ["paper", "assign"])
@pytest.mark.parametrize("impl", ["fast", "pyg"])
def test_paper_schedule_keys_learn_from_kl_only(impl, schedule):
    """In one step, each layer's keys (with ``assign`` also its head weights) get exactly its KL gradient and every
    other parameter the CE gradient."""
    torch.manual_seed(0)
    spec = ModelSpec(hidden=8, layers=1, dropout=0.0, norm="none", clusters=(3, 2, 1), memory_hidden=8,
                     heads=(2, 2, 2), tau=(1.0, 0.5, 1.0), memory_impl=impl)
    model = build_model(spec, num_features=3, num_classes=2)
    data = _tiny_batch()
    logits, layer_kls = model(data.x, data.edge_index, data.batch, data.num_graphs)
    assert layer_kls.shape == (3,)
    ce = F.cross_entropy(logits, data.y)
    per_layer = model.kl_parameters(with_heads=schedule == "assign")
    assert [len(params) for params in per_layer] == [2 if schedule == "assign" else 1] * 3
    from_kl = [(kl, p) for kl, params in zip(layer_kls, per_layer) for p in params]
    others = [p for p in model.parameters() if all(p is not q for _, q in from_kl)]
    expected_kl = [torch.autograd.grad(kl, p, retain_graph=True, allow_unused=True)[0] for kl, p in from_kl]
    expected_others = torch.autograd.grad(ce, others, allow_unused=True)
    assert expected_kl[len(per_layer[0])] is not None and torch.count_nonzero(expected_kl[len(per_layer[0])]) > 0

    captured = {}

    class Capture(torch.optim.SGD):
        def step(self, closure=None):
            captured.update({id(p): p.grad.clone() for p in model.parameters() if p.grad is not None})

    train_epoch(model, [data], Capture(model.parameters(), lr=0.0), torch.device("cpu"), schedule, 1.0)
    for params, grads in (([p for _, p in from_kl], expected_kl), (others, expected_others)):
        for param, grad in zip(params, grads):
            got = captured.get(id(param))
            if grad is None or got is None:  # unused, or exactly zero (a one-cluster layer's keys and conv)
                assert all(g is None or torch.count_nonzero(g) == 0 for g in (grad, got))
            else:
                assert torch.allclose(got, grad, atol=1e-6)


def test_checkpoint_is_atomic_and_checked(tmp_path):
    path = tmp_path / "checkpoint.pt"
    payload = {key: {} for key in ("model_args", "model_state", "config", "dataset", "split", "metrics")}
    save_checkpoint(path, {**payload, "epoch": 3})
    assert load_checkpoint(path)["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    torch.save({"format": "mempool-checkpoint", "format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({"format": "mempool-checkpoint", "format_version": 1}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "partial.pt")


def test_train_in_process_writes_artifacts_and_is_deterministic(tmp_path, data_env):
    spec = spec_of(TINY_ARGS + ["train.epochs=4"])
    first = train(spec, tmp_path / "a")
    second = train(spec, tmp_path / "b")
    for key in ("train_acc", "val_acc", "test_acc", "val_loss", "best_epoch"):
        assert first[key] == second[key]
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["test_acc"] == first["test_acc"]
    ckpt = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert ckpt["metrics"]["test_acc"] == first["test_acc"]
    assert set(ckpt["split"]) == {"train", "val", "test"}
    assert ckpt["model_args"]["clusters"] == [4, 1]
    assert {"torch", "torch_geometric", "mempool"} <= set(ckpt["versions"])
