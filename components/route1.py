"""Route ❶ components: create_data, train, transfer, evaluate."""
# no `from __future__ import annotations`: KFP reads the real annotation objects
from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.image import IMAGE

__all__ = ["create_data", "train", "transfer", "evaluate"]


@dsl.component(base_image=IMAGE)
def create_data(kind: str, raw_uri: str, synth_scenes: int, synth_frames: int, dataset: Output[Dataset],
                report: Output[Markdown]):
    """Processed SV/MV dataset from a raw ScanNet root (or a synthetic world when raw_uri is empty)."""
    import shutil

    from oseg3d.steps import create_data as step

    step.run(kind, dataset.path, raw_uri, synth_scenes, synth_frames)
    shutil.copyfile(f"{dataset.path}/report.md", report.path)


@dsl.component(base_image=IMAGE)
def train(config: str, overrides: list, dataset: Input[Dataset], model: Output[Model], metrics: Output[Metrics],
          init: Input[Model] = None):
    """Train (resumes from the run folder's last checkpoint on a retry)."""
    from oseg3d.steps import train as step

    init_path = f"{init.path}/init.safetensors" if init is not None else None
    summary = step.run(config, dataset.path, model.path, overrides=list(overrides), init=init_path)
    metrics.log_metric("global_step", summary["global_step"])


@dsl.component(base_image=IMAGE)
def transfer(source: Input[Model], target_config: str, init: Output[Model], report: Output[Markdown]):
    """Init weights for the target config by key mapping, with a load report."""
    import shutil

    from oseg3d.steps import transfer as step

    step.run(f"{source.path}/model_best.safetensors", target_config, init.path)
    shutil.copyfile(f"{init.path}/transfer_report.md", report.path)


@dsl.component(base_image=IMAGE)
def evaluate(config: str, overrides: list, dataset: Input[Dataset], model: Input[Model], metrics: Output[Metrics],
             report: Output[Markdown]):
    """Score the model on the dataset's val split (MV: online, on the mesh)."""
    import math
    import shutil

    from oseg3d.steps import evaluate as step

    out = step.run(config, dataset.path, f"{model.path}/model_best.safetensors", report.path + ".d", list(overrides))
    for k, v in out.items():
        if not math.isnan(v):
            metrics.log_metric(k, v)
    shutil.copyfile(report.path + ".d/report.md", report.path)
