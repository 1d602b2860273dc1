"""The faster paths of a training epoch compute what the slower ones did: batches gathered from packed tensors
equal PyG's collation, the cheap dropout mask is dropout, the compiled residual step and memory output step give
the same bits as the operations they replace, the compiled GIN aggregation and batch norm the same values within
float rounding, evaluation batches the same results as training's, the optimiser step is fused."""
from __future__ import annotations

import copy
import re
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
import torch_geometric.nn as pyg_nn
from torch_geometric.data import Batch, Data

from mempool_cli.config import OptimSpec
from mempool_cli import model as model_module
from mempool_cli.data import GraphLoader
from mempool_cli.engine import train_epoch
from mempool_cli.loop import TrainState
from mempool_cli.model import MemGNN
from mempool_cli.nn import (FastBatchNorm1d, FastGINConv, GINMLP, dropout, kernels, leaky_relu_dropout,
                            residual_relu_dropout)


def bits(t: torch.Tensor) -> torch.Tensor:
    """A float tensor's bit patterns (so that NaN equals NaN and -0 differs from 0)."""
    return t.view({torch.float32: torch.int32, torch.float64: torch.int64}[t.dtype])


def assert_rounding_apart(ours: torch.Tensor, ref: torch.Tensor, tolerance: float = 1e-6,
                          scale: Optional[torch.Tensor] = None) -> None:
    """``ours`` equals ``ref`` within ``tolerance`` (float32; 1e-12 for float64) of ``scale``'s largest entry
    (default: ``ref``'s own)."""
    tolerance = tolerance if ref.dtype == torch.float32 else 1e-12
    scale = (ref if scale is None else scale).abs().max()
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert (ours - ref).abs().max() <= tolerance * scale, ((ours - ref).abs().max(), scale)


def plain_mlp(mlp: GINMLP) -> torch.nn.Sequential:
    """GIN's MLP of torch's own layers, with ``mlp``'s parameters and statistics."""
    norm = torch.nn.BatchNorm1d(mlp[1].num_features).to(mlp[0].weight.dtype)
    norm.load_state_dict(mlp[1].state_dict())
    return torch.nn.Sequential(mlp[0], norm, torch.nn.ReLU(), mlp[3])


def graphs(with_edge_attr: bool, count: int = 23) -> list[Data]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for i in range(count):
        n = int(torch.randint(1, 9, (1,), generator=generator))
        e = 0 if i % 5 == 0 else int(torch.randint(1, 3 * n + 1, (1,), generator=generator))
        edge_index = torch.randint(0, n, (2, e), generator=generator)
        edge_attr = torch.randn(e, 3, generator=generator) if with_edge_attr else None
        out.append(Data(x=torch.randn(n, 4, generator=generator), edge_index=edge_index, edge_attr=edge_attr,
                        y=torch.tensor([i % 3])))
    return out


@pytest.mark.parametrize("with_edge_attr", [False, True])
def test_loader_batches_equal_pygs_collation(with_edge_attr):
    data = graphs(with_edge_attr)
    loader = GraphLoader(data, batch_size=5)
    batches = list(loader)
    assert len(batches) == len(loader) == 5
    for start, ours in zip(range(0, len(data), 5), batches):
        ref = Batch.from_data_list(data[start:start + 5])
        for name in ("x", "edge_index", "y", "batch") + (("edge_attr",) if with_edge_attr else ()):
            assert torch.equal(getattr(ours, name), getattr(ref, name)), name
        assert ours.num_graphs == ref.num_graphs
        assert (ours.edge_attr is None) == (not with_edge_attr)


def test_shuffled_batches_are_a_seeded_permutation():
    data = graphs(False)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(7))
    loader = GraphLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(7))
    labels = torch.cat([b.y for b in loader])
    assert torch.equal(labels, torch.cat([data[i].y for i in order]))
    first = Batch.from_data_list([data[i] for i in order[:4]])
    again = next(iter(GraphLoader(data, 4, shuffle=True, generator=torch.Generator().manual_seed(7))))
    assert torch.equal(again.x, first.x) and torch.equal(again.edge_index, first.edge_index)


def test_node_budget_cuts_batches_without_reordering():
    data = graphs(False)
    nodes = [g.num_nodes for g in data]
    loader = GraphLoader(data, batch_size=len(data), max_nodes=12)
    batches = list(loader)
    assert len(batches) == len(loader) > 1
    assert torch.equal(torch.cat([b.y for b in batches]), torch.cat([g.y for g in data]))
    sizes = [b.x.size(0) for b in batches]
    assert sum(sizes) == sum(nodes) and all(size <= 12 for size in sizes)
    # each cut is needed: the next graph would not have fitted
    first_graphs = torch.cumsum(torch.tensor([b.num_graphs for b in batches]), 0)[:-1].tolist()
    assert all(size + nodes[first] > 12 for size, first in zip(sizes, first_graphs))
    one_each = GraphLoader(data, batch_size=len(data), max_nodes=1)
    assert [b.num_graphs for b in one_each] == [1] * len(data)  # a graph above the budget is a batch of its own


def test_evaluation_batches_give_trainings_results(implementation):
    """Evaluation in batches of up to EVAL_NODES nodes predicts what batches of 8 graphs predict, with the same
    loss within float rounding."""
    from mempool_cli.data import make_eval_loader
    from mempool_cli.data.features import GraphSet
    from mempool_cli.engine import evaluate

    torch.manual_seed(0)
    model = MemGNN(4, 3, hidden=16, clusters=(4, 1), heads=(3, 2), tau=(30.0, 30.0), readout="sum")
    data = graphs(False, count=40)
    graph_set = GraphSet("synthetic", data, torch.cat([g.y for g in data]), num_features=4, num_classes=3)
    large = make_eval_loader(graph_set, list(range(40)))
    assert len(large) == 1
    results = [evaluate(model, loader, torch.device("cpu")) for loader in (GraphLoader(data, 8), large)]
    assert torch.equal(results[0]["pred"], results[1]["pred"]) and results[0]["acc"] == results[1]["acc"]
    assert abs(results[0]["loss"] - results[1]["loss"]) <= 1e-6 * abs(results[0]["loss"])


def test_dropout_keeps_the_expectation_and_drops_its_share():
    torch.manual_seed(0)
    x = torch.rand(500_000) + 0.5
    for p in (0.1, 0.5, 0.8):
        out = dropout(x, p)
        dropped = (out == 0).double().mean().item()
        assert abs(dropped - p) < 0.004, (p, dropped)
        assert abs(out.mean().item() - x.mean().item()) < 0.01 * x.mean().item()
        kept = out != 0
        assert torch.allclose(out[kept], x[kept] / (1 - p), rtol=1e-4)


def test_dropout_is_seeded_and_its_gradient_is_the_mask():
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(3)
    a = dropout(x, 0.5)
    torch.manual_seed(3)
    b = dropout(x, 0.5)
    assert torch.equal(a, b)
    assert not torch.equal(a, dropout(x, 0.5))
    a.sum().backward()
    assert torch.equal(x.grad, (a != 0).float() * 2.0)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0) is x


def test_the_optimiser_step_is_fused_on_the_cpu():
    model = MemGNN(4, 2, clusters=(3, 1), heads=(2, 2), tau=(1.0, 1.0))
    state = TrainState.create(model, OptimSpec(), epochs=2, seed=0)
    assert all(group["fused"] for group in state.optimizer.param_groups)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_gin_aggregation_gives_pygs_values(implementation, dtype, threads):
    """Outputs and every gradient equal PyG's GINConv (with torch's batch norm in its MLP) within float rounding:
    directed edges, repeated edges, self-loops and nodes without edges included; the same bits at any thread
    count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        ours = FastGINConv(GINMLP(32), train_eps=True).to(dtype)
        with torch.no_grad():
            ours.eps.fill_(0.3)
        ref = pyg_nn.GINConv(plain_mlp(copy.deepcopy(ours.nn)), train_eps=True).to(dtype)
        ref.load_state_dict(ours.state_dict())
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(2500, 32, dtype=dtype, generator=generator)  # more rows than a parallel task takes
        edge_index = torch.randint(0, 2400, (2, 10000), generator=generator)  # nodes 2400.. have no edges
        grad = torch.randn(2500, 32, dtype=dtype, generator=generator)
        results = []
        for conv in (ref, ours):
            inputs = x.clone().requires_grad_()
            out = conv(inputs, edge_index)
            out.backward(grad)
            results.append({"out": out, "grad x": inputs.grad, "grad eps": conv.eps.grad,
                            **{f"grad {name}": p.grad for name, p in conv.nn.named_parameters()},
                            **dict(conv.nn[1].named_buffers())})
        # what the batch norm takes away is 0 up to rounding: the gradient of the bias before it (on the scale of
        # the weight's gradient) and, with inputs centred at 0, the mean (on the scale of the spread)
        scales = {"grad 0.bias": "grad 0.weight", "running_mean": "running_var"}
        for name, value in results[1].items():
            assert_rounding_apart(value, results[0][name], scale=results[0][scales.get(name, name)])
        aggregation = FastGINConv(torch.nn.Identity())(x.requires_grad_(), edge_index).grad_fn
        assert (type(aggregation).__name__ == "GINAggregationBackward") == (implementation == "compiled")
        if threads == 2 and implementation == "compiled":  # the same bits as with one thread
            torch.set_num_threads(1)
            inputs = x.detach().clone().requires_grad_()
            ours.zero_grad()
            copy.deepcopy(ours)(inputs, edge_index).backward(grad)
            assert torch.equal(inputs.grad, results[1]["grad x"])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("rows", [2500, 5])  # more rows than a parallel task takes, and few
def test_batch_norm_gives_torchs_values(implementation, dtype, relu, affine, rows):
    """FastBatchNorm1d (with the relu after it) trains like torch's BatchNorm1d and relu: outputs, gradients,
    running statistics and the batch count within float rounding of torch's in float64 (torch's own path: its
    bits); evaluation gives torch's bits."""
    torch.manual_seed(0)
    ours = FastBatchNorm1d(24, affine=affine).to(dtype)
    if affine:
        torch.nn.init.normal_(ours.weight)
        torch.nn.init.normal_(ours.bias)
    exact = torch.nn.BatchNorm1d(24, affine=affine).double()
    exact.load_state_dict(ours.state_dict())
    same = torch.nn.BatchNorm1d(24, affine=affine).to(dtype)
    same.load_state_dict(ours.state_dict())
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(rows, 24, dtype=dtype, generator=generator) * 3 + 2  # off centre, as a linear layer leaves it
    grad = torch.randn(rows, 24, dtype=dtype, generator=generator)
    results = {}
    for name, norm in (("exact", exact), ("torch", same), ("ours", ours)):
        inputs = x.clone().to(next(norm.buffers()).dtype).requires_grad_()
        for _ in range(2):
            out = norm(inputs, relu=relu) if norm is ours else (F.relu(norm(inputs)) if relu else norm(inputs))
        out.backward(grad.to(inputs.dtype))
        results[name] = [out, inputs.grad, *(p.grad for p in norm.parameters()), *norm.buffers()]
    for a, b, c in zip(results["exact"], results["torch"], results["ours"]):
        if implementation == "torch" or not c.is_floating_point():  # torch's path, and the batch count
            assert torch.equal(c, b)
        else:
            assert_rounding_apart(c, a.to(dtype))
    for norm in (same, ours):
        norm.load_state_dict(same.state_dict())
        norm.eval()
    assert torch.equal(ours(x, relu=relu), F.relu(same(x)) if relu else same(x))


def test_batch_norm_sums_the_same_at_any_thread_count_and_more_closely_than_torch(implementation):
    """The compiled batch norm's values do not depend on the thread count, and its statistics (summed in double)
    are at least as close to float64's as torch's float32 ones."""
    if implementation != "compiled":
        return
    before = torch.get_num_threads()
    x = torch.randn(9000, 16, generator=torch.Generator().manual_seed(4)) * 5 + 40
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            norm = FastBatchNorm1d(16)
            inputs = x.clone().requires_grad_()
            norm(inputs, relu=True).sum().backward()
            runs.append([inputs.grad, norm.weight.grad, norm.running_mean, norm.running_var])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    torchs, exact = torch.nn.BatchNorm1d(16), torch.nn.BatchNorm1d(16).double()
    torchs(x), exact(x.double())
    for name in ("running_mean", "running_var"):
        truth = getattr(exact, name)
        ours_error = (runs[0][2 if name == "running_mean" else 3].double() - truth).abs().max()
        assert ours_error <= (getattr(torchs, name).double() - truth).abs().max()


def test_batch_norm_relu_keeps_nan_as_torch_does(implementation):
    """A NaN in the input makes its channel NaN after the norm and the relu, as torch's: training that diverges shows."""
    x = torch.randn(50, 3)
    x[7, 1] = float("nan")
    out = FastBatchNorm1d(3)(x, relu=True)
    assert out[:, 1].isnan().all() and not out[:, [0, 2]].isnan().any()


def test_batch_norm_refuses_one_row_in_training_as_torch_does(implementation):
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        FastBatchNorm1d(3)(torch.randn(1, 3), relu=True)


def test_gin_aggregation_refuses_edges_outside_the_graph(implementation):
    conv = FastGINConv(torch.nn.Identity())
    if implementation == "compiled":
        with pytest.raises(RuntimeError, match="edge_index holds a node outside"):
            conv(torch.randn(3, 4), torch.tensor([[0, 1], [1, 3]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2100, 64), (7, 3)])  # more elements than a parallel task takes, and few
def test_residual_step_gives_the_bits_of_its_operations(implementation, dtype, shape):
    """x + dropout(relu(h)) in one pass: the same output, gradients and random draws (the generator's state after)
    as the three operations."""
    generator = torch.Generator().manual_seed(2)
    x, h, grad = (torch.randn(*shape, dtype=dtype, generator=generator) for _ in range(3))
    results = []
    for step in (lambda a, b: a + dropout(F.relu(b), 0.5), lambda a, b: residual_relu_dropout(a, b, 0.5)):
        a, b = x.clone().requires_grad_(), h.clone().requires_grad_()
        torch.manual_seed(5)
        out = step(a, b)
        out.backward(grad)
        results.append([out, a.grad, b.grad, torch.rand(3)])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert ((results[1][0] - x) == 0).double().mean() > 0.5  # dropped or negative: half dropped, half of the rest
    assert torch.equal(residual_relu_dropout(x, h, 0.5, training=False), x + F.relu(h))
    assert torch.equal(residual_relu_dropout(x, h, 0.0), x + F.relu(h))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(140, 10, 100), (3, 1, 5)])  # more elements than a parallel task takes, and few
@pytest.mark.parametrize("p", [0.5, 0.1])  # a kept value's scale exactly 2, and one that rounds
def test_memory_output_step_gives_the_bits_of_its_operations(implementation, dtype, shape, p):
    """dropout(leaky_relu(h)) in one pass: the same output, gradient and random draws (the generator's state
    after) as the two operations, where the gradient of a negative entry rounds twice (mask, then slope), to the
    bit, NaN, infinities and -0 included."""
    generator = torch.Generator().manual_seed(3)
    h, grad = (torch.randn(*shape, dtype=dtype, generator=generator) for _ in range(2))
    h.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    results = []
    for step in (lambda b: dropout(F.leaky_relu(b), p), lambda b: leaky_relu_dropout(b, p)):
        b = h.clone().requires_grad_()
        torch.manual_seed(5)
        out = step(b)
        out.backward(grad)
        results.append([out, b.grad, torch.rand(3)])
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(*results))
    kept = results[1][0] != 0
    assert abs(kept.double().mean().item() - (1 - p)) < 0.2
    assert torch.equal(bits(leaky_relu_dropout(h, p, training=False)), bits(F.leaky_relu(h)))
    assert torch.equal(bits(leaky_relu_dropout(h, 0.0)), bits(F.leaky_relu(h)))


def plain_norm(norm: torch.nn.Module) -> torch.nn.BatchNorm1d:
    """torch's batch norm with ``norm``'s parameters and statistics."""
    plain = torch.nn.BatchNorm1d(norm.num_features, affine=norm.affine).to(norm.running_mean.dtype)
    plain.load_state_dict(norm.state_dict())
    return plain


def test_training_follows_pygs_gin_and_plain_operations(monkeypatch):
    """Two epochs of a model with the compiled encoder kernels and of its copy with PyG's GINConv, torch's batch
    norms and the plain residual and memory output steps end on the same parameters, running statistics and
    predictions within float rounding (the two draw the same dropout masks)."""
    assert kernels.cpu_kernels() is not None
    torch.manual_seed(0)
    fast = MemGNN(4, 3, hidden=16, clusters=(4, 1), heads=(3, 2), tau=(30.0, 30.0), memory_norm="batch",
                  readout="sum", dropout=0.5)
    slow = copy.deepcopy(fast)
    for i, conv in enumerate(slow.convs):
        slow.convs[i] = pyg_nn.GINConv(plain_mlp(conv.nn), train_eps=True)  # which resets eps: restored below
        slow.convs[i].load_state_dict(fast.convs[i].state_dict())
        slow.norms[i] = plain_norm(slow.norms[i])
    slow.memory_bn = plain_norm(slow.memory_bn)
    data = graphs(False, count=40)
    plain = (lambda x, h, p, t: x + dropout(F.relu(h), p, t), lambda h, p, t: dropout(F.leaky_relu(h), p, t))
    for model, (residual, output) in ((fast, (residual_relu_dropout, leaky_relu_dropout)), (slow, plain)):
        monkeypatch.setattr(model_module, "residual_relu_dropout", residual)
        monkeypatch.setattr(model_module, "leaky_relu_dropout", output)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        loader = GraphLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(1)
        for _ in range(2):
            train_epoch(model, loader, optimizer, torch.device("cpu"))
    assert type(fast.convs[0]) is FastGINConv and type(slow.convs[0]) is pyg_nn.GINConv
    assert type(fast.norms[0]) is FastBatchNorm1d and type(slow.norms[0]) is torch.nn.BatchNorm1d
    # a bias that feeds a batch norm changes nothing but the norm's running mean (the norm takes the mean away): its
    # gradient is rounding, which Adam scales up to whole steps, so the rest is compared, and the models' predictions
    feeds_a_norm = re.compile(r"convs\.\d+\.nn\.([03]\.bias|1\.running_mean)|norms\.\d+\.running_mean")
    for (name, a), b in zip(fast.state_dict().items(), slow.state_dict().values()):
        if feeds_a_norm.fullmatch(name):
            continue
        if a.is_floating_point():
            assert_rounding_apart(a, b, 1e-5)
        else:
            assert torch.equal(a, b), name  # batches counted
    batch, logits = next(iter(GraphLoader(data, batch_size=40))), []
    for model in (fast, slow):  # with the batch's statistics (the running means lag behind the biases) and no dropout
        model.dropout = 0.0
        logits.append(model(batch.x, batch.edge_index, batch.batch, batch.num_graphs)[0])
    assert_rounding_apart(*logits, 1e-5)


def test_a_second_derivative_through_the_compiled_aggregation_is_refused_not_wrong(implementation):
    x = torch.randn(5, 3, requires_grad=True)
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 3]])
    grad, = torch.autograd.grad(FastGINConv(torch.nn.Identity())(x, edge_index).pow(2).sum(), x, create_graph=True)
    if implementation == "compiled":
        with pytest.raises(RuntimeError, match="differentiate twice"):
            grad.sum().backward()
    else:
        grad.sum().backward()  # PyG's operations: a true second derivative
        assert x.grad is not None
