"""Markdown tables and the flat scalar dict."""
from __future__ import annotations

import math

from oseg3d.eval.report import ap_table_markdown, flat_metrics, summary_markdown

AP = {
    "all_ap": 0.5, "all_ap_50%": 0.75, "all_ap_25%": 0.875,
    "classes": {"cabinet": {"ap": 0.5, "ap50%": 0.75, "ap25%": 0.875},
                "bed": {"ap": math.nan, "ap50%": math.nan, "ap25%": math.nan}},
}
SEM = {"miou": 0.25, "acc": 0.5, "acc_cls": 0.4, "classes": {"wall": {"iou": 0.25, "acc": 0.5}}}


def test_ap_table():
    lines = ap_table_markdown(AP).splitlines()
    assert lines[0] == "| class | AP | AP50 | AP25 |"
    assert lines[2] == "| cabinet | 50.0 | 75.0 | 87.5 |"
    assert lines[3] == "| bed | – | – | – |"
    assert lines[4] == "| **mean** | **50.0** | **75.0** | **87.5** |"
    assert "| cabinet | 0.500 | 0.750 | 0.875 |" in ap_table_markdown(AP, scale=1, digits=3)


def test_flat_metrics():
    flat = flat_metrics(ap=AP, semantic=SEM, prefix="val/")
    assert flat == {"val/all_ap": 0.5, "val/all_ap_50%": 0.75, "val/all_ap_25%": 0.875,
                    "val/miou": 0.25, "val/acc": 0.5, "val/acc_cls": 0.4}
    per = flat_metrics(ap=AP, per_class=True)
    assert per["ap50%/cabinet"] == 0.75 and math.isnan(per["ap/bed"])


def test_summary_markdown():
    assert summary_markdown({"miou": 0.25}).splitlines()[2] == "| miou | 25.0 |"
