"""CLIP ViT-B/16 conv1: the frozen extractor (`conv1`), per-frame feature files and their loading
(`features`), and the offline precompute over a processed dataset (`precompute`)."""
from __future__ import annotations

from .conv1 import OPENAI_MEAN, OPENAI_STD, ClipConv1, load_clip_conv1, pix_and_global

__all__ = ["OPENAI_MEAN", "OPENAI_STD", "ClipConv1", "load_clip_conv1", "pix_and_global"]
