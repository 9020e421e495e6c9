"""Route ❶ DAG: create_data (SV, MV) → train SV → transfer → train MV → evaluate SV, MV → compare."""
# no `from __future__ import annotations`: KFP reads the real annotation objects
from kfp import dsl

from components.evaluation import compare
from pipelines.cluster import ClusterOptions
from pipelines.stages import Stages

__all__ = ["build", "route1"]


def build(opts: ClusterOptions = ClusterOptions()):
    """The route ❶ pipeline function for these placement options."""

    @dsl.pipeline(name="oseg3d-route1", description="ESAM-style route 1: pure 3D, SV then online MV")
    def route1(raw_uri: str = "", synth_scenes: int = 3, synth_frames: int = 41, points_per_frame: int = 20000,
               workspace: str = "", sv_kind: str = "scannet200_sv", mv_kind: str = "scannet200_mv",
               sv_config: str = "ESAM_sv_3d_scannet200", mv_config: str = "ESAM_online_3d_scannet200",
               sv_overrides: list = [], mv_overrides: list = [], gpus: int = 1):  # noqa: B006 - KFP list defaults
        s = Stages(opts, workspace, gpus)
        sv_data = s.data(sv_kind, raw_uri, synth_scenes, synth_frames, points_per_frame)
        mv_data = s.data(mv_kind, raw_uri, synth_scenes, synth_frames, points_per_frame)
        _, _, sv_eval, mv_eval = s.route(sv_config, mv_config, sv_overrides, mv_overrides, sv_data, mv_data)
        compare(r1_sv=sv_eval, r1_mv=mv_eval)

    return route1


route1 = build()

