"""CLIP ViT-B/16 ``conv1`` (the patch embedding), frozen: the 2D branch of the Bi-Fusion encoder.

Seed plan §7: the 2D features are CLIP's first conv only (3→768, 16×16 patches, stride 16, no bias) on
the OpenAI-normalised image; ``pix_and_global`` turns its (768, H/16, W/16) map into the two tensors the
model uses, so the offline precompute and the online fallback compute exactly the same thing.

Weights come from an open_clip-format state dict of OpenAI's ViT-B/16 (safetensors preferred, or a
plain ``.pt``/``.bin`` state dict read with ``weights_only=True``); the whole checkpoint is loaded
strictly into open_clip's ViT-B-16 first, so a wrong or truncated file fails here and not as silently
bad features.
"""
from __future__ import annotations

import hashlib
import io
import logging
import zipfile

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oseg3d import storage
from oseg3d.errors import ConfigError, DataError

__all__ = ["OPENAI_MEAN", "OPENAI_STD", "ClipConv1", "pix_and_global", "load_clip_conv1",
           "CONV1_SHAPE", "RANDOM_INIT_SOURCE"]

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CONV1_SHAPE = (768, 3, 16, 16)
RANDOM_INIT_SOURCE = "random-init (NOT CLIP weights)"

_CONVERT_FIX = (
    "convert it on a trusted machine: `m, _, _ = open_clip.create_model_and_transforms('ViT-B-16', "
    "pretrained='openai')` then `safetensors.torch.save_file(m.state_dict(), 'clip_vit_b16.safetensors')`, "
    "and pass that file")


class ClipConv1(nn.Module):
    """Frozen CLIP patch embedding with the OpenAI normalisation built in.

    ``forward(image)``: ``image`` (B, 3, H, W) RGB, uint8 or float in 0..255 → (B, 768, H/16, W/16) float32.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, CONV1_SHAPE[0], kernel_size=16, stride=16, bias=False)
        self.conv1.weight.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        # float32 regardless of an enclosing autocast: the cached fp16 features are rounded from fp32,
        # and the online fallback must match them.
        with torch.autocast(device_type=image.device.type, enabled=False):
            x = (image.float() / 255.0 - self.mean) / self.std
            return self.conv1(x.to(self.conv1.weight.dtype)).float()


def pix_and_global(feat1: Tensor) -> tuple[Tensor, Tensor]:
    """Split a conv1 map into the pixel features and the global vector.

    Args:
        feat1: (B, 768, h, w) conv1 output.

    Returns:
        ``pix`` (B, 192, 2h, 2w) = ``pixel_shuffle(feat1, 2)`` and ``global`` (B, 768) = mean over h, w.
    """
    return F.pixel_shuffle(feat1, 2), feat1.mean((2, 3))


def _is_torchscript(data: bytes) -> bool:
    """TorchScript archives (OpenAI's original ``ViT-B-16.pt``) are zips with ``code/`` or ``constants.pkl``."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return False
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _read_state_dict(uri: str, data: bytes) -> dict[str, Tensor]:
    """Parse checkpoint bytes as safetensors or a weights-only torch state dict, unwrapping a wrapper."""
    if uri.endswith(".safetensors"):
        from safetensors.torch import load as st_load
        try:
            sd = st_load(data)
        except Exception as exc:  # safetensors raises its own SafetensorError / OSError variants
            raise DataError(uri, f"not a readable safetensors file ({exc})", _CONVERT_FIX) from exc
    else:
        if _is_torchscript(data):
            raise ConfigError(uri, "is a TorchScript archive (OpenAI's original checkpoint), which cannot be "
                              "loaded without unpickling code", _CONVERT_FIX)
        try:
            sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle/zip errors, or objects weights_only refuses
            raise DataError(uri, f"not a weights-only torch state dict ({type(exc).__name__}: {exc})",
                            _CONVERT_FIX) from exc
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise DataError(uri, "does not hold a flat {name: tensor} state dict", _CONVERT_FIX)
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _validated_conv1_weight(uri: str, sd: dict[str, Tensor]) -> Tensor:
    """Strictly load ``sd`` into open_clip's ViT-B-16 and return its conv1 weight (768, 3, 16, 16)."""
    import open_clip

    # on the meta device: the architecture (names, shapes) without initialising 150 M parameters;
    # open_clip logs "no pretrained weights loaded" at WARNING, which is expected here
    logging.disable(logging.WARNING)
    try:
        with torch.device("meta"):
            model = open_clip.create_model("ViT-B-16", pretrained=None, device="meta")
    finally:
        logging.disable(logging.NOTSET)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as exc:
        problem = str(exc).splitlines()[0] + " …" if "\n" in str(exc) else str(exc)
        raise DataError(uri, f"is not an open_clip ViT-B-16 state dict ({problem})", _CONVERT_FIX) from exc
    weight = model.visual.conv1.weight.detach().float().clone()
    assert tuple(weight.shape) == CONV1_SHAPE, weight.shape  # guaranteed by the strict load
    return weight


def load_clip_conv1(weights: str | None, allow_random_init: bool = False) -> tuple[ClipConv1, str]:
    """Build the frozen conv1 from a CLIP ViT-B/16 checkpoint.

    Args:
        weights: local path or ``s3://`` URI of an open_clip-format ViT-B/16 state dict (``.safetensors``,
            or ``.pt``/``.bin`` loaded with ``weights_only=True``); empty/None for none.
        allow_random_init: without ``weights``, use a random conv1 (tests, smoke runs) instead of failing.

    Returns:
        (module in eval mode with frozen weights, human-readable source string for reports).

    Raises:
        ConfigError: no weights and no ``allow_random_init``; a TorchScript archive.
        DataError: the file is unreadable or not a ViT-B-16 state dict.
    """
    if not weights:
        if not allow_random_init:
            raise ConfigError("clip weights", "no CLIP ViT-B/16 checkpoint given (setting `weights`, CLI "
                              "`--weights`)", "pass --weights <path or s3:// URI of an open_clip ViT-B-16 "
                              "state dict>, or --random-init for a smoke run without CLIP features")
        log.warning("CLIP conv1 is randomly initialised: features are NOT CLIP features (smoke runs only)")
        # seeded, so that a rerun (or another process) of a smoke run gets the same "weights"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return ClipConv1().eval(), RANDOM_INIT_SOURCE
    if not storage.exists(weights):
        raise ConfigError(str(weights), "CLIP checkpoint not found", "check the path / URI and credentials")
    data = storage.read_bytes(weights)
    weight = _validated_conv1_weight(str(weights), _read_state_dict(str(weights), data))
    module = ClipConv1().eval()
    with torch.no_grad():
        module.conv1.weight.copy_(weight)
    digest = hashlib.sha256(data).hexdigest()[:12]
    return module, f"openai ViT-B/16 from {weights} (sha256 {digest})"
