"""The create_data report: frames kept and skipped by reason, failed and missing scenes (JSON + Markdown)."""
from __future__ import annotations

from collections import Counter

from oseg3d import storage

__all__ = ["write_report"]


def write_report(out_root: str, kind: str, results: dict, splits: dict, missing: list[str],
                 duplicates: list[str], skipped_by_marker: int, elapsed: float) -> dict:
    """Summarise per-scene results, write report.json and report.md under `out_root`, return the dict."""
    skipped = Counter()
    for r in results.values():
        skipped.update(r.skipped)
    kept = sum(r.kept for r in results.values() if r.error is None)
    processed_frames = sum(r.kept + sum(r.skipped.values()) for r in results.values())
    failed = {s: r.error for s, r in results.items() if r.error}
    report = {
        "kind": kind,
        "scenes": {
            "listed": {k: len(v) for k, v in splits.items()}, "done": len(results) - len(failed),
            "reused": skipped_by_marker, "failed": failed, "missing": missing, "duplicates": duplicates,
        },
        "frames": {"kept": kept, "skipped": dict(sorted(skipped.items())), "total": processed_frames},
        "skipped_frames": sorted(f for r in results.values() for f in r.skipped_frames),
        "unknown_labels": {s: r.unknown_labels for s, r in sorted(results.items()) if r.unknown_labels},
        "elapsed_s": round(elapsed, 3),
    }
    storage.write_json(storage.join(out_root, "report.json"), report)
    lines = [f"# create_data {kind}", "", "| | count |", "|---|---|",
             f"| scenes done | {report['scenes']['done']} (reused {skipped_by_marker}) |",
             f"| scenes failed | {len(failed)} |", f"| scenes missing | {len(missing)} |",
             f"| duplicate scene ids | {len(duplicates)} |", f"| frames kept | {kept} |"]
    lines += [f"| frames skipped: {k} | {v} |" for k, v in sorted(skipped.items())]
    if failed:
        lines += ["", "## Failed scenes", ""] + [f"- `{s}`: {e}" for s, e in sorted(failed.items())]
    if missing:
        lines += ["", "## Listed but absent", ""] + [f"- `{s}`" for s in missing]
    if report["unknown_labels"]:
        lines += ["", "## Labels not in the TSV (semantic 0 = ignore)", ""]
        lines += [f"- `{s}`: {', '.join(v)}" for s, v in report["unknown_labels"].items()]
    storage.write_text(storage.join(out_root, "report.md"), "\n".join(lines) + "\n")
    return report
