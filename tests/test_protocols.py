"""k-fold cross-validation, sweep summaries and Hydra's launcher and sweeper plugins, offline on a tiny dataset."""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import TINY_ARGS, run_cli
from mempool_cli.sweep import (common_overrides, fold_rows, fold_selection, fold_summary, summarize_folds,
                               summarize_sweep, sweep_rows)

QUICK = [*TINY_ARGS, "train.epochs=2"]


def _metrics(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def kfold_run(tmp_path_factory, tiny_source):
    """A 3-fold run on the tiny dataset, shared by the k-fold tests."""
    cwd = tmp_path_factory.mktemp("kfold")
    env = {"MEMPOOL_DATA_ROOT": str(cwd / "cache"), "MEMPOOL_DATA_SOURCE": str(tiny_source)}
    args = ["train", *QUICK, "protocol=kfold", "protocol.folds=3", f"hydra.run.dir={cwd / 'run'}"]
    result = run_cli(args, cwd, env)
    assert result.returncode == 0, result.stderr
    return cwd, env, args, result


def test_kfold_writes_folds_per_fold_units_and_summary(kfold_run):
    cwd, _, _, result = kfold_run
    run = cwd / "run"
    folds = _metrics(run / "folds.json")
    assert {"dataset": "TINY", "num_graphs": 48, "folds": 3, "seed": 0}.items() <= folds["meta"].items()
    assert len(folds["meta"]["labels_hash"]) >= 16
    tests = [set(fold["test"]) for fold in folds["folds"]]
    assert set.union(*tests) == set(range(48)) and sum(map(len, tests)) == 48
    for i in range(3):
        for name in ("metrics.json", "checkpoint.pt", "last.pt", "tensorboard"):
            assert (run / f"fold_{i}" / name).exists(), (i, name)
    per_fold = [_metrics(run / f"fold_{i}" / "metrics.json") for i in range(3)]
    summary = _metrics(run / "summary.json")
    assert summary["folds"] == 3 and len(summary["per_fold"]) == 3
    assert summary["test_acc"] == pytest.approx(statistics.fmean(m["test_acc"] for m in per_fold))
    assert summary["test_acc_std"] == pytest.approx(statistics.stdev(m["test_acc"] for m in per_fold))
    assert _metrics(run / "metrics.json")["val_acc"] == summary["val_acc"]
    assert "+-" in result.stdout and "fold" in result.stdout


def test_kfold_rerun_skips_finished_folds_and_refuses_other_settings_or_folds(kfold_run):
    cwd, env, args, _ = kfold_run
    run = cwd / "run"
    stamps = {i: (run / f"fold_{i}" / "metrics.json").stat().st_mtime_ns for i in (0, 2)}
    folds_file = (run / "folds.json").read_bytes()
    (run / "fold_1" / "metrics.json").unlink()  # as if the run had stopped during fold 1
    result = run_cli(args, cwd, env)
    assert result.returncode == 0, result.stderr
    log = (run / "train.log").read_text()
    assert "fold 0 already finished" in log and "fold 2 already finished" in log and "fold 1 resumes" in log
    assert {i: (run / f"fold_{i}" / "metrics.json").stat().st_mtime_ns for i in (0, 2)} == stamps
    assert (run / "fold_1" / "metrics.json").exists()
    assert (run / "folds.json").read_bytes() == folds_file  # written once, reused
    config = (run / "config.yaml").read_bytes()
    changed = run_cli([*args, "model.dropout=0.3"], cwd, env)  # finished folds were trained without it
    assert changed.returncode != 0 and len(changed.stderr.strip().splitlines()) == 1
    assert "other settings (model.dropout)" in changed.stderr
    assert (run / "config.yaml").read_bytes() == config
    other_folds = [a if a != "protocol.folds=3" else "protocol.folds=4" for a in args if not a.startswith("hydra.run")]
    other = run_cli([*other_folds, f"protocol.split_file={run / 'folds.json'}", f"hydra.run.dir={cwd / 'other'}"],
                    cwd, env)
    assert other.returncode != 0 and len(other.stderr.strip().splitlines()) == 1
    assert "protocol.folds" in other.stderr and "3 folds" in other.stderr


def test_fold_summary_aggregates_finished_folds_only(tmp_path):
    for i, (val, test) in enumerate([(0.8, 0.7), (0.6, 0.9), (None, None)]):
        (tmp_path / f"fold_{i}").mkdir()
        if val is not None:
            metrics = {"val_acc": val, "test_acc": test, "train_acc": 1.0, "train_time_s": 2.0, "best_epoch": 3}
            (tmp_path / f"fold_{i}" / "metrics.json").write_text(json.dumps(metrics))
    rows = fold_rows(tmp_path)
    assert [r["status"] for r in rows] == ["done", "done", "unfinished"]
    summary = fold_summary(rows)
    assert summary["finished"] == 2 and summary["folds"] == 2
    assert summary["val_acc"] == pytest.approx(0.7) and summary["test_acc"] == pytest.approx(0.8)
    assert summary["test_acc_std"] == pytest.approx(statistics.stdev([0.7, 0.9]))
    assert summary["train_time_s"] == 4.0
    assert summarize_folds([{"val_acc": 0.5, "test_acc": 0.5, "train_acc": 0.5, "train_time_s": 1}])["test_acc_std"] == 0


def test_sweep_rows_sort_by_validation_and_show_what_varies(tmp_path):
    for job, (lr, val) in enumerate([(0.1, 0.6), (0.01, 0.9), (0.001, None)]):
        hydra_dir = tmp_path / str(job) / ".hydra"
        hydra_dir.mkdir(parents=True)
        (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(["dataset=MUTAG", f"optim.lr={lr}"]))
        if val is not None:
            (tmp_path / str(job) / "metrics.json").write_text(json.dumps({"val_acc": val, "test_acc": 0.5}))
    rows = sweep_rows(tmp_path)
    assert [(r["job"], r["status"], r["overrides"]) for r in rows] == [
        ("1", "done", "optim.lr=0.01"), ("0", "done", "optim.lr=0.1"), ("2", "unfinished", "optim.lr=0.001")]
    assert common_overrides(rows) == "dataset=MUTAG"


def _kfold_job(sweep: Path, job: int, overrides: list[str], folds: list, results: list) -> None:
    """A finished or interrupted k-fold job of a sweep, as files: ``results`` holds (val, test) or None per fold."""
    (sweep / str(job) / ".hydra").mkdir(parents=True)
    (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (sweep / str(job) / "folds.json").write_text(json.dumps({"meta": {}, "folds": folds}))
    for i, result in enumerate(results):
        (sweep / str(job) / f"fold_{i}").mkdir()
        if result:
            metrics = {"val_acc": result[0], "test_acc": result[1], "train_acc": 1.0, "train_time_s": 1.0}
            (sweep / str(job) / f"fold_{i}" / "metrics.json").write_text(json.dumps(metrics))


def test_fold_selection_picks_the_best_validation_job_in_each_fold(tmp_path):
    folds = [{"train": [1], "val": [2], "test": [0]}] * 4
    _kfold_job(tmp_path, 0, ["model.hidden=64"], folds, [(0.8, 0.70), (0.6, 0.60), (0.7, 0.50), (0.9, 0.9)])
    _kfold_job(tmp_path, 1, ["model.hidden=128"], folds, [(0.7, 0.99), (0.9, 0.80), (0.7, 0.10), None])
    selection = fold_selection(tmp_path, sweep_rows(tmp_path))
    assert [(r["fold"], r["job"], r["test_acc"]) for r in selection["rows"]] == [
        (0, "0", 0.70), (1, "1", 0.80), (2, "0", 0.50)]  # a tie goes to the first job; fold 3 is unfinished
    assert selection["folds"] == 4 and selection["summary"]["folds"] == 3
    assert selection["summary"]["test_acc"] == pytest.approx(statistics.fmean([0.70, 0.80, 0.50]))
    assert selection["rows"][1]["overrides"] == "model.hidden=128"
    summarize_sweep(tmp_path, sweep_rows(tmp_path))
    assert json.loads((tmp_path / "selection.json").read_text())["summary"]["folds"] == 3
    assert "Model selection per fold" in (tmp_path / "summary.md").read_text()
    shown = run_cli(["summarize", str(tmp_path)], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "model selection per fold" in shown.stdout and "3 of 4 folds" in shown.stdout
    assert "0.6667 +- 0.1528" in shown.stdout  # test_acc of the selected models: mean +- sample std

    (tmp_path / "1" / "folds.json").write_text(json.dumps({"meta": {}, "folds": folds[:3]}))
    assert fold_selection(tmp_path, sweep_rows(tmp_path)) is None  # other fold assignments: nothing to compare


def test_joblib_multirun_and_summarize_an_interrupted_sweep(tmp_path, data_env):
    sweep = tmp_path / "sweep"
    result = run_cli(["train", "-m", "hydra/launcher=parallel", "threads=1", *QUICK, "seed=1,2,3",
                      f"hydra.sweep.dir={sweep}"], tmp_path, data_env)
    assert result.returncode == 0, result.stderr
    assert "JoblibLauncher" in (sweep / "multirun.yaml").read_text()
    assert len(list(sweep.glob("*/metrics.json"))) == 3
    lines = (sweep / "summary.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("job,dataset,overrides,status,val_acc")
    vals = [float(line.split(",")[4]) for line in lines[1:]]
    assert vals == sorted(vals, reverse=True)

    (sweep / "2" / "metrics.json").unlink()  # job 2 never finished
    for name in ("summary.csv", "summary.md"):
        (sweep / name).unlink()
    summary = run_cli(["summarize", str(sweep)], tmp_path, data_env)
    assert summary.returncode == 0, summary.stderr
    assert "unfinished" in summary.stdout and "seed=3" in summary.stdout
    assert "2,TINY,seed=3,unfinished" in (sweep / "summary.csv").read_text()


def test_submitit_local_multirun(tmp_path, data_env):
    sweep = tmp_path / "sweep"
    result = run_cli(["train", "-m", "hydra/launcher=slurm_local", *QUICK, "model.memory.tau=0.5,2.0",
                      f"hydra.sweep.dir={sweep}"], tmp_path, data_env)
    assert result.returncode == 0, result.stderr
    assert "LocalLauncher" in (sweep / "multirun.yaml").read_text()
    assert (sweep / ".submitit").is_dir()
    assert len(list(sweep.glob("*/metrics.json"))) == 2
    assert "model.memory.tau=2.0" in (sweep / "summary.md").read_text()


def test_optuna_search_maximises_validation_accuracy(tmp_path, data_env):
    sweep = tmp_path / "sweep"
    result = run_cli(["train", "-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=3", *QUICK,
                      f"hydra.sweep.dir={sweep}"], tmp_path, data_env)
    assert result.returncode == 0, result.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    vals = [_metrics(path)["val_acc"] for path in sweep.glob("*/metrics.json")]
    assert len(vals) == 3 and best["best_value"] == pytest.approx(max(vals))
    assert "optim.lr" in best["best_params"]


def test_runs_started_together_get_their_own_directories(tmp_path, data_env):
    env = {**os.environ, **data_env}
    env.pop("HYDRA_FULL_ERROR", None)
    command = [sys.executable, "-m", "mempool_cli", "train", *TINY_ARGS, "train.epochs=1"]
    procs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert len(list(tmp_path.glob("runs/TINY/*/metrics.json"))) == 2


def test_tensorboard_hparams_rows_for_folds_and_the_whole_kfold_run(kfold_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cwd, _, _, _ = kfold_run
    summary = _metrics(cwd / "run" / "summary.json")
    whole = EventAccumulator(str(cwd / "run" / "tensorboard"))
    whole.Reload()
    assert "_hparams_/session_start_info" in whole.PluginTagToContent("hparams")
    assert whole.Scalars("hparam/test_acc")[0].value == pytest.approx(summary["test_acc"])
    fold = EventAccumulator(str(cwd / "run" / "fold_1" / "tensorboard"))
    fold.Reload()
    start = fold.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"fold" in start and len(fold.Scalars("hparam/val_acc")) == 2  # a row from the first epoch on


def test_sweep_tables_fit_80_columns_round_floats_and_group_by_dataset(tmp_path):
    from rich.console import Console

    jobs = [("PROTEINS", "model.dropout=0.27244159149844843", 0.70), ("MUTAG", "model.dropout=0.1", 0.80),
            ("PROTEINS", "model.dropout=0.5", 0.75)]
    for i, (dataset, override, val) in enumerate(jobs):
        (tmp_path / str(i) / ".hydra").mkdir(parents=True)
        (tmp_path / str(i) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"dataset={dataset}", override]))
        (tmp_path / str(i) / "metrics.json").write_text(json.dumps({"dataset": dataset, "val_acc": val,
                                                                    "test_acc": val, "train_time_s": 1.0}))
    rows = sweep_rows(tmp_path)
    assert [(r["dataset"], r["val_acc"]) for r in rows] == [("MUTAG", 0.8), ("PROTEINS", 0.75), ("PROTEINS", 0.7)]
    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    console.print(*summarize_sweep(tmp_path, rows))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "model.dropout=0.2724" in text and "dataset=PROTEINS" in text


def test_parallel_folds_equal_sequential_folds(tmp_path, data_env):
    from mempool_cli.parallel import worker_count
    from mempool_cli.protocols import train
    from test_core import spec_of

    args = [*QUICK, "protocol=kfold", "protocol.folds=2"]
    train(spec_of([*args, "protocol.workers=1"]), tmp_path / "seq")
    train(spec_of([*args, "protocol.workers=2"]), tmp_path / "par")
    seq, par = (_metrics(tmp_path / name / "summary.json")["per_fold"] for name in ("seq", "par"))
    drop = ("train_time_s",)
    assert [{k: v for k, v in f.items() if k not in drop} for f in seq] == \
        [{k: v for k, v in f.items() if k not in drop} for f in par]
    assert (tmp_path / "par" / "fold_1" / "train.log").read_text().count("] epoch ") == 2
    assert worker_count(None, 10, None) == 1 and worker_count(4, 2, 1) == 2 and worker_count(None, 10, 1) >= 1


def _results_script():
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / "results.py"
    spec = importlib.util.spec_from_file_location("results_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_verdict_shows_how_far_ahead_or_behind_the_defaults_are():
    """A win by a hair shows as one (two decimals), a miss by how many points, per published row."""
    verdict = _results_script().verdict
    assert verdict("DD", {"finished": 10, "test_acc": 0.78437}, 10) == "yes (Errica +0.04)"
    assert verdict("NCI1", {"finished": 10, "test_acc": 0.8185}, 10) == "yes (Errica +1.85, later +1.25)"
    assert verdict("ENZYMES", {"finished": 10, "test_acc": 0.677}, 10) == "no (later -1.7)"
    assert verdict("DD", {"finished": 10, "test_acc": 0.784}, 10) == "no (Errica +0.0)"
    assert verdict("DD", {"finished": 3, "test_acc": 0.9}, 10) == "unfinished: 3 of 10 folds"


def test_results_tune_ships_the_candidate_picked_most_often_as_a_tuned_file(tmp_path, monkeypatch):
    """The results script ships the candidate the per-fold selection picks most often (a tie keeps the generic
    defaults, else goes to the best mean validation accuracy); its tuned file composes to that candidate's
    settings that differ from the generic defaults; a candidate equal to them removes the file."""
    from omegaconf import OmegaConf

    from test_core import _leaves, compose_cfg

    script = _results_script()
    monkeypatch.setattr(script, "TUNED", tmp_path / "tuned")
    configs = {name: {"val_acc": val} for name, val in (("generic", 0.7), ("drop02", 0.75), ("wide_drop02", 0.72))}
    assert script.chosen_config({"generic": 3, "drop02": 3, "wide_drop02": 4}, configs) == "wide_drop02"
    assert script.chosen_config({"generic": 4, "drop02": 4, "wide_drop02": 2}, configs) == "generic"
    assert script.chosen_config({"generic": 2, "drop02": 4, "wide_drop02": 4}, configs) == "drop02"
    assert script.chosen_config({}, configs) is None
    script.ship("X", "assign_wide_drop02")
    tuned = yaml.safe_load((tmp_path / "tuned" / "X" / "default.yaml").read_text())
    composed = compose_cfg(script.CONFIGS["assign_wide_drop02"][1])
    leaves = _leaves(tuned)
    assert leaves["train.kl_schedule"] == "assign" and leaves["model.memory.hidden"] == 128 and len(leaves) == 4
    assert all(OmegaConf.select(composed, key) == value for key, value in leaves.items())
    assert OmegaConf.select(composed, "model.memory.reseed") == 0.01  # the shipped config reseeds: its own runs
    script.ship("X", "generic")  # the candidates' base, dropout 0.5: no longer the generic defaults
    assert yaml.safe_load((tmp_path / "tuned" / "X" / "default.yaml").read_text()) == {"model": {"dropout": 0.5}}
    assert compose_cfg(["~tuned"]).model.dropout == 0.0
    script.ship("X", "drop0")  # the generic defaults themselves
    assert not (tmp_path / "tuned" / "X" / "default.yaml").exists()


def test_results_runs_candidates_on_the_generic_defaults_the_ablation_unreseeded_and_the_shipped_config_as_it_is(
        tmp_path, monkeypatch):
    script = _results_script()
    commands = []
    monkeypatch.setattr(script.subprocess, "run", lambda command, check: commands.append(command))
    for config in ("drop02", "no_kl", "default"):
        script.run_config("X", config, tmp_path, 10, ["threads=1"])
    candidate, ablation, shipped = (command[3:] for command in commands)
    assert candidate[-4:] == ["~tuned", "model.dropout=0.5", "model.dropout=0.2", "threads=1"]
    assert ablation[-5:] == ["~tuned", "model.dropout=0.5", "model.memory.reseed=0", "train.kl_weight=0", "threads=1"]
    assert "~tuned" not in shipped and not any("reseed" in arg for arg in shipped)


def test_results_runs_a_tu_dataset_without_a_preset_by_the_automatic_recipe_and_tables_it(tmp_path, monkeypatch):
    """A dataset not among the eight (not in ../shared, say) runs with its preset where there is one, else as
    ``dataset=tu dataset.name=NAME``, and gets a row of the tables after the eight, beside Errica et al.'s row."""
    script = _results_script()
    commands = []
    monkeypatch.setattr(script.subprocess, "run", lambda command, check: commands.append(command))
    script.run_config("REDDIT-MULTI-5K", "default", tmp_path, 10, [])
    script.run_config("COLLAB", "default", tmp_path, 10, [])
    assert commands[0][4:6] == ["dataset=tu", "dataset.name=REDDIT-MULTI-5K"] and commands[1][4] == "dataset=COLLAB"
    (tmp_path / "NCI109").mkdir()
    names = script.table_names(["COLLAB", "PROTEINS"], tmp_path)
    assert names == [*script.DATASETS, "COLLAB", "NCI109"]
    rows, _ = script.main_rows(tmp_path, {"COLLAB": {}}, 10)
    assert "not run" in rows[0] and "GIN 75.6 +- 2.3" in rows[0]


def test_results_tells_runs_that_reseeded_keys_from_those_that_did_not(tmp_path):
    script = _results_script()
    for name, text in (("new", "model:\n  memory:\n    reseed: 0.01\n"), ("off", "model:\n  memory:\n    reseed: 0\n"),
                       ("old", "model:\n  memory:\n    tau: 30.0\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(text)
    assert [script.reseeded(tmp_path / name) for name in ("new", "off", "old")] == [True, False, False]
    assert script._unreseeded_mark(tmp_path / "old") == " †" and script._unreseeded_mark(tmp_path / "new") == ""


def _candidate_runs(out: Path, dataset: str, runs) -> None:
    """Fake 2-fold candidate runs of ``dataset`` in ``out``: (name, mean max assignment, each fold's val_acc)."""
    folds = [{"train": [1], "val": [2], "test": [0]}] * 2
    for name, sharp, vals in runs:
        run = out / dataset / name
        run.mkdir(parents=True)
        (run / "folds.json").write_text(json.dumps({"meta": {}, "folds": folds}))
        for i, val in enumerate(vals):
            (run / f"fold_{i}").mkdir()
            (run / f"fold_{i}" / "metrics.json").write_text(json.dumps(
                {"val_acc": val, "test_acc": 0.5, "train_acc": 1.0, "train_time_s": 1.0, "memory_clusters": 10,
                 "memory_mean_max_assignment": sharp}))


def test_results_tune_chooses_only_among_candidates_whose_memory_clusters(tmp_path):
    script = _results_script()
    _candidate_runs(tmp_path, "X", (("generic", 0.19, (0.9, 0.9)), ("drop02", 0.8, (0.8, 0.7)),
                                    ("assign", 0.9, (0.7, 0.8))))
    assert script.candidate_wins(tmp_path, "X", 2) == {"assign": 1, "drop02": 1}  # the flat generic cannot win
    tied = {"assign": {"val_acc": 0.75}, "drop02": {"val_acc": 0.75}}
    assert script.chosen_config({"assign": 1, "drop02": 1}, tied) == "assign"  # then the earlier candidate
    (tmp_path / "X" / "assign" / "fold_1" / "metrics.json").unlink()
    assert script.candidate_wins(tmp_path, "X", 2) == {"drop02": 2}  # the one finished candidate that clusters


def test_the_generic_defaults_rule_takes_the_best_mean_validation_over_datasets_where_every_run_clusters(tmp_path):
    script = _results_script()
    _candidate_runs(tmp_path, "A", (("generic", 0.9, (0.9, 0.9)), ("drop0", 0.9, (0.8, 0.8)),
                                    ("drop02", 0.9, (1.0, 1.0))))
    _candidate_runs(tmp_path, "B", (("generic", 0.9, (0.5, 0.5)), ("drop0", 0.9, (0.7, 0.7))))
    assert script.generic_choice(tmp_path, ["A", "B"], 2) == "drop0"  # 0.75 over 0.7; drop02 did not run on B
    assert script.generic_choice(tmp_path, ["A"], 2) == "drop02"
    _candidate_runs(tmp_path, "C", (("generic", 0.9, (0.5, 0.5)), ("drop0", 0.2, (0.9, 0.9))))
    assert script.generic_choice(tmp_path, ["A", "B", "C"], 2) == "generic"  # drop0 is flat on C
    assert script.generic_choice(tmp_path, ["D"], 2) is None


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_fold_workers_exit_when_their_parent_is_killed():
    import multiprocessing

    code = "import time; from mempool_cli.parallel import run_parallel; run_parallel(time.sleep, (), [(0, (120,))], 1, 1)"
    parent = subprocess.Popen([sys.executable, "-c", code])
    # the resource tracker and the worker, and the fork server between this process and the worker where there is one
    expected = 3 if "forkserver" in multiprocessing.get_all_start_methods() else 2
    deadline = time.monotonic() + 60
    while len(_descendants(parent.pid)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the worker has started and holds its fold
    workers = _descendants(parent.pid)
    assert len(workers) >= expected
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left


def test_seed_spread_runs_the_shipped_config_at_each_seed_and_tabulates_the_means(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "scripts"))
    import seed_spread

    commands = []
    monkeypatch.setattr(seed_spread.subprocess, "run", lambda command, check: commands.append(command))
    seed_spread.run_seed("PROTEINS", 2, tmp_path, ["threads=1"])
    assert commands[0][3:] == ["train", "dataset=PROTEINS", "protocol=kfold", "seed=2", "train.progress=false",
                               f"hydra.run.dir={tmp_path / 'PROTEINS' / 'seed2'}", "threads=1"]
    results = {0: {"test_acc": 0.75, "test_acc_std": 0.05, "finished": 10},
               2: {"test_acc": 0.73, "test_acc_std": 0.03, "finished": 4},
               1: {"test_acc": 0.77, "test_acc_std": 0.04, "finished": 10}}
    row = seed_spread.spread_row("PROTEINS", results, 10)
    assert row.startswith("| PROTEINS | 0, 1, 2 | 75.0 +- 5.0; 77.0 +- 4.0; 73.0 +- 3.0 (4 of 10 folds) | ")
    assert "| 75.0 (73.0-77.0) | baseline 75.8 +- 3.7 | not reported |" in row
