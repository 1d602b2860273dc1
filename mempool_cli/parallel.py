"""Folds of a k-fold run trained at once in worker processes, each with its share of the CPU threads.

A fold's result does not depend on where it runs: each fold seeds itself and trains on its own split, so the
per-fold metrics equal those of a sequential run with the same thread count per fold. Workers are started fresh,
forked from a fork server that has imported what a fold needs (``spawn`` where there is none), write into their
fold's folder only, log to its ``train.log`` and print plain lines that name the fold.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Optional

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


# what a fold's worker imports, done once in the fork server instead of in every worker
WORKER_IMPORTS = ["mempool_cli.protocols", "mempool_cli.progress", "sklearn.cluster", "scipy.optimize"]


def _context() -> multiprocessing.context.BaseContext:
    """Fork server where the system has one (preloaded with the workers' imports), else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_IMPORTS)
    return context


def start_importing(workers: Optional[int], folds: int, threads: Optional[int]) -> None:
    """Start the fork server of a run that will train folds in parallel, so that it imports PyTorch and the rest
    on another core while this process does the same and loads the data. Does nothing for folds in turn."""
    if worker_count(workers, folds, threads) > 1 and _context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def fold_logging(fold_dir: Path) -> None:
    """In a worker: the fold's log lines go to its own ``train.log`` (the run's log is the parent's)."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(fold_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _exists(pid: int) -> bool:
    """Whether process ``pid`` is alive (or a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _watch_parent(parent: int) -> None:
    """In a worker: exit once the process that started it is gone (killed before it could stop its workers), so no
    worker is left behind waiting for folds. A forked worker's parent is the fork server, which exits with it."""
    starter = os.getppid()
    while os.getppid() == starter and _exists(parent):
        time.sleep(1.0)
    os._exit(1)


_shared: tuple = ()  # in a worker: the arguments that every fold's call begins with, received once


def start_worker(threads: int, parent: int, shared: bytes) -> None:
    """A worker's set-up: its share of the threads, a watch on its parent, and the folds' common arguments (pickled:
    their tensors are copied, not shared, since a new process could not be handed a storage twice)."""
    from mempool_cli.device import set_threads

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
    with ProcessPoolExecutor(workers, mp_context=_context(), initializer=start_worker,
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
