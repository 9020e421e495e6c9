"""Data components: create_data, precompute_clip (route ❸'s offline CLIP conv1 features)."""
# no `from __future__ import annotations`: KFP reads the real annotation objects
from kfp.dsl import Dataset, Input, Markdown, Output

from components.image import component

__all__ = ["create_data", "precompute_clip"]


@component
def create_data(kind: str, raw_uri: str, synth_scenes: int, synth_frames: int, num_points: int, workspace: str,
                dataset: Output[Dataset], report: Output[Markdown]):
    """Processed SV/MV dataset from a raw ScanNet root (or a synthetic world when raw_uri is empty)."""
    from oseg3d.steps import tasks

    tasks.create_data(kind, raw_uri, synth_scenes, synth_frames, num_points, workspace, dataset, report)


@component
def precompute_clip(dataset: Input[Dataset], clip_weights: str, workspace: str, features: Output[Dataset],
                    report: Output[Markdown]):
    """CLIP ViT-B/16 conv1 features (fp16 pix + global) of every frame the loaders use; incremental."""
    from oseg3d.steps import tasks

    tasks.precompute_clip(clip_weights, workspace, dataset, features, report)
