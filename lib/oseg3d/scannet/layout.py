"""Where things live in a raw ScanNet v2 export (DESIGN §4), as relative keys under a root URI.

    scans/<scene>/<scene>_vh_clean_2.ply, _vh_clean_2.0.010000.segs.json, .aggregation.json, .txt
    2D/<scene>/{color/<N>.jpg, depth/<N>.png, pose/<N>.txt}     N = raw frame index, step 20, no padding
    scannetv2-labels.combined.tsv, scannetv2_{train,val}.txt      (split lists also under meta_data/)
"""
from __future__ import annotations

__all__ = [
    "LABEL_TSV", "split_file", "mesh_key", "segs_key", "aggregation_keys", "scene_info_key",
    "frame_keys", "scene_scan_dir", "scene_2d_dir",
]

LABEL_TSV = "scannetv2-labels.combined.tsv"


def split_file(split: str) -> list[str]:
    """Candidate keys of a split list, in lookup order."""
    return [f"scannetv2_{split}.txt", f"meta_data/scannetv2_{split}.txt"]


def scene_scan_dir(scene: str) -> str:
    return f"scans/{scene}"


def scene_2d_dir(scene: str) -> str:
    return f"2D/{scene}"


def mesh_key(scene: str) -> str:
    return f"scans/{scene}/{scene}_vh_clean_2.ply"


def segs_key(scene: str) -> str:
    return f"scans/{scene}/{scene}_vh_clean_2.0.010000.segs.json"


def aggregation_keys(scene: str) -> list[str]:
    """ScanNet v2 ships `<scene>.aggregation.json`; older copies name it `<scene>_vh_clean.aggregation.json`."""
    return [f"scans/{scene}/{scene}.aggregation.json", f"scans/{scene}/{scene}_vh_clean.aggregation.json"]


def scene_info_key(scene: str) -> str:
    return f"scans/{scene}/{scene}.txt"


def frame_keys(scene: str, index: int) -> dict[str, str]:
    """color / depth / pose keys of raw frame `index`."""
    return {
        "color": f"2D/{scene}/color/{index}.jpg",
        "depth": f"2D/{scene}/depth/{index}.png",
        "pose": f"2D/{scene}/pose/{index}.txt",
    }
