"""Model weights on storage: safetensors export, pickle-free loading, and partial load by key mapping.

Runs hand weights to each other as `model.safetensors` (no pickle). Lightning checkpoints (for resume)
are read only with `torch.load(weights_only=True)`. `partial_load` maps source key prefixes onto the
target model (`backbone.` → `bi_encoder.backbone3d.`) and reports what was loaded, missing, unexpected
or shape-mismatched; a mapping that loads nothing is an error, never a silent random init.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save_file

from oseg3d import storage
from oseg3d.errors import ConfigError, StorageError

__all__ = ["save_weights", "load_state_dict", "partial_load", "check_fits", "LoadReport"]


def save_weights(state: dict[str, torch.Tensor], uri: str, metadata: dict[str, str] | None = None) -> None:
    """Write a state dict as safetensors (atomic, local or s3://)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, path, metadata=metadata)
        except (OSError, SafetensorError) as e:
            # a full scratch disk: safetensors reports the OSError (ENOSPC, EFBIG) as its own error type
            raise StorageError(path, f"could not write the weights' scratch copy for {uri} ({e})",
                               f"free disk space on the volume holding {tmp} (or set TMPDIR to a larger one), "
                               "then rerun") from None
        storage.put_file(path, uri, move=True)


def load_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """Weights from a `.safetensors` file or a Lightning `.ckpt` (read with weights_only=True)."""
    data = storage.read_bytes(uri)
    if uri.endswith(".safetensors"):
        try:
            return st_load(data)
        except Exception as e:  # safetensors raises its own error type on a bad header
            raise ConfigError(uri, f"unreadable safetensors weights ({e})", "point init.checkpoint at a model.safetensors") from None
    import io

    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(uri, f"not a loadable checkpoint ({e.__class__.__name__})",
                          "use a model.safetensors or a Lightning .ckpt written by oseg3d train") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(uri, "checkpoint holds no state dict", "use a model.safetensors written by oseg3d train")
    # Lightning prefixes the wrapped model's keys with "model."
    return {k[6:] if k.startswith("model.") else k: v for k, v in state.items()}


@dataclass
class LoadReport:
    """What a partial load did (all lists of target keys, except `unexpected`: source keys)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.__dict__.items()}

    def markdown(self) -> str:
        lines = ["| keys | count |", "|---|---|"] + [f"| {k} | {v} |" for k, v in self.summary().items()]
        for name in ("missing", "unexpected", "shape_mismatch"):
            items = getattr(self, name)
            if items:
                lines += ["", f"**{name}** ({len(items)}): " + ", ".join(f"`{k}`" for k in items[:30])
                          + (" …" if len(items) > 30 else "")]
        return "\n".join(lines)


def _map_key(key: str, mapping: dict[str, str]) -> str | None:
    if not mapping:
        return key
    for src, dst in sorted(mapping.items(), key=lambda kv: -len(kv[0])):  # longest prefix wins
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def check_fits(model: torch.nn.Module, source: dict[str, torch.Tensor], source_name: str = "checkpoint") -> None:
    """Raise ConfigError unless `source` has exactly `model`'s tensor names and shapes.

    For weights that must be this model's own (evaluation, resuming a run): a checkpoint of another model
    or config is then an error that names it, not a half-random model or a RuntimeError from
    `load_state_dict`.
    """
    target = model.state_dict()
    missing = sorted(k for k in target if k not in source)
    unexpected = sorted(k for k in source if k not in target)
    shapes = sorted(k for k in target if k in source and tuple(source[k].shape) != tuple(target[k].shape))
    if missing or unexpected or shapes:
        first = lambda keys: f" (e.g. {keys[0]})" if keys else ""  # noqa: E731
        raise ConfigError(source_name, f"holds the weights of another model: {len(missing)} tensors missing"
                          f"{first(missing)}, {len(unexpected)} unexpected{first(unexpected)}, {len(shapes)} of "
                          f"another shape{first(shapes)}", "pass the weights of a run trained with this config "
                          "(model_best.safetensors), or start a fresh run folder")


def partial_load(model: torch.nn.Module, source: dict[str, torch.Tensor], mapping: dict[str, str],
                 source_name: str = "checkpoint", strict: bool = False) -> LoadReport:
    """Copy the source tensors whose mapped name and shape match into `model` (in place).

    With `strict`, every tensor of `model` must come from `source` (see `check_fits`).
    """
    if strict:
        mapped = {m: v for k, v in source.items() if (m := _map_key(k, mapping)) is not None}
        check_fits(model, mapped, source_name)
    target = model.state_dict()
    report, new_state = LoadReport(), {}
    for key, tensor in source.items():
        dst = _map_key(key, mapping)
        if dst is None or dst not in target:
            report.unexpected.append(key)
        elif target[dst].shape != tensor.shape:
            report.shape_mismatch.append(dst)
        else:
            new_state[dst] = tensor
    report.loaded = sorted(new_state)
    report.shape_mismatch.sort()
    report.unexpected.sort()
    report.missing = sorted(k for k in target if k not in new_state)
    if not report.loaded:
        raise ConfigError(source_name, f"the key mapping {mapping or '{}'} loads no tensor into the target model",
                          "check init.mapping prefixes against the source keys (e.g. backbone. → bi_encoder.backbone3d.)")
    model.load_state_dict(new_state, strict=False)
    return report
