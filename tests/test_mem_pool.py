"""mempool_cli.nn.MemPooling against torch_geometric.nn.MemPooling with shared weights, on both of its
implementations: the compiled CPU kernels and PyTorch operations."""
from __future__ import annotations

import logging

import pytest
import torch
from torch.utils import cpp_extension
from torch_geometric.nn import MemPooling as PygMemPooling
from torch_geometric.utils import to_dense_batch

from mempool_cli.nn import MemPooling, kernels

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
BUILD_KERNELS = kernels.cpu_kernels.__wrapped__  # uncached


pytestmark = pytest.mark.usefixtures("implementation")  # every test: compiled kernels, then PyTorch operations


def _pair(dtype, in_channels=16, out_channels=8, heads=5, clusters=10, tau=1.0, seed=0):
    torch.manual_seed(seed)
    ref = PygMemPooling(in_channels, out_channels, heads, clusters, tau).to(dtype)
    ours = MemPooling(in_channels, out_channels, heads, clusters, tau).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _batch(sizes, in_channels, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), in_channels, generator=gen, dtype=dtype)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return x, batch


def _close(a, b, tol):
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=tol, rtol=tol), (a - b).abs().max().item()


def _compare(ref, ours, x, batch, tol, batch_size=None):
    """Outputs, densified assignments, KL loss and all gradients of both layers must agree."""
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, S_ref = ref(x_ref, batch, batch_size=batch_size)
    out_ours, S_ours = ours(x_ours, batch, batch_size=batch_size, per_node=True)
    kl_ref, kl_ours = PygMemPooling.kl_loss(S_ref), MemPooling.kl_loss(S_ours, batch, batch_size)
    _close(out_ours, out_ref, tol)
    S_dense, _ = to_dense_batch(S_ours, batch, batch_size=batch_size, max_num_nodes=S_ref.size(1))
    _close(S_dense, S_ref, tol)
    _close(kl_ours, kl_ref, tol)
    weights = torch.randn_like(out_ref)
    ((out_ref * weights).sum() + kl_ref).backward()
    ((out_ours * weights).sum() + kl_ours).backward()
    _close(x_ours.grad, x_ref.grad, tol)
    _compare_parameter_grads(ref, ours, tol)


def _compare_parameter_grads(ref, ours, tol):
    for (name, p_ref), p_ours in zip(ref.named_parameters(), ours.parameters()):
        if p_ours.grad is None:  # left unset only where it is exactly zero (one cluster: k and conv)
            assert ours.num_clusters == 1 and name != "lin.weight", name
            assert torch.count_nonzero(p_ref.grad) == 0, name
        else:
            _close(p_ours.grad, p_ref.grad, tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_batches_match_pyg(dtype, seed):
    ref, ours = _pair(dtype, seed=seed)
    sizes = torch.randint(1, 40, (9,), generator=torch.Generator().manual_seed(seed)).tolist()
    x, batch = _batch(sizes, 16, dtype, seed)
    _compare(ref, ours, x, batch, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "case",
    [
        {"sizes": [1, 1, 1]},  # graphs of one node
        {"sizes": [4, 6], "heads": 1},
        {"sizes": [5, 3, 7], "clusters": 1},
        {"sizes": [6, 2, 9], "tau": 0.5},
        {"sizes": [6, 2, 9], "tau": 3.0, "heads": 2, "clusters": 3},
        {"sizes": [6, 2, 9], "tau": 30.0},  # mempool's default
        {"sizes": [3, 200, 2, 4]},  # one graph far larger than the rest
        {"sizes": [7]},  # a single graph
        {"sizes": [6, 2, 9], "in_channels": 13},  # widths that are no whole number of vectors
        {"sizes": [6, 2, 9], "in_channels": 37, "heads": 3, "clusters": 7},
    ],
    ids=["one-node", "heads1", "clusters1", "tau0.5", "tau3", "tau30", "one-large-graph", "single-graph", "width13",
         "width37"],
)
def test_edge_cases_match_pyg(dtype, case):
    options = {key: value for key, value in case.items() if key != "sizes"}
    ref, ours = _pair(dtype, **options)
    sizes = case["sizes"]
    x, batch = _batch(sizes, options.get("in_channels", 16), dtype)
    _compare(ref, ours, x, batch, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uneven_graphs_and_an_empty_one_match_pyg(dtype):
    ref, ours = _pair(dtype, seed=4)
    x, batch = _batch([5, 1, 30, 2, 9], 16, dtype)
    _compare(ref, ours, x, batch, TOL[dtype])
    out, _ = ours(x, batch, batch_size=6)  # a trailing graph without nodes pools to zeros
    assert out.shape == (6, 10, 8) and torch.count_nonzero(out[5]) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_without_batch_vector_is_one_graph(dtype):
    ref, ours = _pair(dtype)
    x, _ = _batch([11], 16, dtype)
    out_ref, _ = ref(x)
    out_ours, S = ours(x)
    _close(out_ours, out_ref, TOL[dtype])
    assert S.shape == (1, 11, 10) and ours(x, per_node=True)[1].shape == (11, 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_graph_in_batch(dtype):
    """batch_size larger than the graphs present: the empty graph pools to zeros and counts in the KL mean."""
    ref, ours = _pair(dtype)
    sizes = [4, 5, 3]
    x, batch = _batch(sizes, 16, dtype)
    out_ours, S = ours(x, batch, batch_size=5, per_node=True)
    out_ref, _ = ref(x, batch, batch_size=5)
    assert out_ours.shape == (5, 10, 8)
    _close(out_ours, out_ref, TOL[dtype])
    assert torch.count_nonzero(out_ours[3:]) == 0
    # PyG's kl_loss gives NaN with an empty graph; ours equals its value on the non-empty graphs, rescaled.
    _, S_ref = ref(x, batch)
    kl = MemPooling.kl_loss(S, batch, batch_size=5)
    assert torch.isfinite(kl)
    _close(kl, PygMemPooling.kl_loss(S_ref) * 3 / 5, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("clusters", [10, 1])
def test_dense_input_matches_pyg(dtype, with_mask, clusters):
    ref, ours = _pair(dtype, clusters=clusters)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 7, 16, generator=gen, dtype=dtype)
    mask = torch.arange(7).unsqueeze(0) < torch.tensor([[7], [3], [5], [1]]) if with_mask else None
    if mask is not None:
        x = x * mask.unsqueeze(-1)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, S_ref = ref(x_ref, mask=mask)
    out_ours, S_ours = ours(x_ours, mask=mask)
    _close(out_ours, out_ref, TOL[dtype])
    _close(S_ours, S_ref, TOL[dtype])
    kl_ref, kl_ours = PygMemPooling.kl_loss(S_ref), MemPooling.kl_loss(S_ours)
    _close(kl_ours, kl_ref, TOL[dtype])
    (out_ref.sum() + kl_ref).backward()
    (out_ours.sum() + kl_ours).backward()
    _close(x_ours.grad, x_ref.grad, TOL[dtype])
    _compare_parameter_grads(ref, ours, TOL[dtype])


def test_state_dict_round_trip_both_ways():
    ref, ours = _pair(torch.float32, seed=5)
    assert {k: v.shape for k, v in ref.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    fresh_ref = PygMemPooling(16, 8, 5, 10)
    fresh_ref.load_state_dict(ours.state_dict())
    fresh_ours = MemPooling(16, 8, 5, 10)
    fresh_ours.load_state_dict(fresh_ref.state_dict())
    x, batch = _batch([3, 8, 5], 16, torch.float32)
    _close(fresh_ours(x, batch)[0], ref(x, batch)[0], 1e-6)


def test_no_padded_tensor_is_allocated(monkeypatch):
    """Node-list input never goes through to_dense_batch, and S stays per node."""
    import torch_geometric.utils

    def forbidden(*args, **kwargs):
        raise AssertionError("to_dense_batch was called")

    monkeypatch.setattr(torch_geometric.utils, "to_dense_batch", forbidden)
    _, ours = _pair(torch.float32)
    x, batch = _batch([2, 50, 3], 16, torch.float32)
    out, S = ours(x, batch, per_node=True)
    assert S.shape == (55, 10) and out.shape == (3, 10, 8)


def test_repr_names_the_key_numbers_as_pyg_does():
    assert repr(MemPooling(16, 8, heads=5, num_clusters=10, tau=0.5)) == (
        "MemPooling(16, 8, heads=5, num_clusters=10, tau=0.5)"
    )
    assert repr(MemPooling(4, 8, heads=3, num_clusters=2)) == repr(PygMemPooling(4, 8, heads=3, num_clusters=2))


def test_called_the_pyg_way_it_behaves_as_pygs_layer():
    """A node list with its batch vector and no other argument: S padded [B, N_max, K] (padding rows zero), the
    KL of kl_loss(S) equal to PyG's, a stacked second layer on the pooled output; S per node only when asked."""
    torch.manual_seed(0)
    ref, ours = PygMemPooling(4, 8, heads=3, num_clusters=2), MemPooling(4, 8, heads=3, num_clusters=2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(17, 4)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4])
    _, mask = to_dense_batch(x, batch)
    (out, S), (out_ref, S_ref) = ours(x, batch), ref(x, batch)
    assert S.shape == S_ref.shape == (5, 4, 2) and S[~mask].sum() == 0
    _close(S, S_ref, 1e-6)
    _close(out, out_ref, 1e-6)
    _close(MemPooling.kl_loss(S), PygMemPooling.kl_loss(S_ref), 1e-6)
    assert MemPooling(8, 4, heads=2, num_clusters=1)(out)[0].shape == (5, 1, 4)
    with pytest.raises(ValueError, match="needs its batch vector"):
        MemPooling.kl_loss(ours(x, batch, per_node=True)[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("kl_heads", [False, True])
def test_split_key_grad_routes_kl_to_keys_and_the_rest_to_everything_else(dtype, dense, kl_heads):
    """One backward of ``out + kl`` gives the keys (and with ``kl_heads`` the head weights) exactly d(kl)/d(.) and
    every other tensor exactly d(out)/d(.)."""
    ref, ours = _pair(dtype, seed=5)
    ours.split_key_grad, ours.kl_heads = True, kl_heads
    sizes = [6, 2, 9, 4]
    x, batch = _batch(sizes, 16, dtype)
    mask = None
    if dense:
        x, mask = to_dense_batch(x, batch)
        batch = None
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, S_ref = ref(x_ref, batch, mask)
    out_ours, S_ours = ours(x_ours, batch, mask)
    weights = torch.randn_like(out_ref)
    kl_ours = MemPooling.kl_loss(S_ours, batch)
    ((out_ours * weights).sum() + kl_ours).backward()

    from_out = [x_ref, ref.lin.weight] + ([] if kl_heads else [ref.conv.weight])
    from_kl = [ref.k] + ([ref.conv.weight] if kl_heads else [])
    expected = [*torch.autograd.grad((out_ref * weights).sum(), from_out, retain_graph=True),
                *torch.autograd.grad(PygMemPooling.kl_loss(S_ref), from_kl)]
    ours_by_name = {"k": ours.k, "conv.weight": ours.conv.weight, "lin.weight": ours.lin.weight}
    ref_names = {id(p): name for name, p in ref.named_parameters()}
    got = [x_ours.grad] + [ours_by_name[ref_names[id(p)]].grad for p in from_out[1:] + from_kl]
    tol = TOL[dtype]
    _close(kl_ours, PygMemPooling.kl_loss(S_ref), tol)
    for g, e in zip(got, expected):
        _close(g, e, tol)


def test_node_list_input_runs_on_the_chosen_implementation(implementation):
    _, ours = _pair(torch.float32)
    x, batch = _batch([4, 9], 16, torch.float32)
    _, S = ours(x.requires_grad_(), batch, per_node=True)
    expected = "AssignPoolBackward" if implementation == "compiled" else "_AssignBackward"
    assert type(S.grad_fn).__name__ == expected


def test_unsorted_batch_is_refused_by_the_compiled_kernels(implementation):
    if implementation == "torch":
        pytest.skip("PyTorch operations take any order of the batch vector")
    _, ours = _pair(torch.float32)
    x, _ = _batch([3, 3], 16, torch.float32)
    with pytest.raises(RuntimeError, match="batch must be sorted"):
        ours(x, torch.tensor([0, 1, 0, 1, 0, 1]))


def test_kernels_fall_back_to_pytorch_operations_when_they_cannot_be_built(monkeypatch, caplog):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'mempool_kernels': c++: not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    with caplog.at_level(logging.WARNING, logger=kernels.__name__):
        assert BUILD_KERNELS() is None
    assert "compiled CPU kernels are unavailable (Error building extension 'mempool_kernels')" in caplog.text
    monkeypatch.setenv(kernels.SWITCH, "0")  # switched off: no build is tried, nothing is logged
    caplog.clear()
    assert BUILD_KERNELS() is None and not caplog.text


def test_a_large_tau_far_from_the_keys_stays_finite():
    """With tau=100 and distant inputs PyG's float32 kernel underflows to 0/0 (NaN); ours normalises each head
    relative to its nearest key, so it gives what PyG gives in float64."""
    ref, ours = _pair(torch.float64, tau=100.0)
    x, batch = _batch([7, 5], 16, torch.float64)
    x = x * 40.0
    out_ref, S_ref = ref(x, batch)
    ours = ours.float()
    x32 = x.float().requires_grad_()
    out, S = ours(x32, batch, per_node=True)
    assert torch.isnan(PygMemPooling.kl_loss(ref.float()(x.float(), batch)[1])).item()
    _close(to_dense_batch(S, batch)[0].double(), S_ref, 1e-5)
    _close(out.double(), out_ref, 1e-4)
    (out.sum() + MemPooling.kl_loss(S, batch)).backward()
    assert torch.isfinite(x32.grad).all() and torch.isfinite(ours.k.grad).all()


def _operator_count(layer, num_graphs: int) -> int:
    """ATen operations of one forward + KL + backward over ``num_graphs`` graphs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    x, batch = _batch([3 + i % 7 for i in range(num_graphs)], 16, torch.float32)
    x.requires_grad_()
    with Count():
        out, S = layer(x, batch, batch_size=num_graphs, per_node=True)
        (out.sum() + MemPooling.kl_loss(S, batch, num_graphs)).backward()
    return Count.calls


def test_the_pytorch_path_does_not_grow_with_the_batch_and_compiles_whole(implementation):
    """What other devices run: the same number of operations for 20 and 200 graphs (no loop over graphs, no host
    copy), and one graph for torch.compile (fullgraph)."""
    if implementation == "compiled":
        pytest.skip("the PyTorch-operations path")
    _, ours = _pair(torch.float32)
    assert _operator_count(ours, 20) == _operator_count(ours, 200)
    x, batch = _batch([4, 9, 2], 16, torch.float32)

    def step(x):
        out, S = ours(x, batch, batch_size=3, per_node=True)
        return out.sum() + MemPooling.kl_loss(S, batch, 3)

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # forward and backward traced whole
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss1, loss2 = compiled(x1), step(x2)
    loss1.backward()
    loss2.backward()
    _close(loss1, loss2, 1e-5)
    _close(x1.grad, x2.grad, 1e-5)


def test_a_batch_split_over_threads_gives_the_bits_of_one_thread(implementation):
    """The compiled kernels compute nodes and graphs independently, so splitting a large batch (more nodes and
    graphs than one parallel task takes) over two threads changes no bit of the outputs, the KL loss or any
    gradient."""
    if implementation == "torch":
        pytest.skip("PyTorch's own reductions may sum in another order with another thread count")
    _, ours = _pair(torch.float32, in_channels=16, clusters=10, tau=30.0)
    ours.split_key_grad = True
    x, batch = _batch([30] * 100, 16, torch.float32)
    results, before = [], torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            inputs = x.clone().requires_grad_()
            out, S = ours(inputs, batch, per_node=True)
            kl = MemPooling.kl_loss(S, batch)
            grads = torch.autograd.grad(out.square().sum() + kl, [inputs, ours.k, ours.conv.weight, ours.lin.weight])
            results.append([out, S, kl, *grads])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*results))
