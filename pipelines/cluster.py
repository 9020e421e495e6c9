"""Where tasks run on a cluster: GPUs only on the GPU steps, /dev/shm, the data volume, the S3 secret.

KFP v2 has no `set_gpu_limit` / node selectors of its own; kfp-kubernetes adds them to the task's
platform config (kfp.local ignores it, so the same DAG runs locally). Names match manifests/.
"""
from dataclasses import dataclass

from kfp import kubernetes
from kfp.dsl import PipelineTask

__all__ = ["ClusterOptions", "on_gpu", "with_storage"]


@dataclass(frozen=True)
class ClusterOptions:
    """Compile-time placement settings (see manifests/README.md).

    Attributes:
        gpu_resource: the device plugin's resource name.
        gpu_node_label: node label (key, value) that GPU steps select.
        gpu_toleration: taint key tolerated by GPU steps (NoSchedule).
        shm_size: size of the memory emptyDir at /dev/shm (DataLoader workers share batches through it).
        s3_secret: Secret whose keys become the object-store env vars ("" = none).
        data_pvc: PVC with the raw ScanNet export, mounted read-only at `data_mount` ("" = none).
    """

    gpu_resource: str = "nvidia.com/gpu"
    gpu_node_label: tuple[str, str] = ("nvidia.com/gpu.present", "true")
    gpu_toleration: str = "nvidia.com/gpu"
    shm_size: str = "16Gi"
    s3_secret: str = "oseg3d-s3"
    data_pvc: str = ""
    data_mount: str = "/data/scannet"


S3_ENV = {k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "OSEG3D_S3_ENDPOINT")}
# NVLink multicast off in NCCL, PyTorch and NVSHMEM: on shared multi-GPU hosts it can take the host's GPUs
# out of service (the GPU provider's rule); the same defaults as `oseg3d.engine.trainer.SAFE_COLLECTIVES_ENV`
SAFE_COLLECTIVES_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def on_gpu(task: PipelineTask, gpus, opts: ClusterOptions, cpu: str = "8", memory: str = "64G") -> PipelineTask:
    """Request `gpus` GPUs, land on a GPU node, give the DataLoader a real /dev/shm, keep NVLink multicast off."""
    task.set_accelerator_type(opts.gpu_resource).set_accelerator_limit(gpus)
    for name, value in SAFE_COLLECTIVES_ENV.items():
        task.set_env_variable(name, value)
    task.set_cpu_request(cpu).set_memory_request(memory)
    kubernetes.add_node_selector(task, *opts.gpu_node_label)
    kubernetes.add_toleration(task, key=opts.gpu_toleration, operator="Exists", effect="NoSchedule")
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=opts.shm_size)
    return task


def with_storage(task: PipelineTask, opts: ClusterOptions, data: bool = False) -> PipelineTask:
    """Object-store credentials from the Secret (optional: a run on local paths needs none) and, for steps
    that read raw data, the data PVC."""
    if opts.s3_secret:
        kubernetes.use_secret_as_env(task, opts.s3_secret, S3_ENV, optional=True)
    if data and opts.data_pvc:
        kubernetes.mount_pvc(task, opts.data_pvc, opts.data_mount)
    return task
