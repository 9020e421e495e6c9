"""QueryDecoder: output layout, masked attention, parameter count (esam.md §3.5)."""
from __future__ import annotations

import math

import pytest
import torch

from oseg3d.models.decoder import (QueryDecoder, _p_blocked, _point_count, _sp_blocked, p_to_sp_attention_mask,
                                   sp_attention_mask)
from oseg3d.models.scatter import scatter_mean

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


# ---- batched decoding == the per-frame decoder it replaced -------------------------------------------------

def _old_sp_mask(logits):
    """The pre-batching rules, as they were: (blocked, rows that would block everything)."""
    blocked = logits < 0
    full = blocked.all(1)
    blocked[full] = False
    return blocked, full


def _old_p_mask(logits, sp_index, n_sp):
    frac = scatter_mean((logits < 0).float().T, sp_index, n_sp).T
    blocked = frac > 0.5
    full = blocked.all(1)
    blocked[full] = frac[full] > frac[full].min(1, keepdim=True).values
    return blocked, full


def _reference_frame(dec, sp_feat, point_feat, sp_index, query_ids, sp_xyz, full_rows):
    """The pre-batching decoder on one frame (no padding, 2-D attention masks); counts fully blocked rows."""
    def head(q, mask_feat, last):
        qn = dec.out_norm(q)
        box = None
        if dec.out_bbox is not None:
            reg = dec.out_bbox(qn)
            box = torch.cat([sp_xyz[query_ids] + reg[:, :3], reg[:, 3:].exp()], 1)
        return dict(cls_preds=dec.out_cls(qn), sem_preds=dec.out_sem(qn) if last else None,
                    masks=qn @ mask_feat.T, queries=qn, bboxes=box)

    def attend(block, q, kv, blocked=None):
        return block.norm(q + block.drop(block.attn(q[None], kv[None], kv[None], attn_mask=blocked,
                                                    need_weights=False)[0][0]))

    feats = {"SP": dec.x_mask(sp_feat) if dec.x_mask is not None else None,
             "P": dec.x_pts_mask(point_feat) if dec.x_pts_mask is not None else None}
    modes, last = dec.mask_pred_mode, len(dec.layers)
    kv, q = dec.input_proj(sp_feat), dec.query_proj(sp_feat[query_ids])
    preds = [head(q, feats[modes[0]], last == 0)]
    for i, layer in enumerate(dec.layers):
        logits = preds[-1]["masks"].detach()
        blocked, full = _old_sp_mask(logits) if modes[i] == "SP" else _old_p_mask(logits, sp_index, len(sp_feat))
        full_rows[modes[i]] += int(full.sum())
        q = attend(layer.cross_attn, q, kv, blocked)
        q = layer.ffn(attend(layer.self_attn, q, q))
        preds.append(head(q, feats[modes[i + 1]], i + 1 == last))
    return preds


# (n_sp, n_pts): a single-superpoint frame, and frames whose widths differ from each other
_RAGGED = ((7, 30), (1, 5), (12, 41), (3, 9))


def _decoder_and_frames(bbox_head, mask_pred_mode, skew, seed=0):
    torch.manual_seed(seed)
    dec = _tiny(bbox_head=bbox_head, mask_pred_mode=mask_pred_mode, dropout=0.0)
    if skew:  # push every mask logit down, so that many rows block all their keys, at both levels
        with torch.no_grad():
            dec.out_norm.bias.fill_(1.0)
            for mlp in (dec.x_mask, dec.x_pts_mask):
                if mlp is not None:
                    mlp[-1].bias.fill_(-skew)
    sp_feats, point_feats, sp_index, sp_xyz = _frames(_RAGGED, seed=seed)
    for f in sp_feats:
        f.requires_grad_(True)
    return dec, sp_feats, point_feats, sp_index, sp_xyz


def _loss(preds_per_frame):
    """A scalar over every output that reaches every value (sin: the gradient depends on the value)."""
    return sum(t.sin().sum() for frame in preds_per_frame for p in frame for t in p.values() if t is not None)


def _assert_grad_close(got, want, msg=""):
    # summation order differs (padded batch vs frames): entries that should be 0 (a key bias) are ~1e-7 noise
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()), msg=msg)


def _by_frame(out, n_frames):
    """Decoder output -> per frame, per prediction, {key: tensor} (the reference's layout)."""
    preds = out["aux_outputs"] + [out]
    return [[{k: None if p[k] is None else p[k][f] for k in ("cls_preds", "sem_preds", "masks", "queries", "bboxes")}
             for p in preds] for f in range(n_frames)]


@pytest.mark.parametrize("bbox_head,mask_pred_mode,skew", [
    (True, ("SP", "SP", "P", "P"), 0.0),
    (False, ("P", "SP", "P", "SP"), 0.0),
    (True, ("SP", "P", "SP", "P"), 0.3),
])
@pytest.mark.parametrize("subset_queries", [True, False])
def test_batched_forward_equals_per_frame_decoding(bbox_head, mask_pred_mode, skew, subset_queries):
    dec, sp_feats, point_feats, sp_index, sp_xyz = _decoder_and_frames(bbox_head, mask_pred_mode, skew)
    n = len(sp_feats)
    query_ids = [torch.tensor([0, 2, 5]), torch.tensor([0]), torch.arange(12), torch.tensor([1, 2])] \
        if subset_queries else None
    qids = query_ids or [torch.arange(len(f)) for f in sp_feats]
    xyz = sp_xyz if bbox_head else None

    full_rows = {"SP": 0, "P": 0}
    ref = [_reference_frame(dec, sp_feats[f], point_feats[f], sp_index[f], qids[f], sp_xyz[f], full_rows)
           for f in range(n)]
    batched = _by_frame(dec(sp_feats, point_feats, sp_index, query_ids, xyz), n)
    single = [_by_frame(dec(sp_feats[f:f + 1], point_feats[f:f + 1], sp_index[f:f + 1],
                            query_ids[f:f + 1] if query_ids else None, xyz[f:f + 1] if xyz else None), 1)[0]
              for f in range(n)]
    if skew:
        assert full_rows["SP"] > 0 and full_rows["P"] > 0  # the reopen rules were exercised

    for f in range(n):
        for j, ref_pred in enumerate(ref[f]):
            for key, want in ref_pred.items():
                for got in (batched[f][j][key], single[f][j][key]):
                    if want is None:
                        assert got is None
                    else:
                        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"{f} {j} {key}")

    # gradients: batched vs per-frame reference, and a batch-of-one call
    params = [p for p in dec.parameters()] + list(sp_feats)
    want = torch.autograd.grad(_loss(ref), params, allow_unused=True)
    for got_out in (batched, single):
        got = torch.autograd.grad(_loss(got_out), params, allow_unused=True)
        for (name, _), g, w in zip(list(dec.named_parameters()) + [("sp_feats", None)] * n, got, want):
            assert (g is None) == (w is None), name
            if w is not None:
                _assert_grad_close(g, w, name)

    # inference: eval mode, no autograd (MultiheadAttention may take its fused path)
    dec.eval()
    with torch.no_grad():
        ref = [_reference_frame(dec, sp_feats[f], point_feats[f], sp_index[f], qids[f], sp_xyz[f], full_rows)
               for f in range(n)]
        batched = _by_frame(dec(sp_feats, point_feats, sp_index, query_ids, xyz), n)
    for f in range(n):
        for j, ref_pred in enumerate(ref[f]):
            for key, w in ref_pred.items():
                if w is not None:
                    torch.testing.assert_close(batched[f][j][key], w, atol=1e-5, rtol=1e-5)


def test_batched_gradient_with_frames_left_out_of_the_loss():
    """Frames and outputs without a gradient (criterion: a frame with no match) still backpropagate."""
    dec, sp_feats, point_feats, sp_index, sp_xyz = _decoder_and_frames(True, ("SP", "SP", "P", "P"), 0.0)
    out = dec(sp_feats, point_feats, sp_index, sp_xyz=sp_xyz)
    loss = out["cls_preds"][1].sum() + out["masks"][2].square().sum() + out["aux_outputs"][0]["bboxes"][0].sum()
    loss.backward()
    full_rows = {"SP": 0, "P": 0}
    ref = [_reference_frame(dec, sp_feats[f], point_feats[f], sp_index[f], torch.arange(len(sp_feats[f])), sp_xyz[f],
                            full_rows) for f in range(len(sp_feats))]
    ref_loss = ref[1][-1]["cls_preds"].sum() + ref[2][-1]["masks"].square().sum() + ref[0][0]["bboxes"].sum()
    params = list(dec.parameters())
    want = torch.autograd.grad(ref_loss, params, allow_unused=True)
    for p, w in zip(params, want):
        if w is None:
            assert p.grad is None or not p.grad.any()
        else:
            _assert_grad_close(p.grad, w)


def test_batched_mask_helpers_match_per_frame_and_never_block_a_row():
    """Padded helpers: each frame's real block equals the old per-frame rules, padding superpoints stay
    blocked, and no row (real or padding) blocks every key, which would give NaN in the softmax."""
    g = torch.Generator().manual_seed(1)
    frames = [(3, 1, 4), (5, 6, 20), (2, 4, 4), (6, 9, 31)]  # (n_q, n_sp, n_pts)
    b = len(frames)
    w_q, w_sp, w_pts = (max(f[k] for f in frames) + 3 for k in range(3))
    for shift in (0.0, 1.0, 3.0):  # from mixed rows to rows that block everything
        logits_sp = torch.randn(b, w_q, w_sp, generator=g) - shift
        logits_p = torch.randn(b, w_q, w_pts, generator=g) - shift
        sp_index = torch.full((b, w_pts), w_sp)  # padding points: the dropped column
        key_pad = torch.ones(b, 1, w_sp, dtype=torch.bool)
        for f, (_, n_sp, n_pts) in enumerate(frames):
            sp_index[f, :n_pts] = torch.cat([torch.arange(n_sp), torch.randint(0, n_sp, (n_pts - n_sp,), generator=g)])
            key_pad[f, 0, :n_sp] = False
        sp_blocked = _sp_blocked(logits_sp, key_pad)
        p_blocked = _p_blocked(logits_p, sp_index, _point_count(sp_index, w_sp), key_pad * 2.0)
        for blocked in (sp_blocked, p_blocked):
            assert not blocked.all(-1).any()
            assert blocked.masked_select(key_pad.expand_as(blocked)).all()
        for f, (n_q, n_sp, n_pts) in enumerate(frames):
            sp_want, _ = _old_sp_mask(logits_sp[f, :n_q, :n_sp].clone())
            p_want, _ = _old_p_mask(logits_p[f, :n_q, :n_pts], sp_index[f, :n_pts], n_sp)
            assert torch.equal(sp_blocked[f, :n_q, :n_sp], sp_want)
            assert torch.equal(p_blocked[f, :n_q, :n_sp], p_want)
            assert torch.equal(sp_attention_mask(logits_sp[f, :n_q, :n_sp]), sp_want)
            assert torch.equal(p_to_sp_attention_mask(logits_p[f, :n_q, :n_pts], sp_index[f, :n_pts], n_sp), p_want)
