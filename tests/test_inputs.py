"""Bring your own graphs: any TU dataset (automatic recipe), TU folders, molecules (CSV, SDF), graph files, labels
as written, the user's own split, and `mempool predict` (one checkpoint or every fold)."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import networkx as nx
import pytest
import torch

from conftest import SHARED_TU, run_cli, write_tu_dataset
from mempool_cli.config import DataSpec
from mempool_cli.data import Dataset, read_source
from mempool_cli.errors import CheckpointError, ConfigError, DataError
from mempool_cli.evaluation import evaluate_checkpoint
from mempool_cli.prediction import predict, write_predictions
from mempool_cli.protocols import train
from mempool_cli.show import pick_checkpoint
from test_core import spec_of

MOLECULES = SHARED_TU.parent / "molecules"
SOLUBILITY = MOLECULES / "solubility.csv"
NEEDS_MOLECULES = pytest.mark.skipif(not MOLECULES.is_dir(), reason="needs ../shared/data/molecules")
QUICK = ["model=small", "train.epochs=3", "train.batch_size=32", "train.progress=false"]
pytest.importorskip("rdkit")


def _train(overrides: list[str], run_dir: Path) -> dict:
    return train(spec_of([*QUICK, *overrides]), run_dir)


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Molecules


@pytest.fixture(scope="module")
def solubility_run(tmp_path_factory):
    """The solubility CSV trained with its own split column (3 epochs)."""
    if not MOLECULES.is_dir():
        pytest.skip("needs ../shared/data/molecules")
    run = tmp_path_factory.mktemp("solubility") / "run"
    metrics = _train(["dataset=molecules", f"dataset.path={SOLUBILITY}", "dataset.label_column=solubility_class",
                      "dataset.split_column=split", "dataset.id_column=name"], run)
    return run, metrics


def test_molecules_csv_trains_with_its_own_split_and_reports_what_it_left_out(solubility_run):
    run, metrics = solubility_run
    split = json.loads((run / "split.json").read_text())
    rows = list(csv.DictReader(open(SOLUBILITY)))
    names = [r["name"] for r in rows]
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    ids = checkpoint["dataset"]["class_names"], checkpoint["dataset"]["cat_names"]
    assert ids[0] == ["(A) low", "(B) medium", "(C) high"] and "element" in ids[1]
    skipped = list(csv.DictReader(open(run / "skipped.csv")))
    assert skipped and all("RDKit cannot parse" in r["reason"] and r["reason"].startswith("line ") for r in skipped)
    kept = [r for r in rows if r["name"] not in {s["id"] for s in skipped}]
    assert len(kept) == len(rows) - len(skipped) == split["meta"]["num_graphs"]
    test_rows = [r for r in kept if r["split"] == "test"]
    assert len(split["split"]["test"]) == len(test_rows)  # the user's test part, untouched
    assert split["split"]["val"] and not set(split["split"]["val"]) & set(split["split"]["test"])
    assert metrics["dataset"] == "solubility" and len(names) == 1282


def test_predict_the_test_part_writes_the_documented_csv(solubility_run, tmp_path):
    run, metrics = solubility_run
    result = predict(run, str(SOLUBILITY), part="test")
    assert result["accuracy"] == pytest.approx(metrics["test_acc"], abs=1e-6)  # the same graphs, the same model
    out = tmp_path / "predictions.csv"
    write_predictions(result, out)
    table = list(csv.DictReader(open(out)))
    columns = ["id", "prediction", "p_(A) low", "p_(B) medium", "p_(C) high", "label"]
    assert list(table[0])[:6] == columns
    predicted = [r for r in table if r["prediction"]]
    assert all(abs(sum(float(r[c]) for c in columns[2:5]) - 1) < 1e-6 for r in predicted)
    unreadable = [r for r in table if r.get("error")]
    assert len(predicted) == result["num_graphs"] and len(unreadable) == result["unreadable"] > 0


def test_eval_rebuilds_molecule_features_from_the_checkpoint(solubility_run):
    run, metrics = solubility_run
    result = evaluate_checkpoint(run / "checkpoint.pt", "test")
    assert result["accuracy"] == pytest.approx(metrics["test_acc"], abs=1e-6)


@NEEDS_MOLECULES
def test_sdf_with_the_label_as_a_property_and_unseen_elements_counted(tmp_path):
    run = tmp_path / "run"
    _train(["dataset=molecules", f"dataset.path={MOLECULES / 'solubility.test.sdf'}",
            "dataset.label_column=SOL_classification", "model.encoder=gine"], run)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["model_args"]["num_edge_features"] > 0  # bond types reach the encoder
    elements = checkpoint["dataset"]["feature_stats"]["vocab"][0]
    new = _write_csv(tmp_path / "new.csv", [{"smiles": "CCO"}, {"smiles": "[Se]CC[Se]"}, {"smiles": "C1CC"}])
    result = predict(run / "checkpoint.pt", str(new))
    assert "Se" not in elements and result["unseen_values"]["element"] == {"Se": 2}
    assert [r.get("error", "")[:7] for r in result["rows"]] == ["", "", "line 4:"]
    assert "accuracy" not in result and result["num_graphs"] == 2


def test_unparsable_smiles_can_be_made_an_error(tmp_path):
    bad = _write_csv(tmp_path / "bad.csv", [{"smiles": "CCO", "label": "a"}, {"smiles": "C(", "label": "b"}])
    with pytest.raises(DataError, match="line 3"):
        read_source(DataSpec(kind="molecules", path=str(bad), skip_invalid=False))


@pytest.mark.parametrize("rows, message", [
    ([{"smiles": "CCO", "y": "1"}], "no column 'label'"),
    ([{"smiles": "CCO", "label": "1"}, {"smiles": "CC", "label": "1"}], "at least two classes"),
])
def test_bad_molecule_tables_are_one_clear_error(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        read_source(DataSpec(kind="molecules", path=str(_write_csv(tmp_path / "m.csv", rows))))


def test_empty_and_missing_inputs_are_refused(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="no column 'smiles'"):
        read_source(DataSpec(kind="molecules", path=str(tmp_path / "empty.csv")))
    with pytest.raises(ConfigError, match="dataset.path"):
        DataSpec(kind="molecules")


# ---------------------------------------------------------------------------------------------------------------
# TU datasets: by name with the automatic recipe, and folders read in place


@pytest.mark.skipif(not SHARED_TU.is_dir(), reason="needs ../shared/data/TUDataset")
@pytest.mark.parametrize("name, recipe", [
    ("MUTAG", {"node_attributes": False, "node_labels": True, "degree": "none"}),
    ("ENZYMES", {"node_attributes": True, "node_labels": True, "degree": "none"}),
    ("IMDB-BINARY", {"node_attributes": False, "node_labels": False, "degree": "onehot"}),
])
def test_automatic_recipe_uses_what_the_dataset_has(tmp_path, name, recipe):
    spec = spec_of(["dataset=tu", f"dataset.name={name}", f"dataset.root={tmp_path}",
                    f"dataset.source={SHARED_TU}"]).data
    dataset = Dataset.load(spec)
    assert recipe.items() <= dataset.recipe.items()
    graphs = dataset.featurize(dataset.fit_features(list(range(len(dataset.labels)))))
    assert graphs.num_features > 1 and len(graphs) == len(dataset.labels)


@pytest.mark.skipif(not SHARED_TU.is_dir(), reason="needs ../shared/data/TUDataset")
def test_a_recipe_asking_for_missing_features_is_refused(tmp_path):
    spec = spec_of(["dataset=PROTEINS", "dataset.name=MUTAG", f"dataset.root={tmp_path}",
                    f"dataset.source={SHARED_TU}"]).data
    with pytest.raises(DataError, match="dataset.node_attributes: MUTAG has no continuous node attributes"):
        Dataset.load(spec)


def _listing(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*")}


def test_tu_folder_at_a_path_is_read_in_place_and_predicted(tmp_path):
    folder = write_tu_dataset(tmp_path / "mine", name="RINGS") / "RINGS" / "raw"
    before = _listing(folder.parent)
    folder.parent.chmod(0o555)
    folder.chmod(0o555)
    try:
        metrics = _train(["dataset=tu", f"dataset.path={folder}", "train.epochs=2", "dataset.random_walk=4"],
                         tmp_path / "run")
        result = predict(tmp_path / "run", str(folder))
        evaluated = evaluate_checkpoint(tmp_path / "run" / "checkpoint.pt", "test")
    finally:
        folder.chmod(0o755)
        folder.parent.chmod(0o755)
    assert metrics["dataset"] == "RINGS" and _listing(folder.parent) == before
    recorded = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["dataset"]
    assert recorded["random_walk"] == 4 and recorded["num_features"] == 2 + 2 + 4  # featurised again from it
    assert evaluated["accuracy"] == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert result["num_graphs"] == 48 and result["class_names"] == ["0", "1"] and "accuracy" in result


def test_tu_labels_as_written_are_the_class_names(tmp_path):
    root = write_tu_dataset(tmp_path, name="SIGNS")
    labels = root / "SIGNS" / "raw" / "SIGNS_graph_labels.txt"
    labels.write_text("".join("-1\n" if line == "0" else "1\n" for line in labels.read_text().split()))
    source = read_source(DataSpec(kind="tu", path=str(root / "SIGNS")))
    assert source.class_names == ["-1", "1"] and set(source.labels.tolist()) == {0, 1}


# ---------------------------------------------------------------------------------------------------------------
# Graph files


def write_graph_files(folder: Path, count: int = 40, labelled: bool = True) -> Path:
    """Rings and chains as GraphML, GML and edge lists written by networkx, with a text node attribute."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    writers = {".graphml": nx.write_graphml, ".gml": nx.write_gml}
    rows = []
    for i in range(count):
        g = nx.cycle_graph(rng.randint(5, 10)) if i % 2 else nx.path_graph(rng.randint(5, 10))
        nx.set_node_attributes(g, {v: rng.choice(["a", "b"]) for v in g}, "kind")
        suffix = list(writers)[i % 2]
        writers[suffix](g, folder / f"g{i}{suffix}")
        rows.append({"file": f"g{i}{suffix}", "label": "ring" if i % 2 else "chain"})
    (folder / "broken.graphml").write_text("<graphml><unclosed")
    rows.append({"file": "broken.graphml", "label": "ring"})
    if labelled:
        _write_csv(folder / "labels.csv", rows)
    return folder


def test_graph_files_train_and_predict_without_labels(tmp_path):
    folder = write_graph_files(tmp_path / "graphs")
    metrics = _train(["dataset=graphs", f"dataset.path={folder}", "train.epochs=2"], tmp_path / "run")
    skipped = list(csv.DictReader(open(tmp_path / "run" / "skipped.csv")))
    assert metrics["dataset"] == "graphs" and [r["id"] for r in skipped] == ["broken.graphml"]
    evaluated = evaluate_checkpoint(tmp_path / "run" / "checkpoint.pt", "test")
    assert evaluated["accuracy"] == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert evaluated["class_names"] == ["chain", "ring"]
    unlabelled = write_graph_files(tmp_path / "new", count=6, labelled=False)
    result = predict(tmp_path / "run", str(unlabelled))
    assert result["num_graphs"] == 6 and result["unreadable"] == 1 and "accuracy" not in result
    assert {r["id"] for r in result["rows"] if "prediction" in r} == {f"g{i}.{s}" for i, s in
                                                                      zip(range(6), ["graphml", "gml"] * 3)}


def test_graph_file_names_cannot_leave_their_folder(tmp_path):
    folder = tmp_path / "graphs"
    folder.mkdir()
    nx.write_graphml(nx.path_graph(3), tmp_path / "outside.graphml")
    _write_csv(folder / "labels.csv", [{"file": "../outside.graphml", "label": "a"}])
    with pytest.raises(DataError, match="is not a file inside"):
        read_source(DataSpec(kind="graphs", path=str(folder)))


# ---------------------------------------------------------------------------------------------------------------
# predict with every fold, and on the command line


def test_kfold_predict_averages_the_folds(tmp_path, data_env):
    _train(["dataset=MUTAG", "dataset.name=TINY", "dataset.node_attributes=true", "protocol=kfold",
            "protocol.folds=2", "train.epochs=1"], tmp_path / "run")
    both = predict(tmp_path / "run", "TINY")
    each = [predict(tmp_path / "run" / f"fold_{i}" / "checkpoint.pt", "TINY") for i in range(2)]
    assert both["ensemble"] == "mean probabilities of 2 fold checkpoints" and each[0]["ensemble"] == "one checkpoint"
    for row, first, second in zip(both["rows"], each[0]["rows"], each[1]["rows"]):
        assert row["p_1"] == pytest.approx((first["p_1"] + second["p_1"]) / 2)
    (tmp_path / "run" / "fold_1" / "metrics.json").unlink()  # fold 1 still training: its checkpoint is not final
    assert predict(tmp_path / "run", "TINY")["checkpoints"] == [str(tmp_path / "run" / "fold_0" / "checkpoint.pt")]
    with pytest.raises(CheckpointError, match="no finished fold 1"):
        pick_checkpoint(tmp_path / "run", 1)


def test_predict_on_the_command_line(solubility_run, tmp_path):
    run, _ = solubility_run
    out = tmp_path / "p.csv"
    result = run_cli(["predict", str(run), str(SOLUBILITY), "--part", "test", "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr
    test_rows = [r for r in csv.DictReader(open(SOLUBILITY)) if r["split"] == "test"]
    assert "accuracy" in result.stdout and len(list(csv.DictReader(open(out)))) == len(test_rows)
    with pytest.raises(DataError, match="no such file"):
        predict(run, str(tmp_path / "missing.csv"))


def test_files_that_are_not_text_csv_are_one_clear_error(tmp_path):
    huge = tmp_path / "huge.csv"
    huge.write_text('smiles,label\n"' + "C" * 200_000 + '",a\nCC,b\n')
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"smiles,label\n\xff\xfe\x00bad,a\n")
    for path in (huge, binary):
        with pytest.raises(DataError, match="not a readable CSV"):
            read_source(DataSpec(kind="molecules", path=str(path)))
    folder = tmp_path / "graphs"
    folder.mkdir()
    (folder / "labels.csv").write_bytes(b"file,label\n\xff\xfe,a\n")
    with pytest.raises(DataError, match="not a readable CSV"):
        read_source(DataSpec(kind="graphs", path=str(folder)))
