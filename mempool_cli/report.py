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
    confusion = confusion_table(result["class_names"], result["confusion_matrix"])
    return [summary, per_class, confusion, memory_table(result["memory"])]


def confusion_table(class_names: Sequence[str], matrix: Sequence[Sequence[int]]) -> Table:
    """Rows: true class, columns: predicted class."""
    confusion = Table(title="confusion matrix (rows: true, columns: predicted)")
    confusion.add_column("")
    for name in class_names:
        confusion.add_column(name, justify="right")
    for name, row in zip(class_names, matrix):
        confusion.add_row(name, *(str(v) for v in row))
    return confusion


PREDICTION_ROWS_SHOWN = 20


def prediction_tables(result: dict[str, Any], show_rows: bool) -> list[Table]:
    """What ``predict`` did (checkpoints, speed, unreadable graphs, unseen values), the first predictions when
    they go nowhere else, and with labels the accuracy and confusion matrix."""
    keys = ("input", "ensemble", "num_graphs", "unreadable", "seconds", "graphs_per_s", "accuracy")
    tables = [metrics_table({k: result[k] for k in keys if k in result}, title="prediction")]
    unseen = [{"column": column, "value": value, "count": count}
              for column, values in result["unseen_values"].items() for value, count in values.items()]
    if unseen:
        tables.append(rows_table(unseen, ("column", "value", "count"),
                                 title="values unseen in training (featurised as all-zero one-hot rows)"))
    failed = [row for row in result["rows"] if "error" in row]
    if failed:
        tables.append(rows_table(failed[:PREDICTION_ROWS_SHOWN], ("id", "error"),
                                 title=f"graphs that could not be read ({len(failed)}; no prediction)"))
    if show_rows:
        rows = [row for row in result["rows"] if "error" not in row]
        columns = ["id", "prediction", *(f"p_{n}" for n in result["class_names"])]
        columns += ["label"] if "accuracy" in result else []
        more = f"; first {PREDICTION_ROWS_SHOWN} of {len(rows)}, all with --out FILE.csv" \
            if len(rows) > PREDICTION_ROWS_SHOWN else ""
        tables.append(rows_table(rows[:PREDICTION_ROWS_SHOWN], columns, title=f"predictions{more}"))
    if "accuracy" in result:
        tables.append(confusion_table(result["class_names"], result["confusion_matrix"]))
    return tables


MEMORY_COLUMNS = ("layer", "clusters", "mean_max_assignment", "normalized_entropy", "keys_used")


def memory_table(layers: Sequence[dict[str, Any]]) -> Table:
    """How sharply each memory layer assigns (mean max 1/K and entropy 1 when flat, 1 and 0 when hard)."""
    return rows_table(layers, MEMORY_COLUMNS, title="memory assignments (flat: mean max 1/K, entropy 1)")


# short headers, so that tables of jobs and folds fit 80 columns
HEADERS = {"val_acc": "val", "test_acc": "test", "test_acc_std": "test std", "train_acc": "train",
           "best_epoch": "best ep", "train_time_s": "time s"}


def rows_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str) -> Table:
    """One row per result (job or fold) with the given columns; overrides one per line."""
    table = Table(title=title)
    for column in columns:  # fold, never truncate: every value stays readable in a narrow or piped output
        table.add_column(HEADERS.get(column, column), overflow="fold",
                         justify="left" if column in ("job", "dataset", "overrides", "status") else "right")
    for row in rows:
        table.add_row(*(_fmt(row.get(column, "")).replace(" ", "\n") if column == "overrides"
                        else _fmt(row.get(column, "")) for column in columns))
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
