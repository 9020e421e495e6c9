"""Experiment configs: a typed schema, YAML deltas on `_base_`, `key=value` overrides."""
from oseg3d.configs.loader import config_names, config_to_yaml, load_config, save_config
from oseg3d.configs.schema import ExperimentConfig

__all__ = ["ExperimentConfig", "load_config", "save_config", "config_names", "config_to_yaml"]
