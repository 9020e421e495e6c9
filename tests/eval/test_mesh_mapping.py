"""Frame-point predictions carried to mesh vertices: 1-NN, then the per-segment 0.5 vote."""
from __future__ import annotations

import numpy as np

from oseg3d.eval.mesh_mapping import (
    map_semantic_to_mesh, map_to_mesh, nearest_source, segment_vote_labels, segment_vote_masks,
)


def _line(*xs):
    return np.array([[x, 0.0, 0.0] for x in xs], np.float32)


# Segment 10: x = 0, 1, 2; segment 20: x = 10, 11, 12; segment 30 (4 vertices): x = 20..23.
MESH = _line(0, 1, 2, 10, 11, 12, 20, 21, 22, 23)
SEGMENTS = np.array([10, 10, 10, 20, 20, 20, 30, 30, 30, 30])
# Frame points f0..f6. Nearest: v0→f0, v1→f1, v2→f2, v10→f3, v11→f4, v12→f4, v20→f5, v21→f5,
# v22→f6, v23→f6.
FRAME = _line(0.1, 1.1, 2.2, 10.1, 11.6, 20.0, 22.9)
NN = [0, 1, 2, 3, 4, 4, 5, 5, 6, 6]


def test_nearest_source():
    np.testing.assert_array_equal(nearest_source(FRAME, MESH), NN)


def test_map_to_mesh_with_segment_vote():
    masks = np.array([
        [1, 1, 0, 1, 0, 1, 0],  # vertices 1,1,0 | 1,0,0 | 1,1,0,0 → segment shares 2/3, 1/3, 2/4
        [0, 0, 1, 0, 1, 1, 1],  # vertices 0,0,1 | 0,1,1 | 1,1,1,1 → 1/3, 2/3, 4/4
    ], bool)
    raw = map_to_mesh(FRAME, masks, MESH, None)
    np.testing.assert_array_equal(raw, masks[:, NN])
    out = map_to_mesh(FRAME, masks, MESH, SEGMENTS)
    np.testing.assert_array_equal(out, [
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],  # exactly half of segment 30 is not more than half
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
    ])


def test_segment_vote_on_unsorted_segments():
    segments = np.array([7, 3, 7, 3, 7])
    masks = np.array([[1, 1, 1, 0, 0]], bool)  # segment 7: 2/3, segment 3: 1/2
    np.testing.assert_array_equal(segment_vote_masks(masks, segments), [[1, 0, 1, 0, 1]])


def test_semantic_majority_per_segment():
    labels = np.array([5, 5, 7, 7, 7, 2, 9])  # per frame point
    # vertices 5,5,7 | 7,7,7 | 2,2,9,9 → 5 | 7 | tie → the smaller, 2
    np.testing.assert_array_equal(map_semantic_to_mesh(FRAME, labels, MESH, SEGMENTS),
                                  [5, 5, 5, 7, 7, 7, 2, 2, 2, 2])
    np.testing.assert_array_equal(segment_vote_labels(np.array([4, 1, 4]), np.array([0, 0, 1])), [1, 1, 4])
