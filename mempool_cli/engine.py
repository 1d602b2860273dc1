"""One epoch of training and one pass of evaluation; no I/O."""
from __future__ import annotations

import math
import threading
from typing import Callable, Optional

import torch
from torch import Tensor
import torch.nn.functional as F

from mempool_cli.data.batching import GraphLoader
from mempool_cli.model import MemGNN

BatchCallback = Callable[[int, float], None]
# set by a Ctrl-C (the CLI's handler): training stops at the next batch even where PyTorch's autograd engine swallowed
# the KeyboardInterrupt that the handler raised inside a backward pass (seen with Python-defined backward functions)
INTERRUPTED = threading.Event()


def key_counts(S: Tensor) -> Tensor:
    """How many rows of the assignments ``S`` (``[N, K]``, or padded ``[B, N, K]`` whose all-zero rows are
    padding) pick each of the K clusters as their argmax (without a copy to the host: no GPU sync per batch)."""
    rows = S.detach().reshape(-1, S.size(-1))
    picks = rows.argmax(-1)
    # per node ([N, K]) every row is a node's; padded, the all-zero rows count for nothing
    real = torch.ones_like(picks) if S.dim() == 2 else (rows.sum(-1) > 0).long()
    return torch.zeros(S.size(-1), dtype=torch.long, device=S.device).index_add_(0, picks, real)


def _separate_passes(model: MemGNN, kl_schedule: str) -> Optional[tuple[list, list[list]]]:
    """Set the memory layers' gradient routing for ``kl_schedule``; returns ``(others, kl_params)`` where the losses
    need backward passes of their own (PyG's layer under ``paper`` or ``assign``), else None (one backward pass)."""
    split = kl_schedule in ("paper", "assign")
    with_heads = kl_schedule == "assign"
    if model.route_key_gradients(split, with_heads) or not split:
        return None
    kl_params = model.kl_parameters(with_heads)
    kl_ids = {id(p) for params in kl_params for p in params}
    return [p for p in model.parameters() if id(p) not in kl_ids and p.requires_grad], kl_params


def train_epoch(
    model: MemGNN,
    loader: GraphLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    kl_schedule: str = "paper",
    kl_weight: float = 1.0,
    on_batch: Optional[BatchCallback] = None,
) -> dict[str, float]:
    """Train for one epoch; returns the graph-weighted mean ``loss``, ``ce``, ``kl`` and ``acc``, and
    ``key_counts``: how many training nodes picked each key of the first memory layer as their argmax.

    ``paper``: each memory layer's keys learn from that layer's KL loss only and every other parameter from
    the cross-entropy only, all from the same forward pass (one backward pass with mempool's layer; with
    PyG's, one per loss). ``assign``: the same, with the head weights learning from the KL loss like the keys
    (the assignment's own parameters from the clustering loss, as DEC trains its centres). ``joint``: every
    parameter learns from ``ce + kl_weight * kl``.
    """
    model.train()
    passes = _separate_passes(model, kl_schedule)
    totals = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "correct": 0.0}
    seen, counts = 0, 0
    for step, data in enumerate(loader, start=1):
        data = data.to(device)
        logits, layer_kls, assignments = model.forward_with_assignments(data.x, data.edge_index, data.batch,
                                                                        data.num_graphs, data.edge_attr)
        counts = counts + key_counts(assignments[0])
        ce = F.cross_entropy(logits, data.y)
        kl = layer_kls.sum()
        loss = ce + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        if passes is None:
            loss.backward()
        else:
            ce.backward(inputs=passes[0], retain_graph=True)
            for layer_kl, params in zip(layer_kls, passes[1]):
                (kl_weight * layer_kl).backward(inputs=params, retain_graph=True)
        optimizer.step()
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt
        n = data.num_graphs
        seen += n
        totals["loss"] += loss.item() * n
        totals["ce"] += ce.item() * n
        totals["kl"] += kl.item() * n
        totals["correct"] += (logits.argmax(dim=-1) == data.y).sum().item()
        if on_batch is not None:
            on_batch(step, totals["loss"] / seen)
    return {"loss": totals["loss"] / seen, "ce": totals["ce"] / seen, "kl": totals["kl"] / seen,
            "acc": totals["correct"] / seen, "key_counts": counts}


@torch.inference_mode()
def evaluate(model: MemGNN, loader: GraphLoader, device: torch.device, kl_weight: float = 1.0) -> dict:
    """Mean ``loss``, ``ce``, ``kl`` and ``acc`` over ``loader``, with the predictions and targets."""
    model.eval()
    ce_sum = kl_sum = 0.0
    preds, targets = [], []
    for data in loader:
        data = data.to(device)
        logits, layer_kls = model(data.x, data.edge_index, data.batch, data.num_graphs, data.edge_attr)
        kl = layer_kls.sum()
        ce_sum += F.cross_entropy(logits, data.y, reduction="sum").item()
        kl_sum += kl.item() * data.num_graphs
        preds.append(logits.argmax(dim=-1).cpu())
        targets.append(data.y.cpu())
    pred, target = torch.cat(preds), torch.cat(targets)
    n = len(target)
    return {
        "loss": (ce_sum + kl_weight * kl_sum) / n,
        "ce": ce_sum / n,
        "kl": kl_sum / n,
        "acc": (pred == target).float().mean().item(),
        "pred": pred,
        "target": target,
    }


def assignment_stats(assignments: list[Tensor]) -> dict[str, float]:
    """How sharply rows of soft assignments ``[..., K]`` pick one cluster: the mean of their largest entry
    (``1/K`` when flat, 1 when hard), their mean entropy over ``log K`` (1 when flat, 0 when hard), and how
    many of the K clusters are the argmax of some row (``keys_used``, as :func:`key_counts` counts). The all-zero
    rows of padded ``[B, N, K]`` assignments (PyG's layer) are padding, left out."""
    S = torch.cat([a.reshape(-1, a.size(-1)) for a in assignments]).double()
    S = S[S.sum(-1) > 0]
    K = S.size(1)
    if K == 1:
        return {"clusters": 1, "mean_max_assignment": 1.0, "normalized_entropy": 0.0, "keys_used": 1}
    entropy = -(S * S.clamp_min(1e-300).log()).sum(-1) / math.log(K)
    return {"clusters": K, "mean_max_assignment": S.max(-1).values.mean().item(),
            "normalized_entropy": entropy.mean().item(), "keys_used": int((key_counts(S) > 0).sum())}


@torch.inference_mode()
def memory_stats(model: MemGNN, loader: GraphLoader, device: torch.device) -> list[dict[str, float]]:
    """:func:`assignment_stats` of each memory layer over every graph of ``loader`` (the first layer's rows are
    the nodes, a later layer's the clusters of the layer before)."""
    model.eval()
    per_layer: list[list[Tensor]] = [[] for _ in model.memory]
    for data in loader:
        data = data.to(device)
        _, _, assignments = model.forward_with_assignments(data.x, data.edge_index, data.batch, data.num_graphs,
                                                         data.edge_attr)
        for store, S in zip(per_layer, assignments):
            store.append(S.cpu())
    return [{"layer": i, **assignment_stats(S)} for i, S in enumerate(per_layer)]
