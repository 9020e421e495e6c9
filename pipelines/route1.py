"""Route ❶ DAG: create_data (SV, MV) → train SV → transfer → train MV → evaluate SV, MV → compare."""
# no `from __future__ import annotations`: KFP reads the real annotation objects
from kfp import compiler, dsl

from components.data import create_data
from components.evaluation import compare, evaluate
from components.training import train, transfer
from pipelines.cluster import ClusterOptions, on_gpu, with_storage

__all__ = ["build", "route1", "compile_pipeline"]


def build(opts: ClusterOptions = ClusterOptions()):
    """The route ❶ pipeline function for these placement options."""

    @dsl.pipeline(name="oseg3d-route1", description="ESAM-style route 1: pure 3D, SV then online MV")
    def route1(raw_uri: str = "", synth_scenes: int = 3, synth_frames: int = 41, points_per_frame: int = 20000,
               workspace: str = "",
               sv_kind: str = "scannet200_sv", mv_kind: str = "scannet200_mv",
               sv_config: str = "ESAM_sv_3d_scannet200", mv_config: str = "ESAM_online_3d_scannet200",
               sv_overrides: list = [], mv_overrides: list = [], gpus: int = 1):  # noqa: B006 - KFP list defaults
        def data(kind):
            return with_storage(create_data(kind=kind, raw_uri=raw_uri, synth_scenes=synth_scenes,
                                            synth_frames=synth_frames, num_points=points_per_frame,
                                            workspace=workspace), opts, data=True)

        def fit(config, overrides, dataset, init=None):
            extra = {"init": init.outputs["init"]} if init is not None else {}
            task = train(config=config, overrides=overrides, workspace=workspace, dataset=dataset, **extra)
            return on_gpu(with_storage(task.set_retry(2), opts), gpus, opts)

        def score(config, overrides, dataset, model):
            task = evaluate(config=config, overrides=overrides, workspace=workspace, dataset=dataset, model=model)
            return on_gpu(with_storage(task, opts), 1, opts)

        sv_data, mv_data = data(sv_kind).outputs["dataset"], data(mv_kind).outputs["dataset"]
        sv = fit(sv_config, sv_overrides, sv_data)
        sv_eval = score(sv_config, sv_overrides, sv_data, sv.outputs["model"])
        init = with_storage(transfer(source=sv.outputs["model"], target_config=mv_config, workspace=workspace), opts)
        mv = fit(mv_config, mv_overrides, mv_data, init)
        mv_eval = score(mv_config, mv_overrides, mv_data, mv.outputs["model"])
        compare(r1_sv=sv_eval.outputs["metrics"], r1_mv=mv_eval.outputs["metrics"])

    return route1


route1 = build()


def compile_pipeline(path: str, opts: ClusterOptions = ClusterOptions()) -> str:
    """Write the KFP IR YAML of route ❶ to `path`."""
    compiler.Compiler().compile(build(opts), package_path=path)
    return path
