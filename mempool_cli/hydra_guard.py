"""Hydra's side of a single run: refuse it before Hydra writes anything, and remember whether its folder existed.

Hydra makes the run folder and writes ``.hydra/`` before the task function starts, and it turns exceptions raised
in callbacks into warnings; so a refusal found here travels as :class:`Refused`, which Hydra lets through, to the
command line, which reports it in one line.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mempool_cli.errors import MempoolError

existing_run_dirs: set[Path] = set()  # run folders that were there before this process's run started


class Refused(BaseException):
    """A run refused before it started; ``error`` says why."""

    def __init__(self, error: MempoolError):
        super().__init__(str(error))
        self.error = error


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def _sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The overrides of every job of a basic sweep, as Hydra's basic sweeper will expand them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def _quiet_optuna() -> None:
    """Optuna's own log lines (coloured, even when piped) go through logging, where only warnings show."""
    try:
        import optuna
    except ImportError:
        return
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


class RunGuard(Callback):
    """Before a single run: resolve and check its config, device, resume checkpoint and run folder. Before a
    basic sweep: resolve and check every job's config, so that one bad value stops the sweep before any job."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra import compose

        from mempool_cli.config import resolve

        if str(config.hydra.launcher.get("_target_", "")).endswith(".SlurmLauncher") and not shutil.which("sbatch"):
            raise Refused(MempoolError("hydra/launcher=slurm: there is no SLURM here (no sbatch on PATH); run the "
                                       "sweep on this machine with hydra/launcher=slurm_local or parallel"))
        if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
            _quiet_optuna()
            return  # other sweepers choose their jobs as they go
        for job in _sweep_jobs(config):
            try:
                resolve(compose(config_name="config", overrides=job))
            except MempoolError as error:
                raise Refused(MempoolError(f"sweep job {' '.join(job)}: {error}")) from error

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mempool_cli.config import resolve
        from mempool_cli.parallel import start_importing

        run_dir = Path(config.hydra.run.dir).absolute()
        if run_dir.exists():
            existing_run_dirs.add(run_dir)
        try:
            spec = resolve(config)
            if spec.protocol.name == "kfold":  # its fold workers' imports on another core, beside this process's
                start_importing(spec.protocol.workers, spec.protocol.folds, spec.threads)
            from mempool_cli.protocols import preflight

            preflight(spec, run_dir)
        except MempoolError as error:
            raise Refused(error) from error
