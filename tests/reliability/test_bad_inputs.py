"""Bad-input catalogue: every bad input gives a named oseg3d error whose message starts with the file (or
URI, or setting) and carries a fix, or a counted skip in the create_data report; never a bare traceback
from inside numpy, pyarrow, safetensors, torch or minio.

These are the kinds no other test covered; docs/RELIABILITY.md lists the whole catalogue with the tests of
the other rows (corrupt images, PLY, JSON, poses, label tables, CLIP weights, unknown labels, ...).
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image
from torch import nn

from oseg3d import storage
from oseg3d.data import processed
from oseg3d.errors import ConfigError, DataError, OsegError, StorageError
from oseg3d.storage import s3

from ._netfaults import RejectingS3
from .conftest import NUM_POINTS


@dataclass
class Ctx:
    """What a catalogue case builds its bad input from."""

    tmp: Path
    datasets: dict[str, Path]  # small processed datasets (4,000 points): scannet_sv, scannet_mv
    raw: Path  # the shared synthetic world (read-only: copy before changing it)

    def copy(self, kind: str) -> Path:
        return Path(shutil.copytree(self.datasets[kind], self.tmp / kind))


@dataclass
class Case:
    id: str
    error: type[OsegError]
    build: Callable[[Ctx], tuple[Callable[[], object], str]]  # → (the call that must fail, what it must name)
    match: str = ""  # a regex the message must contain


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _first_scene_rows(root: Path, split: str = "train") -> list[dict]:
    return processed.read_manifest(str(root / processed.manifest_key(split))).to_pylist()


# ---------------------------------------------------------------------------------------------- datasets

def _corrupt_manifest(c: Ctx):
    from oseg3d.data.datasets import SVFrameDataset

    root = c.copy("scannet_sv")
    (root / "manifest_train.parquet").write_bytes(b"PAR1 this is not parquet")
    return lambda: SVFrameDataset(str(root), "train", "scannet"), str(root / "manifest_train.parquet")


def _truncated_manifest(c: Ctx):
    from oseg3d.clip.precompute import list_frames

    root = c.copy("scannet_mv")
    _truncate(root / "manifest_val.parquet")
    return lambda: list_frames(str(root)), str(root / "manifest_val.parquet")


def _truncated_sv_frames(c: Ctx):
    from oseg3d.data.datasets import SVFrameDataset

    root = c.copy("scannet_sv")
    row = _first_scene_rows(root)[0]
    _truncate(root / row["data_path"])
    return lambda: SVFrameDataset(str(root), "train", "scannet")[0], str(root / row["data_path"])


def _truncated_mv_frames(c: Ctx):
    from oseg3d.data.datasets import MVClipDataset

    root = c.copy("scannet_mv")
    row = _first_scene_rows(root)[0]
    _truncate(root / row["data_path"])
    return lambda: MVClipDataset(str(root), "train", "scannet", num_frames=2)[0], str(root / row["data_path"])


def _missing_frames_file(c: Ctx):
    from oseg3d.data.datasets import SVFrameDataset

    root = c.copy("scannet_sv")
    row = _first_scene_rows(root)[0]
    (root / row["data_path"]).unlink()
    return lambda: SVFrameDataset(str(root), "train", "scannet")[0], str(root / row["data_path"])


def _corrupt_clip_feature(c: Ctx):
    from oseg3d.data.datasets import SVFrameDataset

    root = c.copy("scannet_sv")
    feat = root / processed.clip_feat_key(_first_scene_rows(root)[0]["img_path"])
    feat.parent.mkdir(parents=True)
    feat.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    ds = SVFrameDataset(str(root), "train", "scannet", clip_features=True, raw_root=str(c.raw))
    return lambda: ds[0], str(feat)


def _sv_config_on_mv_dataset(c: Ctx):
    from oseg3d.data.datasets import SVFrameDataset

    root = c.datasets["scannet_mv"]
    return lambda: SVFrameDataset(str(root), "train", "scannet"), str(root / "manifest_train.parquet")


def _benchmark_mismatch(c: Ctx):
    from oseg3d.data.datasets import SVFrameDataset

    root = c.copy("scannet_sv")
    uri = str(root / "manifest_train.parquet")
    processed.write_manifest(uri, _first_scene_rows(root), "sv", "scannet200_sv", "train")
    return lambda: SVFrameDataset(str(root), "train", "scannet"), uri


def _empty_training_split(c: Ctx):
    from oseg3d.data.datasets import SVFrameDataset

    root = c.copy("scannet_sv")
    uri = str(root / "manifest_train.parquet")
    processed.write_manifest(uri, [], "sv", "scannet_sv", "train")
    return lambda: SVFrameDataset(str(root), "train", "scannet"), uri


def _corrupt_dataset_json(c: Ctx):
    from oseg3d.steps.precompute_clip import resolve_raw_root

    root = c.copy("scannet_sv")
    (root / "dataset.json").write_text('{"kind": "scannet_sv", "raw_root": ')
    return lambda: resolve_raw_root(str(root)), str(root / "dataset.json")


# ------------------------------------------------------------------------------------------- create_data

def _create(raw: Path, out: Path, kind: str = "scannet_sv", scenes=None):
    from oseg3d.data.create_data import CreateDataParams, create_data

    return lambda: create_data(str(raw), str(out), CreateDataParams(kind=kind, num_points=NUM_POINTS), scenes=scenes)


def _unknown_kind(c: Ctx):
    return _create(c.raw, c.tmp / "out", kind="scannet_xv"), "kind=scannet_xv"


def _binary_split_list(c: Ctx):
    raw = c.tmp / "raw"
    raw.mkdir()
    (raw / "scannetv2_train.txt").write_bytes(b"\xff\xfe\x00\x00scene0000_00\x00")
    (raw / "scannetv2_val.txt").write_text("scene0002_00\n")
    return _create(raw, c.tmp / "out"), str(raw / "scannetv2_train.txt")


def _all_frames_unusable(c: Ctx):
    raw = Path(shutil.copytree(c.raw, c.tmp / "raw"))
    for jpg in (raw / "2D" / "scene0000_00" / "color").glob("*.jpg"):
        jpg.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return _create(raw, c.tmp / "out", scenes=["scene0000_00"]), str(c.tmp / "out" / "report.md")


# ------------------------------------------------------------------------------------------------ configs

def _config(c: Ctx, text: str):
    from oseg3d.configs import load_config

    path = c.tmp / "mine.yaml"
    path.write_text(text)
    return lambda: load_config(str(path)), str(path)


# ------------------------------------------------------------------------------------------------ weights

class _Net(nn.Module):
    """A stand-in for a trained model: a backbone and a head with one output per class."""

    def __init__(self, classes: int):
        super().__init__()
        self.backbone = nn.Linear(6, 8)
        self.head = nn.Linear(8, classes)


def _saved(c: Ctx, module: nn.Module, name: str = "model.safetensors") -> str:
    from oseg3d.engine.weights import save_weights

    uri = str(c.tmp / name)
    save_weights(module.state_dict(), uri)
    return uri


def _truncated_weights(c: Ctx):
    from oseg3d.engine.weights import load_state_dict

    uri = _saved(c, _Net(20))
    _truncate(Path(uri))
    return lambda: load_state_dict(uri), uri


def _weights_of_another_model(c: Ctx):
    from oseg3d.engine.weights import load_state_dict, partial_load

    uri = _saved(c, _Net(20))  # a ScanNet (20-class) model's weights, evaluated as a ScanNet200 one
    return lambda: partial_load(_Net(200), load_state_dict(uri), {}, uri, strict=True), uri


def _weights_of_an_unrelated_model(c: Ctx):
    from oseg3d.engine.weights import load_state_dict, partial_load

    uri = _saved(c, nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))  # init.checkpoint pointing at some other net
    return lambda: partial_load(_Net(20), load_state_dict(uri), {}, uri), uri


def _checkpoint_without_state_dict(c: Ctx):
    from oseg3d.engine.weights import load_state_dict

    path = c.tmp / "last.ckpt"
    torch.save([1, 2, 3], path)
    return lambda: load_state_dict(str(path)), str(path)


def _checkpoint_with_non_tensors(c: Ctx):
    from oseg3d.engine.weights import load_state_dict

    path = c.tmp / "last.ckpt"
    torch.save({"state_dict": {"model.backbone.weight": [0.5, 1.5]}}, path)
    return lambda: load_state_dict(str(path)), str(path)


def _evaluate_weights_of_another_model(c: Ctx):
    from oseg3d.models.build import ModelConfig, build_model
    from oseg3d.steps import evaluate

    uri = _saved(c, build_model(ModelConfig(num_semantic=20)))  # a ScanNet model scored as a ScanNet200 one
    return lambda: evaluate.run("ESAM_sv_3d_scannet200", str(c.datasets["scannet_sv"]), uri, str(c.tmp / "eval")), uri


def _resume_from_another_models_checkpoint(c: Ctx):
    from oseg3d.configs import load_config
    from oseg3d.engine.trainer import fit

    last = c.tmp / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"state_dict": {"model.head.weight": torch.zeros(2, 2)}}, last)  # a run folder of another model
    cfg = load_config("ESAM_sv_3d_scannet", [f"data.root={c.datasets['scannet_sv']}", "data.num_workers=0"])
    return lambda: fit(cfg, str(c.tmp / "run")), str(last)


CASES = [
    Case("corrupt_parquet_manifest", DataError, _corrupt_manifest, "not a readable Parquet manifest"),
    Case("truncated_parquet_manifest", DataError, _truncated_manifest, "not a readable Parquet manifest"),
    Case("truncated_safetensors_frames_sv", DataError, _truncated_sv_frames, "unreadable frames file"),
    Case("truncated_safetensors_frames_mv", DataError, _truncated_mv_frames, "unreadable safetensors file"),
    Case("frames_file_missing", DataError, _missing_frames_file, "unreadable frames file"),
    Case("corrupt_clip_feature_file", DataError, _corrupt_clip_feature,
         "unreadable CLIP feature file.*precompute-clip"),
    Case("sv_config_on_mv_dataset", DataError, _sv_config_on_mv_dataset, "is a scannet_mv manifest"),
    Case("scannet_config_on_scannet200_dataset", DataError, _benchmark_mismatch, "is a scannet200_sv manifest"),
    Case("empty_training_split", DataError, _empty_training_split, "training split has no rows"),
    Case("corrupt_dataset_json", StorageError, _corrupt_dataset_json, "not valid JSON"),
    Case("unknown_dataset_kind", ConfigError, _unknown_kind, "unknown dataset kind.*Fix: pass one of"),
    Case("binary_split_list", StorageError, _binary_split_list, "not utf-8 text"),
    Case("every_frame_unusable", DataError, _all_frames_unusable, r"no usable frame.*corrupt_image"),
    Case("invalid_yaml", ConfigError, lambda c: _config(c, "data: {batch_size: [1\n"), "invalid YAML"),
    Case("config_value_of_wrong_type", ConfigError,
         lambda c: _config(c, "_base_: ESAM_sv_3d_scannet\ndata: {batch_size: many}\n"), "'data.batch_size'"),
    Case("config_section_given_a_scalar", ConfigError,
         lambda c: _config(c, "_base_: ESAM_sv_3d_scannet\noptim: 3\n"), "bad key or value"),
    Case("config_not_a_mapping", ConfigError, lambda c: _config(c, "- lr\n- 0.1\n"), "not a mapping"),
    Case("config_base_missing", ConfigError, lambda c: _config(c, "_base_: ESAM_sv_3d_scanet\n"),
         "config not found"),
    Case("truncated_safetensors_weights", ConfigError, _truncated_weights, "unreadable safetensors weights"),
    Case("weights_of_another_model", ConfigError, _weights_of_another_model,
         r"another model.*2 of another shape \(e\.g\. head\.bias\)"),
    Case("init_checkpoint_of_an_unrelated_model", ConfigError, _weights_of_an_unrelated_model, "loads no tensor"),
    Case("checkpoint_without_state_dict", ConfigError, _checkpoint_without_state_dict, "holds no state dict"),
    Case("checkpoint_with_non_tensor_values", ConfigError, _checkpoint_with_non_tensors, "holds no state dict"),
    Case("evaluate_weights_of_another_model", ConfigError, _evaluate_weights_of_another_model, "another model"),
    Case("resume_from_another_models_last_ckpt", ConfigError, _resume_from_another_models_checkpoint,
         "another model.*start a fresh run folder"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_a_named_error_with_the_file_and_the_fix(case, small_datasets, raw_world, tmp_path):
    call, names = case.build(Ctx(tmp_path, small_datasets, raw_world[0]))
    with pytest.raises(OsegError) as ei:
        call()
    err = ei.value
    assert type(err) is case.error, f"{type(err).__name__}: {err}"
    msg = str(err)
    assert msg.startswith(names + ":"), msg  # the file (or setting) first ...
    assert err.fix and f". Fix: {err.fix}" in msg  # ... and what to do about it
    if case.match:
        assert re.search(case.match, msg), msg


def test_every_frame_unusable_still_writes_the_report_that_names_them(raw_world, tmp_path):
    call, report_md = _all_frames_unusable(Ctx(tmp_path, {}, raw_world[0]))
    with pytest.raises(DataError):
        call()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["frames"]["kept"] == 0 and sum(report["frames"]["skipped"].values()) == 3
    assert report["frames"]["skipped"]["corrupt_image"] >= 2
    assert "frames skipped: corrupt_image" in Path(report_md).read_text()
    assert not (tmp_path / "out" / "manifest_train.parquet").exists() or \
        processed.read_manifest(str(tmp_path / "out" / "manifest_train.parquet")).num_rows == 0


# ----------------------------------------------------------------------------------- bad S3 credentials

@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch"])
def test_rejected_credentials_fail_at_once_and_never_print_the_secret(code, monkeypatch):
    server = RejectingS3(code)
    secret = "wrong-secret-" + "x" * 27
    monkeypatch.setenv("OSEG3D_S3_ENDPOINT", server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-user")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    s3.clear_client_cache()
    try:
        for call in (lambda: storage.read_bytes("s3://bucket/raw/scannetv2_train.txt"),
                     lambda: storage.write_bytes("s3://bucket/raw/x.json", b"{}")):
            before = server.requests
            with pytest.raises(StorageError) as ei:
                call()
            msg = str(ei.value)
            assert msg.startswith("s3://bucket/raw/") and f"credentials rejected ({code})" in msg
            assert "Fix: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in msg
            assert server.requests - before == 1  # a wrong key does not get better by retrying
            assert secret not in msg and secret not in repr(ei.value.__cause__)
    finally:
        s3.clear_client_cache()
        server.close()


# ----------------------------------------------------------------------- counted skips and recoveries

def test_duplicate_scene_ids_are_counted_and_processed_once(raw_world, tmp_path):
    raw = Path(shutil.copytree(raw_world[0], tmp_path / "raw"))
    with open(raw / "scannetv2_train.txt", "a") as f:
        f.write("scene0000_00\n")  # listed twice in train ...
    with open(raw / "scannetv2_val.txt", "a") as f:
        f.write("scene0000_00\n")  # ... and once more in val
    rep = _create(raw, tmp_path / "out", scenes=["scene0000_00"])()
    assert rep["scenes"]["duplicates"] == ["scene0000_00", "scene0000_00"]
    assert rep["scenes"]["done"] == 1
    rows = processed.read_manifest(str(tmp_path / "out" / "manifest_train.parquet")).to_pylist()
    assert len(rows) == len({r["sample_id"] for r in rows}) == rep["frames"]["kept"]
    assert processed.read_manifest(str(tmp_path / "out" / "manifest_val.parquet")).num_rows == 0
    assert "| duplicate scene ids | 2 |" in (tmp_path / "out" / "report.md").read_text()


def test_frames_at_the_wrong_image_size_are_counted_skips(raw_world, tmp_path):
    raw = Path(shutil.copytree(raw_world[0], tmp_path / "raw"))
    two_d = raw / "2D" / "scene0001_00"
    for sub, ext in (("color", "jpg"), ("depth", "png")):  # both halves: colour and depth still agree
        path = two_d / sub / f"200.{ext}"
        img = Image.open(path)
        img.resize((320, 240), Image.NEAREST).save(path)
    rep = _create(raw, tmp_path / "out", scenes=["scene0001_00"])()
    assert rep["frames"]["skipped"] == {"corrupt_image": 1, "wrong_size": 1}  # frame 0 is the world's corrupt PNG
    assert "scene0001_00/200: wrong_size" in rep["skipped_frames"]
    assert rep["frames"]["kept"] == 1
    assert "| frames skipped: wrong_size | 1 |" in (tmp_path / "out" / "report.md").read_text()


def test_damaged_scene_markers_make_create_data_redo_those_scenes(raw_world, small_datasets, tmp_path):
    out = Path(shutil.copytree(small_datasets["scannet_sv"], tmp_path / "sv"))
    before = {p.relative_to(out): p.read_bytes() for p in (out / "frames").iterdir()}
    (out / processed.marker_key("scene0000_00")).write_bytes(b"\x00\xffgarbage")  # not even text
    (out / processed.marker_key("scene0001_00")).write_text('{"fingerprint": "x"')  # cut short
    marker = json.loads((out / processed.marker_key("scene0002_00")).read_text())
    (out / processed.marker_key("scene0002_00")).write_text(json.dumps(dict(marker, added_by_v9=1)))  # other fields
    rep = _create(raw_world[0], out)()
    assert rep["scenes"]["reused"] == 0 and rep["scenes"]["done"] == 3 and rep["scenes"]["failed"] == {}
    assert {p.relative_to(out): p.read_bytes() for p in (out / "frames").iterdir()} == before
    for scene in ("scene0000_00", "scene0001_00", "scene0002_00"):
        assert json.loads((out / processed.marker_key(scene)).read_text())["scene"] == scene
    assert _create(raw_world[0], out)()["scenes"]["reused"] == 3  # rewritten markers are trusted again
