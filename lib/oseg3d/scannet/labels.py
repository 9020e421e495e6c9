"""ScanNet label maps: the raw-category TSV, the ScanNet (20) and ScanNet200 class sets.

`scannetv2-labels.combined.tsv` maps a raw annotation string to the nyu40 id (ScanNet benchmark) and to
the `id` column (ScanNet200's raw ids). Training maps valid raw ids to 0..N-1 and everything else to
the ignore index N; ScanNet200 first swaps raw ids 2 and 3 (chair/floor) so wall, floor are classes 0, 1
(ESAM's SwapChairAndFloor, reference/esam.md §1.7).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from oseg3d.errors import DataError

__all__ = [
    "SCANNET20_IDS", "SCANNET20_NAMES", "LabelTable", "read_label_tsv", "scannet200_classes",
    "class_mapping", "DatasetKind", "parse_kind",
]

SCANNET20_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
SCANNET20_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "desk", "curtain", "refrigerator", "showercurtrain", "toilet", "sink", "bathtub",
    "otherfurniture",
)


@dataclass(frozen=True)
class DatasetKind:
    """One of the four create_data kinds: benchmark (scannet / scannet200) × mode (sv / mv)."""

    benchmark: str
    mode: str

    @property
    def name(self) -> str:
        return f"{self.benchmark}_{self.mode}"

    @property
    def label_column(self) -> str:
        """Which TSV column holds the raw semantic id for this benchmark."""
        return "id" if self.benchmark == "scannet200" else "nyu40id"


def parse_kind(name: str) -> DatasetKind:
    """Parse `scannet_sv`, `scannet200_mv`, ... into a DatasetKind (ValueError otherwise)."""
    bench, _, mode = name.rpartition("_")
    if bench not in ("scannet", "scannet200") or mode not in ("sv", "mv"):
        raise ValueError(f"unknown dataset kind {name!r}; expected scannet_sv, scannet_mv, scannet200_sv or scannet200_mv")
    return DatasetKind(bench, mode)


@dataclass(frozen=True)
class LabelTable:
    """raw_category → raw semantic id, for both benchmarks."""

    nyu40: dict[str, int]
    scannet200: dict[str, int]

    def lookup(self, kind: DatasetKind) -> dict[str, int]:
        return self.scannet200 if kind.benchmark == "scannet200" else self.nyu40


def read_label_tsv(path: str | Path) -> LabelTable:
    """Read `scannetv2-labels.combined.tsv`.

    Raises:
        DataError: the file is missing or lacks the `raw_category`, `id` or `nyu40id` columns.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "label table is missing", "copy scannetv2-labels.combined.tsv from ScanNet into the data root")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    need = {"raw_category", "id", "nyu40id"}
    if not rows or not need <= set(rows[0]):
        raise DataError(path, f"label table lacks columns {sorted(need)}", "use ScanNet's scannetv2-labels.combined.tsv unmodified")
    nyu, s200 = {}, {}
    for r in rows:
        try:
            nyu[r["raw_category"]] = int(r["nyu40id"])
            s200[r["raw_category"]] = int(r["id"])
        except (TypeError, ValueError):
            raise DataError(path, f"bad ids in row {r.get('raw_category')!r}", "restore the original TSV") from None
    return LabelTable(nyu, s200)


@lru_cache(maxsize=1)
def scannet200_classes() -> tuple[tuple[int, ...], tuple[str, ...]]:
    """ScanNet200's 200 valid raw ids and names, in benchmark order (wall, chair, floor, ...)."""
    text = resources.files("oseg3d.resources").joinpath("scannet200_classes.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    return tuple(int(r["raw_id"]) for r in rows), tuple(r["name"] for r in rows)


def class_mapping(benchmark: str, max_raw_id: int = 1400) -> np.ndarray:
    """Lookup table raw semantic id → training class (0..N-1), N = ignore.

    ScanNet200 swaps raw ids 2↔3 first, so wall and floor become classes 0 and 1 (the stuff classes).
    """
    ids = SCANNET20_IDS if benchmark == "scannet" else scannet200_classes()[0]
    n = len(ids)
    lut = np.full(max(max_raw_id, max(ids)) + 1, n, np.int64)
    lut[list(ids)] = np.arange(n)
    if benchmark == "scannet200":
        lut[2], lut[3] = lut[3], lut[2]
    return lut
