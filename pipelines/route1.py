"""Route ❶ DAG: create_data (SV, MV) → train SV → transfer → train MV → evaluate SV and MV."""
# no `from __future__ import annotations`: KFP reads the real annotation objects
from kfp import compiler, dsl

from components.route1 import create_data, evaluate, train, transfer

__all__ = ["route1", "compile_pipeline"]


@dsl.pipeline(name="oseg3d-route1", description="ESAM-style route 1: pure 3D, SV then online MV")
def route1(raw_uri: str = "", synth_scenes: int = 3, synth_frames: int = 41,
           sv_kind: str = "scannet200_sv", mv_kind: str = "scannet200_mv",
           sv_config: str = "ESAM_sv_3d_scannet200", mv_config: str = "ESAM_online_3d_scannet200",
           sv_overrides: list = [], mv_overrides: list = []):  # noqa: B006 - KFP list defaults
    sv_data = create_data(kind=sv_kind, raw_uri=raw_uri, synth_scenes=synth_scenes, synth_frames=synth_frames)
    mv_data = create_data(kind=mv_kind, raw_uri=raw_uri, synth_scenes=synth_scenes, synth_frames=synth_frames)
    sv = train(config=sv_config, overrides=sv_overrides, dataset=sv_data.outputs["dataset"])
    sv.set_retry(2)
    evaluate(config=sv_config, overrides=sv_overrides, dataset=sv_data.outputs["dataset"], model=sv.outputs["model"])
    init = transfer(source=sv.outputs["model"], target_config=mv_config)
    mv = train(config=mv_config, overrides=mv_overrides, dataset=mv_data.outputs["dataset"], init=init.outputs["init"])
    mv.set_retry(2)
    evaluate(config=mv_config, overrides=mv_overrides, dataset=mv_data.outputs["dataset"], model=mv.outputs["model"])


def compile_pipeline(path: str) -> str:
    """Write the KFP IR YAML of route ❶ to `path`."""
    compiler.Compiler().compile(route1, package_path=path)
    return path
