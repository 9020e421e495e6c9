"""Box IoU and the online merger on hand-built frames."""
from __future__ import annotations

import math

import pytest
import torch

from oseg3d.models.online_merge import OnlineMerger, axis_aligned_iou


def test_axis_aligned_iou_known_boxes():
    a = torch.tensor([[0.0, 0, 0, 2, 2, 2]])
    b = torch.tensor([
        [0.0, 0, 0, 2, 2, 2],  # identical: 1
        [1.0, 0, 0, 2, 2, 2],  # shifted by half: 4 / (8 + 8 − 4)
        [0.0, 0, 0, 1, 1, 1],  # inside: 1 / 8
        [10.0, 10, 10, 1, 1, 1],  # apart: 0
        [2.0, 0, 0, 2, 2, 2],  # touching faces: 0
    ])
    torch.testing.assert_close(axis_aligned_iou(a, b), torch.tensor([[1.0, 1 / 3, 1 / 8, 0.0, 0.0]]))
    assert axis_aligned_iou(b, a).shape == (5, 1)


def _mask(n, lo, hi):
    m = torch.zeros(1, n, dtype=torch.bool)
    m[0, lo:hi] = True
    return m


E_X = torch.tensor([[1.0, 0.0]])
BOX = torch.tensor([[0.0, 0, 0, 2, 2, 2]])


def _update(merger, mask, label=0, score=0.8, emb=E_X, box=BOX, sem=None):
    merger.update(mask, torch.tensor([label]), torch.tensor([score]), emb, box, sem)


def test_same_object_in_two_frames_is_merged():
    m = OnlineMerger()
    _update(m, _mask(10, 0, 5), score=0.8)
    # same embedding, box IoU 0.6 → S = 0.6 > 0
    _update(m, _mask(10, 3, 8), score=0.6, box=torch.tensor([[0.5, 0, 0, 2, 2, 2]]))
    assert m.num_instances == 1 and m.merge_counts.tolist() == [1]
    expected = torch.zeros(1, 20, dtype=torch.bool)
    expected[0, 0:5] = expected[0, 13:18] = True
    assert torch.equal(m.current_masks(), expected)
    torch.testing.assert_close(m.scores, torch.tensor([0.7]))
    # box: running mean of corners, x from [-1, 1] and [-0.5, 1.5] → [-0.75, 1.25]
    torch.testing.assert_close(m.boxes, torch.tensor([[-0.75, -1, -1, 1.25, 1, 1]]))
    _update(m, _mask(10, 0, 10), score=0.4)
    torch.testing.assert_close(m.scores, torch.tensor([(0.7 * 2 + 0.4) / 3]))
    assert m.merge_counts.tolist() == [2] and m.total_points == 30


def test_embedding_running_mean_is_renormalised():
    m = OnlineMerger()
    _update(m, _mask(4, 0, 2))
    _update(m, _mask(4, 0, 2), emb=torch.tensor([[0.6, 0.8]]))  # S = 0.6 · 1
    torch.testing.assert_close(m.embeddings, torch.tensor([[1.6, 0.8]]) / math.sqrt(1.6**2 + 0.8**2))


def test_different_label_is_not_merged():
    m = OnlineMerger()
    _update(m, _mask(10, 0, 5), label=0)
    _update(m, _mask(10, 3, 8), label=1)
    assert m.num_instances == 2 and m.labels.tolist() == [0, 1]
    masks = m.current_masks()
    assert masks[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    assert masks[1].nonzero().flatten().tolist() == [13, 14, 15, 16, 17]


@pytest.mark.parametrize("emb, box", [
    (torch.tensor([[0.0, 1.0]]), BOX),  # orthogonal embeddings: S = 0
    (torch.tensor([[-1.0, 0.0]]), BOX),  # opposite embeddings: S < 0, clamped to 0
    (E_X, torch.tensor([[5.0, 0, 0, 2, 2, 2]])),  # disjoint boxes: S = 0
])
def test_non_positive_similarity_is_not_merged(emb, box):
    m = OnlineMerger()
    _update(m, _mask(10, 0, 5))
    _update(m, _mask(10, 0, 5), emb=emb, box=box)
    assert m.num_instances == 2 and m.merge_counts.tolist() == [0, 0]


def test_hungarian_matches_one_to_one_and_rest_become_new():
    m = OnlineMerger()
    _update(m, _mask(6, 0, 3))
    # two candidates for the one scene instance: the better box (IoU 1) wins, the other is new
    m.update(torch.stack([_mask(6, 0, 2)[0], _mask(6, 2, 4)[0]]), torch.tensor([0, 0]), torch.tensor([0.5, 0.9]),
             torch.cat([E_X, E_X]), torch.tensor([[0.5, 0, 0, 2, 2, 2], [0.0, 0, 0, 2, 2, 2]]))
    assert m.num_instances == 2 and m.merge_counts.tolist() == [1, 0]
    torch.testing.assert_close(m.scores, torch.tensor([(0.8 + 0.9) / 2, 0.5]))
    assert m.current_masks().int().tolist() == [[1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0],
                                                [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]]


def _sem(cos):
    return torch.tensor([[cos, math.sqrt(1 - cos**2)]])


@pytest.mark.parametrize("cos_sem, merged", [(0.8, True), (0.7, False)])
def test_paper_rule_threshold(cos_sem, merged):
    # boxes disjoint (IoU 0), cos f = 1: C = 1 + cos_sem, merged iff ≥ 1.75
    far = torch.tensor([[5.0, 0, 0, 2, 2, 2]])
    m = OnlineMerger(rule="paper")
    _update(m, _mask(4, 0, 2), sem=torch.tensor([[1.0, 0.0]]))
    _update(m, _mask(4, 0, 2), box=far, sem=_sem(cos_sem))
    assert m.num_instances == (1 if merged else 2)
    # the code rule never merges disjoint boxes
    c = OnlineMerger(rule="code")
    _update(c, _mask(4, 0, 2), sem=torch.tensor([[1.0, 0.0]]))
    _update(c, _mask(4, 0, 2), box=far, sem=_sem(cos_sem))
    assert c.num_instances == 2


def test_paper_rule_needs_sem():
    m = OnlineMerger(rule="paper")
    _update(m, _mask(4, 0, 2))
    with pytest.raises(ValueError):
        _update(m, _mask(4, 0, 2))


def test_result_topk_by_score():
    m = OnlineMerger()
    masks = torch.eye(3, 5, dtype=torch.bool)
    boxes = torch.tensor([[0.0, 0, 0, 1, 1, 1], [5.0, 0, 0, 1, 1, 1], [10.0, 0, 0, 1, 1, 1]])
    m.update(masks, torch.tensor([0, 1, 2]), torch.tensor([0.3, 0.9, 0.5]), torch.eye(3), boxes)
    out_masks, labels, scores = m.result(topk=2)
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.5]))
    assert labels.tolist() == [1, 2]
    assert torch.equal(out_masks, masks[[1, 2]])
    assert len(m.result()[0]) == 3


def test_empty_frames_and_reset():
    m = OnlineMerger()
    empty = dict(labels=torch.zeros(0, dtype=torch.long), scores=torch.zeros(0),
                 embeddings=torch.zeros(0, 2), boxes=torch.zeros(0, 6))
    m.update(torch.zeros(0, 7, dtype=torch.bool), **empty)
    _update(m, _mask(5, 1, 3))
    m.update(torch.zeros(0, 4, dtype=torch.bool), **empty)
    masks, labels, scores = m.result()
    assert masks.shape == (1, 16) and masks[0].nonzero().flatten().tolist() == [8, 9]
    m.reset()
    assert m.num_instances == 0 and m.result()[0].shape == (0, 0)
