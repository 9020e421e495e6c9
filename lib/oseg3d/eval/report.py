"""Human- and logger-facing views of the metric dicts: Markdown tables and a flat dict of scalars.

The flat keys keep ESAM's names for AP (`all_ap`, `all_ap_50%`, `all_ap_25%`, its `logger_keys`) so our
numbers sit next to the paper's without renaming; the other groups use `miou`, `acc`, `mcov`, ....
"""
from __future__ import annotations

import math

__all__ = ["ap_table_markdown", "summary_markdown", "flat_metrics"]


def _fmt(value: float, scale: float, digits: int) -> str:
    return "–" if value is None or math.isnan(value) else f"{value * scale:.{digits}f}"


def ap_table_markdown(ap: dict, scale: float = 100.0, digits: int = 1) -> str:
    """Per-class AP / AP50 / AP25 and the class mean, as a Markdown table.

    Args:
        ap: the dict of `evaluate_instances` (or `evaluate_instances_agnostic`).
        scale: 100 prints percentages (as ESAM's tables), 1 fractions (as the benchmark script).
        digits: decimals.

    Returns:
        Markdown text; classes without GT show "–".
    """
    lines = ["| class | AP | AP50 | AP25 |", "|---|---:|---:|---:|"]
    for name, v in ap["classes"].items():
        lines.append(f"| {name} | {_fmt(v['ap'], scale, digits)} | {_fmt(v['ap50%'], scale, digits)} | "
                     f"{_fmt(v['ap25%'], scale, digits)} |")
    lines.append(f"| **mean** | **{_fmt(ap['all_ap'], scale, digits)}** | **{_fmt(ap['all_ap_50%'], scale, digits)}** "
                 f"| **{_fmt(ap['all_ap_25%'], scale, digits)}** |")
    return "\n".join(lines) + "\n"


def flat_metrics(ap: dict | None = None, semantic: dict | None = None, coverage: dict | None = None,
                 prefix: str = "", per_class: bool = False) -> dict[str, float]:
    """Scalar metrics for loggers and KFP `Metrics`, from any of the three metric dicts.

    Args:
        ap: dict of `evaluate_instances*`.
        semantic: dict of `semantic_metrics` / `ConfusionMatrix.compute`.
        coverage: dict of `evaluate_coverage*`.
        prefix: prepended to every key (e.g. "val/").
        per_class: also add "<metric>/<class>" entries.

    Returns:
        {name: float}; NaN values are kept (a class without GT), so callers decide how to show them.
    """
    groups = (
        (ap, ("all_ap", "all_ap_50%", "all_ap_25%"), ("ap", "ap50%", "ap25%")),
        (semantic, ("miou", "acc", "acc_cls"), ("iou",)),
        (coverage, ("mcov", "mwcov", "mprec", "mrec"), ("cov", "wcov", "prec", "rec")),
    )
    out: dict[str, float] = {}
    for result, summary_keys, class_keys in groups:
        if result is None:
            continue
        for k in summary_keys:
            out[prefix + k] = float(result[k])
        if per_class:
            for name, v in result["classes"].items():
                for k in class_keys:
                    out[f"{prefix}{k}/{name}"] = float(v[k])
    return out


def summary_markdown(metrics: dict[str, float], scale: float = 100.0, digits: int = 1) -> str:
    """A two-column Markdown table of scalar metrics (e.g. the output of `flat_metrics`).

    Returns:
        Markdown text, one row per metric in the dict's order.
    """
    lines = ["| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {_fmt(v, scale, digits)} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"
