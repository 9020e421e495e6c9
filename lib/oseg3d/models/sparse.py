"""Small helpers over spconv 2.x: lifting feature-wise modules, and choosing the conv algorithm by device.

spconv's MaskImplicitGemm kernels exist only on the GPU; on the CPU every conv must use the Native
(gather-GEMM-scatter) algorithm. Layers sharing an `indice_key` must share an algorithm too, so the
algorithm is switched for the whole model at once, the first time it sees a tensor on a new device.
"""
from __future__ import annotations

import torch
from spconv.core import ConvAlgo
from spconv.pytorch import SparseConvTensor
from spconv.pytorch.conv import SparseConvolution
from torch import nn

__all__ = ["fapply", "SparseBNReLU", "algo_for", "set_conv_algo", "ConvAlgo"]


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
    """Set the algorithm of every spconv convolution inside `module`."""
    for m in module.modules():
        if isinstance(m, SparseConvolution):
            m.algo = algo
