"""oseg3d.scannet.frames: the 2D export (colour JPEG, uint16 mm depth PNG, c2w pose) and its FrameSkip codes."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from oseg3d.scannet.frames import (
    DEPTH_INTRINSICS,
    DEPTH_SCALE,
    FrameSkip,
    list_frame_indices,
    read_color,
    read_depth,
    read_frame,
    read_pose,
)

POSE = np.array([
    [-0.955421, 0.119616, -0.269932, 2.655830],
    [0.295248, 0.388339, -0.872939, 2.981598],
    [0.000408, -0.913720, -0.406343, 1.368648],
    [0.0, 0.0, 0.0, 1.0],
])


def test_constants_match_scannet():
    assert DEPTH_INTRINSICS == (577.870605, 577.870605, 319.5, 239.5)
    assert DEPTH_SCALE == 1000.0


def _write_frame(d, index, color_hw=(480, 640), depth_hw=(480, 640), depth_mm=1500, pose=POSE):
    for sub in ("color", "depth", "pose"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((*color_hw, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(d / "color" / f"{index}.jpg", quality=95)
    Image.fromarray(np.full(depth_hw, depth_mm, np.uint16)).save(d / "depth" / f"{index}.png")
    np.savetxt(d / "pose" / f"{index}.txt", pose, fmt="%.6f")


def test_list_frame_indices_numeric_order(tmp_path):
    color = tmp_path / "color"
    color.mkdir()
    for name in ["1000.jpg", "20.jpg", "100.jpg", "0.jpg", "x20.jpg", "20.png", "40.jpg.bak", "readme.txt", "-20.jpg", "20.JPG"]:
        (color / name).write_bytes(b"")
    assert list_frame_indices(tmp_path) == [0, 20, 100, 1000]


def test_list_frame_indices_no_color_dir(tmp_path):
    assert list_frame_indices(tmp_path) == []
    assert list_frame_indices(tmp_path / "absent") == []


def test_read_pose(tmp_path):
    path = tmp_path / "0.txt"
    # ScanNet writes 4 rows of 4 space-separated numbers
    path.write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in POSE) + "\n")
    pose = read_pose(path)
    assert pose.shape == (4, 4) and pose.dtype == np.float64
    np.testing.assert_array_equal(pose, POSE)


@pytest.mark.parametrize("text", [
    "-inf -inf -inf -inf\n-inf -inf -inf -inf\n-inf -inf -inf -inf\n-inf -inf -inf -inf\n",  # ESAM issue #3
    "1 0 0 0\nnan nan nan nan\n0 0 1 0\n0 0 0 1\n",
    "1 0 0 0\n0 1 0 inf\n0 0 1 0\n0 0 0 1\n",
    "1 0 0 0\n0 1 0 0\n0 0 1 0\n",  # 12 numbers
    "1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1 0\n",  # 17
    "1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 one\n",
    "",
], ids=["all_-inf", "nan_row", "inf", "12_numbers", "17_numbers", "text", "empty"])
def test_read_pose_bad(tmp_path, text):
    path = tmp_path / "20.txt"
    path.write_text(text)
    with pytest.raises(FrameSkip) as e:
        read_pose(path)
    assert e.value.reason == "bad_pose"
    assert e.value.path == str(path) and str(path) in str(e.value)


def test_read_pose_missing(tmp_path):
    with pytest.raises(FrameSkip) as e:
        read_pose(tmp_path / "40.txt")
    assert e.value.reason == "missing_file"


def test_read_depth_16bit_millimetres(tmp_path):
    mm = np.array([[0, 1500, 65535], [1, 999, 4000]], np.uint16)
    path = tmp_path / "0.png"
    Image.fromarray(mm).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit PNG
    depth = read_depth(path)
    assert depth.dtype == np.float32 and depth.shape == (2, 3)
    assert depth[0, 1] == np.float32(1.5)
    np.testing.assert_allclose(depth, [[0, 1.5, 65.535], [0.001, 0.999, 4.0]], rtol=1e-6)


def test_read_depth_rgb_png_is_corrupt(tmp_path):
    path = tmp_path / "0.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    with pytest.raises(FrameSkip) as e:
        read_depth(path)
    assert e.value.reason == "corrupt_image"


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 5000, (480, 640)).astype(np.uint16)).save(buf, "PNG")
    path = tmp_path / "0.png"
    path.write_bytes(buf.getvalue()[:200])
    with pytest.raises(FrameSkip) as e:
        read_depth(path)
    assert e.value.reason == "corrupt_image"
    assert e.value.path == str(path)


@pytest.mark.parametrize("data", [b"\xff\xd8\xff\xe0 not really a jpeg", b"", b"GIF89a\x00"], ids=["garbage", "empty", "bad_gif"])
def test_garbage_jpeg(tmp_path, data):
    path = tmp_path / "0.jpg"
    path.write_bytes(data)
    with pytest.raises(FrameSkip) as e:
        read_color(path)
    assert e.value.reason == "corrupt_image"


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3)).astype(np.uint8)).save(buf, "JPEG")
    path = tmp_path / "0.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(FrameSkip) as e:
        read_color(path)
    assert e.value.reason == "corrupt_image"


def test_missing_images(tmp_path):
    for fn in (read_color, read_depth):
        with pytest.raises(FrameSkip) as e:
            fn(tmp_path / "0.img")
        assert e.value.reason == "missing_file"


def test_read_color_converts_to_rgb(tmp_path):
    path = tmp_path / "0.jpg"
    Image.fromarray(np.full((6, 8), 77, np.uint8)).save(path)  # greyscale JPEG
    color = read_color(path)
    assert color.shape == (6, 8, 3) and color.dtype == np.uint8
    assert np.abs(color.astype(int) - 77).max() <= 1


def test_read_frame(tmp_path):
    _write_frame(tmp_path, 1020)
    frame = read_frame(tmp_path, 1020)
    assert frame.index == 1020
    assert frame.color.shape == (480, 640, 3) and frame.color.dtype == np.uint8
    assert abs(int(frame.color[240, 320, 0]) - 200) <= 2 and frame.color[240, 320, 1] <= 2
    assert frame.depth.shape == (480, 640)
    np.testing.assert_array_equal(frame.depth, np.float32(1.5))
    np.testing.assert_array_equal(frame.pose, POSE)


def test_read_frame_size_mismatch(tmp_path):
    _write_frame(tmp_path, 0, depth_hw=(240, 320))
    with pytest.raises(FrameSkip) as e:
        read_frame(tmp_path, 0)
    assert e.value.reason == "size_mismatch"


def test_read_frame_reasons(tmp_path):
    _write_frame(tmp_path, 0)
    (tmp_path / "pose" / "0.txt").write_text("nan " * 16)
    with pytest.raises(FrameSkip) as e:
        read_frame(tmp_path, 0)
    assert e.value.reason == "bad_pose"

    _write_frame(tmp_path, 20)
    (tmp_path / "depth" / "20.png").unlink()
    with pytest.raises(FrameSkip) as e:
        read_frame(tmp_path, 20)
    assert (e.value.reason, e.value.path) == ("missing_file", str(tmp_path / "depth" / "20.png"))

    _write_frame(tmp_path, 40)
    (tmp_path / "color" / "40.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(FrameSkip) as e:
        read_frame(tmp_path, 40)
    assert e.value.reason == "corrupt_image"


def test_read_depth_8bit_png_is_corrupt(tmp_path):
    path = tmp_path / "0.png"
    Image.fromarray(np.full((4, 4), 150, np.uint8)).save(path)
    with pytest.raises(FrameSkip) as e:
        read_depth(path)
    assert e.value.reason == "corrupt_image"
