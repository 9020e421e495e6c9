"""Matcher and Criterion on hand-made problems (esam.md §3.6)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from oseg3d.models.criterion import Criterion, aligned_box_iou, dice_loss
from oseg3d.models.decoder import QueryDecoder
from oseg3d.models.matcher import match, match_costs
from oseg3d.models.scatter import scatter_mean
from oseg3d.models.targets import FrameTargets, build_targets

N_SEM = 5

# ---------------------------------------------------------------------------------------------- matcher


def test_cost_hand_value():
    # zero logits: p = 1/2 everywhere. cls: -0.5 * 1/2; BCE: ln 2; Dice (4 units, |t| = 2):
    # 1 - (2 * 0.5 * 2 + 1) / (0.5 * 4 + 2 + 1) = 1 - 3/5
    cost = match_costs(torch.zeros(1, 2), torch.zeros(1, 4), torch.tensor([0]), torch.tensor([[1, 1, 0, 0]]).bool())
    torch.testing.assert_close(cost, torch.tensor([[-0.25 + math.log(2) + 0.4]]))


def test_match_picks_cheapest_allowed_query():
    gt_masks = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]]).bool()
    masks = torch.tensor([[10.0, 10, -10, -10],    # q0: exactly G0, but its superpoint is not in G0
                          [10.0, 10, 10, -10],     # q1: G0 plus one unit
                          [-10.0, -10, 10, 10]])   # q2: exactly G1
    query_masks = torch.tensor([[False, True, False], [False, True, True]])
    q, g = match(torch.zeros(3, 2), masks, torch.tensor([0, 0]), gt_masks, query_masks)
    assert q.tolist() == [1, 2] and g.tolist() == [0, 1]
    # without the restriction G0 takes its exact match q0
    q, g = match(torch.zeros(3, 2), masks, torch.tensor([0, 0]), gt_masks, torch.ones(2, 3, dtype=torch.bool))
    assert q.tolist() == [0, 2] and g.tolist() == [0, 1]


def test_match_is_per_object_not_hungarian():
    # both objects may only use q0 (overlapping point masks): both get it
    gt_masks = torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    query_masks = torch.tensor([[True, False], [True, False]])
    q, g = match(torch.zeros(2, 2), torch.zeros(2, 3), torch.tensor([0, 0]), gt_masks, query_masks)
    assert q.tolist() == [0, 0] and g.tolist() == [0, 1]


def test_absent_or_unreachable_objects_are_not_matched():
    gt_masks = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1]]).bool()
    labels = torch.tensor([-1, 0, 0, 0])  # 0: absent by label, 1: empty mask, 2: no allowed query
    query_masks = torch.tensor([[True, True], [True, True], [False, False], [False, True]])
    q, g = match(torch.zeros(2, 2), torch.zeros(2, 3), labels, gt_masks, query_masks)
    assert q.tolist() == [1] and g.tolist() == [3]
    q, g = match(torch.zeros(2, 2), torch.zeros(2, 3), labels[:0], gt_masks[:0], query_masks[:0])
    assert q.numel() == 0 and g.numel() == 0 and q.dtype == torch.long


def test_costs_are_float32_under_autocast():
    g = torch.Generator().manual_seed(0)
    cls, masks = torch.randn(5, 3, generator=g), torch.randn(5, 50, generator=g)
    gt = torch.rand(2, 50, generator=g) > 0.5
    ref = match_costs(cls, masks, torch.tensor([0, 1]), gt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = match_costs(cls.bfloat16(), masks.bfloat16(), torch.tensor([0, 1]), gt)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=0.05, rtol=0)

# --------------------------------------------------------------------------------------------- box / dice


def test_box_iou_hand_values():
    a = torch.tensor([[0.0, 0, 0, 2, 2, 2]])
    assert aligned_box_iou(a, a).item() == 1.0
    # [-1,1]^3 vs [0,2]x[-1,1]^2: intersection 1*2*2 = 4, union 8 + 8 - 4 = 12
    b = torch.tensor([[1.0, 0, 0, 2, 2, 2]])
    torch.testing.assert_close(1 - aligned_box_iou(a, b), torch.tensor([2 / 3]))
    far = torch.tensor([[5.0, 0, 0, 1, 1, 1]])
    assert aligned_box_iou(a, far).item() == 0.0


def test_dice_hand_value():
    # p = 1/2 on 4 units, target 2 units: 1 - (2 + 1) / (2 + 2 + 1)
    torch.testing.assert_close(dice_loss(torch.zeros(1, 4), torch.tensor([[1.0, 1, 0, 0]])), torch.tensor(0.4))

# ------------------------------------------------------------------------------------------- criterion


def _targets(labels, sp_masks, sp_sem, boxes=None, p_per_sp=2):
    """FrameTargets with `p_per_sp` points per superpoint (points of superpoint i: i*p .. i*p+p-1)."""
    sp_masks = torch.tensor(sp_masks, dtype=torch.bool).reshape(len(labels), -1)
    return FrameTargets(
        inst_labels=torch.tensor(labels, dtype=torch.long), inst_sp_masks=sp_masks,
        inst_p_masks=sp_masks.repeat_interleave(p_per_sp, dim=1), sp_sem=torch.tensor(sp_sem),
        boxes=None if boxes is None else torch.tensor(boxes, dtype=torch.float32),
        present=sp_masks.any(1))


def _sp_pred(cls, masks, sem=None, bboxes=None):
    """A single SP-level prediction (no aux) in the decoder's output layout."""
    return dict(cls_preds=cls, masks=masks, mask_mode="SP", bboxes=bboxes, queries=None,
                sem_preds=sem if sem is not None else [torch.zeros(len(c), N_SEM + 1) for c in cls],
                aux_outputs=[])


def test_class_aware_targets_and_no_object_weight():
    g = torch.Generator().manual_seed(0)
    cls = torch.randn(3, 4, generator=g)
    masks = torch.tensor([[-5.0, -5, 5], [5.0, 5, -5], [-5.0, 5, 5]])
    t = _targets([2], [[1, 1, 0]], [N_SEM] * 3)
    losses = Criterion(num_classes=3, num_semantic=N_SEM)(_sp_pred([cls], [masks]), [t])
    # object 0 (class 2) takes q1, the others are no-object (index 3, weight 0.1)
    expected = F.cross_entropy(cls, torch.tensor([3, 2, 3]), weight=torch.tensor([1, 1, 1, 0.1]))
    torch.testing.assert_close(losses["loss_cls"], 0.5 * expected)


def test_class_agnostic_maps_every_present_object_to_class_0():
    g = torch.Generator().manual_seed(1)
    cls = torch.randn(3, 2, generator=g)
    masks = torch.tensor([[-5.0, -5, 5], [5.0, 5, -5], [-5.0, 5, 5]])
    # labels as a class-aware target builder would give them; label -1 (absent) stays unmatched
    t = _targets([7, -1], [[1, 1, 0], [0, 0, 1]], [N_SEM] * 3)
    losses = Criterion(num_classes=1, num_semantic=N_SEM)(_sp_pred([cls], [masks]), [t])
    expected = F.cross_entropy(cls, torch.tensor([1, 0, 1]), weight=torch.tensor([1, 0.1]))
    torch.testing.assert_close(losses["loss_cls"], 0.5 * expected)


def test_mask_and_box_terms_on_matched_pairs():
    masks = torch.tensor([[-5.0, -5, 5], [5.0, 5, -5]], requires_grad=True)
    gt_box = [[0.0, 0, 0, 2, 2, 2]]
    bboxes = torch.tensor([[9.0, 9, 9, 1, 1, 1], [1.0, 0, 0, 2, 2, 2]], requires_grad=True)
    t = _targets([0], [[1, 1, 0]], [N_SEM] * 3, boxes=gt_box)
    losses = Criterion(1, N_SEM)(_sp_pred([torch.zeros(2, 2)], [masks], bboxes=[bboxes]), [t], [torch.tensor([0, 1])])
    target = torch.tensor([[1.0, 1, 0]])
    torch.testing.assert_close(losses["loss_bce"], F.binary_cross_entropy_with_logits(masks[1:], target))
    torch.testing.assert_close(losses["loss_dice"], dice_loss(masks[1:], target))
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor(0.5 * 2 / 3))  # the IoU pair above


def test_dice_scale_only_scales_the_final_prediction():
    dec, frames, targets, query_ids = _overfit_problem()
    pred = _call(dec, frames, query_ids)
    plain = Criterion(1, N_SEM)(pred, targets, query_ids)
    scaled = Criterion(1, N_SEM, dice_scale=4.0)(pred, targets, query_ids)
    torch.testing.assert_close(scaled["loss_dice"], 4 * plain["loss_dice"])
    torch.testing.assert_close(scaled["aux0_loss_dice"], plain["aux0_loss_dice"])


def test_semantic_loss_hand_value_and_all_ignored():
    sem = torch.zeros(2, N_SEM + 1, requires_grad=True)
    t = _targets([0], [[0, 0, 0]], [3, N_SEM, N_SEM])
    crit = Criterion(1, N_SEM)
    # query 0 targets class 3 over N_SEM uniform logits (the no-object column is dropped), query 1 ignored
    losses = crit(_sp_pred([torch.zeros(2, 2)], [torch.zeros(2, 3)], sem=[sem]), [t], [torch.tensor([0, 1])])
    torch.testing.assert_close(losses["loss_sem"], torch.tensor(0.5 * math.log(N_SEM)))
    losses = crit(_sp_pred([torch.zeros(2, 2)], [torch.zeros(2, 3)], sem=[sem]), [t], [torch.tensor([1, 2])])
    assert losses["loss_sem"].item() == 0.0 and losses["loss_sem"].requires_grad


def _assert_zero_and_finite_grads(losses, names, params):
    for name in names:
        assert losses[name].item() == 0.0, name
        assert losses[name].grad_fn is not None, name
    sum(losses.values()).backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_empty_batch_gives_zero_mask_loss_and_finite_grads():
    """ESAM issue #17: no matched pair anywhere must give 0, not NaN."""
    dec, frames, _, _ = _overfit_problem()
    pred = dec(*frames)
    empty = [FrameTargets(torch.zeros(0, dtype=torch.long), torch.zeros(0, len(f), dtype=torch.bool),
                          torch.zeros(0, len(p), dtype=torch.bool), torch.full((len(f),), N_SEM),
                          torch.zeros(0, 6), torch.zeros(0, dtype=torch.bool))
             for f, p in zip(frames[0], frames[1])]
    losses = Criterion(1, N_SEM)(pred, empty)
    zero = [k for k in losses if any(s in k for s in ("bce", "dice", "bbox"))]
    assert len(zero) == 3 * 4 and "loss_sem" in losses
    assert all(torch.isfinite(v) for v in losses.values())
    _assert_zero_and_finite_grads(losses, zero + ["loss_sem"], dec.parameters())


def test_objects_without_sampled_queries_give_zero_mask_loss():
    dec, frames, targets, _ = _overfit_problem()
    # only superpoints outside every object are queries: every object is present but unreachable
    query_ids = [torch.nonzero(~t.inst_sp_masks.any(0)).squeeze(1) for t in targets]
    losses = Criterion(1, N_SEM)(_call(dec, frames, query_ids), targets, query_ids)
    names = [k for k in losses if any(s in k for s in ("bce", "dice", "bbox"))]
    _assert_zero_and_finite_grads(losses, names, dec.parameters())


def test_mask_terms_average_over_frames_with_matches():
    masks = torch.tensor([[-5.0, -5, 5], [5.0, 5, -5]])
    full = _targets([0], [[1, 1, 0]], [N_SEM] * 3)
    empty = _targets([-1], [[0, 0, 0]], [N_SEM] * 3)
    crit = Criterion(1, N_SEM)
    q = torch.tensor([0, 1])
    one = crit(_sp_pred([torch.zeros(2, 2)], [masks]), [full], [q])
    two = crit(_sp_pred([torch.zeros(2, 2)] * 2, [masks] * 2), [full, empty], [q, q])
    torch.testing.assert_close(two["loss_bce"], one["loss_bce"])


def _overfit_problem(seed=0):
    """Two frames of 10 superpoints x 5 points, 2 objects each (one shared), stuff elsewhere."""
    g = torch.Generator().manual_seed(seed)
    sp_of_inst = [{1: [0, 1, 2], 2: [3, 4, 5]}, {1: [0, 1, 2, 3], 3: [4, 5, 6]}]
    sem_of_inst = {1: 3, 2: 4, 3: 2}
    instance, semantic, superpoint, xyz = [], [], [], []
    for layout in sp_of_inst:
        sp = torch.arange(10).repeat_interleave(5)
        ins, sem = torch.zeros(50, dtype=torch.long), (sp % 2)  # stuff: wall / floor
        for i, sps in layout.items():
            inside = torch.isin(sp, torch.tensor(sps))
            ins[inside], sem[inside] = i, sem_of_inst[i]
        instance.append(ins), semantic.append(sem), superpoint.append(sp)
        xyz.append(sp[:, None].float() * 0.3 + 0.1 * torch.randn(50, 3, generator=g))
    all_xyz, all_ins = torch.cat(xyz), torch.cat(instance)
    box_ids = torch.tensor([1, 2, 3])
    boxes = torch.stack([torch.cat([(all_xyz[all_ins == i].amax(0) + all_xyz[all_ins == i].amin(0)) / 2,
                                    all_xyz[all_ins == i].amax(0) - all_xyz[all_ins == i].amin(0)])
                         for i in box_ids.tolist()])
    targets = build_targets(instance, semantic, superpoint, N_SEM, class_agnostic=True,
                            boxes=boxes, box_ids=box_ids)
    feats = [torch.randn(50, 8, generator=g) for _ in xyz]
    sp_feats = [scatter_mean(f, sp, 10) for f, sp in zip(feats, superpoint)]
    point_feats = [torch.cat([p, f], 1) for p, f in zip(xyz, feats)]
    sp_xyz = [scatter_mean(p, sp, 10) for p, sp in zip(xyz, superpoint)]
    dec = QueryDecoder(in_channels=8, d_model=32, num_layers=3, num_heads=4, hidden_dim=64, num_classes=1,
                       num_semantic=N_SEM, bbox_head=True)
    query_ids = [torch.tensor([0, 2, 3, 4, 6, 8]), torch.tensor([1, 3, 5, 6, 9])]
    return dec, (sp_feats, point_feats, superpoint, None, sp_xyz), targets, query_ids


def _call(dec, frames, query_ids):
    sp_feats, point_feats, superpoint, _, sp_xyz = frames
    return dec(sp_feats, point_feats, superpoint, query_ids, sp_xyz)


def test_loss_keys_and_overfit_two_frames():
    torch.manual_seed(0)
    dec, frames, targets, query_ids = _overfit_problem()
    crit = Criterion(1, N_SEM)
    losses = crit(_call(dec, frames, query_ids), targets, query_ids)
    terms = ["loss_cls", "loss_bce", "loss_dice", "loss_bbox"]
    assert set(losses) == {*terms, "loss_sem", *(f"aux{i}_{k}" for i in range(3) for k in terms)}
    assert all(torch.isfinite(v) for v in losses.values())

    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        loss = sum(crit(_call(dec, frames, query_ids), targets, query_ids).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert all(math.isfinite(x) for x in history)
    assert history[-1] < 0.6 * history[0], history


def test_reusing_final_matches_for_aux_layers():
    dec, frames, targets, query_ids = _overfit_problem()
    pred = _call(dec, frames, query_ids)
    losses = Criterion(1, N_SEM, iter_matcher=False)(pred, targets, query_ids)
    assert all(torch.isfinite(v) for v in losses.values())
    assert set(losses) == set(Criterion(1, N_SEM)(pred, targets, query_ids))
