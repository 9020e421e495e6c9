"""Compare step: evaluation metrics of several routes → one ablation table (Markdown and HTML).

Columns follow the seed's ablation: the segmentation scores people compare routes by, then the cost of
each route (parameters, peak GPU memory, milliseconds per frame of the evaluation loop).
"""
from __future__ import annotations

import math

from oseg3d.eval import html

__all__ = ["COLUMNS", "render"]

# (metric key as logged by evaluate, header, scale, decimals)
COLUMNS = (
    ("miou", "mIoU", 100, 1), ("mcov", "mCov", 100, 1), ("mrec", "mRec", 100, 1),
    ("all_ap", "AP", 100, 1), ("all_ap_50", "AP50", 100, 1), ("all_ap_25", "AP25", 100, 1),
    ("params_m", "params (M)", 1, 2), ("peak_mem_gb", "peak mem (GB)", 1, 2), ("ms_per_frame", "ms/frame", 1, 1),
)


def _cell(values: dict, key: str, scale: float, digits: int) -> str:
    v = values.get(key)
    return "–" if v is None or math.isnan(v) else f"{v * scale:.{digits}f}"


def render(rows: dict[str, dict[str, float]], title: str = "Routes side by side") -> tuple[str, str]:
    """(Markdown, HTML) of one row per route label; a missing metric shows "–"."""
    headers = ["route", *(h for _, h, _, _ in COLUMNS)]
    table = [[label, *(_cell(v, k, s, d) for k, _, s, d in COLUMNS)] for label, v in rows.items()]
    md = [f"# {title}", "", "| " + " | ".join(headers) + " |", "|---" + "|---:" * len(COLUMNS) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in table]
    note = "Scores in %; ms/frame is the evaluation loop's wall time per frame (data, model and scoring)."
    return "\n".join(md) + f"\n\n{note}\n", html.page(title, [("", html.table(headers, table) + f"<p>{note}</p>")])
