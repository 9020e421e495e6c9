"""Self-contained HTML reports (tables + PNGs embedded as data URIs), for KFP's HTML viewer and local runs.

KFP shows an HTML artifact in a sandboxed iframe, so everything, images included, lives in the one file.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

__all__ = ["table", "image", "page"]

_STYLE = ("body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;"
          "margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
          "td:first-child,th:first-child{text-align:left}th{background:#f2f2f2}img{max-width:100%}")


def table(headers: list[str], rows: list[list], caption: str = "") -> str:
    """An HTML table; cells are escaped, floats printed as given (format them before)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(png: str | Path, alt: str = "") -> str:
    """A PNG embedded as a data URI ("" when the file is missing: plots are optional)."""
    p = Path(png)
    if not p.is_file():
        return ""
    data = base64.b64encode(p.read_bytes()).decode()
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def page(title: str, blocks: list[tuple[str, str]]) -> str:
    """A complete HTML page: a title, then (heading, html) sections."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, body in blocks:
        parts.append((f"<h2>{html.escape(heading)}</h2>" if heading else "") + body)
    parts.append("</body></html>")
    return "".join(parts)
