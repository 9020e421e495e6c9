"""Sparse convolutions as one gather + one GEMM each, in plain PyTorch (training and inference).

Why: on the H100 a spconv 2.3.8 implicit-GEMM call costs ~0.4-0.5 ms of host time whatever its size (a
64-channel SubM conv over 13.7 k voxels: 503 µs per call with cached indices, its kernel ~45 µs), and a
rulebook build ~0.7 ms; the online step runs ~60 convs and 17 rulebook builds per frame, so its U-Net
was bound at ~17 ms by spconv's host side, not by the GPU.

Here every conv is `table → gather → GEMM (+ bias, ReLU)`:
- the rulebook is a dense neighbour table (N_out, taps) of input rows, `N_in` where a tap has no voxel
  (a zero row appended to the features); SubM tables come from a sorted-key `searchsorted` (no host
  sync), a stride-2 down-conv's from `torch.unique` over parent cells (one sync, for its output size);
- the conv is `features[table]` reshaped to (N_out, taps·C_in) times the weights as (taps·C_in, C_out):
  four kernels, 140 µs of host time per call (same layer; measured on a slower H100 host than spconv's
  503 µs); the GEMM accumulates in fp32 (cuBLAS) for fp16 inputs.
Tables are cached per `indice_key` in the tensor's `indice_dict` (shared by all tensors of one forward
pass, as spconv does), so each level's rulebook is built once per frame.

Training can use them too (`model.sparse_engine=gather`; spconv stays the default there: at 16 frames
per batch the materialised (N, taps·C) gathers cost more GPU time than spconv's implicit GEMM saves
host time — SV 51 vs 65 frames/s on the H100, GPU busy 0.93). The backward is two more gather + GEMMs
(the input gradient over the transposed table — SubM tables are symmetric, a down-conv's transpose is
its inverse's table — and the weight gradient over re-gathered columns), no atomics, nothing of size
(N, taps·C) kept between forward and backward. Semantics are spconv's, tap order included (CPU tests
check every kind and the gradients against spconv's Native algorithm): SubM (odd kernel, any dilation;
output rows = input rows), kernel-2 stride-2 down-convs (output cells = occupied parent cells) and
their `SparseInverseConv3d` (output rows = the down-conv's input rows, in their order).
"""
from __future__ import annotations

import torch
from cumm import tensorview as tv
from spconv.pytorch import SparseConvTensor
from spconv.pytorch.conv import SparseConvolution
from torch import nn

__all__ = ["ENGINES", "GatherConv", "subm_table", "down_table", "use_gather_convs"]

ENGINES = ("gather", "spconv")  # how a model runs its sparse convs (model.sparse_engine, prepare_for_inference)

_CACHE = "gather/"


def _encode(b: torch.Tensor, c: torch.Tensor, dims: tuple[int, int, int]) -> torch.Tensor:
    """One int64 key per (sample, cell) for non-negative cells inside `dims`."""
    return ((b * dims[0] + c[..., 0]) * dims[1] + c[..., 1]) * dims[2] + c[..., 2]


def _offsets(kernel: int, dilation: int, device) -> torch.Tensor:
    """(kernel³, 3) tap offsets in spconv's weight order (row-major over the three index axes)."""
    r = torch.arange(kernel, device=device) - kernel // 2
    grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    return grid * dilation


def subm_table(indices: torch.Tensor, spatial_shape, kernel: int, dilation: int = 1) -> torch.Tensor:
    """Neighbour table of a submanifold conv: (N, kernel³) long, input row of each tap or N (none)."""
    n = len(indices)
    margin = (kernel // 2) * dilation
    dims = tuple(int(s) + 2 * margin for s in spatial_shape)
    b = indices[:, 0].long()
    c = indices[:, 1:].long() + margin  # shifted so every neighbour cell is non-negative
    skeys, order = torch.sort(_encode(b, c, dims))
    offs = _offsets(kernel, dilation, indices.device)
    nkeys = _encode(b[:, None], c[:, None, :] + offs[None], dims).reshape(-1)
    pos = torch.searchsorted(skeys, nkeys).clamp_max(max(n - 1, 0))
    if n == 0:
        return torch.zeros(0, len(offs), dtype=torch.long, device=indices.device)
    found = skeys[pos] == nkeys
    return torch.where(found, order[pos], n).view(n, len(offs))


def down_table(indices: torch.Tensor, spatial_shape):
    """Rulebook of a kernel-2 stride-2 conv.

    Returns (out_indices (M, 4) int32, out_shape, down (M, 8) long input rows or N, up (N, 8) long
    output row of each input's parent at its tap, else M): `down` drives the conv, `up` its inverse.
    """
    if any(int(s) % 2 for s in spatial_shape):
        # spconv's output size (S - 2) // 2 + 1 drops the last input row of an odd axis; voxelize aligns
        raise ValueError(f"a stride-2 gather conv needs even spatial sizes, got {list(spatial_shape)}: "
                         "align the grid (models/batch.py voxelize pads to GRID_ALIGN)")
    n = len(indices)
    out_shape = [int(s) // 2 for s in spatial_shape]
    b = indices[:, 0].long()
    c = indices[:, 1:].long()
    parent = torch.div(c, 2, rounding_mode="floor")
    okeys, inv = torch.unique(_encode(b, parent, tuple(out_shape)), return_inverse=True)
    m = len(okeys)
    tap = ((c - 2 * parent) * torch.tensor([4, 2, 1], device=c.device)).sum(1)
    rows = torch.arange(n, device=c.device)
    down = torch.full((m, 8), n, dtype=torch.long, device=c.device)
    down[inv, tap] = rows
    up = torch.full((n, 8), m, dtype=torch.long, device=c.device)
    up[rows, tap] = inv
    z = okeys % out_shape[2]
    rest = okeys // out_shape[2]
    y = rest % out_shape[1]
    rest = rest // out_shape[1]
    x = rest % out_shape[0]
    out_indices = torch.stack([rest // out_shape[0], x, y, z], 1).int()
    return out_indices, out_shape, down, up


class _GatherGemm(torch.autograd.Function):
    """y = [x; 0][table] (N_out, taps·C_in) @ W (taps·C_in, C_out) + b, with a gather + GEMM backward.

    The input gradient is the same kind of conv over the transposed table (`table_t`: for each input row
    and tap, the output row that read it there), so no atomics; the weight gradient re-gathers the
    columns instead of keeping the (N_out, taps·C_in) matrix alive between forward and backward.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, table, table_t):
        ctx.transpose = table_t if callable(table_t) else None  # SubM: derived from the table when needed
        ctx.save_for_backward(x, weight, table, *([] if callable(table_t) else [table_t]))
        ctx.has_bias = bias is not None
        return _gather_gemm(x, weight, bias, table)

    @staticmethod
    def backward(ctx, gy):
        x, weight, table, *rest = ctx.saved_tensors
        gx = gw = gb = None
        c_out, c_in = weight.shape[0], weight.shape[-1]
        gy = gy.contiguous()
        if ctx.needs_input_grad[0]:
            table_t = ctx.transpose(table) if ctx.transpose is not None else rest[0]
            taps = weight.reshape(c_out, -1, c_in).transpose(0, 1).reshape(-1, c_in)  # (taps·C_out, C_in)
            gx = _columns(gy, table_t) @ taps
        if ctx.needs_input_grad[1]:
            gw = (gy.t() @ _columns(x, table)).view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum(0)
        return gx, gw, gb, None, None


def _gather_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, table: torch.Tensor) -> torch.Tensor:
    """The conv itself: gathered columns times the KRSC weight viewed as (taps·C_in, C_out), plus bias."""
    cols = _columns(x, table)
    w = weight.reshape(weight.shape[0], -1).t()
    return torch.addmm(bias, cols, w) if bias is not None else cols @ w


def _columns(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(N_out, taps·C) rows of `x` per tap, zeros where the table says N (no voxel)."""
    padded = torch.cat([x, x.new_zeros(1, x.shape[1])])
    return padded.index_select(0, table.view(-1)).view(len(table), -1)  # index_select: lighter than padded[table]


def _flip(table: torch.Tensor) -> torch.Tensor:
    # SubM taps are symmetric: row j sits at tap k of row o exactly when o sits at tap taps-1-k of row j
    return table.flip(1)


class GatherConv(nn.Module):
    """A spconv conv as gather + GEMM; build it with `from_spconv`, which shares the conv's parameters.

    The weight keeps spconv's KRSC layout (C_out, k, k, k, C_in) and parameter names, so state dicts,
    checkpoints and partial loads are the same with either engine.

    Args:
        kind: "subm", "down" (kernel 2, stride 2) or "inverse" (the inverse of a down-conv).
        kernel, dilation: kernel size (SubM: odd) and dilation.
        key: spconv `indice_key`; required for "inverse" (it names the down-conv to invert).
        weight: (C_out, k, k, k, C_in) parameter. bias: (C_out,) parameter or None.
        relu: fused ReLU after the bias (set by BN folding at inference).
    """

    def __init__(self, kind: str, kernel: int, dilation: int, key: str | None, weight: nn.Parameter,
                 bias: nn.Parameter | None, relu: bool = False):
        super().__init__()
        self.kind, self.kernel, self.dilation, self.key, self.relu = kind, kernel, dilation, key, relu
        self.weight = weight
        self.bias = bias

    @classmethod
    def from_spconv(cls, conv: SparseConvolution) -> GatherConv:
        k, s, d = list(conv.kernel_size), list(conv.stride), list(conv.dilation)
        if len(set(k)) != 1 or len(set(d)) != 1 or conv.transposed or any(conv.padding) or conv.groups != 1:
            raise ValueError(f"GatherConv supports cubic, unpadded, ungrouped, non-transposed convs; got {conv}")
        if conv.subm:
            kind = "subm"
            if k[0] % 2 == 0:
                raise ValueError(f"a SubM gather conv needs an odd kernel, got {k}")
        elif conv.inverse:
            kind = "inverse"
        else:
            kind = "down"
            if k != [2, 2, 2] or s != [2, 2, 2] or d != [1, 1, 1]:
                raise ValueError(f"only kernel-2 stride-2 down-convs are supported, got kernel {k} stride {s}")
        if kind == "inverse" and (k != [2, 2, 2] or not conv.indice_key):
            raise ValueError(f"only kernel-2 inverse convs with an indice_key are supported, got {conv}")
        return cls(kind, k[0], d[0], conv.indice_key, conv.weight, conv.bias,
                   relu=conv.act_type == tv.gemm.Activation.ReLU)

    def _conv(self, feats: torch.Tensor, table: torch.Tensor, table_t) -> torch.Tensor:
        w, bias = self.weight, self.bias
        if feats.is_cuda and torch.is_autocast_enabled("cuda"):
            feats = feats.to(torch.get_autocast_dtype("cuda"))  # gather half the bytes; the GEMM in autocast's dtype
        if w.dtype != feats.dtype:  # prepared models are cast once; `.to` still costs host time per call
            w, bias = w.to(feats.dtype), None if bias is None else bias.to(feats.dtype)
        if torch.is_grad_enabled() and (feats.requires_grad or w.requires_grad):
            out = _GatherGemm.apply(feats, w, bias, table, table_t)
        else:  # inference (fp16 weights, autocast already off around the sparse parts): no autograd bookkeeping
            out = _gather_gemm(feats, w, bias, table)
        return torch.relu_(out) if self.relu else out

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        cache = x.indice_dict
        if self.kind == "subm":
            name = f"{_CACHE}subm/{self.key}/{self.kernel}/{self.dilation}" if self.key else None
            table = cache.get(name) if name else None
            if table is None:
                table = subm_table(x.indices, x.spatial_shape, self.kernel, self.dilation)
                if name:
                    cache[name] = table
            return x.replace_feature(self._conv(x.features, table, _flip))
        if self.kind == "down":
            out_indices, out_shape, down, up = down_table(x.indices, x.spatial_shape)
            if self.key:
                cache[f"{_CACHE}down/{self.key}"] = (x.indices, list(x.spatial_shape), up, down)
            return SparseConvTensor(self._conv(x.features, down, up), out_indices, out_shape, x.batch_size,
                                    indice_dict=cache)
        entry = cache.get(f"{_CACHE}down/{self.key}")
        if entry is None:
            raise KeyError(f"inverse gather conv '{self.key}': no down-conv with this indice_key ran earlier "
                           "in this forward pass (convert the whole model with use_gather_convs)")
        fine_indices, fine_shape, up, down = entry
        return SparseConvTensor(self._conv(x.features, up, down), fine_indices, fine_shape, x.batch_size,
                                indice_dict=cache)


def use_gather_convs(model: nn.Module) -> nn.Module:
    """Replace every spconv conv inside `model` with its GatherConv, sharing the parameters (state-dict
    keys and shapes unchanged). Mutates and returns `model`; for training and inference alike."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SparseConvolution):
                setattr(parent, name, GatherConv.from_spconv(child))
    return model
