"""Build the oseg3d container images with the docker SDK.

    python images/build.py                               # GPU image  oseg3d:<version>      (CUDA PyTorch base)
    python images/build.py --base debian --variant cpu   # CPU image  oseg3d:<version>-cpu  (debootstrapped Debian)
    python images/build.py --lock                        # re-pin images/requirements*.txt after a pyproject change

Two images, so that a source change costs seconds: images/Dockerfile makes the runtime
(`oseg3d-deps:<version>-<variant>`: base + pinned dependencies + non-root user, ~2 GB) and images/app.Dockerfile
adds the package on top of it (a few MB).

Nothing is resolved or downloaded inside a build. images/requirements.txt (both images) and
requirements-gpu.txt (open_clip_torch and what only it needs) pin the whole runtime closure; `pip wheel` on
the host fetches exactly those wheels, with the host's pip configuration (indexes, local wheel folders, CA
bundle), into a wheelhouse that travels in the build context; the Dockerfile installs from it with
--no-index and builds run with network_mode="none". Why: inside `docker build` PyPI is reachable here only
through a TLS-intercepting proxy whose CA must not end up in an image, and a cluster build node or CI may
have no registry access at all. Build contexts are allow-lists (the Dockerfile, lock files, pyproject.toml,
README.md, lib/, components/, pipelines/, the wheelhouse) assembled here, so .venv/, .git/, runs/ and caches
never reach the daemon (this replaces a .dockerignore).

An image is rebuilt only when its inputs change: a hash of its context files, build arguments and parent
image id is stored as the label `oseg3d.inputs`; a tag whose label matches is reused. Our dangling images
(builder stages, images replaced under a tag; label `oseg3d.stage`) are pruned afterwards: on the machines
this runs on, disk is scarcer than build time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

__all__ = ["build_image", "ensure_debian_base", "image_tag", "lock", "main"]

REPO = Path(__file__).resolve().parents[1]
DEPS_DOCKERFILE = "images/Dockerfile"
APP_DOCKERFILE = "images/app.Dockerfile"
LOCKS = {"cpu": ["images/requirements.txt"], "gpu": ["images/requirements.txt", "images/requirements-gpu.txt"]}
PACKAGE_DIRS = ["lib", "components", "pipelines"]  # what pyproject.toml packages
DEBIAN_BASE = "oseg3d-base:bookworm"
CPU_TORCH = "torch==2.13.0+cpu"  # the CPU wheel (here: /opt/wheels, elsewhere: download.pytorch.org/whl/cpu)
LABEL = "oseg3d.inputs"
NO_DAEMON = ("no Docker daemon answers ({err}). Start one, e.g. `sudo systemctl start docker`, or without "
             "systemd `sudo dockerd >/tmp/dockerd.log 2>&1 &`; install it with `apt-get install docker.io`.")


def _version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def image_tag(variant: str) -> str:
    """`oseg3d:<package version>` for the GPU image, `oseg3d:<version>-cpu` for the CPU one."""
    return f"oseg3d:{_version()}" if variant == "gpu" else f"oseg3d:{_version()}-cpu"


def _gpu_base() -> str:
    """The Dockerfile's default BASE_IMAGE (one place for the pinned CUDA PyTorch tag)."""
    return re.search(r"^ARG BASE_IMAGE=(\S+)", (REPO / DEPS_DOCKERFILE).read_text(), re.M).group(1)


def _connect():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise SystemExit(NO_DAEMON.format(err=exc)) from None
    return client


def _image(client, ref: str):
    import docker

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None


def _up_to_date(client, tag: str, digest: str) -> bool:
    image = _image(client, tag)
    return image is not None and (image.labels or {}).get(LABEL) == digest


def _source_files() -> list[Path]:
    """The package sources the app image installs, relative to the repo root."""
    files = [Path("pyproject.toml"), Path("README.md")]
    for top in PACKAGE_DIRS:
        for path in sorted((REPO / top).rglob("*")):
            rel = path.relative_to(REPO)
            if path.is_file() and path.suffix != ".pyc" \
                    and not any(p == "__pycache__" or p.endswith(".egg-info") for p in rel.parts):
                files.append(rel)
    return files


def _digest(files: list[Path], extra: dict) -> str:
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for rel in files:
        h.update(str(rel).encode() + b"\0" + (REPO / rel).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def ensure_debian_base(client, tag: str = DEBIAN_BASE) -> str:
    """Make the debootstrapped Debian base (`images/debian_base.sh`) unless `tag` was made by this script."""
    script = Path("images/debian_base.sh")
    digest = _digest([script], {})
    if _up_to_date(client, tag, digest):
        return tag
    if shutil.which("debootstrap") is None:
        raise SystemExit("debootstrap is not installed: `apt-get install debootstrap` (it makes the Debian base)")
    if os.geteuid() != 0:
        raise SystemExit(f"making {tag} runs debootstrap, which needs root: run this with sudo")
    t0 = time.monotonic()
    print(f"making the Debian base {tag} (debootstrap bookworm, docker import)", flush=True)
    subprocess.run(["bash", str(REPO / script), tag, digest], check=True)
    print(f"{tag} made in {time.monotonic() - t0:.0f} s", flush=True)
    return tag


def _wheelhouse(dest: Path, variant: str, torch_spec: str) -> None:
    """Fetch (or build, for sdist-only packages) the locked wheels with the host's pip configuration."""
    if sys.version_info[:2] != (3, 11) or sys.platform != "linux":
        raise SystemExit(f"run this with the image's Python, 3.11 on Linux (this is {sys.version.split()[0]} on "
                         f"{sys.platform}): the wheelhouse is resolved for the running interpreter")
    t0 = time.monotonic()
    reqs = [arg for path in LOCKS[variant] for arg in ("-r", str(REPO / path))]
    cmd = [sys.executable, "-m", "pip", "wheel", "-qq", "--no-deps", "--wheel-dir", str(dest), *reqs]
    subprocess.run(cmd + ([torch_spec] if torch_spec else []), check=True)
    print(f"wheelhouse for {variant} ({', '.join(LOCKS[variant])} {torch_spec}): "
          f"{time.monotonic() - t0:.0f} s", flush=True)


def _build(client, dockerfile: str, files: list[Path], tag: str, args: dict, digest: str,
           wheels: Path | None = None) -> None:
    """docker build of an allow-list context (plus the wheelhouse as wheels/), streaming the log."""
    with tempfile.TemporaryFile() as ctx:
        with tarfile.open(fileobj=ctx, mode="w") as tar:
            for rel in [Path(dockerfile), *files]:
                tar.add(REPO / rel, arcname=str(rel), recursive=False)
            if wheels is not None:
                tar.add(wheels, arcname="wheels")
                shutil.rmtree(wheels, ignore_errors=True)  # the tar holds them now; halves the peak disk use
        print(f"building {tag} from {dockerfile} ({ctx.tell() / 2**20:.0f} MiB context)", flush=True)
        ctx.seek(0)
        _stream(client.api.build(fileobj=ctx, custom_context=True, dockerfile=dockerfile, tag=tag, buildargs=args,
                                 labels={LABEL: digest}, rm=True, forcerm=True, decode=True, network_mode="none"))


def _stream(chunks) -> None:
    t0 = time.monotonic()
    for chunk in chunks:
        if "stream" in chunk:
            line = chunk["stream"]
            print(f"[{time.monotonic() - t0:4.0f} s] {line}" if line.startswith("Step ") else line, end="", flush=True)
        elif "error" in chunk:
            raise SystemExit(f"docker build failed: {chunk['error'].strip()}")


def _prune(client) -> None:
    """Remove our dangling images (builder stages, images replaced under a tag); others' stay."""
    freed = client.images.prune(filters={"dangling": True, "label": "oseg3d.stage"}).get("SpaceReclaimed") or 0
    if freed:
        print(f"pruned our dangling images: {freed / 2**20:.0f} MiB", flush=True)


def build_image(variant: str = "gpu", base: str | None = None, tag: str | None = None,
                torch_spec: str | None = None, force: bool = False) -> str:
    """Build (or reuse) the runtime image and the app image on it; returns the app image's tag.

    Args:
        variant: "gpu" (torch from the CUDA base, open_clip included) or "cpu" (a CPU torch wheel, no open_clip).
        base: "debian" (the debootstrapped base, made when missing), an image reference, or None for the
            Dockerfile's CUDA PyTorch default (pulled when missing).
        tag: image tag; default `image_tag(variant)`.
        torch_spec: pip requirement for torch in the venv; default the CPU wheel for "cpu", the base's torch for "gpu".
        force: rebuild even when the images' inputs labels match.
    """
    client = _connect()
    tag = tag or image_tag(variant)
    torch_spec = (CPU_TORCH if variant == "cpu" else "") if torch_spec is None else torch_spec
    base = ensure_debian_base(client) if base == "debian" else (base or _gpu_base())
    if _image(client, base) is None:
        print(f"pulling {base}", flush=True)
        client.images.pull(base)
    try:
        deps_tag = f"oseg3d-deps:{_version()}-{variant}"
        deps_args = {"BASE_IMAGE": base, "TORCH_SPEC": torch_spec, "VARIANT": variant}
        locks = [Path(p) for p in LOCKS["gpu"]]  # the Dockerfile copies both
        digest = _digest([Path(DEPS_DOCKERFILE), *locks], {**deps_args, "base": client.images.get(base).id})
        if force or not _up_to_date(client, deps_tag, digest):
            wheels = Path(tempfile.mkdtemp(prefix="oseg3d-wheels-"))
            try:
                _wheelhouse(wheels, variant, torch_spec)
                _build(client, DEPS_DOCKERFILE, locks, deps_tag, deps_args, digest, wheels)
            finally:
                shutil.rmtree(wheels, ignore_errors=True)
        sources = _source_files()
        digest = _digest([Path(APP_DOCKERFILE), *sources], {"deps": client.images.get(deps_tag).id})
        if not force and _up_to_date(client, tag, digest):
            print(f"{tag} is up to date ({LABEL}={digest})", flush=True)
            return tag
        _build(client, APP_DOCKERFILE, sources, tag, {"DEPS_IMAGE": deps_tag}, digest)
    finally:
        _prune(client)
    print(f"built {tag} ({client.images.get(tag).attrs['Size'] / 2**30:.2f} GiB)", flush=True)
    return tag


def _resolve(top: list[str], constraints: list[Path]) -> dict[str, str]:
    """pip's resolution of `top` (dry run, nothing installed) as {name: version}."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-"]
    cmd += [a for c in constraints if c.exists() for a in ("-c", str(c))]
    report = json.loads(subprocess.run(cmd + top, check=True, capture_output=True, text=True).stdout)
    return {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"]
            for i in report["install"]}


def lock() -> None:
    """Re-pin images/requirements*.txt from pyproject.toml; existing pins (and PIP_CONSTRAINT) are kept."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = meta["project"]["dependencies"]
    clip = [d for d in deps if d.lower().startswith("open_clip")]
    common_top = [d for d in deps if not d.lower().startswith(("torch", "open_clip"))]
    common_top += meta["build-system"]["requires"] + ["pip", CPU_TORCH]
    paths = [REPO / p for p in LOCKS["gpu"]]
    common = _resolve(common_top, paths)
    gpu = _resolve(common_top + clip, paths)
    torch = {"torch", "torchvision"}
    sections = {paths[0]: {k: v for k, v in common.items() if k not in torch},
                paths[1]: {k: v for k, v in gpu.items() if k not in common and k not in torch}}
    for path, pins in sections.items():
        head = [ln for ln in path.read_text().splitlines() if ln.startswith("#")] if path.exists() else []
        path.write_text("\n".join(head + [f"{k}=={v}" for k, v in sorted(pins.items())]) + "\n")
        print(f"{path.relative_to(REPO)}: {len(pins)} pins")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=["gpu", "cpu"], default="gpu")
    p.add_argument("--base", help="'debian' (debootstrapped, made when missing) or an image; "
                                   "default: the Dockerfile's CUDA PyTorch image")
    p.add_argument("--tag", help="default oseg3d:<version> (gpu) / oseg3d:<version>-cpu")
    p.add_argument("--torch-spec", help=f"torch requirement for the venv (cpu default {CPU_TORCH}; gpu: the base's)")
    p.add_argument("--force", action="store_true", help="rebuild even if the images' inputs labels match")
    p.add_argument("--lock", action="store_true", help="re-pin images/requirements*.txt and exit")
    a = p.parse_args(argv)
    if a.lock:
        lock()
        return
    print(build_image(a.variant, a.base, a.tag, a.torch_spec, a.force))


if __name__ == "__main__":
    main()
