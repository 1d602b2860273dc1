"""Benchmark mempool's MemPooling against torch_geometric.nn.MemPooling, both sides in one process.

1. the layer alone: forward + backward with the KL loss over shuffled epochs of real batches;
2. a training epoch on PROTEINS with the architecture of PyG's examples/mem_pool.py: that example's loop
   (PyG layer, its two-phase KL step) against the trainer's loop (our layer, one forward per batch);
3. the limit: the same encoder with a global mean-pool readout instead of the memory layers;
4. mempool's own PROTEINS model (``mempool train dataset=PROTEINS``, one thread: :func:`bench_epoch.default_spec`)
   against the same model with its memory replaced by a sum over the nodes (``model.memory.clusters=[1]``): what the
   memory costs a user's epoch.

Timings take the sides in turn in every repeat and keep the median of --repeats; peak memory is the peak growth
of the resident set of a fresh process that runs one epoch of that side alone.

    MEMPOOL_DATA_SOURCE=../shared/data/TUDataset python scripts/bench_mempool.py
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import multiprocessing
import os
import re
import statistics
import time
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # as the mempool command sets it (threads wait briefly)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torch import nn  # noqa: E402
from torch_geometric.nn import DeepGCNLayer, GATConv, global_mean_pool  # noqa: E402
from torch_geometric.nn import MemPooling as PygMemPooling  # noqa: E402

from bench_epoch import Side, default_spec  # noqa: E402
from bench_epoch import timed as timed_epochs  # noqa: E402
from mempool_cli.config import DataSpec, default_data_root, default_data_source  # noqa: E402
from mempool_cli.data import Dataset, make_loader  # noqa: E402
from mempool_cli.engine import train_epoch  # noqa: E402
from mempool_cli.nn import MemPooling, kernels, leaky_relu_dropout  # noqa: E402


def load(name: str) -> Dataset:
    """A TU dataset through mempool's data path (cache, offline source or download), PROTEINS' recipe."""
    return Dataset.load(DataSpec(name, root=default_data_root(), source=default_data_source()))


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _child_peak(conn, build, args) -> None:
    run = build(*args)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed set-up memory back, so the epoch's own peak shows
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM) to the current one
    before = _status_kib("VmRSS")
    run()
    conn.send((_status_kib("VmHWM") - before) / 1024)


def peak_rss_mb(build, *args) -> float:
    """Peak growth of the resident set (MiB) while a fresh (spawned) process runs ``build(*args)()`` once
    (Linux). A forked child of a process that has started PyTorch's thread pool can hang, hence spawn."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child_peak, args=(send, build, args))
    child.start()
    value = receive.recv()
    child.join()
    return value


def timed(runs: list, repeats: int) -> list[float]:
    """Median seconds of each callable, run in turn every repeat so that all see the same machine state."""
    for run in runs:  # warm-up
        run()
    seconds = [[] for _ in runs]
    for _ in range(repeats):
        for run, out in zip(runs, seconds):
            start = time.perf_counter()
            run()
            out.append(time.perf_counter() - start)
    return [statistics.median(times) for times in seconds]


# ---------------------------------------------------------------- 1. the layer alone
def graph_sizes(name: str) -> np.ndarray:
    return np.array([graph.num_nodes for graph in load(name).source.graphs])


def layer_batches(sizes: np.ndarray, batch_size: int, hidden: int, seed: int = 0):
    perm = np.random.default_rng(seed).permutation(len(sizes))
    batches = []
    for start in range(0, len(sizes), batch_size):
        counts = torch.as_tensor(sizes[perm[start:start + batch_size]])
        batch = torch.repeat_interleave(torch.arange(len(counts)), counts)
        batches.append((torch.randn(int(counts.sum()), hidden), batch, len(counts)))
    return batches


def layer_epoch(layer, batches, node_list_kl: bool) -> None:
    for x, batch, size in batches:
        x = x.requires_grad_()
        out, S = layer(x, batch, batch_size=size, per_node=True) if node_list_kl else layer(x, batch, batch_size=size)
        kl = MemPooling.kl_loss(S, batch, size) if node_list_kl else PygMemPooling.kl_loss(S)
        (out.sum() + kl).backward()


def bench_layer(datasets, batch_sizes, hiddens, repeats: int, console: Console) -> None:
    table = Table(title="1. MemPooling forward + backward + KL loss, one shuffled epoch (5 heads, 10 clusters)")
    for column in ("dataset", "batch", "hidden", "PyG s", "ours s", "speed-up", "PyG peak MiB", "ours peak MiB"):
        table.add_column(column, justify="right")
    for name in datasets:
        sizes = graph_sizes(name)
        for batch_size in batch_sizes:
            for hidden in hiddens:
                batches = layer_batches(sizes, batch_size, hidden)
                torch.manual_seed(0)
                ref = PygMemPooling(hidden, hidden, heads=5, num_clusters=10)
                ours = MemPooling(hidden, hidden, heads=5, num_clusters=10)
                ours.load_state_dict(ref.state_dict())
                t_ref, t_ours = timed([lambda: layer_epoch(ref, batches, False),
                                       lambda: layer_epoch(ours, batches, True)], repeats)
                m_ref = peak_rss_mb(functools.partial, layer_epoch, ref, batches, False)
                m_ours = peak_rss_mb(functools.partial, layer_epoch, ours, batches, True)
                table.add_row(name, str(batch_size), str(hidden), f"{t_ref:.3f}", f"{t_ours:.3f}",
                              f"{t_ref / t_ours:.2f}x", f"{m_ref:.0f}", f"{m_ours:.0f}")
                console.print(f"  {name} batch {batch_size} hidden {hidden}: {t_ref / t_ours:.2f}x", highlight=False)
    console.print(table)


# ---------------------------------------------------------------- 2 and 3. a training epoch
class ExampleNet(nn.Module):
    """The architecture of PyG's examples/mem_pool.py, with a choice of memory layer or a mean-pool readout."""

    def __init__(self, in_channels: int, num_classes: int, memory: str, hidden: int = 32, dropout: float = 0.1):
        super().__init__()
        self.dropout, self.memory_kind = dropout, memory
        self.lin = nn.Linear(in_channels, hidden)
        self.convs = nn.ModuleList(
            DeepGCNLayer(GATConv(hidden, hidden, dropout=dropout), nn.BatchNorm1d(hidden), nn.LeakyReLU(),
                         block="res+", dropout=dropout)
            for _ in range(2)
        )
        if memory == "mean":
            self.readout = nn.Linear(hidden, num_classes)
            self.memory = nn.ModuleList()
        else:
            layer = PygMemPooling if memory == "pyg" else MemPooling
            self.memory = nn.ModuleList([layer(hidden, 80, heads=5, num_clusters=10),
                                         layer(80, num_classes, heads=5, num_clusters=1)])

    def memory_keys(self) -> list[nn.Parameter]:
        return [m.k for m in self.memory]

    def kl_parameters(self, with_heads: bool = False) -> list[list[nn.Parameter]]:
        return [[m.k] for m in self.memory]

    def route_key_gradients(self, enabled: bool, with_heads: bool = False) -> bool:
        if self.memory_kind != "fast":
            return False
        for layer in self.memory:
            layer.split_key_grad = enabled
        return True

    def forward(self, x, edge_index, batch, batch_size=None, edge_attr=None):
        return self.forward_with_assignments(x, edge_index, batch, batch_size)[:2]

    def forward_with_assignments(self, x, edge_index, batch, batch_size=None, edge_attr=None):
        x = self.lin(x)
        for conv in self.convs:
            x = conv(x, edge_index)
        if self.memory_kind == "mean":
            return self.readout(global_mean_pool(x, batch, batch_size)), x.new_zeros(1), [x.new_ones(len(x), 1)]
        per_node = {"per_node": True} if self.memory_kind == "fast" else {}
        x, S1 = self.memory[0](x, batch, batch_size=batch_size, **per_node)
        kl1 = MemPooling.kl_loss(S1, batch, batch_size) if S1.dim() == 2 else PygMemPooling.kl_loss(S1)
        # after the memory layer, the dropout of each side's own model: mempool's fused step with our layer (as
        # mempool_cli.model.MemGNN has it), torch's Bernoulli draw with PyG's (as the example has it)
        if self.memory_kind == "fast":
            x = leaky_relu_dropout(x, self.dropout, self.training)
        else:
            x = F.dropout(F.leaky_relu(x), self.dropout, self.training)
        x, S2 = self.memory[1](x)
        kl2 = MemPooling.kl_loss(S2) if self.memory_kind == "fast" else PygMemPooling.kl_loss(S2)
        return F.log_softmax(x.squeeze(1), dim=-1), torch.stack([kl1, kl2]), [S1, S2]


def example_epoch(model: ExampleNet, loader, optimizer) -> None:
    """PyG's examples/mem_pool.py train(): a supervised pass with frozen keys, then a KL pass over all batches."""
    model.train()
    for k in model.memory_keys():
        k.requires_grad = False
    for data in loader:
        optimizer.zero_grad()
        out = model(data.x, data.edge_index, data.batch)[0]
        F.nll_loss(out, data.y).backward()
        optimizer.step()
    kl_loss = 0.0
    for k in model.memory_keys():
        k.requires_grad = True
    optimizer.zero_grad()
    for data in loader:
        kl_loss += model(data.x, data.edge_index, data.batch)[1].sum()
    (kl_loss / loader.num_graphs).backward()
    optimizer.step()


EPOCH_LOOPS = {
    "example": "PyG example loop + PyG layer",
    "trainer": "trainer loop + our layer",
    "limit": "limit: trainer loop, mean-pool readout",
}


def epoch_runner(loop: str):
    """One training epoch on PROTEINS (batch 20) as a callable: ``example``, ``trainer`` or ``limit``."""
    dataset = load("PROTEINS")
    index = list(range(len(dataset.labels)))
    graphs = dataset.featurize(dataset.fit_features(index))
    loader = make_loader(graphs, index, batch_size=20, shuffle=True, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    memory = {"example": "pyg", "trainer": "fast", "limit": "mean"}[loop]
    model = ExampleNet(graphs.num_features, graphs.num_classes, memory)
    # the example's per-tensor Adam step; the trainer's sides (memory model and limit alike) take the trainer's
    # fused one, as mempool_cli.loop does
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=4e-5, fused=loop != "example")
    if loop == "example":
        return functools.partial(example_epoch, model, loader, optimizer)
    schedule, kl_weight = ("paper", 1.0) if loop == "trainer" else ("joint", 0.0)
    return functools.partial(train_epoch, model, loader, optimizer, torch.device("cpu"), schedule, kl_weight)


def bench_epoch(repeats: int, console: Console) -> None:
    runs = {loop: epoch_runner(loop) for loop in EPOCH_LOOPS}
    num_graphs = runs["trainer"].args[1].num_graphs
    seconds = dict(zip(runs, timed(list(runs.values()), repeats)))
    table = Table(title=f"2-3. training epoch on PROTEINS ({num_graphs} graphs, batch 20), PyG example architecture")
    for column in ("loop", "s / epoch", "graphs / s", "peak MiB"):
        table.add_column(column, justify="right")
    for loop, label in EPOCH_LOOPS.items():
        table.add_row(label, f"{seconds[loop]:.3f}", f"{num_graphs / seconds[loop]:.0f}",
                      f"{peak_rss_mb(epoch_runner, loop):.0f}")
    console.print(table)
    console.print(f"2. trainer loop vs PyG example loop: {seconds['example'] / seconds['trainer']:.2f}x faster "
                  "(target >= 2.5x)")
    console.print(f"3. trainer loop with memory layers vs mean-pool limit: {seconds['trainer'] / seconds['limit']:.2f}x "
                  f"the time (target <= 1.15x)")


def bench_default_model(epochs: int, console: Console) -> None:
    """Section 4: a training + validation epoch of the default model and of the same model with a sum readout."""
    sides = {"memory": Side("mempool_cli", default_spec("PROTEINS")),
             "sum": Side("mempool_cli", default_spec("PROTEINS", "model.memory.clusters=[1]"))}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    seconds = timed_epochs(sides, epochs)
    torch.set_num_threads(threads)
    console.print(f"4. mempool's default model on PROTEINS, 1 thread: {seconds['memory']:.3f} s / epoch with the memory "
                  f"layers, {seconds['sum']:.3f} with a sum readout: {seconds['memory'] / seconds['sum']:.2f}x the time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["PROTEINS", "DD", "REDDIT-BINARY"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[20, 128])
    parser.add_argument("--hidden", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-layer", action="store_true")
    parser.add_argument("--skip-epoch", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for sections 1-3 (default 1: mempool train's default; section 4 takes 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    ours = "compiled CPU kernels" if kernels.cpu_kernels() else f"PyTorch operations ({kernels.SWITCH}=0 or no build)"
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu; our layer: {ours}")
    if not args.skip_layer:
        bench_layer(args.datasets, args.batch_sizes, args.hidden, args.repeats, console)
    if not args.skip_epoch:
        bench_epoch(args.repeats, console)
        bench_default_model(5 * args.repeats, console)


if __name__ == "__main__":
    main()
