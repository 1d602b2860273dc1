"""The memory layers' clustering: sharpness measures, data-driven keys, the readout path, the keys' learning rate."""
from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.data import Batch, Data

from mempool_cli.config import ModelSpec, OptimSpec
from mempool_cli.data.batching import GraphLoader
from mempool_cli.engine import assignment_stats, key_counts, memory_stats
from mempool_cli.loop import TrainState, reseed_starved_keys
from mempool_cli.model import build_model, kmeans_centres
from mempool_cli.protocols import train
from test_core import spec_of
from conftest import TINY_ARGS

SHARP = dict(memory_norm="batch", memory_radius=10.0, key_init="kmeans", head_init=3.0, tau=(30.0, 1.0))


def test_assignment_stats_of_flat_and_hard_rows():
    flat = assignment_stats([torch.full((6, 4), 0.25)])
    assert flat["mean_max_assignment"] == pytest.approx(0.25) and flat["normalized_entropy"] == pytest.approx(1.0)
    hard = assignment_stats([torch.eye(3)[[0, 1, 2, 2]], torch.eye(3)[[1]]])
    assert hard == {"clusters": 3, "mean_max_assignment": 1.0, "normalized_entropy": 0.0, "keys_used": 3}
    half = assignment_stats([torch.tensor([[0.5, 0.5, 0.0, 0.0]])])
    assert half["normalized_entropy"] == pytest.approx(math.log(2) / math.log(4))


def _clustered_batch(seed: int = 0) -> Batch:
    """Graphs whose nodes come from three well-separated groups of features."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 5, generator=gen) * 4
    graphs = []
    for g in range(12):
        group = torch.randint(0, 3, (8,), generator=gen)
        x = centres[group] + 0.1 * torch.randn(8, 5, generator=gen)
        edges = torch.tensor([[i, i + 1] for i in range(7)]).t()
        graphs.append(Data(x=x, edge_index=torch.cat([edges, edges.flip(0)], 1), y=torch.tensor([g % 2])))
    return Batch.from_data_list(graphs)


def _model(**changes):
    torch.manual_seed(0)
    spec = ModelSpec(hidden=16, layers=1, dropout=0.0, clusters=(3, 1), memory_hidden=8, heads=(4, 1),
                     **{"tau": (1.0, 1.0), **changes})
    return build_model(spec, num_features=5, num_classes=2)


def test_kmeans_keys_are_matched_across_heads_and_assign_sharply():
    data = _clustered_batch()
    model = _model(**SHARP)
    model.init_keys(data.x, data.edge_index, seed=0)
    keys = model.memory[0].k.detach()
    for h in range(1, 4):  # key j of every head is nearest to key j of the first head
        assert torch.equal(torch.cdist(keys[h], keys[0]).argmin(dim=1), torch.arange(3))
    stats = memory_stats(model, [data], torch.device("cpu"))
    assert stats[0]["mean_max_assignment"] > 0.9 and stats[0]["keys_used"] == 3
    plain = memory_stats(_model(), [data], torch.device("cpu"))
    assert plain[0]["mean_max_assignment"] < 0.4  # PyG's initialisation: nearly flat


def test_kmeans_keys_do_not_depend_on_the_machines_thread_count():
    """scikit-learn's k-means adds its threads' partial sums in the order they finish; its centres must not follow
    the number of cores (here: 1 or 4 threads allowed around it)."""
    from threadpoolctl import threadpool_limits

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 64, generator=generator) * 10
    points = (centres[torch.randint(0, 10, (8000,), generator=generator)]
              + 3 * torch.randn(8000, 64, generator=generator)).double().numpy()
    with threadpool_limits(1):
        alone = kmeans_centres(points, 10, seed=0)
    with threadpool_limits(4):
        shared = kmeans_centres(points, 10, seed=0)
    assert (alone == shared).all()


def test_starved_keys_are_those_below_the_share_and_none_without_reseeding():
    counts = torch.tensor([50, 0, 9, 41])
    assert _model(key_reseed=0.1).starved_keys(counts) == [1, 2]
    assert _model().starved_keys(counts) == []
    assert key_counts(torch.eye(3)[[0, 2, 2]]).tolist() == [1, 0, 2]
    padded = torch.stack([torch.eye(3)[[1, 1]], torch.cat([torch.eye(3)[[2]], torch.zeros(1, 3)])])
    assert key_counts(padded).tolist() == [0, 2, 1]  # the padding row picks nothing


def test_reseeded_keys_sit_on_nodes_and_nothing_else_moves():
    data = _clustered_batch()
    model = _model(**SHARP)
    model.init_keys(data.x, data.edge_index, seed=0)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.reseed_keys([0, 2], data.x, data.edge_index, generator=torch.Generator().manual_seed(0))
    after = model.state_dict()
    assert [name for name in before if not torch.equal(before[name], after[name])] == ["memory.0.k"]
    keys = model.memory[0].k.detach()
    assert torch.equal(keys[:, 1], before["memory.0.k"][:, 1])
    points = model.encode(data.x, data.edge_index)  # training mode, no dropout: what the reseeding saw
    for j in (0, 2):
        assert torch.equal(keys[:, j], keys[0, j].expand_as(keys[:, j]))  # every head: the same point
        assert (points - keys[0, j]).norm(dim=-1).min() < 1e-5


def test_a_starved_key_is_picked_again_after_reseeding():
    data = _clustered_batch()
    model = _model(**SHARP, key_reseed=0.05)
    model.init_keys(data.x, data.edge_index, seed=0)
    with torch.no_grad():
        model.memory[0].k[:, 1] += 1e3  # far from every node: nobody picks it
    counts = key_counts(model.forward_with_assignments(data.x, data.edge_index, data.batch, data.num_graphs)[2][0])
    assert counts[1] == 0 and model.starved_keys(counts) == [1]
    state = TrainState.create(model, OptimSpec(), epochs=1, seed=0)
    loader = GraphLoader(data.to_data_list(), batch_size=data.num_graphs)
    reseed_starved_keys(state, counts, loader, torch.device("cpu"))
    counts = key_counts(model.forward_with_assignments(data.x, data.edge_index, data.batch, data.num_graphs)[2][0])
    assert counts[1] > 0


def test_memory_stats_measure_the_models_own_assignments():
    data = _clustered_batch(1)
    model = _model(**SHARP)
    model.eval()
    _, _, assignments = model.forward_with_assignments(data.x, data.edge_index, data.batch, data.num_graphs)
    stats = memory_stats(model, [data], torch.device("cpu"))[0]
    expected = assignment_stats([assignments[0].detach()])
    assert stats == {"layer": 0, **expected}


def test_memory_stats_of_pygs_padded_assignments_leave_the_padding_out():
    graphs = _clustered_batch().to_data_list()
    graphs[0] = graphs[0].subgraph(torch.arange(3))  # graphs of other sizes: PyG's dense S has padding rows
    data = Batch.from_data_list(graphs)
    fast = _model(**SHARP)
    fast.init_keys(data.x, data.edge_index, seed=0)
    pyg = _model(**SHARP, memory_impl="pyg")
    pyg.load_state_dict(fast.state_dict())
    stats = [memory_stats(model, [data], torch.device("cpu"))[0] for model in (fast, pyg)]
    assert stats[1]["keys_used"] == stats[0]["keys_used"]
    for key in ("mean_max_assignment", "normalized_entropy"):
        assert stats[1][key] == pytest.approx(stats[0][key], abs=1e-5)


def test_readout_path_sees_the_summed_input_features():
    model = _model(readout="sum")
    data = _clustered_batch()
    assert model.classifier.in_features == 8 + 16
    logits, _ = model(data.x, data.edge_index, data.batch, data.num_graphs)
    logits.sum().backward()
    assert model.baseline[0].weight.grad.abs().sum() > 0
    assert model.baseline[0].in_features == 5


def test_memory_keys_have_their_own_learning_rate():
    state = TrainState.create(_model(), OptimSpec(lr=1e-3, memory_lr=0.05), epochs=3, seed=0)
    groups = state.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 0.05]
    assert groups[1]["params"] == state.model.memory_keys()


def test_a_large_tau_trains_without_nan(tmp_path, data_env):
    metrics = train(spec_of(TINY_ARGS + ["train.epochs=3", "model.memory.tau=100"]), tmp_path / "run")
    assert all(math.isfinite(metrics[k]) for k in ("train_loss", "val_loss", "test_loss"))
