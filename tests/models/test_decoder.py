"""QueryDecoder: output layout, masked attention, parameter count (esam.md §3.5)."""
from __future__ import annotations

import math

import pytest
import torch

from oseg3d.models.decoder import QueryDecoder, p_to_sp_attention_mask, sp_attention_mask

C_IN = 8


def _tiny(**kw) -> QueryDecoder:
    args = dict(in_channels=C_IN, d_model=16, num_layers=3, num_heads=2, hidden_dim=32, num_classes=1,
                num_semantic=5, bbox_head=True)
    args.update(kw)
    return QueryDecoder(**args)


def _frames(sizes=((6, 20), (4, 15)), seed=0):
    """Random frames: (n_sp, n_pts) each; every superpoint owns at least one point."""
    g = torch.Generator().manual_seed(seed)
    sp_feats, point_feats, sp_index, sp_xyz = [], [], [], []
    for n_sp, n_pts in sizes:
        idx = torch.cat([torch.arange(n_sp), torch.randint(0, n_sp, (n_pts - n_sp,), generator=g)])
        sp_index.append(idx)
        sp_feats.append(torch.randn(n_sp, C_IN, generator=g))
        point_feats.append(torch.randn(n_pts, 3 + C_IN, generator=g))
        sp_xyz.append(torch.randn(n_sp, 3, generator=g))
    return sp_feats, point_feats, sp_index, sp_xyz


def test_output_layout_sp_then_p():
    dec = _tiny()
    sp_feats, point_feats, sp_index, sp_xyz = _frames()
    query_ids = [torch.tensor([0, 2, 5]), torch.tensor([1, 3])]
    out = dec(sp_feats, point_feats, sp_index, query_ids, sp_xyz)

    preds = out["aux_outputs"] + [out]
    assert len(preds) == 4
    assert [p["mask_mode"] for p in preds] == ["SP", "SP", "P", "P"]
    for p in preds:
        assert set(p) >= {"cls_preds", "sem_preds", "masks", "mask_mode", "queries", "bboxes"}
        for f, (n_q, n_sp, n_pts) in enumerate([(3, 6, 20), (2, 4, 15)]):
            assert p["cls_preds"][f].shape == (n_q, 2)
            assert p["masks"][f].shape == (n_q, n_sp if p["mask_mode"] == "SP" else n_pts)
            assert p["queries"][f].shape == (n_q, 16)
            assert p["bboxes"][f].shape == (n_q, 6)
            assert (p["bboxes"][f][:, 3:] > 0).all()
    # semantic head on the final prediction only
    assert all(p["sem_preds"] is None for p in out["aux_outputs"])
    assert [s.shape for s in out["sem_preds"]] == [(3, 6), (2, 6)]
    assert "aux_outputs" not in out["aux_outputs"][0]


def test_all_superpoints_are_queries_by_default():
    dec = _tiny(bbox_head=False, mask_pred_mode=("SP", "SP", "SP", "SP"))
    sp_feats, point_feats, sp_index, _ = _frames()
    out = dec(sp_feats, point_feats, sp_index)
    assert [m.shape for m in out["masks"]] == [(6, 6), (4, 4)]
    assert out["mask_mode"] == "SP" and out["bboxes"] is None
    assert dec.x_pts_mask is None  # no point-level head when never used


def test_box_is_anchor_plus_offset_and_exp_size():
    dec = _tiny()
    last = dec.out_bbox[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0, math.log(2.0), math.log(0.5)]))
    sp_feats, point_feats, sp_index, sp_xyz = _frames()
    q = [torch.tensor([4, 1]), torch.tensor([3])]
    box = dec(sp_feats, point_feats, sp_index, q, sp_xyz)["bboxes"]
    torch.testing.assert_close(box[0][:, :3], sp_xyz[0][[4, 1]] + torch.tensor([0.1, -0.2, 0.3]))
    torch.testing.assert_close(box[1][0, 3:], torch.tensor([1.0, 2.0, 0.5]))


def test_bbox_head_needs_anchors():
    dec = _tiny()
    sp_feats, point_feats, sp_index, _ = _frames()
    with pytest.raises(ValueError, match="sp_xyz"):
        dec(sp_feats, point_feats, sp_index)


def test_sp_attention_mask_hand_values():
    logits = torch.tensor([[1.0, -1.0, 0.5], [-2.0, -3.0, -0.1]])
    # row 0: blocked where sigmoid < 0.5; row 1 would block everything, so it is cleared
    expected = torch.tensor([[False, True, False], [False, False, False]])
    assert torch.equal(sp_attention_mask(logits), expected)


def test_p_to_sp_attention_mask_hand_values():
    sp_index = torch.tensor([0, 0, 0, 1, 1, 2])
    logits = torch.tensor([
        [5.0, 5.0, -5.0, -5.0, -5.0, 5.0],     # sp0: 1/3 outside -> open; sp1: all outside; sp2: inside
        [-5.0, -5.0, 5.0, -5.0, -5.0, -5.0],   # every sp mostly outside: reopen the least blocked (sp0, 2/3)
    ])
    expected = torch.tensor([[False, True, False], [False, True, True]])
    assert torch.equal(p_to_sp_attention_mask(logits, sp_index, 3), expected)


def test_fully_masked_rows_give_no_nan():
    """Force every mask logit negative (every query blocks everything) at SP and P level."""
    dec = _tiny()
    with torch.no_grad():
        dec.out_norm.weight.zero_()
        dec.out_norm.bias.fill_(1.0)  # every normalised query = (1, ..., 1)
        for mlp in (dec.x_mask, dec.x_pts_mask):
            mlp[-1].weight.zero_()
            mlp[-1].bias.fill_(-1.0)  # every mask feature = (-1, ..., -1): logits = -16
    sp_feats, point_feats, sp_index, sp_xyz = _frames()
    out = dec(sp_feats, point_feats, sp_index, sp_xyz=sp_xyz)
    for p in out["aux_outputs"] + [out]:
        assert all((m < 0).all() for m in p["masks"])
        assert all(torch.isfinite(c).all() for c in p["cls_preds"])
    assert all(torch.isfinite(s).all() for s in out["sem_preds"])


def test_gradients_reach_all_parameters():
    dec = _tiny()
    sp_feats, point_feats, sp_index, sp_xyz = _frames()
    out = dec(sp_feats, point_feats, sp_index, sp_xyz=sp_xyz)
    loss = sum(sum(t.sum() for t in p[k]) for p in out["aux_outputs"] + [out]
               for k in ("cls_preds", "masks", "bboxes")) + sum(s.sum() for s in out["sem_preds"])
    loss.backward()
    missing = [n for n, p in dec.named_parameters() if p.grad is None]
    assert missing == []


def _breakdown(module: torch.nn.Module) -> dict[str, int]:
    return {name: sum(p.numel() for p in child.parameters()) for name, child in module.named_children()}


def test_parameter_count_matches_esam():
    """Class-agnostic ScanNet200 online decoder: 3.64 M (esam.md §3.5 sizes)."""
    dec = QueryDecoder(num_classes=1, num_semantic=200, bbox_head=True)
    parts = _breakdown(dec)
    print(parts)
    assert parts == {
        "query_proj": 96 * 256 + 256 + 256 * 256 + 256,             # 90,624
        "input_proj": 96 * 256 + 256 + 2 * 256,                     # 25,344
        "x_mask": 90_624,
        "x_pts_mask": 99 * 256 + 256 + 256 * 256 + 256,             # 91,392
        "layers": 3 * (2 * (4 * 256 * 256 + 4 * 256 + 2 * 256)    # 2 attentions + LN
                       + 256 * 1024 + 1024 + 1024 * 256 + 256 + 2 * 256),  # FFN + LN: 3,160,320
        "out_norm": 512,
        "out_cls": 256 * 256 + 256 + 256 * 2 + 2,                   # 66,306
        "out_sem": 256 * 201 + 201,                                 # 51,657
        "out_bbox": 256 * 256 + 256 + 256 * 6 + 6,                  # 67,334
    }
    total = sum(parts.values())
    assert total == 3_644_113
    assert abs(total / 3.64e6 - 1) < 0.005
