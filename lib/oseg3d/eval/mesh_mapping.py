"""Multi-view evaluation: carry predictions on accumulated frame points over to the mesh vertices.

ESAM (`predict` with `map_to_rec_pcd=True`, reference/esam.md §3.10) evaluates an online run against the
mesh GT in two steps:

1. Each mesh vertex takes the prediction of its nearest accumulated frame point (1-NN over all T·P
   points, no distance cutoff: vertices never seen by the camera still inherit something).
2. Segment smoothing over the official mesh segments (`segs.json`): an instance mask keeps a segment
   when more than half of the segment's vertices are in it (ESAM: `scatter_mean(mask) > 0.5`, here the
   exact integer test 2·count > size); a semantic label is the segment's majority (ties: smallest
   label, as `argmax` of the mean one-hot).

The 1-NN uses `pykdtree` in float32 (about 2x scipy's cKDTree). Equidistant frame points, e.g. the same
point seen in two frames, may resolve to either one. `map_to_mesh` and `map_semantic_to_mesh` each build
a tree; to map both from one tree, call `nearest_source` once, index, then `segment_vote_*`.
"""
from __future__ import annotations

import numpy as np
from pykdtree.kdtree import KDTree

from oseg3d.eval.overlap import as_mask_stack, partition_intersections

__all__ = ["nearest_source", "segment_vote_masks", "segment_vote_labels", "map_to_mesh", "map_semantic_to_mesh"]


def nearest_source(source_points: np.ndarray, target_points: np.ndarray) -> np.ndarray:
    """Index of the nearest source point for every target point.

    Args:
        source_points: (S, 3) points that carry predictions (the accumulated frame points).
        target_points: (M, 3) points that receive them (the mesh vertices).

    Returns:
        (M,) int64 indices into source_points.
    """
    src = np.ascontiguousarray(np.asarray(source_points)[:, :3], np.float32)
    dst = np.ascontiguousarray(np.asarray(target_points)[:, :3], np.float32)
    if len(src) == 0:
        raise ValueError("no source points to map from")
    _, idx = KDTree(src).query(dst, k=1)
    return idx.astype(np.int64)


def _segments(segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense segment index per vertex (0..S-1) and the vertex count per segment."""
    _, inv = np.unique(np.asarray(segment_ids).ravel(), return_inverse=True)
    return inv, np.bincount(inv)


def segment_vote_masks(masks: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """Per segment, an instance mask takes all the segment's vertices if more than half are in it, else none.

    Args:
        masks: (n, N) bool masks over the mesh vertices.
        segment_ids: (N,) segment id per vertex (any integers).

    Returns:
        (n, N) bool smoothed masks.
    """
    seg, size = _segments(segment_ids)
    masks = as_mask_stack(masks, len(seg))
    inside = partition_intersections(masks, seg, len(size))
    return (2 * inside > size[None, :])[:, seg]


def segment_vote_labels(labels: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """Per segment, every vertex takes the segment's most frequent label (ties: the smallest).

    Args:
        labels: (N,) int label per vertex.
        segment_ids: (N,) segment id per vertex.

    Returns:
        (N,) labels, same dtype as `labels`.
    """
    labels = np.asarray(labels).ravel()
    seg, size = _segments(segment_ids)
    if len(labels) != len(seg):
        raise ValueError(f"{len(labels)} labels for {len(seg)} vertices")
    values, lab = np.unique(labels, return_inverse=True)
    counts = np.bincount(seg * len(values) + lab, minlength=len(size) * len(values))
    return values[counts.reshape(len(size), len(values)).argmax(1)][seg]


def map_to_mesh(frame_points: np.ndarray, pred_masks: np.ndarray, mesh_vertices: np.ndarray,
                segment_ids: np.ndarray | None) -> np.ndarray:
    """Instance masks over the accumulated frame points → masks over the mesh vertices.

    Args:
        frame_points: (T·P, 3) all frame points of the scene, in the mesh's coordinates.
        pred_masks: (n, T·P) bool predicted masks over those points.
        mesh_vertices: (N, 3) mesh vertices.
        segment_ids: (N,) official mesh segment per vertex; None skips the segment vote.

    Returns:
        (n, N) bool masks over the mesh vertices.
    """
    masks = as_mask_stack(pred_masks, len(frame_points))
    vertex_masks = masks[:, nearest_source(frame_points, mesh_vertices)]
    return vertex_masks if segment_ids is None else segment_vote_masks(vertex_masks, segment_ids)


def map_semantic_to_mesh(frame_points: np.ndarray, frame_labels: np.ndarray, mesh_vertices: np.ndarray,
                         segment_ids: np.ndarray | None) -> np.ndarray:
    """Per-point semantic predictions over the frame points → per-vertex labels (1-NN, segment majority).

    Args:
        frame_points: (T·P, 3) all frame points of the scene.
        frame_labels: (T·P,) int predicted label per frame point.
        mesh_vertices: (N, 3) mesh vertices.
        segment_ids: (N,) official mesh segment per vertex; None skips the segment vote.

    Returns:
        (N,) labels per mesh vertex.
    """
    frame_labels = np.asarray(frame_labels).ravel()
    if len(frame_labels) != len(frame_points):
        raise ValueError(f"{len(frame_labels)} labels for {len(frame_points)} frame points")
    vertex_labels = frame_labels[nearest_source(frame_points, mesh_vertices)]
    return vertex_labels if segment_ids is None else segment_vote_labels(vertex_labels, segment_ids)
