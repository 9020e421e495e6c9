"""evaluate step, route ❸ (SV and online MV) end to end on processed data whose CLIP features are precomputed
for some frames and missing for others: the features reach the model per frame, the rest fall back to the image."""
from __future__ import annotations

import json
import shutil

import pytest

from oseg3d.data import processed
from oseg3d.errors import DataError
from oseg3d.steps import evaluate, precompute_clip


def _with_features(datasets, kind, dst, pack=False):
    root = shutil.copytree(datasets[kind][0], dst, ignore=shutil.ignore_patterns("clip_feat"))
    rep = precompute_clip.run(str(root), random_init=True, workers=1, devices="cpu", pack=pack, progress=False)
    assert rep["computed"] == rep["frames_total"] > 0
    return root


def _drop(root, img_paths) -> int:
    for p in img_paths:
        (root / processed.clip_feat_key(p)).unlink()
    return len(img_paths)


@pytest.fixture
def built(monkeypatch):
    """The models evaluate builds (to read their fallback counters)."""
    models = []
    build = evaluate.build_model
    monkeypatch.setattr(evaluate, "build_model", lambda cfg: models.append(build(cfg)) or models[-1])
    return models


def _overrides(n):
    return ["model.clip_random_init=true", f"data.val_max_items={n}", "data.num_workers=0"]


def _check(metrics, out):
    assert {"all_ap", "all_ap_50%", "miou", "ms_per_frame"} <= set(metrics)
    assert json.loads((out / "metrics.json").read_text())["params_m"] == pytest.approx(metrics["params_m"])


def test_sv_bifusion_mixed_features(datasets, tmp_path, built):
    root = _with_features(datasets, "scannet200_sv", tmp_path / "sv")
    rows = processed.read_manifest(str(root / processed.manifest_key("val"))).to_pylist()
    assert len(rows) >= 2
    # two frames in one batch: the first precomputed, the second from its image (a mixed batch)
    missing = _drop(root, [rows[1]["img_path"]])
    metrics = evaluate.run("ESAM_sv_bifusion_scannet200", str(root), "random-init", str(tmp_path / "out"),
                           _overrides(2), device="cpu")
    _check(metrics, tmp_path / "out")
    assert built[-1].bi_encoder.fallback_frames == missing == 1
    # without the clip fields the encoder has nothing to read or compute: a clear error, not a silent run
    with pytest.raises(DataError, match="clip_features=true"):
        evaluate.run("ESAM_sv_bifusion_scannet200", str(root), "random-init", str(tmp_path / "out2"),
                     _overrides(2) + ["data.clip_features=false"], device="cpu")


def test_mv_bifusion_streams_mixed_features(datasets, tmp_path, built):
    root = _with_features(datasets, "scannet200_mv", tmp_path / "mv", pack=True)  # manifests name the files
    scene = processed.read_manifest(str(root / processed.manifest_key("val"))).to_pylist()[0]
    paths = scene["img_paths"]
    assert len(paths) >= 4
    missing = _drop(root, paths[1::3])
    metrics = evaluate.run("ESAM_online_bifusion_scannet200", str(root), "random-init", str(tmp_path / "out"),
                           _overrides(1), device="cpu")
    _check(metrics, tmp_path / "out")
    assert built[-1].bi_encoder.fallback_frames == missing > 0
