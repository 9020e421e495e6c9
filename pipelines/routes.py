"""The full DAG ❶ → ❷ → ❸ (DESIGN §3): each route's best weights initialise the next one, automatically.

❶ pure 3D: SV → transfer → MV. ❷ 3D + Tiny-SA: SV from ❶ SV best (same names; the neck starts as the
identity) → MV. ❸ Bi-Fusion on datasets with precomputed CLIP conv1 features: SV with
`bi_encoder.backbone3d` (+ neck) ← ❷ MV best (the config's init mapping) → MV. compare renders the six
evaluations side by side.
"""
# no `from __future__ import annotations`: KFP reads the real annotation objects
from kfp import dsl

from components.evaluation import compare
from pipelines.cluster import ClusterOptions
from pipelines.stages import Stages

__all__ = ["build", "routes"]


def build(opts: ClusterOptions = ClusterOptions()):
    """The ❶ → ❷ → ❸ pipeline function for these placement options."""

    @dsl.pipeline(name="oseg3d-routes", description="ESAM-style routes 1 (3D), 2 (3D + Tiny-SA), 3 (Bi-Fusion)")
    def routes(raw_uri: str = "", synth_scenes: int = 3, synth_frames: int = 41, points_per_frame: int = 20000,
               workspace: str = "", benchmark: str = "scannet200", clip_weights: str = "",
               r1_sv_config: str = "ESAM_sv_3d_scannet200", r1_mv_config: str = "ESAM_online_3d_scannet200",
               r2_sv_config: str = "ESAM_sv_3dtsa_scannet200", r2_mv_config: str = "ESAM_online_3dtsa_scannet200",
               r3_sv_config: str = "ESAM_sv_bifusion_scannet200",
               r3_mv_config: str = "ESAM_online_bifusion_scannet200",
               sv_kind: str = "scannet200_sv", mv_kind: str = "scannet200_mv",
               sv_overrides: list = [], mv_overrides: list = [], gpus: int = 1):  # noqa: B006 - KFP list defaults
        s = Stages(opts, workspace, gpus, clip_weights)
        sv_data = s.data(sv_kind, raw_uri, synth_scenes, synth_frames, points_per_frame)
        mv_data = s.data(mv_kind, raw_uri, synth_scenes, synth_frames, points_per_frame)
        r1_sv, _, r1_sv_eval, r1_mv_eval = s.route(r1_sv_config, r1_mv_config, sv_overrides, mv_overrides,
                                                   sv_data, mv_data)
        _, r2_mv, r2_sv_eval, r2_mv_eval = s.route(r2_sv_config, r2_mv_config, sv_overrides, mv_overrides,
                                                   sv_data, mv_data, s.transfer(r1_sv, r2_sv_config))
        _, _, r3_sv_eval, r3_mv_eval = s.route(r3_sv_config, r3_mv_config, sv_overrides, mv_overrides,
                                               s.clip(sv_data), s.clip(mv_data), s.transfer(r2_mv, r3_sv_config))
        compare(r1_sv=r1_sv_eval, r1_mv=r1_mv_eval, r2_sv=r2_sv_eval, r2_mv=r2_mv_eval, r3_sv=r3_sv_eval,
                r3_mv=r3_mv_eval)

    return routes


routes = build()

