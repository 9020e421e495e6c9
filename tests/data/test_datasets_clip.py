"""Datasets and collate with `clip_features`: cached features, the online fallback, and the batch contract."""
from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from oseg3d.clip.conv1 import load_clip_conv1
from oseg3d.clip.features import read_feature
from oseg3d.clip.precompute import pack_manifests, precompute_clip
from oseg3d.data import processed
from oseg3d.data.collate import collate_clips, collate_frames
from oseg3d.data.datasets import MVClipDataset, SVFrameDataset
from oseg3d.data.transforms import build_train_transforms
from oseg3d.errors import DataError

CLIP_KEYS = {"clip_pix", "clip_global", "clip_valid"}


@pytest.fixture(scope="module")
def featured(datasets, raw_world, tmp_path_factory):
    """Copies of the SV and MV datasets (no mesh) with CLIP features: {kind: root}."""
    conv1, source = load_clip_conv1(None, allow_random_init=True)
    out = {}
    for kind in ("scannet_sv", "scannet_mv"):
        root = tmp_path_factory.mktemp("featured") / kind
        shutil.copytree(datasets[kind][0], root, ignore=shutil.ignore_patterns("mesh"))
        precompute_clip(str(root), str(raw_world[0]), conv1, source, ["cpu"], workers=2, batch_size=8, progress=False)
        out[kind] = root
    return out


def _copy(root, tmp_path):
    dst = tmp_path / root.name
    shutil.copytree(root, dst)
    return dst


def test_sv_items_carry_the_cached_features(featured):
    root = featured["scannet_sv"]
    ds = SVFrameDataset(str(root), "train", "scannet", clip_features=True)
    for i in range(len(ds)):
        item = ds[i]
        assert item["clip_valid"] is True and "image" not in item
        assert item["clip_pix"].dtype == np.float16 and item["clip_pix"].shape == (192, 60, 80)
        assert item["clip_global"].dtype == np.float16 and item["clip_global"].shape == (768,)
        feat = read_feature(str(root / processed.clip_feat_key(ds.rows[i]["img_path"])))
        assert np.array_equal(item["clip_pix"], feat["pix"])
    assert ds.clip_fallbacks == 0
    plain = SVFrameDataset(str(root), "train", "scannet")[0]
    assert not CLIP_KEYS & set(plain) and "image" not in plain


def test_missing_files_fall_back_to_the_image_and_are_counted(featured, raw_world, tmp_path):
    from PIL import Image

    root = _copy(featured["scannet_sv"], tmp_path)
    ds = SVFrameDataset(str(root), "val", "scannet", clip_features=True)  # raw root from dataset.json
    gone = [0, len(ds) - 1]
    for i in gone:
        (root / processed.clip_feat_key(ds.rows[i]["img_path"])).unlink()
    items = [ds[i] for i in range(len(ds))]
    assert ds.clip_fallbacks == len(gone)
    for i, item in enumerate(items):
        assert item["clip_valid"] is (i not in gone)
    img = items[0]["image"]
    assert img.dtype == np.uint8 and img.shape == (3, 480, 640)
    ref = np.array(Image.open(raw_world[0] / ds.rows[0]["img_path"]).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(img, ref)
    with pytest.raises(DataError, match="no image to fall back on"):
        SVFrameDataset(str(root), "val", "scannet", clip_features=True, raw_root=str(tmp_path / "none"))[0]


def test_collate_contract(featured, tmp_path):
    root = _copy(featured["scannet_sv"], tmp_path)
    ds = SVFrameDataset(str(root), "train", "scannet", clip_features=True)
    frames = [ds[i] for i in range(2)]
    b = collate_frames(frames)
    assert b["clip_pix"].dtype == torch.float16 and b["clip_pix"].shape == (2, 192, 60, 80)
    assert b["clip_global"].dtype == torch.float16 and b["clip_global"].shape == (2, 768)
    assert b["clip_valid"].dtype == torch.bool and b["clip_valid"].tolist() == [True, True]
    assert "image" not in b
    assert torch.equal(b["clip_pix"][1], torch.from_numpy(frames[1]["clip_pix"]))
    (root / processed.clip_feat_key(ds.rows[1]["img_path"])).unlink()
    b = collate_frames([ds[0], ds[1]])
    assert b["clip_valid"].tolist() == [True, False]
    assert b["image"].dtype == torch.uint8 and b["image"].shape == (2, 3, 480, 640)
    assert not b["image"][0].any() and b["image"][1].any()
    assert not b["clip_pix"][1].any() and not b["clip_global"][1].any()
    plain = collate_frames([SVFrameDataset(str(root), "train", "scannet")[i] for i in range(2)])
    assert not (CLIP_KEYS | {"image"}) & set(plain)


def test_mv_clips_carry_one_feature_per_frame_through_the_augmentations(featured):
    root = featured["scannet_mv"]
    ds = MVClipDataset(str(root), "train", "scannet", num_frames=4, seed=1, clip_features=True)
    clip = ds[0]
    out = build_train_transforms("mv")(clip, np.random.default_rng(0))
    for f, g in zip(clip, out):  # images are not flipped: the pose carries the 3D augmentation
        for k in CLIP_KEYS:
            assert g[k] is f[k]
    batches = collate_clips([clip, ds[1 % len(ds)]])
    assert len(batches) == 4
    for b in batches:
        assert b["clip_pix"].shape == (2, 192, 60, 80) and b["clip_valid"].all() and "image" not in b
    whole = MVClipDataset(str(root), "val", "scannet", num_frames=-1, clip_features=True)
    r = whole.rows[0]
    for k, f in enumerate(whole[0]):  # frame k of the scene carries image k's features
        feat = read_feature(str(root / processed.clip_feat_key(r["img_paths"][k])))
        assert np.array_equal(f["clip_global"], feat["global"])


def test_sv_augmentation_passes_clip_keys_untouched(featured):
    item = SVFrameDataset(str(featured["scannet_sv"]), "train", "scannet", clip_features=True)[0]
    out = build_train_transforms("sv")(item, np.random.default_rng(0))
    assert all(out[k] is item[k] for k in CLIP_KEYS)


def test_packed_manifest_paths_are_used(featured, tmp_path):
    root = _copy(featured["scannet_sv"], tmp_path)
    pack_manifests(str(root))
    uri = str(root / processed.manifest_key("train"))
    table = processed.read_manifest(uri)
    rows = table.to_pylist()
    rows[0]["clip_feat_path"] = rows[1]["clip_feat_path"]  # row 0 now names row 1's file
    meta = table.schema.metadata
    processed.write_manifest(uri, rows, "sv", meta[b"oseg3d.kind"].decode(), "train", version=2)
    ds = SVFrameDataset(str(root), "train", "scannet", clip_features=True)
    assert np.array_equal(ds[0]["clip_pix"], ds[1]["clip_pix"])


def test_datamodule_passes_the_option_through(featured):
    from oseg3d.engine.datamodule import ESAMDataModule

    d = SimpleNamespace(root=str(featured["scannet_sv"]), benchmark="scannet", mode="sv", batch_size=2,
                        num_frames=4, num_workers=0, elastic=False, val_max_items=0)
    dm = ESAMDataModule.from_config(d)
    dm.setup()
    assert not dm.train_set.clip_features  # configs without the key: off
    dm = ESAMDataModule.from_config(SimpleNamespace(**vars(d), clip_features=True))
    dm.setup()
    assert dm.train_set.clip_features and dm.val_set.clip_features
    batch = next(iter(dm.train_dataloader()))
    assert batch["clip_valid"].all() and batch["clip_pix"].shape[0] == 2
