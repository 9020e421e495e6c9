"""Transfer step: a source model's weights → init weights of a target config's model, by key mapping.

SV → MV of the same route maps names one to one (the memory, box and merge heads start fresh);
route ❷ → ❸ maps `backbone.` onto `bi_encoder.backbone3d.` and `neck.` onto `bi_encoder.neck.` (the ❸ SV
configs' `init.mapping`, used when no mapping is given). A ❸ target needs its frozen CLIP conv1 to be
built: pass `overrides=["model.clip_weights=..."]` (or `model.clip_random_init=true` for smoke runs); the
conv1 is never part of the written weights. The report says what was loaded, missing, unexpected or
shape-mismatched; a mapping that loads nothing fails.
"""
from __future__ import annotations

from pathlib import Path

from oseg3d.configs import load_config
from oseg3d.engine.weights import load_state_dict, partial_load, save_weights
from oseg3d.models.build import build_model

__all__ = ["run"]


def run(source: str, target_config: str, out_dir: str, mapping: dict[str, str] | None = None,
        overrides: list[str] | None = None) -> dict:
    """Write `out_dir/init.safetensors` (loaded tensors under target names) and `out_dir/transfer_report.md`.

    `mapping` None: the target config's `init.mapping` (empty = same names); `{}`: same names.
    """
    cfg = load_config(target_config, overrides)
    if mapping is None:
        mapping = dict(cfg.init.mapping or {})
    model = build_model(cfg.model)
    report = partial_load(model, load_state_dict(source), mapping, source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    save_weights({k: state[k] for k in report.loaded}, str(out / "init.safetensors"),
                 metadata={"source": source, "target_config": target_config})
    md = f"# Transfer\n\nsource: `{source}`\n\ntarget config: `{target_config}`\n\nmapping: `{mapping}`\n\n"
    (out / "transfer_report.md").write_text(md + report.markdown() + "\n")
    return report.summary()
