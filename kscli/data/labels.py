"""The keystep label mapping (`label_mapping.csv`) as an object."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from kscli.errors import KscliError

LABEL_MAPPING_FILE = "label_mapping.csv"  # in the annotations folder

LABEL_COLUMNS = ("label_id", "step_unique_id", "step_name", "scenario_name")


@dataclass(frozen=True)
class Keystep:
    label_id: int
    step_unique_id: int
    step_name: str
    scenario: str


@dataclass(frozen=True)
class LabelMap:
    """Keysteps by label id (0..N-1), read from the benchmark's `label_mapping.csv`."""

    keysteps: tuple[Keystep, ...]
    path: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.keysteps)

    def __len__(self) -> int:
        return len(self.keysteps)

    def __getitem__(self, label_id: int) -> Keystep:
        return self.keysteps[label_id]

    def __contains__(self, label_id: object) -> bool:
        return isinstance(label_id, int) and 0 <= label_id < len(self.keysteps)

    @property
    def names(self) -> list[str]:
        return [k.step_name for k in self.keysteps]

    @property
    def scenarios(self) -> list[str]:
        return [k.scenario for k in self.keysteps]

    def to_rows(self) -> list[dict]:
        """Plain dicts, for checkpoints and reports (so they rebuild without the CSV)."""
        return [
            {"label_id": k.label_id, "step_unique_id": k.step_unique_id,
             "step_name": k.step_name, "scenario_name": k.scenario}
            for k in self.keysteps
        ]

    @classmethod
    def from_rows(cls, rows: list[dict], path: str = "") -> "LabelMap":
        return cls(tuple(
            Keystep(int(r["label_id"]), int(r["step_unique_id"]), str(r["step_name"]),
                    str(r["scenario_name"]))
            for r in rows), path)


def read_label_map(path: str | Path) -> LabelMap:
    """Read `label_mapping.csv` (quoted names may hold commas); ids must be exactly 0..N-1."""
    path = Path(path)
    if not path.is_file():
        raise KscliError(f"{path}: label mapping not found; pass --annotations-dir (or --data-root) "
                         "pointing at the folder that holds label_mapping.csv")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = tuple(reader.fieldnames or ())
            missing = [c for c in LABEL_COLUMNS if c not in header]
            if missing:
                raise KscliError(f"{path}: header lacks column(s) {', '.join(missing)}; "
                                 f"expected {','.join(LABEL_COLUMNS)}")
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise KscliError(f"{path}: not a UTF-8 CSV file ({e})") from None
    except csv.Error as e:
        raise KscliError(f"{path}: malformed CSV ({e})") from None
    by_id: dict[int, Keystep] = {}
    for lineno, row in enumerate(rows, start=2):
        fields = {}
        for col in ("label_id", "step_unique_id"):
            raw = row.get(col)
            try:
                fields[col] = int(str(raw).strip())
            except ValueError:
                raise KscliError(f"{path}: line {lineno}: field '{col}' is {raw!r}, not an integer") from None
        name, scenario = row.get("step_name"), row.get("scenario_name")
        if not name or scenario is None:
            raise KscliError(f"{path}: line {lineno}: empty step_name or scenario_name "
                             "(is a name with a comma unquoted?)")
        if None in row:  # csv puts surplus cells under the None key
            raise KscliError(f"{path}: line {lineno}: more cells than columns "
                             "(a step name with a comma must be quoted)")
        lid = fields["label_id"]
        if lid in by_id:
            raise KscliError(f"{path}: line {lineno}: label_id {lid} appears twice")
        by_id[lid] = Keystep(lid, fields["step_unique_id"], name, scenario.strip())
    if not by_id:
        raise KscliError(f"{path}: no keysteps in the label mapping")
    if sorted(by_id) != list(range(len(by_id))):
        gaps = sorted(set(range(max(by_id) + 1)) - set(by_id))[:5]
        raise KscliError(f"{path}: label ids must run 0..{len(by_id) - 1} without gaps; missing {gaps}")
    return LabelMap(tuple(by_id[i] for i in range(len(by_id))), str(path))
