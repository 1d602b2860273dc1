"""`mempool show` and `mempool plot`: the data behind each figure, valid files, and bad input as one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from matplotlib.colors import to_rgba_array
from PIL import Image

from conftest import TINY_ARGS, run_cli
from mempool_cli import figures
from mempool_cli.artifacts import load_checkpoint
from mempool_cli.errors import DataError
from mempool_cli.evaluation import model_of
from mempool_cli.plots import plot, read_history
from mempool_cli.protocols import train
from mempool_cli.show import _forward, _graph_figure, _graphs, show, split_matrices
from test_core import spec_of

SHARP = ["model.memory.norm=batch", "model.memory.radius=10", "model.memory.tau=30", "model.memory.key_init=kmeans",
         "model.memory.head_init=3.0"]


@pytest.fixture
def run(tmp_path, data_env):
    train(spec_of([*TINY_ARGS, *SHARP, "train.epochs=3"]), tmp_path / "run")
    return tmp_path / "run"


def test_curves_are_the_history_file(run):
    written = plot(run)
    history = read_history(run / "history.csv")
    figure = figures.history_figure(history, 2, "run")
    loss_axis, acc_axis = figure.axes[0], figure.axes[1]
    assert list(loss_axis.lines[0].get_ydata()) == [row["train/loss"] for row in history]
    assert list(acc_axis.lines[1].get_ydata()) == [row["val/acc"] for row in history]
    assert list(figure.axes[4].lines[0].get_ydata()) == [row["train/keys_used"] for row in history]
    assert len(figures.history_figure([{k: v for k, v in row.items() if k != "train/keys_used"} for row in history],
                                      2, "older run").axes) == 4  # a history from before the keys were counted
    assert [p.name for p in written] == ["curves.png"] and Image.open(written[0]).size[0] > 800


def test_node_colours_are_the_models_argmax_and_the_class_key_matrix_its_mean(run, tmp_path):
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    model = model_of(checkpoint, run / "checkpoint.pt").eval()
    graphs = _graphs(checkpoint, run, "test", None)
    i = graphs.index[0]
    graph = graphs.graphs.graphs[i]
    batch = torch.zeros(graph.num_nodes, dtype=torch.long)
    _, _, (S, _) = model.forward_with_assignments(graph.x, graph.edge_index, batch, 1)
    probs, assignments = _forward(model, [graph], torch.device("cpu"))
    assert torch.allclose(assignments[0], S.detach())
    figure = _graph_figure(graphs, i, probs[0], assignments[0], ["0", "1"])
    drawn = to_rgba_array(figure.axes[0].collections[-1].get_facecolor())[:, :3]
    expected = figures.cluster_colours(S.size(1))[S.argmax(dim=1).numpy()][:, :3]
    assert np.allclose(drawn, expected)
    S_list = [torch.rand(5, 4).softmax(-1), torch.rand(3, 4).softmax(-1), torch.rand(4, 4).softmax(-1)]
    matrix, usage = split_matrices(torch.tensor([0, 1, 0]), S_list, 2)
    assert np.allclose(matrix[0], ((S_list[0].mean(0) + S_list[2].mean(0)) / 2).numpy())
    assert np.isclose(usage.sum(), 1.0)


def test_show_writes_graph_and_split_figures(run, tmp_path):
    written = show(run, ["0", "1"], out=tmp_path / "figs", fmt="svg")
    assert sorted(p.suffix for p in written) == [".svg"] * 3
    assert all(p.read_text().lstrip().startswith("<?xml") for p in written)


def test_kfold_and_sweep_figures_hold_their_numbers(tmp_path, data_env):
    train(spec_of([*TINY_ARGS, "train.epochs=2", "protocol=kfold", "protocol.folds=2"]), tmp_path / "kfold")
    summary = json.loads((tmp_path / "kfold" / "summary.json").read_text())
    histories = [read_history(tmp_path / "kfold" / f"fold_{i}" / "history.csv") for i in range(2)]
    figure = figures.kfold_figure(histories, [f["test_acc"] for f in summary["per_fold"]], "k")
    assert [bar.get_height() for bar in figure.axes[1].patches[:2]] == [f["test_acc"] for f in summary["per_fold"]]
    assert [p.name for p in plot(tmp_path / "kfold")] == ["kfold.png"]
    sweep = tmp_path / "sweep"
    for job, (tau, val) in enumerate([(0.5, 0.6), (1.0, 0.8), (2.0, 0.7)]):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model.memory.tau={tau}"]))
        (sweep / str(job) / "metrics.json").write_text(json.dumps({"val_acc": val, "test_acc": val - 0.1}))
    written = plot(sweep)
    assert [p.name for p in written] == ["sweep_model.memory.tau.png", "sweep_history.png"]


def test_bad_input_is_one_line(run, tmp_path, data_env):
    with pytest.raises(DataError, match="--graph 999"):
        show(run, ["999"], out=tmp_path / "figs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no history.csv"):
        plot(tmp_path / "empty")
    result = run_cli(["show", str(run), "--graph", "nope"], tmp_path, data_env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--graph nope" in result.stderr
