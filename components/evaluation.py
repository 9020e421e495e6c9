"""Evaluation components: evaluate one model, compare the routes."""
# no `from __future__ import annotations`: KFP reads the real annotation objects
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import component

__all__ = ["evaluate", "compare"]


@component
def evaluate(config: str, overrides: list, workspace: str, dataset: Input[Dataset], model: Input[Model],
             metrics: Output[Metrics], report: Output[Markdown], html_report: Output[HTML],
             confusion: Output[ClassificationMetrics], clip_weights: str = ""):
    """AP / AP50 / AP25 / mIoU / mCov / mWCov / mPrec / mRec, per-class report with plots, confusion."""
    from oseg3d.steps import tasks

    tasks.evaluate(config, overrides, workspace, dataset, model, metrics, report, html_report, confusion,
                   clip_weights)


@component
def compare(r1_sv: Input[Metrics], r1_mv: Input[Metrics], table: Output[Markdown], table_html: Output[HTML],
            r2_sv: Input[Metrics] = None, r2_mv: Input[Metrics] = None, r3_sv: Input[Metrics] = None,
            r3_mv: Input[Metrics] = None):
    """The routes' evaluations side by side (the ablation table)."""
    from oseg3d.steps import tasks

    tasks.compare({"❶ SV": r1_sv, "❶ MV": r1_mv, "❷ SV": r2_sv, "❷ MV": r2_mv, "❸ SV": r3_sv, "❸ MV": r3_mv},
                  table, table_html)
