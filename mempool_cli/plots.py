"""`mempool plot`: the curves of a run, a k-fold run or a sweep, from the files they leave (no TensorBoard)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from mempool_cli import figures
from mempool_cli.artifacts import HISTORY, METRICS, fold_dir, read_csv
from mempool_cli.errors import DataError, MempoolError
from mempool_cli.sweep import fold_rows, is_kfold_run, read_metrics, sweep_rows


def read_history(path: Path) -> list[dict[str, float]]:
    """The per-epoch history of a run (``history.csv``) as numbers."""
    try:
        rows = [{key: float(value) for key, value in row.items()} for row in read_csv(path)]
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"cannot read the history {path}: {exc}") from exc
    if not rows:
        raise DataError(f"{path} holds no epochs")
    return rows


def _run(path: Path) -> list[tuple[str, Any]]:
    metrics = read_metrics(path / METRICS) or {}
    title = f"{metrics.get('dataset', 'run')}: {path.name}"
    return [("curves", figures.history_figure(read_history(path / HISTORY), metrics.get("best_epoch"), title))]


def _kfold(path: Path) -> list[tuple[str, Any]]:
    rows = fold_rows(path)
    histories = [read_history(fold_dir(path, r["fold"]) / HISTORY) for r in rows
                 if (fold_dir(path, r["fold"]) / HISTORY).is_file()]
    if not histories:
        raise DataError(f"{path}: no fold has a {HISTORY} yet")
    tests = [r.get("test_acc") if r["status"] == "done" else None for r in rows]
    return [("kfold", figures.kfold_figure(histories, tests, f"k-fold run {path.name} ({len(rows)} folds)"))]


def _value(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _sweep(path: Path) -> list[tuple[str, Any]]:
    rows = [r for r in sweep_rows(path) if r["status"] == "done"]
    if not rows:
        raise DataError(f"{path}: no finished job to plot")
    settings = [dict(o.split("=", 1) for o in r["overrides"].split() if "=" in o) for r in rows]
    out = []
    for parameter in sorted({key for s in settings for key in s}):
        groups: dict[str, list[dict]] = {}
        for row, s in zip(rows, settings):
            groups.setdefault(s.get(parameter, "?"), []).append(row)
        points = [(value, _mean(g, "val_acc"), _mean(g, "test_acc"), _mean(g, "test_acc_std"))
                  for value, g in sorted(groups.items(), key=lambda item: _sort_key(item[0]))]
        title = f"sweep {path.name}" + (" (other settings averaged)" if len(groups) < len(rows) else "")
        out.append((f"sweep_{parameter.replace('/', '_')}", figures.sweep_figure(parameter, points, title)))
    ordered = sorted(rows, key=lambda r: int(r["job"]) if r["job"].isdigit() else 0)
    out.append(("sweep_history", figures.search_figure([r["val_acc"] for r in ordered], f"sweep {path.name}")))
    return out


def _mean(rows: list[dict], key: str) -> Optional[float]:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return sum(values) / len(values) if values else None


def _sort_key(value: str) -> tuple:
    number = _value(value)
    return (0, number, "") if isinstance(number, float) else (1, 0.0, value)


def plot(path: str | Path, out: Optional[str | Path] = None, fmt: str = "png") -> list[Path]:
    """Draw the figures of a run, k-fold run or sweep directory into ``out`` (default ``<path>/figures``)."""
    path = Path(path)
    if fmt not in figures.FORMATS:
        raise MempoolError(f"--format: unknown value {fmt!r}; choose one of: {', '.join(figures.FORMATS)}")
    if not path.is_dir():
        raise DataError(f"{path}: not a run, k-fold run or sweep directory")
    if is_kfold_run(path):
        drawn = _kfold(path)
    elif (path / HISTORY).is_file():
        drawn = _run(path)
    elif any(path.glob("*/.hydra")):
        drawn = _sweep(path)
    else:
        raise DataError(f"{path} has no {HISTORY} (a run), fold_*/ (a k-fold run) or job folders (a sweep)")
    folder = Path(out) if out else path / "figures"
    return [figures.save(figure, folder / f"{stem}.{fmt}") for stem, figure in drawn]
