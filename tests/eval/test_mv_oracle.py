"""An oracle streamed through the online merge and the mesh mapping scores (almost) perfectly.

Per frame it predicts the GT instance masks with a one-hot embedding per object, so a correct merge
rebuilds every object; what remains is the mapping of accumulated frame points to the mesh. A low score
here means a bug in the MV evaluation path or a synthetic mesh holding surfaces no frame observed.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from oseg3d.data import processed
from oseg3d.data.create_data import CreateDataParams, create_data
from oseg3d.data.datasets import MVClipDataset
from oseg3d.eval.mesh_mapping import map_to_mesh
from oseg3d.eval.validation import ScoreCollector
from oseg3d.models.online import _mask_boxes
from oseg3d.models.online_merge import OnlineMerger
from oseg3d.scannet.labels import class_mapping
from oseg3d.scannet.synth import SynthSpec, write_world


def test_oracle_online_mv_scores_near_perfect_on_the_mesh(tmp_path):
    # a clean world: frames skipped for defects would leave mesh surfaces no streamed frame saw
    write_world(tmp_path / "raw", SynthSpec(scenes=2, frames=21, mesh_resolution=0.08, seed=11))
    root = str(tmp_path / "mv")
    create_data(str(tmp_path / "raw"), root, CreateDataParams(kind="scannet200_mv"))
    ds = MVClipDataset(root, "val", "scannet200", num_frames=-1)
    lut = class_mapping("scannet200")
    col = ScoreCollector("scannet200", True, 200)
    for i in range(len(ds)):
        frames = ds[i]
        merger, coords = OnlineMerger("code"), []
        for f in frames:
            inst, sem = f["instance"], f["semantic"]
            ids = [k for k in np.unique(inst) if k > 0 and 2 <= sem[inst == k][0] < 200]
            masks = torch.from_numpy(np.stack([inst == k for k in ids]))
            emb = torch.nn.functional.one_hot(torch.tensor(ids), 1000).float()
            merger.update(masks, torch.zeros(len(ids), dtype=torch.long), torch.ones(len(ids)), emb,
                          _mask_boxes(torch.from_numpy(f["coord"]), masks), None)
            coords.append(f["coord"])
        masks, labels, scores = (t.numpy() for t in merger.result(100))
        mesh = processed.read_arrays(os.path.join(root, processed.mesh_key(frames[0]["sample_id"])))
        mesh_masks = map_to_mesh(np.concatenate(coords), masks, mesh["vertices"][:, :3], mesh["segment"])
        gt = lut[np.clip(mesh["semantic"].astype(np.int64), 0, len(lut) - 1)]
        col.add(mesh_masks, labels, scores, mesh["instance"].astype(np.int64), gt, gt)
    m = col.compute()
    assert m["all_ap_50%"] > 0.85 and m["mcov"] > 0.8, m
