"""Transfer step: a source model's weights → init weights of a target config's model, by key mapping.

SV → MV of the same route maps names one to one (the memory, box and merge heads start fresh);
route ❷ → ❸ maps `backbone.` onto `bi_encoder.backbone3d.`. The report says what was loaded, missing,
unexpected or shape-mismatched; a mapping that loads nothing fails.
"""
from __future__ import annotations

from pathlib import Path

from oseg3d.configs import load_config
from oseg3d.engine.weights import load_state_dict, partial_load, save_weights
from oseg3d.models.build import build_model

__all__ = ["run"]


def run(source: str, target_config: str, out_dir: str, mapping: dict[str, str] | None = None,
        overrides: list[str] | None = None) -> dict:
    """Write `out_dir/init.safetensors` (loaded tensors under target names) and `out_dir/transfer_report.md`."""
    cfg = load_config(target_config, overrides)
    model = build_model(cfg.model)
    report = partial_load(model, load_state_dict(source), mapping or {}, source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    save_weights({k: state[k] for k in report.loaded}, str(out / "init.safetensors"),
                 metadata={"source": source, "target_config": target_config})
    md = f"# Transfer\n\nsource: `{source}`\n\ntarget config: `{target_config}`\n\nmapping: `{mapping or {}}`\n\n"
    (out / "transfer_report.md").write_text(md + report.markdown() + "\n")
    return report.summary()
