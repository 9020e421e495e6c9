"""precompute_clip on small processed datasets (SV and MV): one feature file per loader frame, equal to
the online conv1, incremental, and manifests v2 after packing."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from oseg3d.clip.conv1 import load_clip_conv1, pix_and_global
from oseg3d.clip.features import read_feature
from oseg3d.clip.precompute import REPORT_KEY, list_frames, pack_manifests, precompute_clip
from oseg3d.data import processed
from oseg3d.errors import ConfigError
from oseg3d.storage import read_json

KINDS = ("scannet_sv", "scannet_mv")


def _manifest_frames(root) -> list[str]:
    out = []
    for split in ("train", "val"):
        for r in processed.read_manifest(str(root / processed.manifest_key(split))).to_pylist():
            out += r["img_paths"] if "img_paths" in r else [r["img_path"]]
    return out


def _feature_files(root) -> list:
    return sorted((root / "clip_feat").rglob("*.safetensors"))


@pytest.fixture(scope="module")
def clip_datasets(datasets, raw_world, tmp_path_factory):
    """Copies of the SV and MV datasets with features from a (seeded) random conv1: {kind: (root, report)}."""
    raw, _ = raw_world
    conv1, source = load_clip_conv1(None, allow_random_init=True)
    out = {}
    for kind in KINDS:
        root = tmp_path_factory.mktemp("clip") / kind
        shutil.copytree(datasets[kind][0], root)
        out[kind] = root, precompute_clip(str(root), str(raw), conv1, source, ["cpu"], workers=2, batch_size=4,
                                          progress=False)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_one_fp16_file_per_manifest_frame(clip_datasets, kind):
    root, rep = clip_datasets[kind]
    frames = _manifest_frames(root)
    assert len(frames) == len(set(frames)) == rep["frames_total"] == rep["computed"] > 0
    assert list_frames(str(root)) == sorted(frames)
    files = _feature_files(root)
    assert [str(f.relative_to(root)) for f in files] == sorted(processed.clip_feat_key(p) for p in frames)
    for f in files:
        feat = read_feature(str(f))
        assert feat["pix"].dtype == np.float16 and feat["pix"].shape == (192, 60, 80)
        assert feat["global"].dtype == np.float16 and feat["global"].shape == (768,)
    assert rep["skipped_existing"] == rep["missing_images"] == rep["unreadable_images"] == 0
    assert read_json(str(root / REPORT_KEY)) == rep
    assert rep["clip_source"].startswith("random-init")


def test_mv_frames_are_the_every_40th_subsample(clip_datasets):
    root, _ = clip_datasets["scannet_mv"]
    idx = {int(p.rsplit("/", 1)[1][:-4]) for p in _manifest_frames(root)}
    assert idx and all(i % 40 == 0 for i in idx) and {i for i in idx if i % 200} != set()


@pytest.mark.parametrize("kind", KINDS)
def test_features_equal_the_online_computation(clip_datasets, raw_world, kind):
    root, _ = clip_datasets[kind]
    raw, _ = raw_world
    conv1, _ = load_clip_conv1(None, allow_random_init=True)
    paths = _manifest_frames(root)[:3]
    imgs = torch.stack([torch.from_numpy(np.array(Image.open(raw / p).convert("RGB"))).permute(2, 0, 1)
                        for p in paths])
    with torch.no_grad():
        pix, glob = pix_and_global(conv1(imgs))
    for k, p in enumerate(paths):
        feat = read_feature(str(root / processed.clip_feat_key(p)))
        # stored = fp16 rounding of the same fp32 result (up to batching order: one fp16 ulp)
        torch.testing.assert_close(torch.from_numpy(feat["pix"]).float(), pix[k], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(torch.from_numpy(feat["global"]).float(), glob[k], rtol=1e-3, atol=1e-3)


def test_rerun_skips_everything_and_redoes_only_deleted_files(clip_datasets, raw_world):
    root, first = clip_datasets["scannet_sv"]
    raw, _ = raw_world
    conv1, source = load_clip_conv1(None, allow_random_init=True)
    files = _feature_files(root)
    stamp = {f: f.stat().st_mtime_ns for f in files}
    rep = precompute_clip(str(root), str(raw), conv1, source, ["cpu"], progress=False)
    assert rep["computed"] == 0 and rep["skipped_existing"] == first["frames_total"]
    assert {f: f.stat().st_mtime_ns for f in files} == stamp
    before = files[0].read_bytes()
    files[0].unlink()
    # a killed write leaves a hidden temp file, never a final name: it must not count as done
    (files[0].parent / f".{files[0].name}.tmp-123-0123abcd").write_bytes(b"partial")
    rep = precompute_clip(str(root), str(raw), conv1, source, ["cpu"], progress=False)
    assert rep["computed"] == 1 and files[0].read_bytes() == before  # deterministic bytes


def test_features_of_other_weights_are_not_mixed_in(clip_datasets, raw_world):
    root, _ = clip_datasets["scannet_sv"]
    conv1, _ = load_clip_conv1(None, allow_random_init=True)
    with pytest.raises(ConfigError, match="delete the clip_feat"):
        precompute_clip(str(root), str(raw_world[0]), conv1, "openai ViT-B/16 from x (sha256 0123456789ab)",
                        ["cpu"], progress=False)


def test_missing_images_are_counted_and_a_wrong_raw_root_is_an_error(datasets, raw_world, tmp_path):
    raw, _ = raw_world
    root = tmp_path / "sv"
    shutil.copytree(datasets["scannet_sv"][0], root)
    frames = _manifest_frames(root)
    part = tmp_path / "raw"
    for p in frames[1:]:  # a raw root lacking the first frame's image
        (part / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(raw / p, part / p)
    conv1, source = load_clip_conv1(None, allow_random_init=True)
    rep = precompute_clip(str(root), str(part), conv1, source, ["cpu"], progress=False)
    assert rep["missing_images"] == 1 and rep["computed"] == len(frames) - 1
    assert rep["problems"] == [f"missing_image: {part / frames[0]}"]
    rep = precompute_clip(str(root), str(part), conv1, source, ["cpu"], progress=False)  # still just counted
    assert rep["missing_images"] == 1 and rep["computed"] == 0
    shutil.rmtree(root / "clip_feat")
    with pytest.raises(ConfigError, match="none of the"):
        precompute_clip(str(root), str(tmp_path / "empty"), conv1, source, ["cpu"], progress=False)


def test_two_device_processes_give_the_same_files(clip_datasets, raw_world, tmp_path):
    root, _ = clip_datasets["scannet_sv"]
    copy = tmp_path / "sv"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("clip_feat"))
    conv1, source = load_clip_conv1(None, allow_random_init=True)
    rep = precompute_clip(str(copy), str(raw_world[0]), conv1, source, ["cpu", "cpu"], workers=1, progress=False)
    assert rep["computed"] == rep["frames_total"]
    for f in _feature_files(root):
        assert (copy / f.relative_to(root)).read_bytes() == f.read_bytes()


@pytest.mark.parametrize("kind", KINDS)
def test_pack_writes_manifest_v2_with_feature_paths(clip_datasets, kind, tmp_path):
    root, _ = clip_datasets[kind]
    copy = tmp_path / kind
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("frames", "mesh"))
    for _ in range(2):  # idempotent
        counts = pack_manifests(str(copy))
        assert set(counts) == {"manifest_train.parquet", "manifest_val.parquet"}
    for key in counts:
        table = processed.read_manifest(str(copy / key))
        assert processed.manifest_version(table) == processed.PACKED_SCHEMA_VERSION
        for r in table.to_pylist():
            if kind.endswith("_mv"):
                assert r["clip_feat_paths"] == [processed.clip_feat_key(p) for p in r["img_paths"]]
                assert all((copy / p).is_file() for p in r["clip_feat_paths"])
            else:
                assert r["clip_feat_path"] == processed.clip_feat_key(r["img_path"])
                assert (copy / r["clip_feat_path"]).is_file()
