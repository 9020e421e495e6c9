"""create_data step: raw ScanNet root (or a synthetic world when none is given) → processed dataset."""
from __future__ import annotations

import os

from oseg3d.data.create_data import CreateDataParams, create_data
from oseg3d.scannet.synth import SynthSpec, write_world

__all__ = ["run"]


def run(kind: str, out_dir: str, raw_uri: str = "", synth_scenes: int = 3, synth_frames: int = 41,
        workers: int = 2, num_points: int = 20000) -> dict:
    """Build the `kind` dataset in `out_dir`; with no `raw_uri`, first synthesise a world (deterministic,
    so the SV and MV steps of one run see the same world) under `out_dir/_raw`."""
    raw = raw_uri
    if not raw:
        raw = os.path.join(out_dir, "_raw")
        write_world(raw, SynthSpec(scenes=synth_scenes, frames=synth_frames), workers)
    return create_data(raw, out_dir, CreateDataParams(kind=kind, num_points=num_points), workers=workers)
