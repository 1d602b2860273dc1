"""Other people's files: malicious caches and checkpoints, hostile names, broken raw files, broken caches."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY_ARGS, run_cli, write_tu_dataset
from mempool_cli.config import DataSpec
from mempool_cli.data.tu import CACHE_FILE, load_tudataset
from mempool_cli.errors import ConfigError, DataError
from test_core import spec_of

URL = "http://127.0.0.1:9"


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("file", ["data.pt", CACHE_FILE])
def test_a_malicious_dataset_cache_is_never_unpickled(file, tmp_path, tiny_source):
    marker = tmp_path / "pwned"
    processed = tmp_path / "cache" / "TINY" / "processed"
    load_tudataset("TINY", str(tmp_path / "cache"), str(tiny_source), URL)
    torch.save(Payload(marker), processed / file)
    dataset = load_tudataset("TINY", str(tmp_path / "cache"), str(tiny_source), URL)
    assert len(dataset) == 48 and not marker.exists()


def test_eval_never_follows_paths_in_a_checkpoint(tmp_path, data_env):
    """A folder with a checkpoint and a poisoned data cache beside it: eval reads neither that cache nor the
    checkpoint's recorded root."""
    from mempool_cli.protocols import train

    spec = spec_of(TINY_ARGS + ["train.epochs=1", f"dataset.root={tmp_path / 'theirs'}"])
    train(spec, tmp_path / "run")
    marker = tmp_path / "pwned"
    for file in ("data.pt", CACHE_FILE):
        torch.save(Payload(marker), tmp_path / "theirs" / "TINY" / "processed" / file)
    result = run_cli(["eval", str(tmp_path / "run" / "checkpoint.pt"), "--json"], tmp_path, data_env)
    assert result.returncode == 0, result.stderr
    assert not marker.exists() and (tmp_path / "cache" / "TINY" / "raw").is_dir()  # the user's cache was used


@pytest.mark.parametrize("name", ["../victim", "a/b", "..", "~root", "x y", ""])
def test_dataset_names_must_be_plain(name):
    with pytest.raises(ConfigError, match="dataset.name"):
        DataSpec(name)
    with pytest.raises(ConfigError, match="dataset.name"):
        spec_of(["dataset.name=../victim"])


def test_a_failed_download_deletes_nothing_it_did_not_create(tmp_path):
    raw = tmp_path / "cache" / "PART" / "raw"
    raw.mkdir(parents=True)
    (raw / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="could not download PART"):
        load_tudataset("PART", str(tmp_path / "cache"), None, URL)
    assert (raw / "notes.txt").read_text() == "mine"
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == ["PART"]


def _cut(path, keep: float) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: int(len(lines) * keep)]))


@pytest.mark.parametrize("part, fragment", [("graph_indicator", "TINY_graph_labels.txt has 48 lines"),
                                            ("node_labels", "TINY_node_labels.txt has"),
                                            ("graph_labels", "TINY_graph_labels.txt has 24 lines")])
def test_a_raw_file_cut_short_is_refused_with_the_file_named(part, fragment, tmp_path):
    source = write_tu_dataset(tmp_path / "src")
    _cut(source / "TINY" / "raw" / f"TINY_{part}.txt", 0.5)
    if part == "node_labels":  # attributes too, so that the two node files agree with each other
        _cut(source / "TINY" / "raw" / "TINY_node_attributes.txt", 0.5)
    with pytest.raises(DataError, match=fragment):
        load_tudataset("TINY", str(tmp_path / "cache"), str(source), URL)


def test_edges_outside_their_graph_are_refused(tmp_path):
    source = write_tu_dataset(tmp_path / "src")
    a_file = source / "TINY" / "raw" / "TINY_A.txt"
    a_file.write_text("0, 1\n" + a_file.read_text())
    with pytest.raises(DataError, match="TINY_A.txt"):
        load_tudataset("TINY", str(tmp_path / "cache"), str(source), URL)


def test_a_corrupt_raw_copy_is_replaced_once_the_source_is_right(tmp_path, tiny_source):
    cache = tmp_path / "cache"
    load_tudataset("TINY", str(cache), str(tiny_source), URL)
    _cut(cache / "TINY" / "raw" / "TINY_graph_labels.txt", 0.5)
    (cache / "TINY" / "raw" / "README").write_text("mine")
    assert len(load_tudataset("TINY", str(cache), str(tiny_source), URL)) == 48
    assert (cache / "TINY" / "raw" / "README").read_text() == "mine"


def test_a_truncated_cache_file_is_rebuilt(tmp_path, tiny_source):
    cache = tmp_path / "cache"
    load_tudataset("TINY", str(cache), str(tiny_source), URL)
    cached = cache / "TINY" / "processed" / CACHE_FILE
    cached.write_bytes(cached.read_bytes()[:100])
    assert len(load_tudataset("TINY", str(cache), str(tiny_source), URL)) == 48
    assert cached.stat().st_size > 1000


def test_an_incomplete_source_and_a_file_as_root_are_named(tmp_path, tiny_source):
    source = tmp_path / "src"
    shutil.copytree(tiny_source, source)
    (source / "TINY" / "raw" / "TINY_A.txt").unlink()
    with pytest.raises(DataError, match="offline source .* is incomplete: TINY_A.txt missing"):
        load_tudataset("TINY", str(tmp_path / "cache"), str(source), URL)
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_tudataset("TINY", str(tmp_path / "afile"), str(tiny_source), URL)
    with pytest.raises(DataError, match="could not download TINY .*MEMPOOL_DATA_SOURCE=.*nowhere does not exist"):
        load_tudataset("TINY", str(tmp_path / "cache"), str(tmp_path / "nowhere"), URL)
    with pytest.raises(DataError, match="could not download OTHER .*MEMPOOL_DATA_SOURCE=.* has no OTHER/raw/"):
        load_tudataset("OTHER", str(tmp_path / "cache"), str(tiny_source), URL)


def test_a_read_only_cache_with_parsed_data_is_usable(tmp_path, tiny_source, monkeypatch):
    import builtins

    cache = tmp_path / "cache"
    load_tudataset("TINY", str(cache), str(tiny_source), URL)
    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            raise PermissionError(30, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    def read_only_write(path, data):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(builtins, "open", read_only_open)
    monkeypatch.setattr("mempool_cli.data.tu.write_atomic", read_only_write)
    assert len(load_tudataset("TINY", str(cache), None, URL)) == 48
    (cache / "TINY" / "processed" / CACHE_FILE).unlink()  # parsed again, and the cache cannot be written: still fine
    assert len(load_tudataset("TINY", str(cache), None, URL)) == 48


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints, run folders and settings

from mempool_cli.artifacts import load_checkpoint, locked_run_dir  # noqa: E402
from mempool_cli.data.splits import check_folds, check_split, read_split_file, split_metadata  # noqa: E402
from mempool_cli.errors import CheckpointError, RunDirError  # noqa: E402
from mempool_cli.protocols import train  # noqa: E402


def _one_line(result, *fragments):
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def finished(tmp_path, data_env):
    train(spec_of(TINY_ARGS + ["train.epochs=1"]), tmp_path / "run")
    return tmp_path / "run"


def test_flipped_weights_are_refused(finished, tmp_path):
    payload = torch.load(finished / "checkpoint.pt", weights_only=True)
    name = next(iter(payload["model_state"]))
    payload["model_state"][name].view(-1)[0] += 1.0
    torch.save(payload, tmp_path / "flipped.pt")
    with pytest.raises(CheckpointError, match="do not match their checksum"):
        load_checkpoint(tmp_path / "flipped.pt")


def test_a_finished_run_folder_is_not_overwritten(finished, data_env):
    before = (finished / "checkpoint.pt").read_bytes()
    with pytest.raises(RunDirError, match="already holds a run .*train.overwrite=true"):
        train(spec_of(TINY_ARGS + ["train.epochs=1", "seed=1"]), finished)
    with pytest.raises(RunDirError, match="already holds a run"):
        train(spec_of(TINY_ARGS + ["train.epochs=1", "protocol=kfold", "protocol.folds=2"]), finished)
    assert (finished / "checkpoint.pt").read_bytes() == before
    (finished / "notes.txt").write_text("mine")
    metrics = train(spec_of(TINY_ARGS + ["train.epochs=2", "seed=1", "train.overwrite=true"]), finished)
    assert metrics["epochs_run"] == 2 and (finished / "notes.txt").read_text() == "mine"


def test_a_run_folder_in_use_is_refused(tmp_path, data_env):
    with locked_run_dir(tmp_path / "run"):
        with pytest.raises(RunDirError, match="in use by another mempool process"):
            train(spec_of(TINY_ARGS + ["train.epochs=1"]), tmp_path / "run")


def test_split_files_are_checked_before_training():
    ok = {"train": [0, 1, 2], "val": [3], "test": [4, 5]}
    check_split(ok, 6, "f")
    bad = [({**ok, "test": [0, 5]}, "shares"), ({**ok, "val": []}, "empty"), ({**ok, "test": [4, 9]}, "indices"),
           ({**ok, "test": [4, -1]}, "indices"), ({**ok, "test": ["4"]}, "indices"), ({**ok, "test": [4, 4]}, "repeats"),
           ({"train": [0], "val": [1]}, "exactly the parts"), ({**ok, "val": [True]}, "indices")]
    for split, fragment in bad:
        with pytest.raises(DataError, match=fragment):
            check_split(split, 6, "f")
    with pytest.raises(DataError, match="overlap"):
        check_folds([ok, {"train": [1, 2, 3], "val": [5], "test": [4, 0]}], 6, "f")


def test_a_split_file_of_the_other_kind_is_named(tmp_path):
    labels = torch.tensor([0, 1] * 5)
    folds = tmp_path / "folds.json"
    folds.write_text('{"meta": %s, "folds": []}' % __import__("json").dumps(split_metadata("T", labels, 0)))
    with pytest.raises(DataError, match="is a k-fold folds file, not the holdout split"):
        read_split_file(folds, "T", labels, "split")


@pytest.mark.parametrize("override, key", [
    ("model.memory.tau=nan", "model.memory.tau[0]"), ("model.memory.tau=inf", "model.memory.tau[0]"),
    ("optim.lr=nan", "optim.lr"), ("seed=-1", "seed"), ("seed=4294967296", "seed"),
    ("+model.memroy.tau=5", "model.memroy"), ("protocol.val_fraction=0.001", "protocol.val_fraction"),
    ("protocol.folds=30", "protocol.folds"), ("device=cuda:7", "device"),
    ("dataset.random_walk=-1", "dataset.random_walk"), ("dataset.random_walk=65", "dataset.random_walk")])
def test_impossible_settings_are_refused_by_key_before_any_folder(override, key, tmp_path, data_env):
    if override.startswith("device") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    protocol = ["protocol=kfold"] if override.startswith("protocol.folds") else []
    with pytest.raises(ConfigError) as info:
        train(spec_of(TINY_ARGS + ["train.epochs=1", *protocol, override]), tmp_path / "run")
    assert str(info.value).startswith(key) and not (tmp_path / "run").exists()


def test_refusals_on_the_command_line_are_one_line_and_leave_no_folder(tmp_path, data_env):
    for override, key in (("+model.memroy.tau=5", "model.memroy"), ("device=cuda:7", "device")):
        _one_line(run_cli(["train", *TINY_ARGS, "train.epochs=1", override], tmp_path, data_env), key)
    assert not (tmp_path / "runs").exists()


def test_refusals_leave_an_existing_folder_and_its_hydra_files_alone(finished, tmp_path, data_env):
    kfold = ["train", *TINY_ARGS, "train.epochs=1", "protocol=kfold", "protocol.folds=2",
             f"hydra.run.dir={tmp_path / 'k'}"]
    assert run_cli(kfold, tmp_path, data_env).returncode == 0
    overrides = (tmp_path / "k" / ".hydra" / "overrides.yaml").read_bytes()
    _one_line(run_cli([*kfold, "model.dropout=0.3"], tmp_path, data_env), "other settings (model.dropout)")
    assert (tmp_path / "k" / ".hydra" / "overrides.yaml").read_bytes() == overrides
    mine = tmp_path / "mine"
    mine.mkdir()
    _one_line(run_cli(["train", *TINY_ARGS, "dataset.name=ABSENT", f"hydra.run.dir={mine}"], tmp_path, data_env),
              "ABSENT")
    assert mine.is_dir()
    _one_line(run_cli(["train", *TINY_ARGS, "train.resume=nowhere/last.pt"], tmp_path, data_env), "not found")
    assert not (tmp_path / "runs").exists()


def test_eval_of_broken_or_mismatched_checkpoints_is_one_line(finished, tmp_path, data_env):
    payload = torch.load(finished / "checkpoint.pt", weights_only=True)
    payload["model_args"]["hidden"] = 16
    from mempool_cli.artifacts import save_checkpoint

    save_checkpoint(tmp_path / "shapes.pt", {k: v for k, v in payload.items() if k not in ("weights_sha256",)})
    payload["split"].pop("val")
    save_checkpoint(tmp_path / "nosplit.pt", payload)
    for args, fragment in [([str(tmp_path / "shapes.pt")], "do not fit"),
                           ([str(tmp_path / "nosplit.pt"), "--split", "val"], "no 'val' split"),
                           ([str(finished / "checkpoint.pt"), "--device", "tpu"], "device"),
                           ([str(finished)], "is a directory")]:
        _one_line(run_cli(["eval", *args], tmp_path, data_env), fragment)


def test_a_sweep_with_a_failing_job_summarises_it_and_fails(tmp_path, data_env):
    sweep = tmp_path / "sweep"
    result = run_cli(["train", "-m", *TINY_ARGS, "train.epochs=1", "dataset.name=TINY,ABSENT",
                      "dataset.url=http://127.0.0.1:9", f"hydra.sweep.dir={sweep}"], tmp_path, data_env)
    assert result.returncode != 0 and "1 sweep job(s) failed (1)" in result.stderr
    assert "1,ABSENT,dataset.name=ABSENT,failed" in (sweep / "summary.csv").read_text()
    assert "could not download ABSENT" in (sweep / "1" / "failed.json").read_text()


def test_train_time_leaves_out_the_kernel_build(tmp_path, data_env, monkeypatch):
    import time

    from mempool_cli.nn import kernels

    built, calls = kernels.cpu_kernels(), []

    def first_use_builds():  # the first call pays for a build, as on a fresh machine
        calls.append(1)
        return time.sleep(2.0) or built if len(calls) == 1 else built

    monkeypatch.setattr(kernels, "cpu_kernels", first_use_builds)
    metrics = train(spec_of(TINY_ARGS + ["train.epochs=1"]), tmp_path / "run")
    assert metrics["train_time_s"] < 2.0


def test_ctrl_c_says_how_to_go_on_and_exits_130(tmp_path, data_env):
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, **data_env, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mempool_cli", "train", *TINY_ARGS, "train.epochs=100000",
                             "train.patience=100000", f"hydra.run.dir={run}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted") and f"train.resume={run / 'last.pt'}" in lines[0]
    assert load_checkpoint(run / "last.pt")["epoch"] >= 1 and not list(run.glob(".*.tmp"))


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, data_env):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import errno, os\n"
        "_replace = os.replace\n"
        "def replace(src, dst, *a, **k):\n"
        "    if 'runs' in str(dst):\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device', str(dst))\n"
        "    return _replace(src, dst, *a, **k)\n"
        "os.replace = replace\n")
    env = {**data_env, "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")])}
    result = run_cli(["train", *TINY_ARGS, "train.epochs=1"], tmp_path, env)
    _one_line(result, "No space left on device", "config.yaml")
    assert not (tmp_path / "runs").exists()


def test_summaries_survive_garbage_files(tmp_path):
    from mempool_cli.sweep import sweep_rows

    for job, (overrides, metrics) in enumerate([("- seed=1\n", '{"val_acc": "x", "test_acc": 1}'),
                                                 (": : :\n", "[1, 2]"), ("- seed=3\n", '{"val_acc": 0.5, "test_acc": 0.4}')]):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(overrides)
        (tmp_path / str(job) / "metrics.json").write_text(metrics)
    rows = sweep_rows(tmp_path)
    assert [(r["job"], r["status"]) for r in rows] == [("2", "done"), ("0", "unfinished"), ("1", "unfinished")]


def test_a_sweep_with_one_impossible_value_runs_no_job(tmp_path, data_env):
    sweep = tmp_path / "sweep"
    result = run_cli(["train", "-m", *TINY_ARGS, "train.epochs=1", "model.dropout=0.5,1.0",
                      f"hydra.sweep.dir={sweep}"], tmp_path, data_env)
    _one_line(result, "model.dropout=1.0", "model.dropout: must be in [0, 1)")
    assert not list(sweep.glob("*/metrics.json"))


def test_a_hostile_checkpoint_cannot_allocate_or_index_past_its_data(finished, tmp_path, data_env):
    from mempool_cli.artifacts import save_checkpoint
    from mempool_cli.evaluation import evaluate_checkpoint

    payload = torch.load(finished / "checkpoint.pt", weights_only=True)
    huge = {**payload, "model_args": {**payload["model_args"], "hidden": 10**9}}
    save_checkpoint(tmp_path / "huge.pt", huge)
    with pytest.raises(CheckpointError, match="do not fit"):  # compared on the meta device: nothing allocated
        evaluate_checkpoint(tmp_path / "huge.pt")
    far = {**payload, "split": {**payload["split"], "test": [0, 10**6]}}
    save_checkpoint(tmp_path / "far.pt", far)
    with pytest.raises(DataError, match="graph indices"):
        evaluate_checkpoint(tmp_path / "far.pt")
    zero = {**payload, "config": {**payload["config"], "train": {**payload["config"]["train"], "batch_size": 0}}}
    save_checkpoint(tmp_path / "zero.pt", zero)
    with pytest.raises(ConfigError, match="train.batch_size"):
        evaluate_checkpoint(tmp_path / "zero.pt")


def test_a_kernel_build_killed_midway_does_not_hang_later_runs(tmp_path):
    """PyTorch's build lock outlives a killed build; mempool's own lock (released on exit) replaces it."""
    import subprocess
    import sys

    from mempool_cli.nn import kernels

    if kernels.cpu_kernels() is None:
        pytest.skip("no compiled kernels on this machine")
    built = next(Path(p).parent for p in [kernels.cpu_kernels().__file__])
    copy = tmp_path / built.name
    shutil.copytree(built, copy)
    (copy / "lock").touch()  # what a build killed midway leaves behind
    probe = "from mempool_cli.nn import kernels; assert kernels.cpu_kernels() is not None"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", probe], env=env, check=True, timeout=240)


def test_a_swallowed_interrupt_stops_training_after_the_epoch():
    """PyTorch's autograd engine can swallow the KeyboardInterrupt that a Ctrl-C raises inside a backward pass (seen
    in CI: training went on); the CLI's handler also remembers the interrupt, and training stops at the next batch."""
    from mempool_cli import engine, loop
    from mempool_cli.config import OptimSpec, TrainSpec
    from mempool_cli.data import GraphLoader
    from mempool_cli.model import MemGNN
    from test_speed import graphs

    model = MemGNN(4, 3, hidden=8, clusters=(2, 1), heads=(1, 1), tau=(1.0, 1.0))
    state = loop.TrainState.create(model, OptimSpec(), epochs=5, seed=0)
    loader = GraphLoader(graphs(False, count=16), batch_size=8)
    engine.INTERRUPTED.set()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.fit(state, loader, loader, TrainSpec(epochs=5), torch.device("cpu"), [])
    finally:
        engine.INTERRUPTED.clear()
    assert state.epoch == 1
