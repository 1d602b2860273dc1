"""Data: offline seeding, download errors, feature recipe, splits and split files."""
from __future__ import annotations

import json
import operator
import pickle

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.transforms import AddRandomWalkPE

from mempool_cli.artifacts import write_json
from mempool_cli.data.features import featurize, fit_feature_stats
from mempool_cli.data import random_walk
from mempool_cli.data.source import SourceGraphs, graph
from mempool_cli.data.splits import holdout_split, kfold_splits, read_split_file, split_metadata
from mempool_cli.data.tu import load_tudataset
from conftest import SHARED_TU
from mempool_cli.errors import DataError
from mempool_cli.parallel import run_parallel

RECIPE = {"name": "TINY", "node_attributes": True, "node_labels": True, "degree": "none", "max_degree": 4,
          "random_walk": 0}


@pytest.fixture
def tiny(tmp_path, tiny_source):
    return load_tudataset("TINY", str(tmp_path / "cache"), str(tiny_source), "http://127.0.0.1:9")


def test_offline_source_is_copied_not_written(tmp_path, tiny_source):
    before = sorted(p.relative_to(tiny_source) for p in tiny_source.rglob("*"))
    dataset = load_tudataset("TINY", str(tmp_path / "cache"), str(tiny_source), "http://127.0.0.1:9")
    assert len(dataset) == 48
    assert (tmp_path / "cache" / "TINY" / "processed").is_dir()
    assert sorted(p.relative_to(tiny_source) for p in tiny_source.rglob("*")) == before


def test_download_failure_names_url_and_folder(tmp_path):
    with pytest.raises(DataError) as info:
        load_tudataset("NOPE", str(tmp_path / "cache"), None, "http://127.0.0.1:9/tu")
    message = str(info.value)
    assert "http://127.0.0.1:9/tu/NOPE.zip" in message
    assert str(tmp_path / "cache" / "NOPE" / "raw") in message
    assert not (tmp_path / "cache" / "NOPE" / "raw").exists()


def test_malformed_raw_files_are_a_data_error(tmp_path):
    raw = tmp_path / "cache" / "BAD" / "raw"
    raw.mkdir(parents=True)
    for part in ("A", "graph_indicator", "graph_labels"):
        (raw / f"BAD_{part}.txt").write_text("not, numbers\n")
    with pytest.raises(DataError, match="cannot read dataset BAD"):
        load_tudataset("BAD", str(tmp_path / "cache"), None, "http://127.0.0.1:9")


def test_attributes_standardised_with_training_statistics_only(tiny):
    train = list(range(0, 24))
    stats = fit_feature_stats(tiny, RECIPE, train)
    graphs = featurize(tiny, RECIPE, stats)
    assert graphs.num_features == 2 + 2  # 2 attributes + 2 one-hot labels
    train_x = torch.cat([graphs.graphs[i].x[:, :2] for i in train])
    assert torch.allclose(train_x.mean(0), torch.zeros(2), atol=1e-4)
    assert torch.allclose(train_x.std(0, unbiased=False), torch.ones(2), atol=1e-4)
    other_stats = fit_feature_stats(tiny, RECIPE, list(range(24, 48)))
    assert other_stats["mean"] != stats["mean"]


def test_degree_recipe_for_featureless_graphs(tiny):
    recipe = {**RECIPE, "node_attributes": False, "node_labels": False, "degree": "onehot", "max_degree": 1}
    graphs = featurize(tiny, recipe, fit_feature_stats(tiny, recipe, [0]))
    assert graphs.num_features == 2
    # paths have end nodes of degree 1; every other degree is capped at max_degree=1
    assert all(torch.equal(g.x.sum(1), torch.ones(g.num_nodes)) for g in graphs.graphs)


@pytest.mark.parametrize("dense_limit", [100, 1])
@pytest.mark.parametrize("name", ["TINY", "MUTAG"])
def test_random_walk_features_are_pygs_return_probabilities(name, dense_limit, tiny, tmp_path, monkeypatch):
    """Equal to PyG's AddRandomWalkPE, batched densely and one graph at a time sparsely (and 0 for isolated nodes)."""
    if name == "MUTAG" and not (SHARED_TU / "MUTAG" / "raw").is_dir():
        pytest.skip("offline MUTAG copy not present")
    source = tiny if name == "TINY" else load_tudataset(name, str(tmp_path / "cache"), str(SHARED_TU),
                                                        "http://127.0.0.1:9")
    monkeypatch.setattr(random_walk, "SPARSE_NODES", dense_limit)
    monkeypatch.setattr(random_walk, "CHUNK_ENTRIES", 1 << 12)  # several chunks
    graphs = [*source.graphs, graph(torch.zeros(2, 0, dtype=torch.long), 3, 0)]
    found = random_walk.return_probabilities(graphs, 8).split([g.num_nodes for g in graphs])
    for g, rows in zip(graphs, found):
        expected = AddRandomWalkPE(8)(Data(edge_index=g.edge_index, num_nodes=g.num_nodes)).random_walk_pe
        assert torch.allclose(rows, expected, atol=1e-6)
    assert found[-1].abs().sum() == 0 and found[0].sum() > 0


def test_random_walk_features_refuse_a_graph_too_large_for_dense_powers(monkeypatch):
    monkeypatch.setattr(random_walk, "MAX_NODES", 5)
    with pytest.raises(DataError, match="graph 1 has 6 nodes"):
        random_walk.return_probabilities([graph(torch.zeros(2, 0, dtype=torch.long), n, 0) for n in (5, 6)], 2)


def test_random_walk_columns_follow_the_recipe(tiny):
    recipe = {**RECIPE, "random_walk": 5}
    graphs = featurize(tiny, recipe, fit_feature_stats(tiny, recipe, [0, 1]))
    plain = featurize(tiny, RECIPE, fit_feature_stats(tiny, RECIPE, [0, 1]))
    assert graphs.num_features == plain.num_features + 5
    assert all(torch.equal(g.x[:, :plain.num_features], p.x) for g, p in zip(graphs.graphs, plain.graphs))
    # after 2 steps every node of a cycle (class 1) is back with probability 1/2, a path's end's neighbour with more
    for g in graphs.graphs:
        two_steps = g.x[:, plain.num_features + 1]
        assert torch.allclose(two_steps, torch.full_like(two_steps, 0.5)) == (g.y.item() == 1)


def test_holdout_split_is_stratified_disjoint_and_seeded():
    labels = torch.tensor([0] * 60 + [1] * 40)
    split = holdout_split(labels, 0.1, 0.2, seed=3)
    sets = [set(split[k]) for k in ("train", "val", "test")]
    assert sum(map(len, sets)) == 100 and len(set.union(*sets)) == 100
    assert (len(sets[1]), len(sets[2])) == (10, 20)
    assert sum(labels[list(sets[2])].tolist()) == 8  # 40% of 20
    assert holdout_split(labels, 0.1, 0.2, seed=3) == split
    assert holdout_split(labels, 0.1, 0.2, seed=4) != split


def test_kfold_test_parts_partition_the_data():
    labels = torch.tensor([0] * 30 + [1] * 20)
    folds = kfold_splits(labels, 5, 0.1, seed=0)
    tests = [set(f["test"]) for f in folds]
    assert set.union(*tests) == set(range(50)) and sum(map(len, tests)) == 50
    for fold in folds:
        assert not set(fold["train"]) & set(fold["val"]) and not set(fold["train"]) & set(fold["test"])
        assert sum(labels[fold["test"]].tolist()) == 4  # stratified: 40% of 10


def test_split_file_mismatch_is_refused(tmp_path):
    labels = torch.tensor([0, 1] * 10)
    path = tmp_path / "split.json"
    write_json(path, {"meta": split_metadata("TINY", labels, 0), "split": holdout_split(labels, .2, .2, 0)})
    assert read_split_file(path, "TINY", labels, "split")["split"]["test"]
    with pytest.raises(DataError, match="labels_hash"):
        read_split_file(path, "TINY", labels.flip(0), "split")
    with pytest.raises(DataError, match="num_graphs"):
        read_split_file(path, "TINY", torch.tensor([0, 1] * 11), "split")
    path.write_text(json.dumps({"nothing": 1}))
    with pytest.raises(DataError, match="cannot read split file"):
        read_split_file(path, "TINY", labels, "split")


@pytest.mark.skipif(not (SHARED_TU / "MUTAG" / "raw").is_dir(), reason="offline MUTAG copy not present")
def test_class_names_are_the_labels_as_written(tmp_path):
    mutag = load_tudataset("MUTAG", str(tmp_path / "cache"), str(SHARED_TU), "http://127.0.0.1:9")
    assert mutag.class_names == ["-1", "1"]


def _same_graphs(a: SourceGraphs, b: SourceGraphs) -> bool:
    def same(u, v):
        return torch.equal(u, v) and u.dtype == v.dtype if torch.is_tensor(u) else u == v
    return len(a) == len(b) and all(
        sorted(g.keys()) == sorted(h.keys()) and g.num_nodes == h.num_nodes and all(same(g[k], h[k]) for k in g.keys())
        for g, h in zip(a.graphs, b.graphs))


def test_source_graphs_pickle_collated_and_come_back_the_same(tiny):
    packed = pickle.dumps(tiny)
    # each graph's tensors are views of the dataset's few large ones: pickled one graph at a time, every view would
    # write its large storage again (48 times here)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for g in tiny.graphs for t in g.values() if torch.is_tensor(t)}
    assert len(packed) < 2 * sum(storages.values()) + 20_000
    back = pickle.loads(packed)
    assert _same_graphs(tiny, back) and back.ids == tiny.ids and back.class_names == tiny.class_names
    assert torch.equal(back.labels, tiny.labels)


def test_source_graphs_with_other_fields_per_graph_pickle_as_they_are():
    ring = torch.tensor([[0, 1, 2], [1, 2, 0]])
    graphs = [graph(ring, 3, 0), graph(ring, 3, 1, edge_cat=torch.zeros(3, 1)), graph(torch.zeros(2, 0).long(), 1, 0)]
    graphs[0].structure = "a molecule block"
    source = SourceGraphs("mixed", graphs, ["a", "b", "c"], ["0", "1"])
    assert _same_graphs(source, pickle.loads(pickle.dumps(source)))
    alike = SourceGraphs("alike", [graphs[1], graph(torch.zeros(2, 0).long(), 2, 1, edge_cat=torch.zeros(0, 1))],
                         ["b", "d"], ["0", "1"])
    back = pickle.loads(pickle.dumps(alike))
    assert _same_graphs(alike, back) and back.graphs[1].num_nodes == 2  # an isolated pair: nodes without edges


def test_parallel_workers_get_the_shared_arguments_before_each_jobs_own():
    assert run_parallel(operator.sub, (10,), [(0, (1,)), (1, (4,)), (2, (7,))], 2, 1) == {0: 9, 1: 6, 2: 3}
