"""Inference-only rewrites of a trained model: fold BatchNorm (and its ReLU) into the sparse convs, and
run those convs as gather + GEMM in plain PyTorch (`gather_conv.py`) instead of through spconv.

Every conv-BN(-ReLU) of the U-Net and the memory adapters costs a gather-GEMM-scatter plus two
element-wise kernels and a `replace_feature`; in eval mode BN is an affine map per channel, so it folds
into the conv's weights and a bias, and spconv's implicit-GEMM kernels apply bias + ReLU in their
epilogue. One kernel instead of three, ~90 fewer launches per online frame on the GPU. The numbers stay
equal up to float rounding (a CPU test holds it to 1e-4). Never call this on a model that will train
again: the BN statistics are gone.

The gather convs remove spconv's per-call host cost (~0.5 ms per conv on the H100, the floor of the
online U-Net); they take a bias and a ReLU everywhere, on the CPU too.
"""
from __future__ import annotations

import math

import torch
from cumm import tensorview as tv
from spconv.pytorch import SparseConvTensor
from spconv.pytorch.conv import SparseConvolution
from torch import nn

from oseg3d.models.gather_conv import ENGINES, GatherConv, use_gather_convs
from oseg3d.models.memory import MemoryAdapter
from oseg3d.models.resunet import BasicBlock, Res16UNet34C
from oseg3d.models.sparse import SparseBNReLU, half_sparse_for_inference

__all__ = ["fold_batchnorm", "prepare_for_inference", "ENGINES"]


class _SparseShift(nn.Module):
    """What a folded SparseBNReLU leaves behind: the BN's shift (where the conv cannot take it as a
    bias) and the ReLU (where the conv cannot fuse it); nothing at all on the GPU's fused path."""

    def __init__(self, shift: torch.Tensor | None, relu: bool):
        super().__init__()
        self.register_buffer("shift", shift)
        self.relu = relu

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        if self.shift is None and not self.relu:
            return x
        f = x.features if self.shift is None else x.features + self.shift.to(x.features.dtype)
        return x.replace_feature(torch.relu(f) if self.relu else f)


class _Shift(nn.Module):
    """A folded dense BatchNorm's remaining per-channel shift."""

    def __init__(self, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift.to(x.dtype)


def _implicit_gemm(conv: nn.Module) -> bool:
    """Whether the conv takes a bias and a fused ReLU: every gather conv, and spconv convs that will run
    its implicit-GEMM kernels (Native: no bias on the CPU, and strided convs get their activation
    arguments swapped in spconv 2.3.8), which matches `set_conv_algo`: CUDA and ≤ 32 taps."""
    if isinstance(conv, GatherConv):
        return True
    return conv.weight.is_cuda and math.prod(conv.kernel_size) <= 32


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: nn.BatchNorm1d, as_bias: bool = True) -> torch.Tensor | None:
    """Scale `layer`'s weights by the BN's per-channel scale; its shift becomes the layer's bias, or is
    returned when `as_bias` is false (the caller adds it)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    w = layer.weight
    # spconv weights are KRSC (out, k, k, k, in); nn.Linear's are (out, in): out is dim 0 in both
    w.mul_(scale.view(-1, *([1] * (w.dim() - 1))).to(w.dtype))
    if layer.bias is not None:
        shift = layer.bias * scale + shift
    if not as_bias:
        if layer.bias is not None:
            layer.bias = None
        return shift
    layer.bias = nn.Parameter(shift.to(w.dtype))
    return None


def _fold_sparse(conv: SparseConvolution, bnrelu: SparseBNReLU, fuse_all: bool) -> nn.Module:
    """Fold a conv's SparseBNReLU into it; returns the module that replaces the SparseBNReLU."""
    fused = fuse_all or _implicit_gemm(conv)
    shift = _fold_into(conv, bnrelu.bn, as_bias=fused)
    if fused and bnrelu.relu:
        if isinstance(conv, GatherConv):
            conv.relu = True
        else:
            conv.act_type = tv.gemm.Activation.ReLU
    return _SparseShift(shift, bnrelu.relu and not fused)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, fuse_all: bool = False) -> nn.Module:
    """Fold every BatchNorm of the U-Net(s) and memory adapters into the layer before it. Mutates and
    returns `model` (in eval mode). Layers other than these (decoder, Tiny-SA, fusion) are left alone.
    Call it on the device the model will run on: what spconv can fuse depends on the kernels there;
    `fuse_all` = every conv takes bias and ReLU (the convs will become gather convs)."""
    model.eval()
    fold = lambda conv, bn: _fold_sparse(conv, bn, fuse_all)  # noqa: E731
    for m in list(model.modules()):
        if isinstance(m, Res16UNet34C):
            m.stem_bn = fold(m.stem, m.stem_bn)
            for convs, bns in ((m.downs, m.down_bns), (m.ups, m.up_bns)):
                for i, (conv, bn) in enumerate(zip(convs, bns)):
                    bns[i] = fold(conv, bn)
        elif isinstance(m, BasicBlock):
            m.bn1 = fold(m.conv1, m.bn1)
            m.bn2 = fold(m.conv2, m.bn2)
            if m.down is not None:
                _fold_into(m.down[0], m.down[1])
                m.down = m.down[0]
        elif isinstance(m, MemoryAdapter):
            # the adapter applies relu(bn(conv)) itself: the BN slot keeps the shift, or nothing
            for conv, name in ((m.conv_d1, "bn_d1"), (m.conv_d3, "bn_d3")):
                shift = _fold_into(conv, getattr(m, name), as_bias=fuse_all or _implicit_gemm(conv))
                setattr(m, name, nn.Identity() if shift is None else _Shift(shift))
            _fold_into(m.proj, m.bn_proj)
            m.bn_proj = nn.Identity()
    return model


def prepare_for_inference(model: nn.Module, device: torch.device, engine: str = "gather") -> nn.Module:
    """Eval mode on `device`, BatchNorm folded, sparse convs as gather + GEMM (`engine="gather"`) or
    left to spconv (`"spconv"`), and on the GPU the sparse parts in fp16 (see
    `half_sparse_for_inference`). The one preparation the evaluate step, online streaming and the
    benchmarks share."""
    if engine not in ENGINES:
        raise ValueError(f"unknown sparse engine {engine!r}; choose one of {ENGINES}")
    if engine == "spconv" and any(isinstance(m, GatherConv) for m in model.modules()):
        raise ValueError("the model runs gather convs (built with model.sparse_engine=gather); build it with "
                         "model.sparse_engine=spconv to prepare it for spconv")
    model.to(device).eval()
    fold_batchnorm(model, fuse_all=engine == "gather")
    if engine == "gather":
        use_gather_convs(model)
    if torch.device(device).type == "cuda":
        half_sparse_for_inference(model)
    return model
