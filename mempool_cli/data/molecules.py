"""Molecules from a CSV of SMILES or an SDF file, parsed by RDKit into graphs with categorical atom and bond values.
Each graph keeps its ``structure`` (the SMILES, or the SDF record's mol block) for drawings.

The atom values follow OGB's and PyG's ``from_smiles``: element, degree, formal charge, hydrogens, aromaticity,
hybridisation, ring membership; the bond values: bond type, conjugation, ring membership. A molecule RDKit cannot
parse is reported with its line number and left out (or refused, with ``skip_invalid=False``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from mempool_cli.data.source import NO_LABEL, Codes, SourceGraphs, check_read, csv_table, graph, label_graphs
from mempool_cli.data.source import user_split
from mempool_cli.errors import DataError

ATOM_VALUES = ("element", "degree", "formal charge", "hydrogens", "aromatic", "hybridisation", "in ring")
BOND_VALUES = ("bond type", "conjugated", "bond in ring")
INSTALL = "pip install 'mempool[molecules]' (or pip install rdkit)"


def depiction(structure: str) -> tuple[list[str], dict[int, tuple[float, float]]]:
    """The atoms' symbols and 2D positions of a molecule read from its ``structure`` (the SDF record's own
    coordinates, else RDKit's depiction), in the atom order of the graph."""
    chem = _chem()
    from rdkit.Chem import rdDepictor

    mol = chem.MolFromMolBlock(structure) if "\n" in structure else chem.MolFromSmiles(structure)
    if mol.GetNumConformers() == 0 or not mol.GetConformer().GetPositions().any():
        rdDepictor.Compute2DCoords(mol)
    xy = mol.GetConformer().GetPositions()[:, :2]
    positions = {i: (float(x), float(y)) for i, (x, y) in enumerate(xy)}
    return [atom.GetSymbol() for atom in mol.GetAtoms()], positions


def _chem() -> Any:
    try:
        from rdkit import Chem, RDLogger
    except ImportError as exc:
        raise DataError(f"reading molecules needs RDKit, which is not installed: {INSTALL}") from exc
    RDLogger.DisableLog("rdApp.*")  # parse failures are reported per molecule instead
    return Chem


def _atom(atom: Any) -> tuple:
    return (atom.GetSymbol(), atom.GetDegree(), atom.GetFormalCharge(), atom.GetTotalNumHs(),
            atom.GetIsAromatic(), str(atom.GetHybridization()), atom.IsInRing())


def _bond(bond: Any) -> tuple:
    return str(bond.GetBondType()), bond.GetIsConjugated(), bond.IsInRing()


class MoleculeGraphs:
    """Collects molecules as source graphs, coding their atom and bond values as it goes."""

    def __init__(self) -> None:
        self.atom_codes = [Codes() for _ in ATOM_VALUES]
        self.bond_codes = [Codes() for _ in BOND_VALUES]

    def __call__(self, mol: Any, y: int) -> Any:
        cat = torch.tensor([[code(v) for code, v in zip(self.atom_codes, _atom(a))] for a in mol.GetAtoms()],
                           dtype=torch.long).view(-1, len(ATOM_VALUES))
        pairs, bonds = [], []
        for bond in mol.GetBonds():
            i, j, values = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), _bond(bond)
            codes = [code(v) for code, v in zip(self.bond_codes, values)]
            pairs += [(i, j), (j, i)]
            bonds += [codes, codes]
        edge_index = torch.tensor(pairs, dtype=torch.long).view(-1, 2).t().contiguous()
        edge_cat = torch.tensor(bonds, dtype=torch.long).view(-1, len(BOND_VALUES))
        return graph(edge_index, mol.GetNumAtoms(), y, cat=cat, edge_cat=edge_cat)


def _csv_records(path: Path, spec: Any, labelled: bool, chem: Any) -> Iterator[tuple[int, str, Any, dict, str]]:
    """(line, id, molecule or None, row, SMILES) for each CSV row."""
    wanted = [spec.smiles_column] + [c for c in (spec.split_column,) if c]
    wanted += [c for c in (spec.label_column, spec.id_column) if c] if labelled else []
    with csv_table(path, wanted) as reader:
        for number, row in enumerate(reader):
            rid = row.get(spec.id_column) or str(number) if spec.id_column else str(number)
            smiles = row[spec.smiles_column]
            yield reader.line_num, rid, chem.MolFromSmiles(smiles) if smiles else None, row, smiles


def _sdf_records(path: Path, spec: Any, chem: Any) -> Iterator[tuple[int, str, Any, dict, None]]:
    """(first line, id, molecule or None, properties, no SMILES) for each SDF record."""
    starts, line = [1], 0
    with open(path, "rb") as handle:
        for line, text in enumerate(handle, start=1):
            if text.strip() == b"$$$$":
                starts.append(line + 1)
    with open(path, "rb") as handle:
        for number, mol in enumerate(chem.ForwardSDMolSupplier(handle, sanitize=True, removeHs=True)):
            props = mol.GetPropsAsDict(includePrivate=True) if mol is not None else {}
            name = props.get(spec.id_column) if spec.id_column else props.get("_Name")
            yield starts[number], str(name) if name not in (None, "") else str(number), mol, props, None


def read_molecules(spec: Any, labelled: bool = True) -> SourceGraphs:
    """The molecules of ``spec.path`` (``.csv`` or ``.sdf``), read as ``spec`` says (columns, split, ids).
    With ``labelled=False`` the label column is optional (``predict``)."""
    chem, path = _chem(), Path(spec.path).expanduser()
    if path.suffix.lower() not in (".csv", ".sdf"):
        raise DataError(f"{path}: molecules are read from .csv (SMILES) or .sdf files")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    make = MoleculeGraphs()
    graphs, ids, labels, parts, skipped = [], [], [], [], []
    csv_file = path.suffix.lower() == ".csv"
    records = _csv_records(path, spec, labelled, chem) if csv_file else _sdf_records(path, spec, chem)
    properties: set[str] = set()
    for line, rid, mol, row, smiles in records:
        properties.update(row)
        label = row.get(spec.label_column)
        reason = _problem(mol, label, labelled, smiles)
        if reason:
            skipped.append((rid, f"line {line}: {reason}", row.get(spec.split_column) if spec.split_column else None))
            continue
        graphs.append(make(mol, NO_LABEL))
        graphs[-1].structure = smiles if smiles is not None else chem.MolToMolBlock(mol)  # for `mempool show`
        ids.append(rid)
        labels.append(label)
        parts.append(row.get(spec.split_column) if spec.split_column else None)
    wanted = [c for c in (spec.label_column, spec.id_column) if c and labelled] + [spec.split_column or ""]
    for name in wanted if not csv_file and properties else ():
        if name and name not in properties:
            raise DataError(f"{path}: no record has the property {name!r} (found: {', '.join(sorted(properties))})")
    return _finish(path, spec, graphs, ids, labels, parts, skipped, make, labelled)


def _problem(mol: Any, label: Any, labelled: bool, smiles: Optional[str]) -> Optional[str]:
    if mol is None:
        return f"RDKit cannot parse the SMILES {smiles!r}" if smiles is not None else "RDKit cannot parse this record"
    if mol.GetNumAtoms() == 0:
        return "the molecule has no atoms"
    if labelled and (label is None or str(label).strip() == ""):
        return "no label"
    return None


def _finish(path: Path, spec: Any, graphs: list, ids: list, labels: list, parts: list, skipped: list,
            make: MoleculeGraphs, labelled: bool) -> SourceGraphs:
    check_read(path, graphs, skipped, spec.skip_invalid, "molecule")
    has_labels = all(label not in (None, "") for label in labels)
    class_names = label_graphs(graphs, labels, f"{path} column {spec.label_column!r}") \
        if labelled or has_labels else []
    split = user_split(parts, f"{path} column {spec.split_column!r}") if spec.split_column else None
    return SourceGraphs(name=spec.name, graphs=graphs, ids=ids, class_names=class_names, cat_names=list(ATOM_VALUES),
                        cat_values=[c.values for c in make.atom_codes], edge_names=list(BOND_VALUES),
                        edge_values=[c.values for c in make.bond_codes], split=split, skipped=skipped)
