"""Matcher and Criterion on hand-made problems (esam.md §3.6)."""
from __future__ import annotations

import collections
import math

import pytest
import torch
import torch.nn.functional as F

from oseg3d.models import criterion as criterion_module
from oseg3d.models.criterion import Criterion, aligned_box_iou, dice_loss
from oseg3d.models.decoder import QueryDecoder
from oseg3d.models.matcher import batched_match, match, match_costs
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

def test_batched_match_equals_per_frame_match():
    pred, targets, query_ids, _ = _random_batch(0, 3, False)
    b, q, k = len(targets), max(map(len, query_ids)), max(len(t.inst_labels) for t in targets)
    n = max(t.inst_p_masks.shape[1] for t in targets)  # the final prediction is point-level
    cls, masks = torch.zeros(b, q, 4), torch.zeros(b, q, n)
    labels, gt = torch.full((b, k), -1), torch.zeros(b, k, n, dtype=torch.bool)
    query_masks, unit = torch.zeros(b, k, q, dtype=torch.bool), torch.zeros(b, n, dtype=torch.bool)
    for f, (t, ids) in enumerate(zip(targets, query_ids)):
        (nq, nk), npt = (len(ids), len(t.inst_labels)), t.inst_p_masks.shape[1]
        cls[f, :nq], masks[f, :nq, :npt] = pred["cls_preds"][f].detach(), pred["masks"][f].detach()
        labels[f, :nk], gt[f, :nk, :npt], unit[f, :npt] = t.inst_labels, t.inst_p_masks, True
        query_masks[f, :nk, :nq] = t.inst_sp_masks[:, ids]
    query_idx, matched = batched_match(cls, masks, labels, gt, query_masks, unit)
    # no object / no query inside an object / no query; frame 3: two objects pick the same query
    assert not matched[[1, 2, 6]].any() and matched[3, :2].all() and query_idx[3, 0] == query_idx[3, 1]
    for f, (t, ids) in enumerate(zip(targets, query_ids)):
        q_ref, g_ref = match(pred["cls_preds"][f], pred["masks"][f], t.inst_labels, t.inst_p_masks,
                             t.inst_sp_masks[:, ids])
        g = torch.nonzero(matched[f]).squeeze(1)
        assert g.tolist() == g_ref.tolist() and query_idx[f, g].tolist() == q_ref.tolist()

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

# ------------------------------------------------------------- batched criterion == per-frame reference


def _ref_match(cls_pred, mask_pred, labels, gt_masks, query_masks):
    """The per-frame matcher the batched one replaced."""
    allowed = query_masks & ((labels >= 0) & gt_masks.any(1))[:, None]
    has_query = allowed.any(1)
    if not bool(has_query.any()):
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    with torch.no_grad():
        prob = cls_pred.float().softmax(-1)[:, labels.clamp_min(0)]
        x, t = mask_pred.float(), gt_masks.float()
        bce = (F.softplus(-x) @ t.T + F.softplus(x) @ (1 - t).T) / x.shape[1]
        p = x.sigmoid()
        dice = 1 - (2 * (p @ t.T) + 1) / (p.sum(1)[:, None] + t.sum(1)[None, :] + 1)
        cost = (-0.5 * prob + bce + dice).T.masked_fill(~allowed, 1e8)
    gt_idx = torch.nonzero(has_query).squeeze(1)
    return cost[gt_idx].argmin(1), gt_idx


def _ref_losses(crit, pred, targets, query_ids):
    """The per-frame Criterion the batched one replaced (frames and terms in Python loops)."""
    def mean(terms, fallback):
        return torch.stack(terms).mean() if terms else sum(t.flatten()[:0].sum() for t in fallback)

    w_cls, w_bce, w_dice, _, w_bbox = crit.loss_weight
    labels = [torch.where(t.inst_labels >= 0, 0, -1) if crit.num_classes == 1 else t.inst_labels for t in targets]
    query_masks = [t.inst_sp_masks[:, q] for t, q in zip(targets, query_ids)]

    def layer_losses(layer, prefix, dice_scale, indices):
        sp = layer["mask_mode"] == "SP"
        gts = [t.inst_sp_masks if sp else t.inst_p_masks for t in targets]
        if indices is None:
            indices = [_ref_match(*a) for a in zip(layer["cls_preds"], layer["masks"], labels, gts, query_masks)]
        boxes = layer.get("bboxes")
        use_box = boxes is not None and any(t.boxes is not None for t in targets)
        cls_t, bce_t, dice_t, box_t = [], [], [], []
        for f, (q, g) in enumerate(indices):
            cls = layer["cls_preds"][f]
            if len(cls):
                target = torch.full((len(cls),), crit.num_classes, dtype=torch.long)
                target[q] = labels[f][g]
                cls_t.append(F.cross_entropy(cls, target, weight=crit.class_weight))
            if len(q) == 0:
                continue
            mask, gt = layer["masks"][f][q], gts[f][g].float()
            bce_t.append(F.binary_cross_entropy_with_logits(mask, gt))
            dice_t.append(dice_loss(mask, gt))
            if use_box and targets[f].boxes is not None:
                box_t.append((1 - aligned_box_iou(boxes[f][q], targets[f].boxes[g])).mean())
        out = {prefix + "loss_cls": w_cls * mean(cls_t, layer["cls_preds"]),
               prefix + "loss_bce": w_bce * mean(bce_t, layer["masks"]),
               prefix + "loss_dice": w_dice * dice_scale * mean(dice_t, layer["masks"])}
        if use_box:
            out[prefix + "loss_bbox"] = w_bbox * mean(box_t, boxes)
        return out, indices

    losses, indices = layer_losses(pred, "", crit.dice_scale, None)
    sem_t = []
    for sem, t, q in zip(pred["sem_preds"], targets, query_ids):
        target = t.sp_sem[q]
        if bool((target != crit.num_semantic).any()):
            sem_t.append(F.cross_entropy(sem[:, :-1], target, ignore_index=crit.num_semantic))
    losses["loss_sem"] = crit.sem_weight * mean(sem_t, pred["sem_preds"])
    for i, aux in enumerate(pred["aux_outputs"]):
        losses.update(layer_losses(aux, f"aux{i}_", 1.0, None if crit.iter_matcher else indices)[0])
    return losses


def _random_batch(seed, num_classes, with_boxes, modes=("SP", "P", "SP", "P")):
    """Frames of different sizes and the special cases: no object, no query inside any object, one query
    picked by two (overlapping) objects, an absent object, and a frame without queries."""
    g = torch.Generator().manual_seed(seed)

    def randint(lo, hi):
        return int(torch.randint(lo, hi, (1,), generator=g))

    targets, query_ids = [], []
    for f in range(7):
        n_sp, k = randint(6, 14), [3, 0, 2, 4, 2, 1, 2][f]
        sp_index = torch.cat([torch.arange(n_sp), torch.randint(0, n_sp, (randint(0, 20),), generator=g)])
        owner = torch.randint(-1, k, (n_sp,), generator=g) if k else torch.full((n_sp,), -1)
        sp_masks = owner[None, :] == torch.arange(k)[:, None]
        q = torch.randperm(n_sp, generator=g)[: randint(3, n_sp - 1)].sort().values
        outside = torch.isin(torch.arange(n_sp), q, invert=True)
        if f == 2:  # objects only on superpoints that are no query
            sp_masks &= outside
            sp_masks[0, outside.nonzero()[0]] = True
        if f == 3:  # superpoint q[0] lies in objects 0 and 1 and is their only query: both pick it
            sp_masks[:2] = outside
            sp_masks[:2, q[0]] = True
        if f == 6:  # no queries at all
            q = q[:0]
        labels = torch.randint(0, max(num_classes, 1), (k,), generator=g)
        if f == 3:
            labels[1] = (labels[0] + 1) % num_classes  # the double pick gets one of two different labels
        if f == 4:
            labels[0] = -1  # absent from this frame
        # objects without superpoints are absent, except object 0, which keeps a label and an empty mask
        labels = torch.where(sp_masks.any(1) | (torch.arange(k) == 0), labels, -1)
        boxes = None
        if with_boxes and f != 5:  # frame 5: no boxes although others have them
            boxes = torch.cat([torch.randn(k, 3, generator=g), torch.rand(k, 3, generator=g) + 0.5], 1)
        p_masks = sp_masks[:, sp_index]
        targets.append(FrameTargets(labels, sp_masks, p_masks, torch.randint(0, N_SEM + 1, (n_sp,), generator=g),
                                    boxes, p_masks.any(1)))
        query_ids.append(q)
    layers = []
    for mode in modes:
        layer = {"mask_mode": mode, "cls_preds": [], "masks": [], "bboxes": [] if with_boxes else None,
                 "sem_preds": None}
        for t, q in zip(targets, query_ids):
            n = t.inst_sp_masks.shape[1] if mode == "SP" else t.inst_p_masks.shape[1]
            layer["cls_preds"].append(torch.randn(len(q), num_classes + 1, generator=g).requires_grad_())
            layer["masks"].append((3 * torch.randn(len(q), n, generator=g)).requires_grad_())
            if with_boxes:
                layer["bboxes"].append(torch.cat([torch.randn(len(q), 3, generator=g),
                                                  torch.rand(len(q), 3, generator=g) + 0.5], 1).requires_grad_())
        layers.append(layer)
    pred = layers[-1]
    pred["sem_preds"] = [torch.randn(len(q), N_SEM + 1, generator=g).requires_grad_() for q in query_ids]
    pred["aux_outputs"] = layers[:-1]
    inputs = [x for layer in layers for key in ("cls_preds", "masks", "bboxes") for x in (layer[key] or [])]
    return pred, targets, query_ids, inputs + pred["sem_preds"]


def _check_special_cases(targets, query_ids):
    assert len(targets[1].inst_labels) == 0
    assert not targets[2].inst_sp_masks[:, query_ids[2]].any() and targets[2].inst_sp_masks.any()
    assert targets[3].inst_sp_masks[:2, query_ids[3]].sum(1).tolist() == [1, 1]
    assert (targets[3].inst_sp_masks[0, query_ids[3]] & targets[3].inst_sp_masks[1, query_ids[3]]).any()
    assert len(query_ids[6]) == 0


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("with_boxes", [False, True])
@pytest.mark.parametrize("iter_matcher", [True, False])
def test_batched_criterion_equals_per_frame_reference(num_classes, with_boxes, iter_matcher):
    for seed in range(2):
        pred, targets, query_ids, inputs = _random_batch(seed, num_classes, with_boxes)
        _check_special_cases(targets, query_ids)
        crit = Criterion(num_classes, N_SEM, iter_matcher=iter_matcher, dice_scale=2.0)
        got, ref = crit(pred, targets, query_ids), _ref_losses(crit, pred, targets, query_ids)
        assert list(got) == list(ref)
        coef = torch.rand(len(ref), generator=torch.Generator().manual_seed(seed)) + 0.5
        grads = []
        for losses in (got, ref):
            assert all(v.grad_fn is not None for v in losses.values())
            grads.append(torch.autograd.grad(sum(c * v for c, v in zip(coef, losses.values())), inputs,
                                             allow_unused=True))
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)
        for x, a, b in zip(inputs, *grads):
            if b is None:  # the reference never touches a frame without queries
                assert x.numel() == 0 or a is None or not a.any()
                continue
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _slices_of_padded(xs: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The frames' tensors as views [f, :rows_f, :cols_f] of one NaN-padded leaf, as the decoder hands them out."""
    rows, cols = max(len(x) for x in xs), max(x.shape[1] for x in xs)
    base = torch.full((len(xs), rows + 2, cols + 3), math.nan)
    for f, x in enumerate(xs):
        base[f, :x.shape[0], :x.shape[1]] = x.detach()
    base.requires_grad_()
    return base, [base[f, :x.shape[0], :x.shape[1]] for f, x in enumerate(xs)]


def test_frames_given_as_slices_of_one_padded_tensor(monkeypatch):
    """The decoder's per-frame outputs are views of its padded predictions: used as they are, not copied."""
    pred, targets, query_ids, _ = _random_batch(1, 3, True)
    bases = []
    for layer in [pred, *pred["aux_outputs"]]:
        for key in ("cls_preds", "masks", "bboxes", "sem_preds"):
            if layer[key] is not None:
                base, layer[key] = _slices_of_padded(layer[key])
                bases.append(base)
    ref = _ref_losses(Criterion(3, N_SEM), pred, targets, query_ids)
    pad = criterion_module._Pad.apply

    def targets_only(layout, *xs):
        assert not any(x.requires_grad for x in xs), "a prediction was copied into a new padded tensor"
        return pad(layout, *xs)

    monkeypatch.setattr(criterion_module._Pad, "apply", targets_only)
    got = Criterion(3, N_SEM)(pred, targets, query_ids)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)
    grads = [torch.autograd.grad(sum(losses.values()), bases, allow_unused=True) for losses in (got, ref)]
    for base, a, b in zip(bases, *grads):
        torch.testing.assert_close(a, torch.zeros_like(base) if b is None else b, rtol=1e-5, atol=1e-6)


def test_unmatched_non_finite_box_does_not_reach_the_gradient():
    # object 1 has no allowed query: its (unused) pick is q0, whose exp'd size overflowed
    masks = torch.tensor([[-5.0, -5, 5], [5.0, 5, -5]], requires_grad=True)
    bboxes = torch.tensor([[9.0, 9, 9, math.inf, math.inf, math.inf], [1.0, 0, 0, 2, 2, 2]], requires_grad=True)
    t = _targets([0, 0], [[1, 1, 0], [0, 0, 1]], [N_SEM] * 3, boxes=[[0.0, 0, 0, 2, 2, 2], [5.0, 5, 5, 1, 1, 1]])
    losses = Criterion(1, N_SEM)(_sp_pred([torch.zeros(2, 2)], [masks], bboxes=[bboxes]), [t], [torch.tensor([0, 1])])
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor(0.5 * 2 / 3))
    losses["loss_bbox"].backward()
    assert torch.isfinite(bboxes.grad).all() and not bboxes.grad[0].any()


# ops that make views or no-op conversions: per-frame slicing and reshaping of the inputs launch nothing
_VIEW_OPS = {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided", "aten::slice", "aten::select",
             "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::transpose", "aten::t", "aten::permute",
             "aten::unfold", "aten::narrow", "aten::alias", "aten::detach", "aten::unbind", "aten::flatten",
             "aten::_unsafe_view", "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg", "aten::to"}


def _op_counts(num_frames: int) -> collections.Counter:
    pred, targets, query_ids, _ = _random_batch(0, 3, True)
    for layer in [pred, *pred["aux_outputs"]]:
        for key in ("cls_preds", "masks", "bboxes", "sem_preds"):
            if layer[key] is not None:
                layer[key] = layer[key][:num_frames]
    inputs = [x for layer in [pred, *pred["aux_outputs"]] for key in ("cls_preds", "masks", "bboxes", "sem_preds")
              for x in (layer[key] or [])]
    crit = Criterion(3, N_SEM)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        losses = crit(pred, targets[:num_frames], query_ids[:num_frames])
        torch.autograd.grad(sum(losses.values()), inputs, allow_unused=True)
    return collections.Counter(e.name for e in prof.events() if e.name.startswith("aten::") and e.name not in _VIEW_OPS)


def test_op_count_does_not_grow_with_the_frame_count():
    """The whole batch is padded and computed at once: more frames, same ops (forward and backward)."""
    few, many = _op_counts(4), _op_counts(7)
    assert few == many, {k: (few[k], many[k]) for k in few | many if few[k] != many[k]}
