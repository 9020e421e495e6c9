"""The container image every component runs in, and the decorator that uses it.

`oseg3d:<package version>` unless OSEG3D_IMAGE is set. kfp is installed in the image, so components do not
pip-install it at start (a cluster node or a DockerRunner container may have no registry access).
"""
from __future__ import annotations

import functools
import os
from importlib import metadata

from kfp import dsl

__all__ = ["IMAGE", "component"]


def _version() -> str:
    try:
        return metadata.version("oseg3d")
    except metadata.PackageNotFoundError:
        return "0.1.0"


IMAGE = os.environ.get("OSEG3D_IMAGE", f"oseg3d:{_version()}")

component = functools.partial(dsl.component, base_image=IMAGE, install_kfp_package=False)
