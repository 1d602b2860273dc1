"""The shape of the code: short functions, light read-only commands, one atomic writer, registries."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mempool_cli.artifacts import write_atomic, write_json
from mempool_cli.config import ENCODERS, registry

PACKAGE = Path(__file__).resolve().parents[1] / "mempool_cli"


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 50:
                long.append(f"{path.name}:{node.name}")
    assert not long


def _modules_after(code: str) -> set[str]:
    result = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                            capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_read_only_commands_and_help_import_no_torch(tmp_path):
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    summarize = f"from mempool_cli.cli import app\ntry: app(['summarize', {str(tmp_path)!r}])\nexcept SystemExit: pass"
    helped = "from mempool_cli.cli import app\ntry: app(['--help'])\nexcept SystemExit: pass"
    listed = "from mempool_cli.cli import app\ntry: app(['datasets'])\nexcept SystemExit: pass"
    for code in (summarize, helped, listed, "import mempool_cli.config, mempool_cli.artifacts, mempool_cli.sweep"):
        assert "torch" not in _modules_after(code)


def test_nothing_imports_the_command_line():
    for path in PACKAGE.rglob("*.py"):
        if path.name not in ("cli.py", "__main__.py"):
            assert "mempool_cli.cli" not in path.read_text(), path


def test_the_atomic_writer_leaves_the_old_file_or_the_new_one(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_json(target, {"a": 1, "nan": float("nan")})
    assert target.read_text() == '{\n  "a": 1,\n  "nan": null\n}'  # strict JSON: NaN becomes null

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(target, "half")
    assert target.read_text().startswith('{\n  "a": 1') and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_registries_refuse_builders_that_do_not_match():
    assert set(registry(ENCODERS, gat=1, gcn=2, gin=3, gine=4)) == set(ENCODERS)
    with pytest.raises(AssertionError):
        registry(ENCODERS, gat=1, gcn=2)


def test_a_run_uses_the_configured_threads(tmp_path, data_env):
    import torch

    from mempool_cli.protocols import train
    from test_core import spec_of
    from conftest import TINY_ARGS

    before = torch.get_num_threads()
    try:
        spec = spec_of(TINY_ARGS + ["train.epochs=1"])
        assert spec.threads == 1  # the default: the same numbers on every machine
        train(spec, tmp_path / "run")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
