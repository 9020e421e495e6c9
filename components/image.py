"""The container image every component runs in: `oseg3d:<package version>` unless OSEG3D_IMAGE is set."""
from __future__ import annotations

import os
from importlib import metadata

__all__ = ["IMAGE"]


def _version() -> str:
    try:
        return metadata.version("oseg3d")
    except metadata.PackageNotFoundError:
        return "0.1.0"


IMAGE = os.environ.get("OSEG3D_IMAGE", f"oseg3d:{_version()}")
