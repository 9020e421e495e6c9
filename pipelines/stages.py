"""Task builders shared by the DAGs: one place decides placement (GPU, secrets, PVC) and retries."""
from components.data import create_data, precompute_clip
from components.evaluation import evaluate
from components.training import train, transfer
from pipelines.cluster import ClusterOptions, on_gpu, with_storage

__all__ = ["Stages"]


class Stages:
    """Builds tasks with the pipeline-wide parameters (workspace, GPUs, CLIP weights) bound once."""

    def __init__(self, opts: ClusterOptions, workspace, gpus, clip_weights=""):
        self.opts, self.workspace, self.gpus, self.clip_weights = opts, workspace, gpus, clip_weights

    def data(self, kind, raw_uri, synth_scenes, synth_frames, points_per_frame):
        task = create_data(kind=kind, raw_uri=raw_uri, synth_scenes=synth_scenes, synth_frames=synth_frames,
                           num_points=points_per_frame, workspace=self.workspace)
        return with_storage(task, self.opts, data=True).outputs["dataset"]

    def clip(self, dataset):
        task = precompute_clip(dataset=dataset, clip_weights=self.clip_weights, workspace=self.workspace)
        return on_gpu(with_storage(task, self.opts, data=True), 1, self.opts).outputs["features"]

    def fit(self, config, overrides, dataset, init=None):
        extra = {"init": init} if init is not None else {}
        task = train(config=config, overrides=overrides, workspace=self.workspace, dataset=dataset,
                     clip_weights=self.clip_weights, **extra)
        return on_gpu(with_storage(task.set_retry(2), self.opts), self.gpus, self.opts).outputs["model"]

    def transfer(self, source, target_config):
        task = transfer(source=source, target_config=target_config, workspace=self.workspace,
                        clip_weights=self.clip_weights)
        return with_storage(task, self.opts).outputs["init"]

    def score(self, config, overrides, dataset, model):
        task = evaluate(config=config, overrides=overrides, workspace=self.workspace, dataset=dataset, model=model,
                        clip_weights=self.clip_weights)
        return on_gpu(with_storage(task, self.opts), 1, self.opts).outputs["metrics"]

    def route(self, sv_config, mv_config, sv_overrides, mv_overrides, sv_data, mv_data, sv_init=None):
        """SV training (from `sv_init`) → evaluate; transfer → MV training → evaluate. Returns
        (SV model, MV model, SV metrics, MV metrics)."""
        sv = self.fit(sv_config, sv_overrides, sv_data, sv_init)
        mv = self.fit(mv_config, mv_overrides, mv_data, self.transfer(sv, mv_config))
        return sv, mv, self.score(sv_config, sv_overrides, sv_data, sv), self.score(mv_config, mv_overrides, mv_data, mv)
