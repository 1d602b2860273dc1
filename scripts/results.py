"""Run the k-fold protocol on the TU benchmarks and write docs/results.md next to published numbers.

Each (dataset, configuration) is one `mempool train dataset=NAME protocol=kfold` run in OUT/NAME/CONFIG: the
shipped defaults (`default`), or one of CONFIGS below on top of the generic defaults (`~tuned`): a candidate for
the dataset's shipped config, or an ablation that takes one part of the model away. A rerun skips finished folds
and resumes an interrupted one, so the script can be stopped and started again; a dataset that cannot be loaded is
reported and skipped. The tables are rewritten after every run from the runs' files:

- per dataset, the defaults' test accuracy (mean +- std over the folds) beside the published fair-protocol rows,
  and Errica et al.'s model selection over the configurations run on that dataset (in each fold, the one with the
  best validation accuracy, and its test accuracy);
- with --tune, each candidate's validation accuracy and the one shipped (configs/tuned/NAME/default.yaml);
- the ablation: every configuration's accuracy and how sharply its first memory layer assigns.

    MEMPOOL_DATA_SOURCE=../shared/data/TUDataset python scripts/results.py -- threads=1
    python scripts/results.py --tune -- threads=1
    python scripts/results.py --datasets PROTEINS DD ENZYMES --configs all -- threads=1
    python scripts/results.py --table-only
"""
from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import yaml
from omegaconf import OmegaConf

from mempool_cli import figures
from mempool_cli.artifacts import write_atomic
from mempool_cli.sweep import finished_folds, fold_rows, fold_summary, select_folds

DATASETS = ["MUTAG", "PROTEINS", "PROTEINS_full", "ENZYMES", "NCI1", "IMDB-BINARY", "DD", "REDDIT-BINARY"]

# the defaults before the clustering work: the memory input unnormalised, tau 1, uniform keys, PyG's head weights
FLAT = ["model.memory.norm=none", "model.memory.radius=3", "model.memory.tau=1", "model.memory.key_init=uniform",
        "model.memory.head_init=null"]
# What every configuration below but `default` goes on top of (with ``~tuned``): the generic defaults they all ran
# on, which had dropout 0.5 until 2026-12-07. The generic defaults since have no dropout (the `drop0` candidate),
# by their rule (:func:`generic_choice`; the README says which runs).
TUNING_BASE = ["model.dropout=0.5"]
# name: (what it is, overrides on top of TUNING_BASE; the ablation's configurations with keys not reseeded:
# UNRESEEDED). `default` is the shipped config: the generic defaults and the dataset's tuned file, if any.
CONFIGS = {
    "default": ("the shipped defaults: the chosen candidate", []),
    "generic": ("the generic defaults until 2026-12-07: sharp memory + summed-input path + KL loss, dropout 0.5",
                []),
    "unreseeded": ("the generic defaults, the ablation's base", []),
    "drop02": ("dropout 0.2", ["model.dropout=0.2"]),
    "drop0": ("no dropout", ["model.dropout=0.0"]),
    "assign_drop02": ("dropout 0.2, head weights learned from the KL loss", ["model.dropout=0.2",
                                                                            "train.kl_schedule=assign"]),
    "wide_drop02": ("dropout 0.2, width 128", ["model.dropout=0.2", "model.hidden=128", "model.memory.hidden=128"]),
    "assign_wide_drop02": ("dropout 0.2, width 128, head weights learned from the KL loss",
                           ["model.dropout=0.2", "model.hidden=128", "model.memory.hidden=128",
                            "train.kl_schedule=assign"]),
    "assign_wide_drop0": ("no dropout, width 128, head weights learned from the KL loss",
                          ["model.dropout=0.0", "model.hidden=128", "model.memory.hidden=128",
                           "train.kl_schedule=assign"]),
    "assign_wider_drop02": ("dropout 0.2, width 256, head weights learned from the KL loss",
                            ["model.dropout=0.2", "model.hidden=256", "model.memory.hidden=256",
                             "train.kl_schedule=assign"]),
    "assign_wider_drop0": ("no dropout, width 256, head weights learned from the KL loss",
                           ["model.dropout=0.0", "model.hidden=256", "model.memory.hidden=256",
                            "train.kl_schedule=assign"]),
    "walk16": ("random-walk return probabilities after 1-16 steps as extra node features",
               ["dataset.random_walk=16"]),
    "assign_wider_drop02_walk16": ("dropout 0.2, width 256, head weights learned from the KL loss, random-walk "
                                   "return probabilities after 1-16 steps as extra node features",
                                   ["model.dropout=0.2", "model.hidden=256", "model.memory.hidden=256",
                                    "train.kl_schedule=assign", "dataset.random_walk=16"]),
    "drop0_walk16": ("no dropout, random-walk return probabilities after 1-16 steps as extra node features",
                     ["model.dropout=0.0", "dataset.random_walk=16"]),
    "gmn_walk16": ("the MemGNN paper's GMN: no message passing, the memory on the node features and random-walk "
                   "return probabilities after 1-16 steps", ["model.layers=0", "dataset.random_walk=16"]),
    "no_kl": ("without the KL loss", ["train.kl_weight=0"]),
    "assign": ("head weights learned from the KL loss too", ["train.kl_schedule=assign"]),
    "no_path": ("without the summed-input path", ["model.readout=none"]),
    "flat": ("flat memory (the defaults before the clustering work), no path", FLAT + ["model.readout=none"]),
    "flat_path": ("flat memory + summed-input path", FLAT),
    "sum": ("no memory: the encoder's nodes summed (one cluster), no path",
            FLAT + ["model.readout=none", "model.memory.clusters=[1]"]),
    "sum_path": ("no memory: nodes summed + summed-input path", FLAT + ["model.memory.clusters=[1]"]),
}

# The candidates for a dataset's shipped config (--tune): the generic defaults and variants that keep every part of
# the model. The ablation's other configurations take a part away to show what it adds; they are not candidates.
CANDIDATES = ("generic", "assign", "drop02", "assign_drop02", "wide_drop02", "assign_wide_drop02", "drop0",
              "assign_wide_drop0", "assign_wider_drop02", "assign_wider_drop0", "walk16")
# variants tried beside the shipped configs, not candidates: ENZYMES' and REDDIT-BINARY's shipped configs with the
# random-walk features, and the paper's GMN (2026-12-07/08); they reseed starved keys as the candidates do
TRIED = ("assign_wider_drop02_walk16", "drop0_walk16", "gmn_walk16")
# the ablation's configurations leave starved keys where they are (as before reseeding was a default); the
# candidates reseed them, as the generic defaults do
UNRESEEDED = ["model.memory.reseed=0"]
CLUSTERED = 0.5  # a candidate must cluster: its first memory layer's mean max assignment at least this (K=10)
CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
TUNED = CONFIG_ROOT / "tuned"

# Errica et al., "A Fair Comparison of Graph Neural Networks for Graph Classification" (ICLR 2020): stratified
# 10-fold CV, model selection inside the training folds, mean +- std of test accuracy (%): the best row.
ERRICA_BEST = {"PROTEINS": ("baseline", 75.8, 3.7), "ENZYMES": ("baseline", 65.2, 6.4), "NCI1": ("GIN", 80.0, 1.4),
               "DD": ("baseline", 78.4, 4.5), "IMDB-BINARY": ("GIN", 71.2, 3.9), "REDDIT-BINARY": ("GIN", 89.9, 1.9),
               # their other three, not in ../shared (the generic defaults' test; GIN's IMDB-MULTI row: 48.5 +- 3.3)
               "COLLAB": ("GIN", 75.6, 2.3), "IMDB-MULTI": ("baseline", 49.1, 3.5),
               "REDDIT-MULTI-5K": ("GIN", 56.1, 1.7)}
# the best later fair-protocol rows known (see issue 14)
LATER_BEST = {"ENZYMES": ("SPN, k=5", 69.4, 6.2), "NCI1": ("Co-GNN", 80.6, 1.1),
              "IMDB-BINARY": ("Co-GNN", 72.2, 4.1), "REDDIT-BINARY": ("ICGMMf", 91.6, 2.1)}
# Khasahmadi et al., "Memory-Based Graph Networks" (ICLR 2020): accuracy selected on the held-out fold.
MEMGNN = {"PROTEINS": "81.35", "ENZYMES": "75.50", "DD": "82.92"}


def raw_present(name: str) -> bool:
    """Whether the offline copy (MEMPOOL_DATA_SOURCE) or the cache (MEMPOOL_DATA_ROOT) holds the dataset."""
    roots = [os.environ.get("MEMPOOL_DATA_SOURCE"), os.environ.get("MEMPOOL_DATA_ROOT", "~/.cache/mempool/TUDataset")]
    return any(root and (Path(root).expanduser() / name / "raw" / f"{name}_A.txt").exists() for root in roots)


def generic_base(config: str) -> list[str]:
    """What a configuration's overrides go on top of: nothing for the shipped defaults, TUNING_BASE (``~tuned``)
    for the candidates (and the TRIED variants), and TUNING_BASE without reseeding for the ablation."""
    if config == "default":
        return []
    return ["~tuned", *TUNING_BASE] if config in CANDIDATES + TRIED else ["~tuned", *TUNING_BASE, *UNRESEEDED]


def reseeded(run: Path) -> bool:
    """Whether a run reseeded starved keys (its config's ``model.memory.reseed``; runs from before the setting
    existed did not)."""
    saved = OmegaConf.load(run / "config.yaml") if (run / "config.yaml").exists() else OmegaConf.create()
    return bool(OmegaConf.select(saved, "model.memory.reseed", default=0))


def has_preset(name: str) -> bool:
    """Whether configs/dataset/ has a preset of that name (where a tuned file can apply)."""
    return (CONFIG_ROOT / "dataset" / f"{name}.yaml").exists()


def dataset_overrides(name: str) -> list[str]:
    """How ``mempool train`` names a TU dataset: its preset where there is one, else the automatic recipe of any
    TU dataset (``dataset=tu``)."""
    return [f"dataset={name}"] if has_preset(name) else ["dataset=tu", f"dataset.name={name}"]


def table_names(requested: list[str], out: Path) -> list[str]:
    """The datasets of the tables: DATASETS, then any other one asked for or run in ``out``."""
    others = [*requested, *sorted(path.name for path in out.glob("*") if path.is_dir())]  # none where out is not
    return [*DATASETS, *dict.fromkeys(name for name in others if name not in DATASETS)]


def run_config(name: str, config: str, out: Path, folds: int, overrides: list[str]) -> float:
    """Run (or finish) the k-fold protocol of one configuration on one dataset; returns the wall time in seconds."""
    command = [sys.executable, "-m", "mempool_cli", "train", *dataset_overrides(name), "protocol=kfold",
               f"protocol.folds={folds}", "train.progress=false", f"hydra.run.dir={out / name / config}",
               *generic_base(config), *CONFIGS[config][1], *overrides]
    print("$", " ".join(command[2:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def percent(summary: dict, key: str) -> str:
    return f"{100 * summary[key]:.1f} +- {100 * summary[key + '_std']:.1f}"


def kfold_result(run_dir: Path) -> Optional[dict]:
    """Mean +- std over the finished folds of a k-fold run, with ``finished``; None when nothing has finished."""
    return fold_summary(fold_rows(run_dir)) if (run_dir / "folds.json").exists() else None


def runs_of(out: Path, name: str) -> list[tuple[str, Path]]:
    """The configurations run on a dataset, in CONFIGS order, with their run folders."""
    return [(config, out / name / config) for config in CONFIGS if (out / name / config / "folds.json").exists()]


def results_of(out: Path, name: str) -> dict[str, dict]:
    """:func:`kfold_result` of each configuration run on a dataset that has finished a fold, read once."""
    results = {config: kfold_result(run) for config, run in runs_of(out, name)}
    return {config: result for config, result in results.items() if result is not None}


def memory_folds(run: Path) -> list[dict]:
    """A run's finished folds when its first memory layer has more than one cluster (none otherwise)."""
    done = finished_folds(run)
    return done if done and done[0].get("memory_clusters", 1) > 1 else []


def mean_max_assignment(done: list[dict]) -> Optional[float]:
    """The first memory layer's mean largest assignment over :func:`memory_folds` rows (None without any)."""
    return sum(row["memory_mean_max_assignment"] for row in done) / len(done) if done else None


def clustered_folds(run: Path, folds: int) -> list[dict]:
    """A run's :func:`memory_folds` when it finished all ``folds`` and its memory clusters (mean max assignment
    >= CLUSTERED); none otherwise."""
    done = memory_folds(run)
    return done if len(done) == folds and mean_max_assignment(done) >= CLUSTERED else []


def candidate_wins(out: Path, name: str, folds: int) -> dict[str, int]:
    """How often the per-fold selection over the candidates that finished every fold and cluster (mean max
    assignment >= CLUSTERED) picks each; a lone such candidate takes every fold; empty when there is none."""
    runs = [(config, out / name / config) for config in CANDIDATES if clustered_folds(out / name / config, folds)]
    if len(runs) == 1:
        return {runs[0][0]: folds}
    selection = select_folds(runs)
    picked = [row["job"] for row in selection["rows"]] if selection else []
    return {config: picked.count(config) for config, _ in runs} if selection else {}


def chosen_config(wins: dict[str, int], configs: dict[str, dict]) -> Optional[str]:
    """The candidate the per-fold selection picks most often (``wins``: :func:`candidate_wins`). A tie keeps
    `generic` (the incumbent: what every dataset shipped before it was tuned) when it is among the tied, else goes
    to the best mean validation accuracy (then to the earlier candidate). None without a selection."""
    if not wins:
        return None
    tied = [config for config in CANDIDATES if wins.get(config) == max(wins.values())]
    if "generic" in tied:
        return "generic"
    return max(tied, key=lambda config: (round(configs[config]["val_acc"], 6), -CANDIDATES.index(config)))


def generic_choice(out: Path, names: list[str], folds: int) -> Optional[str]:
    """The rule for the generic defaults: among the candidates that finished every fold and cluster on every one
    of the datasets ``names``, the best mean over them of the mean validation accuracy; None where none did."""
    means = {}
    for config in CANDIDATES:
        done = [clustered_folds(out / name / config, folds) for name in names]
        if all(done):
            means[config] = sum(fold_summary(rows)["val_acc"] for rows in done) / len(names)
    return max(means, key=means.get) if means else None


def generic_value(key: str):
    """A setting's value in the generic defaults (``model.dropout``: configs/model/default.yaml's ``dropout``)."""
    group, _, rest = key.partition(".")
    return OmegaConf.select(OmegaConf.load(CONFIG_ROOT / group / "default.yaml"), rest)


def tuned_settings(config: str) -> dict:
    """A candidate's settings (TUNING_BASE and its overrides, the later winning) that differ from the generic
    defaults, by dotted key."""
    settings = {key: yaml.safe_load(value) for key, value in
                (item.split("=", 1) for item in [*TUNING_BASE, *CONFIGS[config][1]])}
    return {key: value for key, value in settings.items() if value != generic_value(key)}


def ship(name: str, config: str) -> None:
    """Make ``config`` the dataset's tuned config: write its :func:`tuned_settings` to
    configs/tuned/NAME/default.yaml (no file where there are none). The shipped config is that on top of the
    generic defaults: the candidate itself."""
    target = TUNED / name / "default.yaml"
    settings = tuned_settings(config)
    if not settings:
        target.unlink(missing_ok=True)
    else:
        tree = OmegaConf.create()
        for key, value in settings.items():
            OmegaConf.update(tree, key, value)
        tree = OmegaConf.to_container(tree)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, f"# @package _global_\n# {name}: {CONFIGS[config][0]} (`{config}`), chosen by "
                             "scripts/results.py --tune from 10-fold validation accuracy (the rule and the figures: "
                             f"docs/results.md)\n{yaml.safe_dump(tree, sort_keys=False)}")


def _not_chosen(run: Path, result: dict, wins: Optional[int]) -> str:
    """A candidate's note in the choice table: the folds it won, or why it could not win."""
    if wins is not None:
        return str(wins)
    sharp = mean_max_assignment(memory_folds(run))
    return f"flat: {sharp:.2f}" if sharp is not None and sharp < CLUSTERED else f"folds done: {result['finished']}"


def _unreseeded_mark(run: Path) -> str:
    """A dagger after a candidate that ran without reseeding (before it was a default)."""
    return "" if reseeded(run) else " †"


def choice_rows(out: Path, results: dict[str, dict[str, dict]], wins_by: dict[str, dict[str, int]]) -> list[str]:
    """Per dataset with a candidate that can ship: each candidate's mean validation accuracy and how often the
    per-fold selection picked it (``wins_by``: :func:`candidate_wins` by dataset), and the one chosen."""
    rows = []
    for name, configs in results.items():
        wins = wins_by[name]
        chosen = chosen_config(wins, configs)
        if chosen is not None:
            cells = [f"{percent(configs[c], 'val_acc')}{_unreseeded_mark(out / name / c)} "
                     f"({_not_chosen(out / name / c, configs[c], wins.get(c))})" if c in configs else "-"
                     for c in CANDIDATES]
            rows.append(f"| {name} | {' | '.join(cells)} | `{chosen}` |")
    return rows


def published(table: dict, name: str) -> str:
    return f"{table[name][0]} {table[name][1]} +- {table[name][2]}" if name in table else "not reported"


def verdict(name: str, default: dict, folds: int) -> str:
    """Whether the defaults beat the best published fair-protocol rows (Errica et al.'s and any later one), with
    the points behind each row they do not beat, or (two decimals, so that a hair's breadth shows) ahead of each."""
    if default["finished"] < folds:
        return f"unfinished: {default['finished']} of {folds} folds"
    rows = [(label, table[name][1]) for label, table in (("Errica", ERRICA_BEST), ("later", LATER_BEST))
            if name in table]
    if not rows:
        return "n/a"
    ahead = {label: 100 * default["test_acc"] - best for label, best in rows}
    behind = [f"{label} {points:+.1f}" for label, points in ahead.items() if points <= 0]
    if behind:
        return f"no ({', '.join(behind)})"
    return f"yes ({', '.join(f'{label} {points:+.2f}' for label, points in ahead.items())})"


def selection_cell(out: Path, name: str, folds: int) -> str:
    """Errica et al.'s per-fold selection over the configurations that finished every fold on a dataset, and how
    often each won."""
    runs = [(config, run) for config, run in runs_of(out, name) if len(finished_folds(run)) == folds]
    selection = select_folds(runs)
    if selection is None:
        return "fewer than two configurations finished"
    done = "" if len(selection["rows"]) == folds else f" ({len(selection['rows'])} of {folds} folds)"
    chosen = [row["job"] for row in selection["rows"]]
    counts = ", ".join(f"{config} {chosen.count(config)}" for config, _ in runs if config in chosen)
    return f"{percent(selection['summary'], 'test_acc')}{done} over {len(runs)} ({counts})"


def main_rows(out: Path, results: dict[str, dict[str, dict]], folds: int) -> tuple[list[str], dict[str, str]]:
    """The main table's rows and each dataset's verdict (``results``: :func:`results_of` by dataset)."""
    rows, verdicts = [], {}
    for name, configs in results.items():
        default = configs.get("default")
        later, errica, memgnn = published(LATER_BEST, name), published(ERRICA_BEST, name), MEMGNN.get(name, "-")
        if default is None:
            reason = "not run: raw data not present here" if not raw_present(name) else "not run yet"
            rows.append(f"| {name} | ({reason}) | | | {errica} | {later} | | {memgnn} | | |")
            continue
        verdicts[name] = verdict(name, default, folds)
        times = {(out / name / config).resolve(): result["train_time_s"] for config, result in configs.items()}
        rows.append(f"| {name} | {percent(default, 'test_acc')} | {percent(default, 'val_acc')} | "
                    f"{selection_cell(out, name, folds)} | {errica} | {later} | {verdicts[name]} | {memgnn} | "
                    f"{'; '.join(_sharpness(out / name / 'default'))} | "
                    f"{default['train_time_s'] / 60:.1f} min; {sum(times.values()) / 60:.1f} min |")
    return rows, verdicts


def _sharpness(run: Path) -> tuple[str, str, str]:
    """The first memory layer over the folds' test parts: mean max assignment (mean and lowest fold), entropy /
    log K (mean) and keys used (range)."""
    done = memory_folds(run)
    if not done:
        return "n/a (one cluster)", "n/a", "n/a"
    sharp = [row["memory_mean_max_assignment"] for row in done]
    entropy = [row["memory_normalized_entropy"] for row in done]
    keys = [row["memory_keys_used"] for row in done]
    return (f"{sum(sharp) / len(sharp):.2f} (lowest fold {min(sharp):.2f})", f"{sum(entropy) / len(entropy):.2f}",
            f"{min(keys)}-{max(keys)}")


def ablation_rows(out: Path, results: dict[str, dict[str, dict]], wins_by: dict[str, dict[str, int]]) -> list[str]:
    """One row per (dataset, configuration) where more than the defaults were run; the shipped defaults and the
    candidate chosen for them (``wins_by``: :func:`candidate_wins` by dataset) in bold."""
    rows = []
    for name, configs in results.items():
        runs = runs_of(out, name)
        if [config for config, _ in runs] == ["default"]:
            continue
        chosen = chosen_config(wins_by[name], configs) or "generic"
        shipped = (out / name / "default").resolve()
        for config, run in runs:
            result = configs.get(config)
            if result is None or (config != "default" and run.resolve() == shipped):
                continue  # a candidate's own runs when they are the shipped defaults' (one row, below)
            label = CONFIGS[config][0] + ("" if reseeded(run) or not memory_folds(run) else ", keys not reseeded")
            if config == "default":
                same = (out / name / chosen).resolve() == shipped
                label = f"the shipped defaults = `{chosen}`" + (f": {CONFIGS[chosen][0]}" if same else
                                                                ", starved keys reseeded")
            label = f"**{label}**" if config in (chosen, "default") else label
            rows.append(f"| {name} | {label} (`{config}`) | {percent(result, 'test_acc')} | "
                        f"{percent(result, 'val_acc')} | {' | '.join(_sharpness(run))} | {result['finished']} |")
    return rows


def section(title: str, text: str, columns: list[str], rows: list[str]) -> list[str]:
    """A markdown section of a paragraph and a table; nothing when there are no rows."""
    if not rows:
        return []
    return [f"## {title}", "", text, "", f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}", *rows, ""]


def write_table(out: Path, names: list[str], folds: int, overrides: list[str], target: Path, note: str) -> None:
    """docs/results.md (and its figure) from the runs in ``out``; ``note`` (how the runs were made) under the
    command."""
    results = {name: results_of(out, name) for name in names}
    wins_by = {name: candidate_wins(out, name, folds) for name in names}
    rows, verdicts = main_rows(out, results, folds)
    beaten = [name for name, v in verdicts.items() if v.startswith("yes")]
    short = [f"{name} {v.removeprefix('no ')}" for name, v in verdicts.items() if v.startswith("no")]
    extra = f" -- {' '.join(overrides)}" if overrides else ""
    lines = [
        "# Results on TU benchmarks", "",
        f"Stratified {folds}-fold cross-validation (Errica et al., 2020): for each fold a stratified 10% of the "
        "training part is held out for early stopping and checkpoint selection; the test fold is evaluated once, "
        "at the best-validation epoch. Accuracy in %, mean +- sample std over the folds. **Defaults**: "
        "`mempool train dataset=NAME protocol=kfold` with the shipped configs. **Selected per fold**: Errica et "
        "al.'s model selection over the configurations of the ablation run on that dataset (below): each fold "
        "takes the one with the best accuracy on that fold's validation part and reports its test accuracy; "
        "test folds never choose anything.", "",
        f"Command: `python scripts/results.py --folds {folds}{extra}` (torch {torch.__version__}, {os.cpu_count()} "
        "CPU cores) for the defaults, `--datasets PROTEINS DD ENZYMES --configs all` for the ablation.", "",
        *([note, ""] if note else []),
        "| dataset | defaults | val acc (defaults) | selected per fold (configurations: folds won) "
        "| best row of Errica et al. | best later fair-protocol row | defaults beat both? "
        "| MemGNN paper (selected on the test fold) | memory (defaults): mean max, entropy / log K, keys used "
        "| train time (defaults; all configurations) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows, "",
        f"The defaults beat the best published fair-protocol rows on: {', '.join(beaten) or 'none'}. "
        f"Not on: {', '.join(short) or 'none'} (points behind each row not beaten).", "",
        "Train times are the sums of the folds' training times (runs that shared the 2 cores took longer than "
        "alone). The MemGNN paper's numbers are the best test-fold accuracy over training epochs, which selects "
        "on the test data and overstates; they are shown for reference only. Per-fold results: "
        "`mempool summarize OUT/<dataset>/<configuration>`. How far each mean moves with the seed (each seed "
        "draws its own folds): [seed_spread.md](seed_spread.md), from `scripts/seed_spread.py`.", "",
    ]
    lines += section("How each dataset's defaults were chosen",
                     "`scripts/results.py --tune` runs the candidates below (the generic defaults and variants that "
                     "keep every part of the model) and ships, per dataset, the one that Errica et al.'s per-fold "
                     "selection picks most often (in each fold, the best validation accuracy), as "
                     "`configs/tuned/NAME/default.yaml`. Only candidates whose memory clusters can be chosen (mean max "
                     "assignment at least 0.5: the product's requirement, a property of the inputs measured on the "
                     "test folds' graphs without their labels). A tie keeps `generic` when it is among the tied (a "
                     "change must win more folds), else goes to the best mean validation accuracy. Test labels play "
                     "no part. The candidates are `generic` (the generic defaults of these runs: dropout 0.5; the "
                     "generic defaults have had none since 2026-12-07, as `drop0`), which reseeds starved keys "
                     "(`model.memory.reseed=0.01`), with their overrides, so the chosen candidate's runs are the "
                     "shipped defaults' runs; † marks a candidate that ran before reseeding was a default, without it. "
                     "Mean validation accuracy +- std, and (in brackets) the folds where the selection picked it:",
                     ["dataset", *(f"`{c}`" for c in CANDIDATES), "shipped"], choice_rows(out, results, wins_by))
    lines += section("Ablation: what the memory layers add",
                     "Each configuration is `generic` (dropout 0.5) with one part changed, on the same folds; the "
                     "ablation's configurations (those that take a part away) leave starved keys where they are "
                     "(`model.memory.reseed=0`, as before reseeding was a default), and so does every row marked so; "
                     "the shipped defaults in bold. Sharpness is the first memory layer's mean "
                     "largest assignment on the test folds (1/K = 0.10 when flat, 1 when hard), its mean entropy over "
                     "log K (1 flat, 0 hard), and keys used the number of its 10 keys that are some node's argmax.",
                     ["dataset", "configuration", "test acc", "val acc", "mean max assignment", "entropy / log K",
                      "keys used", "folds"], ablation_rows(out, results, wins_by))
    figure_rows = _figure_rows(results, folds)
    if figure_rows:
        figures.save(figures.results_figure(figure_rows, "10-fold test accuracy: mempool defaults and published rows"),
                     target.with_suffix(".png"))
        lines += [f"![accuracy per dataset]({target.with_suffix('.png').name})", ""]
    write_atomic(target, "\n".join(lines))


def _figure_rows(results: dict[str, dict[str, dict]], folds: int) -> list[dict]:
    """The bars of the results figure: mempool's defaults, Errica et al.'s best row, the best later row."""
    rows = []
    for name, configs in results.items():
        default = configs.get("default")
        if default is None:
            continue
        shown = name if default["finished"] == folds else f"{name}\n({default['finished']} of {folds} folds)"
        rows.append({"dataset": shown, "label": "mempool defaults", "mean": 100 * default["test_acc"],
                     "std": 100 * default["test_acc_std"]})
        for label, table in (("Errica et al. best", ERRICA_BEST), ("best later fair-protocol row", LATER_BEST)):
            if name in table:
                rows.append({"dataset": shown, "label": label, "mean": table[name][1], "std": table[name][2]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--configs", nargs="+", default=["default"],
                        help=f"configurations to run: all, or some of {', '.join(CONFIGS)}")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("runs/results"))
    parser.add_argument("--table", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--table-only", action="store_true", help="only rewrite the tables from the runs in --out")
    parser.add_argument("--tune", action="store_true",
                        help="run the candidates (CANDIDATES) and ship, per dataset, the one the per-fold selection "
                             "picks most often (docs/results.md states the rule)")
    parser.add_argument("--note", default="", help="a paragraph under the command: how the runs were made")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (after --)")
    args = parser.parse_args()
    configs = list(CANDIDATES) if args.tune else list(CONFIGS) if args.configs == ["all"] else args.configs
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configuration {unknown[0]!r}; choose from: all, {', '.join(CONFIGS)}")
    table = functools.partial(write_table, args.out, table_names(args.datasets, args.out), args.folds,
                              args.overrides, args.table, args.note)
    for name in [] if args.table_only else args.datasets:
        for config in configs:
            try:
                seconds = run_config(name, config, args.out, args.folds, args.overrides)
            except subprocess.CalledProcessError:
                print(f"{name} {config}: failed (its error is above); going on", flush=True)
                continue
            print(f"{name} {config}: {seconds / 60:.1f} min", flush=True)
            table()
    for name in args.datasets if args.tune else []:
        chosen = chosen_config(candidate_wins(args.out, name, args.folds), results_of(args.out, name))
        if chosen is None:
            continue
        if has_preset(name):
            ship(name, chosen)
            print(f"{name}: ships {chosen}")
        else:
            print(f"{name}: the selection picks {chosen}; a tuned file needs a preset, configs/dataset/{name}.yaml")
    if args.tune and len(args.datasets) > 1:
        print(f"the generic defaults by their rule: {generic_choice(args.out, args.datasets, args.folds)}")
    table()
    print(f"wrote {args.table}")


if __name__ == "__main__":
    main()
