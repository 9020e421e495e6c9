"""Small helpers over spconv 2.x: lifting feature-wise modules, and choosing the conv algorithm by device.

spconv's MaskImplicitGemm kernels exist only on the GPU; on the CPU every conv must use the Native
(gather-GEMM-scatter) algorithm. Layers sharing an `indice_key` must share an algorithm too, so the
algorithm is switched for the whole model at once, the first time it sees a tensor on a new device.
"""
from __future__ import annotations

import contextlib
import math

import torch
from spconv.core import ConvAlgo
from spconv.pytorch import SparseConvTensor
from spconv.pytorch.conv import SparseConvolution
from torch import nn

__all__ = ["fapply", "SparseBNReLU", "algo_for", "set_conv_algo", "ConvAlgo", "half_sparse_for_inference", "fp16_region"]


def fapply(x: SparseConvTensor, fn) -> SparseConvTensor:
    """Apply a feature-wise function (BN, ReLU, Linear, ...) to a sparse tensor's features."""
    return x.replace_feature(fn(x.features))


class SparseBNReLU(nn.Module):
    """BatchNorm1d (+ optional ReLU) on sparse features."""

    def __init__(self, channels: int, relu: bool = True, momentum: float = 0.02):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, momentum=momentum)
        self.relu = relu

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        f = self.bn(x.features)
        return x.replace_feature(torch.relu(f) if self.relu else f)


def algo_for(device: torch.device | str) -> ConvAlgo:
    """MaskImplicitGemm on CUDA, Native elsewhere (the only algorithm spconv has on the CPU)."""
    return ConvAlgo.MaskImplicitGemm if torch.device(device).type == "cuda" else ConvAlgo.Native


def set_conv_algo(module: nn.Module, algo: ConvAlgo) -> None:
    """Set the algorithm of every spconv convolution inside `module`.

    Kernels of more than 32 taps (the 5³ stem) stay on Native: spconv ships no prebuilt implicit-GEMM
    kernels for them and would try to compile one with NVRTC at run time (spconv's own default).
    """
    for m in module.modules():
        if isinstance(m, SparseConvolution):
            m.algo = algo if math.prod(m.kernel_size) <= 32 else ConvAlgo.Native


def half_sparse_for_inference(model: nn.Module) -> nn.Module:
    """Cast the sparse parts to fp16 for mixed-precision inference on the GPU.

    The sparse parts are the 3D U-Net (`backbone`, or route ❸'s `bi_encoder.backbone3d`) and the
    `memory` adapters, plus any spconv layer a neck may hold (Tiny-SA holds none: it is dense attention
    and stays fp32 under autocast like the decoder; its input, the U-Net's fp16 output, is autocast's
    business). Route ❸'s fusion layers (conv_reduce, projections, FiLM) are dense and its frozen CLIP
    conv1 keeps its own dtype.

    In training spconv casts its inputs to fp16 under autocast itself; its inference path does not,
    and has kernels for fp16/fp32 only (bf16 finds none), so eval under autocast needs the sparse
    weights in fp16. The dense parts stay in fp32 under autocast. Mutates and returns `model`.
    """
    bi = getattr(model, "bi_encoder", None)
    parts = [getattr(model, "backbone", None), getattr(model, "memory", None),
             getattr(bi, "backbone3d", None) if bi is not None else None]
    for part in parts:
        if part is not None:
            part.half()
    for neck in (getattr(model, "neck", None), getattr(bi, "neck", None) if bi is not None else None):
        if neck is not None:
            for m in neck.modules():
                if isinstance(m, SparseConvolution):
                    m.half()
    return model


def fp16_region(module: nn.Module):
    """Autocast off inside a module cast by `half_sparse_for_inference` (it is fp16 end to end, and
    bf16 autocast would otherwise hand its fp16 BatchNorms bf16 Linear outputs); a no-op otherwise."""
    p = next(module.parameters(), None)
    if p is not None and p.dtype == torch.float16:
        return torch.autocast(p.device.type, enabled=False)
    return contextlib.nullcontext()
