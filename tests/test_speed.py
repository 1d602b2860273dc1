"""The faster paths of a training epoch compute what the slower ones did: batches gathered from packed tensors
equal PyG's collation, the cheap dropout mask is dropout, the compiled GIN aggregation, residual step and memory
output step give the same bits as the operations they replace, the optimiser step is fused."""
from __future__ import annotations

import copy

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
from mempool_cli.model import MemGNN, _mlp
from mempool_cli.nn import FastGINConv, dropout, kernels, leaky_relu_dropout, residual_relu_dropout


def bits(t: torch.Tensor) -> torch.Tensor:
    """A float tensor's bit patterns (so that NaN equals NaN and -0 differs from 0)."""
    return t.view({torch.float32: torch.int32, torch.float64: torch.int64}[t.dtype])


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
def test_gin_aggregation_gives_pygs_bits(implementation, dtype, threads):
    """Outputs and every gradient equal PyG's GINConv to the bit: directed edges, repeated edges, self-loops and
    nodes without edges included."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        ref = pyg_nn.GINConv(_mlp(32), train_eps=True).to(dtype)
        with torch.no_grad():
            ref.eps.fill_(0.3)
        ours = FastGINConv(_mlp(32), train_eps=True).to(dtype)
        ours.load_state_dict(ref.state_dict())
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(2500, 32, dtype=dtype, generator=generator)  # more rows than a parallel task takes
        edge_index = torch.randint(0, 2400, (2, 10000), generator=generator)  # nodes 2400.. have no edges
        grad = torch.randn(2500, 32, dtype=dtype, generator=generator)
        results = []
        for conv in (ref, ours):
            inputs = x.clone().requires_grad_()
            out = conv(inputs, edge_index)
            out.backward(grad)
            results.append([out, inputs.grad, conv.eps.grad, *(p.grad for p in conv.nn.parameters())])
        assert all(torch.equal(a, b) for a, b in zip(*results))
        aggregation = FastGINConv(torch.nn.Identity())(x.requires_grad_(), edge_index).grad_fn
        assert ("NeighbourSumBackward" in str(aggregation.next_functions)) == (implementation == "compiled")
    finally:
        torch.set_num_threads(before)


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


def test_training_gives_the_same_bits_as_pygs_gin_and_plain_operations(monkeypatch):
    """Two epochs of a model with the compiled encoder kernels and of its copy with PyG's GINConv and the plain
    residual and memory output steps end on the same parameters, bit for bit: the gradients meeting at a node add up in the same
    order as before."""
    assert kernels.cpu_kernels() is not None
    torch.manual_seed(0)
    fast = MemGNN(4, 3, hidden=16, clusters=(4, 1), heads=(3, 2), tau=(30.0, 30.0), memory_norm="batch",
                  readout="sum", dropout=0.5)
    slow = copy.deepcopy(fast)
    for i, conv in enumerate(slow.convs):
        slow.convs[i] = pyg_nn.GINConv(conv.nn, train_eps=True)  # which resets the weights: restored below
        slow.convs[i].load_state_dict(fast.convs[i].state_dict())
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
    assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), slow.state_dict().values()))


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
