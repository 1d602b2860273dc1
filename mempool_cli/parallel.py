"""Folds of a k-fold run trained at once in worker processes, each with its share of the CPU threads.

A fold's result does not depend on where it runs: each fold seeds itself and trains on its own split, so the
per-fold metrics equal those of a sequential run with the same thread count per fold. Workers are started fresh
(``spawn``), write into their fold's folder only, log to its ``train.log`` and print plain lines that name the
fold.
"""
from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Optional

from mempool_cli.device import set_threads

log = logging.getLogger(__name__)


def free_cores() -> int:
    """Cores not busy with other work: all of them less the load of the last minute (at least 1)."""
    cores = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, cores - busy)


def worker_count(requested: Optional[int], pending: int, threads: Optional[int]) -> int:
    """How many folds to train at once: ``requested``, or as many as the free cores allow at ``threads`` each
    (one when each fold uses every core), never more than the folds left."""
    if requested is None:
        requested = free_cores() // threads if threads else 1
    return max(1, min(requested, pending))


def fold_logging(fold_dir: Path) -> None:
    """In a worker: the fold's log lines go to its own ``train.log`` (the run's log is the parent's)."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(fold_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _watch_parent(parent: int) -> None:
    """In a worker: exit once the process that started it is gone (killed before it could stop its workers), so no
    worker is left behind waiting for folds."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


_shared: tuple = ()  # in a worker: the arguments that every fold's call begins with, received once


def start_worker(threads: int, parent: int, shared: bytes) -> None:
    """A worker's set-up: its share of the threads, a watch on its parent, and the folds' common arguments (pickled:
    their tensors are copied, not shared, since a new process could not be handed a storage twice)."""
    global _shared
    set_threads(threads)
    _shared = pickle.loads(shared)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _call(run_fold: Callable[..., dict[str, Any]], args: tuple) -> dict[str, Any]:
    return run_fold(*_shared, *args)


def run_parallel(run_fold: Callable[..., dict[str, Any]], shared: tuple, jobs: list[tuple[int, tuple]], workers: int,
                 threads: Optional[int]) -> dict[int, dict[str, Any]]:
    """``run_fold(*shared, *args)`` for every ``(fold, args)`` of ``jobs`` on ``workers`` processes; the metrics by
    fold. ``shared`` (the dataset, say) goes to each worker once, not with every fold. The first failure stops the
    others and is raised."""
    results: dict[int, dict[str, Any]] = {}
    context = get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=start_worker,
                             initargs=(threads or 1, os.getpid(), pickle.dumps(shared))) as pool:
        futures = {pool.submit(_call, run_fold, args): fold for fold, args in jobs}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                log.info("fold %d finished (%d of %d)", futures[future], len(results), len(jobs))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results
