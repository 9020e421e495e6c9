"""Load experiment configs: YAML deltas chained by `_base_`, `key=value` overrides, strict checking.

`load_config("ESAM_online_3d_scannet", ["optim.lr=1e-4"])` reads the packaged YAML (or a path), follows
its `_base_` chain down to the schema defaults, merges from the bottom up, applies the overrides, and
returns a typed `ExperimentConfig`. Unknown keys and wrong types raise ConfigError with the key and the
file (or "override") that set it. `save_config` writes the resolved config next to a run's outputs.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from oseg3d.configs.schema import ExperimentConfig
from oseg3d.errors import ConfigError

__all__ = ["load_config", "save_config", "config_names", "config_to_yaml"]

_PKG = resources.files("oseg3d.configs")


def config_names() -> list[str]:
    """Names of the packaged experiment configs."""
    return sorted(p.name[:-5] for p in _PKG.iterdir() if p.name.endswith(".yaml"))


def _locate(name_or_path: str, relative_to: Path | None = None) -> Path:
    p = Path(name_or_path)
    candidates = [p] if p.suffix == ".yaml" else [p.with_suffix(".yaml")]
    if relative_to is not None:
        candidates.insert(0, relative_to / candidates[-1])
    candidates.append(Path(str(_PKG.joinpath(candidates[-1].name))))
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(name_or_path, "config not found", f"use one of {', '.join(config_names())} or a .yaml path")


def _chain(path: Path, seen: tuple = ()) -> list[tuple[Path, dict]]:
    if path in seen:
        raise ConfigError(path, "_base_ chain loops back on itself", "fix the _base_ entries")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(path, f"invalid YAML ({e})", "fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "top level is not a mapping", "write the config as key: value pairs")
    base = data.pop("_base_", None)
    if not base:
        return [(path, data)]
    try:
        base_path = _locate(str(base), path.parent)
    except ConfigError as e:  # name the file holding the bad `_base_`, not just the name it asked for
        raise ConfigError(path, f"_base_ {base!r}: {e.problem}", e.fix) from None
    chain = _chain(base_path, seen + (path,))
    return chain + [(path, data)]


def _merge(cfg, data: dict, source: str):
    try:
        return OmegaConf.merge(cfg, OmegaConf.create(data))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(source, f"bad key or value {key!r}: {first}",
                          "use a key and type from oseg3d/configs/schema.py") from None


def load_config(name_or_path: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """Resolve a config (packaged name or YAML path) with `key=value` overrides into a typed object."""
    cfg = OmegaConf.structured(ExperimentConfig)
    for path, data in _chain(_locate(name_or_path)):
        cfg = _merge(cfg, data, str(path))
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(ov, "override is not key=value", "write e.g. optim.lr=1e-4")
        key, value = ov.split("=", 1)
        try:
            patch = OmegaConf.from_dotlist([f"{key}={value}"])
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {ov}", str(e), "check the key and value") from None
        cfg = _merge(cfg, OmegaConf.to_container(patch), f"override {ov}")
    return OmegaConf.to_object(cfg)


def config_to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config (atomic) — every run keeps the exact config it used."""
    from oseg3d import storage

    storage.write_text(str(path), config_to_yaml(cfg))
