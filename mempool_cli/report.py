"""Rich tables for runs, evaluations, folds and sweeps."""
from __future__ import annotations

from typing import Any, Sequence

from rich.table import Table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def metrics_table(metrics: dict[str, Any], title: str = "metrics") -> Table:
    """Two columns: metric and value."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if not isinstance(value, (list, dict)):
            table.add_row(key, _fmt(value))
    return table


def eval_tables(result: dict[str, Any]) -> list[Table]:
    """Accuracy, per-class precision/recall and the confusion matrix of an evaluation."""
    keys = ("dataset", "split", "num_graphs", "epoch", "accuracy", "loss", "recorded_accuracy")
    summary = metrics_table({k: result[k] for k in keys if k in result}, title="evaluation")
    per_class = Table(title="per class")
    for column in ("class", "precision", "recall", "support"):
        per_class.add_column(column, justify="right")
    for row in result["per_class"]:
        per_class.add_row(*(_fmt(row[c]) for c in ("class", "precision", "recall", "support")))
    confusion = Table(title="confusion matrix (rows: true, columns: predicted)")
    confusion.add_column("")
    for name in result["class_names"]:
        confusion.add_column(name, justify="right")
    for name, row in zip(result["class_names"], result["confusion_matrix"]):
        confusion.add_row(name, *(str(v) for v in row))
    return [summary, per_class, confusion, memory_table(result["memory"])]


MEMORY_COLUMNS = ("layer", "clusters", "mean_max_assignment", "normalized_entropy", "keys_used")


def memory_table(layers: Sequence[dict[str, Any]]) -> Table:
    """How sharply each memory layer assigns (mean max 1/K and entropy 1 when flat, 1 and 0 when hard)."""
    return rows_table(layers, MEMORY_COLUMNS, title="memory assignments (flat: mean max 1/K, entropy 1)")


def rows_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str) -> Table:
    """One row per result (job or fold) with the given columns."""
    table = Table(title=title)
    for column in columns:  # fold, never truncate: every value stays readable in a narrow or piped output
        table.add_column(column, justify="left" if column in ("job", "overrides", "status") else "right",
                         overflow="fold")
    for row in rows:
        table.add_row(*(_fmt(row.get(column, "")) for column in columns))
    return table


def mean_std_table(summary: dict[str, Any], title: str) -> Table:
    """Each accuracy as ``mean +- std`` over folds, with the fold count and the total training time."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("mean +- std", justify="right")
    for key in ("val_acc", "test_acc", "train_acc"):  # one fold has no spread to show
        spread = f" +- {summary[key + '_std']:.4f}" if summary["folds"] > 1 else " (1 fold)"
        table.add_row(key, f"{summary[key]:.4f}{spread}")
    for key in ("folds", "finished", "train_time_s"):
        if key in summary:
            table.add_row(key, _fmt(summary[key]))
    return table
