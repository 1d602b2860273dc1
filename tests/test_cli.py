"""The `mempool` command end to end, in subprocesses, offline."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import SHARED_TU, TINY_ARGS, run_cli


def _single_run_dir(root: Path) -> Path:
    runs = [p.parent for p in root.glob("runs/*/*/metrics.json")]
    assert len(runs) == 1, runs
    return runs[0]


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_source):
    """One short training run shared by the tests that read its artifacts."""
    cwd = tmp_path_factory.mktemp("work")
    env = {"MEMPOOL_DATA_ROOT": str(cwd / "cache"), "MEMPOOL_DATA_SOURCE": str(tiny_source)}
    result = run_cli(["train", *TINY_ARGS, "train.epochs=4"], cwd, env)
    assert result.returncode == 0, result.stderr
    return cwd, env, _single_run_dir(cwd), result


def test_train_leaves_checkpoint_logs_and_metrics(trained):
    _, _, run_dir, result = trained
    for name in ("checkpoint.pt", "last.pt", "metrics.json", "split.json", "config.yaml", ".hydra/config.yaml",
                 "history.csv"):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 4 and 0.0 <= metrics["test_acc"] <= 1.0
    assert "test_acc" in result.stdout
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/ce", "train/kl", "val/loss", "val/acc", "test/acc", "lr"} <= tags
    assert len(events.Scalars("val/acc")) == 4
    log = (run_dir / "train.log").read_text()
    assert log.count("] epoch ") == 4 and "epoch    4  loss" in log and "final metrics" in log


def test_eval_reproduces_recorded_test_accuracy(trained):
    cwd, env, run_dir, _ = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result = run_cli(["eval", str(run_dir / "checkpoint.pt"), "--json"], cwd, env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["accuracy"] == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert report["num_graphs"] == len(json.loads((run_dir / "split.json").read_text())["split"]["test"])
    assert sum(map(sum, report["confusion_matrix"])) == report["num_graphs"]
    assert report["class_names"] == ["0", "1"] and [r["class"] for r in report["per_class"]] == ["0", "1"]
    first, readout = report["memory"]
    assert first["clusters"] == 4 and 0.25 <= first["mean_max_assignment"] <= 1 and 1 <= first["keys_used"] <= 4
    assert 0 <= first["normalized_entropy"] <= 1 and readout["clusters"] == 1
    table = run_cli(["eval", str(run_dir / "checkpoint.pt"), "--split", "val"], cwd, env)
    assert table.returncode == 0 and "confusion matrix" in table.stdout and "precision" in table.stdout
    assert "memory assignments" in table.stdout and "keys_used" in table.stdout


def test_resume_continues_to_the_same_result(trained, tmp_path):
    cwd, env, run_dir, _ = trained
    result = run_cli(["train", *TINY_ARGS, "train.epochs=6", f"train.resume={run_dir / 'last.pt'}",
                      f"hydra.run.dir={tmp_path / 'resumed'}"], cwd, env)
    assert result.returncode == 0, result.stderr
    straight = run_cli(["train", *TINY_ARGS, "train.epochs=6", f"hydra.run.dir={tmp_path / 'straight'}"], cwd, env)
    assert straight.returncode == 0, straight.stderr
    resumed = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    expected = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert resumed["epochs_run"] == 6
    for key in ("best_epoch", "train_acc", "val_acc", "test_acc", "val_loss"):
        assert resumed[key] == expected[key], key


def test_multirun_runs_each_job_and_summarises(tmp_path, data_env):
    result = run_cli(["train", "-m", *TINY_ARGS, "train.epochs=2", "model.memory.tau=0.5,2.0",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, data_env)
    assert result.returncode == 0, result.stderr
    jobs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(jobs) == 2
    summary = (tmp_path / "sweep" / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and "model.memory.tau=0.5" in "\n".join(summary)
    assert "model.memory.tau=2.0" in result.stdout


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = run_cli(["train", "--cfg", "job", "dataset=ENZYMES", "model.memory.heads=3"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: ENZYMES" in result.stdout and "heads: 3" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_help_shows_examples(tmp_path):
    for args in (["--help"], ["train", "--help"], ["eval", "--help"]):
        result = run_cli(args, tmp_path)
        assert result.returncode == 0 and "mempool" in result.stdout and "Example" in result.stdout


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["dataset=NOPE"], ["dataset/NOPE", "PROTEINS"]),
        (["model.hiden=3"], ["model.hiden"]),
        (["model.hidden=abc"], ["model.hidden", "abc"]),
        (["model.memory.clusters=[10,0]"], ["model.memory.clusters[1]"]),
        (["model.memory.clusters=ten"], ["model.memory.clusters"]),
        (["dataset.name=ABSENT", "dataset.url=http://127.0.0.1:9"], ["http://127.0.0.1:9/ABSENT.zip", "ABSENT/raw"]),
    ],
)
def test_bad_train_input_is_one_line(args, fragments, tmp_path, data_env):
    result = run_cli(["train", *TINY_ARGS, "train.epochs=1", *args], tmp_path, data_env)
    _assert_one_line_error(result, *fragments)
    assert not (tmp_path / "runs").exists()  # no run directory, not even an empty runs/<dataset>/, left behind


def test_bad_checkpoints_are_one_line(trained, tmp_path):
    cwd, env, run_dir, _ = trained
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run_dir / "checkpoint.pt").read_bytes()[:2000])
    foreign = tmp_path / "foreign.pt"
    foreign.write_text("not a checkpoint")
    cases = [(tmp_path / "missing.pt", "not found"), (truncated, "truncated or corrupt"),
             (foreign, "not a mempool checkpoint")]
    for path, fragment in cases:
        _assert_one_line_error(run_cli(["eval", str(path)], cwd, env), fragment)


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli(["train", "--debug", "model.encoder=gim"], tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.skipif(not (SHARED_TU / "MUTAG" / "raw").is_dir(), reason="offline MUTAG copy not present")
def test_real_mutag_from_shared(tmp_path):
    env = {"MEMPOOL_DATA_ROOT": str(tmp_path / "cache"), "MEMPOOL_DATA_SOURCE": str(SHARED_TU)}
    result = run_cli(["train", "dataset=MUTAG", "train.epochs=15", "train.progress=false"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((_single_run_dir(tmp_path) / "metrics.json").read_text())
    majority = 125 / 188  # MUTAG's larger class
    assert metrics["dataset"] == "MUTAG" and metrics["val_acc"] > majority and metrics["test_acc"] > majority


def test_datasets_lists_presets_cache_and_source(tmp_path, data_env):
    result = run_cli(["datasets"], tmp_path, {**data_env, "COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    tiny = next(line for line in lines if " TINY " in line)
    assert "48" in tiny and "yes" in tiny  # in the offline source, 48 graphs
    assert any(" MUTAG " in line and "yes" in line for line in lines)  # a shipped preset


def test_help_version_and_debug_conventions(tmp_path):
    from mempool_cli.catalog import config_choices

    assert run_cli(["-h"], tmp_path).stdout == run_cli(["--help"], tmp_path).stdout
    assert run_cli(["--version"], tmp_path).stdout.startswith("mempool ")
    train_help = run_cli(["train", "-h"], tmp_path).stdout
    assert all(f"{group}: {names[0]}" in train_help for group, names in config_choices().items())
    assert "tu" in config_choices()["dataset"] and "molecules" in config_choices()["dataset"]
    before = run_cli(["--debug", "eval", str(tmp_path / "missing.pt")], tmp_path)
    assert before.returncode != 0 and "Traceback" in before.stderr


def test_slurm_without_slurm_is_one_line_and_leaves_no_sweep_folder(tmp_path):
    env = {"PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin"}
    result = run_cli(["train", "-m", "hydra/launcher=slurm", "dataset=MUTAG", "seed=1,2"], tmp_path, env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no SLURM here" in result.stderr
    assert not (tmp_path / "multirun").exists()
