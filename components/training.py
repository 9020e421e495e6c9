"""Training components: train and transfer (init weights for the next stage or route)."""
# no `from __future__ import annotations`: KFP reads the real annotation objects
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.image import component

__all__ = ["train", "transfer"]


@component
def train(config: str, overrides: list, workspace: str, dataset: Input[Dataset], model: Output[Model],
          metrics: Output[Metrics], init: Input[Model] = None, clip_weights: str = ""):
    """Train a config on a dataset (a retry resumes from the last checkpoint in the step's home)."""
    from oseg3d.steps import tasks

    tasks.train(config, overrides, workspace, dataset, model, metrics, init, clip_weights)


@component
def transfer(source: Input[Model], target_config: str, workspace: str, init: Output[Model],
             report: Output[Markdown], clip_weights: str = ""):
    """Init weights for the target config by key mapping, with a loaded/missing/unexpected report."""
    from oseg3d.steps import tasks

    tasks.transfer(source, target_config, workspace, init, report, clip_weights)
