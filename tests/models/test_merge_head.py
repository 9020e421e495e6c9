"""MergeHead size and the temporal contrastive merge loss, against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from oseg3d.models.merge_head import MergeHead, merge_contrastive_loss


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_merge_head_size_and_unit_norm(norm):
    head = MergeHead(256, 256, hidden=512, norm=norm)
    # 256·512+512 + 2·512 + 512·256+256 + 2·256 (norm affine params) = 264,448 ≈ 0.26 M (esam.md §3.12)
    assert sum(p.numel() for p in head.parameters()) == 264_448
    out = head(torch.randn(7, 256))
    assert out.shape == (7, 256)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(7))


def test_merge_head_rejects_unknown_norm():
    with pytest.raises(ValueError):
        MergeHead(norm="group")


def _one_hot_frame(instance_of_query, k=3, d=4):
    """Embeddings e_{inst} per query, and the (k, n_q) query-to-instance mask."""
    inst = torch.tensor(instance_of_query)
    emb = torch.eye(d)[inst]
    masks = inst.unsqueeze(0) == torch.arange(k).unsqueeze(1)
    return emb, masks


def test_loss_hand_value_orthonormal_centres():
    # 3 instances, orthonormal centres in both frames: logits diag 1/τ, off-diagonal 0
    e0, m0 = _one_hot_frame([0, 0, 1, 2, 2])
    e1, m1 = _one_hot_frame([2, 1, 1, 0])
    loss = merge_contrastive_loss([e0, e1], [m0, m1], temperature=1.0, weight=2.0)
    per_direction = math.log(1 + 2 / math.e)  # −log(e / (e + 1 + 1))
    assert loss.item() == pytest.approx(2.0 * 2 * per_direction, rel=1e-6)


def test_loss_absent_instance_removed_from_rows_and_columns():
    e0, m0 = _one_hot_frame([0, 1, 2])  # instances 0, 1, 2
    e1, m1 = _one_hot_frame([0, 1])  # instance 2 absent (all-False row, zero centre)
    loss = merge_contrastive_loss([e0, e1], [m0, m1], temperature=1.0, weight=1.0)
    # t→t+1: rows {0, 1}, candidates {0, 1}; t+1→t: rows {0, 1}, candidates {0, 1, 2}
    expected = math.log(1 + 1 / math.e) + math.log(1 + 2 / math.e)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_loss_lower_for_consistent_than_shuffled_embeddings():
    g = torch.Generator().manual_seed(0)
    k, d, per = 4, 16, 5
    protos = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    inst = torch.arange(k).repeat_interleave(per)
    masks = inst.unsqueeze(0) == torch.arange(k).unsqueeze(1)

    def frame(ids):
        noisy = protos[ids] + 0.05 * torch.randn(len(ids), d, generator=g)
        return torch.nn.functional.normalize(noisy, dim=1)

    frames = [frame(inst) for _ in range(3)]
    consistent = merge_contrastive_loss(frames, [masks] * 3)
    shuffled = [frames[0], frame(inst[torch.randperm(len(inst), generator=g)]), frames[2]]
    assert consistent.item() < 0.1 * merge_contrastive_loss(shuffled, [masks] * 3).item()


def test_loss_zero_with_finite_grad_when_nothing_persists():
    e0, m0 = _one_hot_frame([0, 0])  # only instance 0
    e1, m1 = _one_hot_frame([1, 1])  # only instance 1
    e0.requires_grad_(True)
    e1.requires_grad_(True)
    loss = merge_contrastive_loss([e0, e1], [m0, m1])
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(e0.grad).all() and (e0.grad == 0).all()


def test_loss_single_frame_and_no_instances():
    emb = torch.randn(3, 4, requires_grad=True)
    assert merge_contrastive_loss([emb], [torch.ones(1, 3, dtype=torch.bool)]).item() == 0.0
    none = torch.zeros(0, 3, dtype=torch.bool)
    assert merge_contrastive_loss([emb, emb], [none, none]).item() == 0.0
