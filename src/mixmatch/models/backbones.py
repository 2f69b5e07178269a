"""Backbones of other libraries: torchvision's classification models by name, and timm's as `timm/<name>`.

A backbone is built for a data set as the library builds it for ImageNet, then fitted: its first convolution takes
the data's channels (grey images: the three input channels' weights summed, as timm's `adapt_input_conv` does) and
its classifier (the last layer with 1000 outputs) is replaced by a fresh one of the data's classes. Its weights come
from nowhere (random), from the library's pretrained default (`pretrained`: torch's or Hugging Face's cache, or a
download where the machine has a network), or from a local file (`weights_file`: a state dict, torch.save'd or
safetensors, of the same architecture). Pretrained weights bring their own normalisation and image size
(`BackboneSpec`). timm is an optional extra (`pip install "mixmatch[timm]"`).
"""

from __future__ import annotations

import contextlib
import difflib
import re
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlparse

import torch
from torch import nn

TIMM = "timm/"
IMAGENET_CLASSES = 1000
CLASSIFIER = "mixmatch_classifier"  # the attribute naming the new classifier's module on a built backbone


class BackboneError(ValueError):
    """A backbone that cannot be built or loaded as asked (unknown name, weights missing or of another model);
    one line."""


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone's pretrained weights expect: per-channel mean and std of [0, 1] RGB images, and the side of
    the square images they were trained at."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int

    def for_channels(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) for images of `channels` channels: grey images take the mean of the three."""
        if channels == len(self.mean):
            return self.mean, self.std
        return (sum(self.mean) / len(self.mean),), (sum(self.std) / len(self.std),)


def torchvision_names() -> list[str]:
    """torchvision's classification models (`torchvision.models.list_models(module=torchvision.models)`)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def is_backbone(arch: str) -> bool:
    """Whether `arch` names a torchvision classification model or a timm one (`timm/<name>`, timm installed)."""
    if arch.startswith(TIMM):
        try:
            import timm
        except ModuleNotFoundError:
            return False
        return timm.is_model(arch[len(TIMM) :])
    return arch in torchvision_names()


def unknown_arch(arch: str, ours: tuple[str, ...]) -> str:
    """One line for an `--arch` that names nothing: the closest names of `ours`, torchvision's or timm's."""
    if arch.startswith(TIMM):
        import timm

        name = arch[len(TIMM) :]
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        return f"timm has no model {name!r}" + (f"; the closest: {', '.join(close)}" if close else "")
    close = difflib.get_close_matches(arch, [*ours, *torchvision_names()], n=3)
    hint = f" (the closest: {', '.join(close)})" if close else ""
    return (
        f"unknown architecture {arch!r}; choose one of {', '.join(ours)}, a torchvision classification "
        f"model (resnet18, efficientnet_b0, ...) or timm/<name>{hint}"
    )


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether `url`'s host answers on its port: a download is tried only where it can succeed, so that a machine
    without a network gets our one line at once instead of a library's retries."""
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _first_sentence(error: BaseException, limit: int = 160) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(error).split()))
    return text.split(". ")[0][:limit]


def timm_missing(arch: str) -> str | None:
    """Why `timm/<name>` cannot be built here (timm not installed), or None."""
    if not arch.startswith(TIMM):
        return None
    try:
        import timm  # noqa: F401
    except ModuleNotFoundError:
        return f'{arch} needs timm, which is not installed: pip install "mixmatch[timm]"'
    return None


def spec(arch: str) -> BackboneSpec:
    """The normalisation and image size of `arch`'s default pretrained weights (read from the library's metadata;
    nothing is downloaded)."""
    if arch.startswith(TIMM):
        import timm

        cfg = timm.models.get_pretrained_cfg(arch[len(TIMM) :])
        return BackboneSpec(tuple(cfg.mean), tuple(cfg.std), int(cfg.input_size[-1]))
    import torchvision

    transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    return BackboneSpec(tuple(transforms.mean), tuple(transforms.std), int(transforms.crop_size[0]))


def build_backbone(
    arch: str, num_classes: int, in_channels: int, pretrained: bool = False, weights_file: str | Path | None = None
) -> nn.Module:
    """`arch` fitted to images of `in_channels` channels and `num_classes` classes, its weights random, pretrained
    (the library's default) or from `weights_file`. Raises BackboneError, one line, where the weights cannot be had
    (no network and nothing cached: which file to put where) or do not fit the architecture (the keys that differ)."""
    timm_name = arch.removeprefix(TIMM)
    model = _timm_model(timm_name, pretrained) if timm_name != arch else _torchvision_model(arch, pretrained)
    if weights_file is not None:
        _load_file(model, arch, Path(weights_file))
    _fit_input(model, in_channels, arch)
    _replace_head(model, num_classes, arch)
    return model


def _torchvision_model(arch: str, pretrained: bool) -> nn.Module:
    import torchvision

    if not pretrained:
        return torchvision.models.get_model(arch, weights=None)
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    missing = (
        f"--pretrained: {arch}'s weights are not in torch's cache and cannot be downloaded here ({{}}): put "
        f"{weights.url} at {cached}, or give --weights PATH"
    )
    if not cached.is_file() and not reachable(weights.url):
        raise BackboneError(missing.format(f"{urlparse(weights.url).hostname} cannot be reached"))
    try:
        return torchvision.models.get_model(arch, weights=weights)
    except Exception as error:  # urllib's, socket's and http's errors where the network fails midway
        if cached.is_file():
            raise
        raise BackboneError(missing.format(_first_sentence(error))) from None


def _timm_model(name: str, pretrained: bool) -> nn.Module:
    import timm

    if not pretrained:
        return timm.create_model(name, pretrained=False)
    from huggingface_hub import constants

    cfg = timm.models.get_pretrained_cfg(name)
    # The file to fetch: timm's Hub repositories hold model.safetensors, which --weights reads as it is.
    where = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors" if cfg.hf_hub_id else cfg.url
    # Without a network the hub retries for a minute before it fails; offline, it reads its cache alone.
    offline = not reachable(constants.ENDPOINT)
    try:
        with contextlib.ExitStack() as stack:
            if offline:
                stack.enter_context(mock.patch.object(constants, "HF_HUB_OFFLINE", True))
            return timm.create_model(name, pretrained=True)
    except Exception as error:  # Hugging Face hub's errors where there is no network and nothing cached
        reason = f"{urlparse(constants.ENDPOINT).hostname} cannot be reached" if offline else _first_sentence(error)
        raise BackboneError(
            f"--pretrained: timm/{name}'s weights are not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"cannot be downloaded here ({reason}): fetch {where or 'them'} on a machine with a network and give "
            "--weights PATH"
        ) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, or from a torch.save'd one (weights only: no code is run), unwrapped
    from a {"state_dict": ...} or {"model": ...} record and from DistributedDataParallel's "module." prefix."""
    if not path.is_file():
        raise BackboneError(f"--weights {path} does not exist")
    if path.stat().st_size == 0:
        raise BackboneError(f"--weights {path} is empty (0 bytes)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file or one holding code: torch's and safetensors' many error types
        if "Weights only load failed" not in str(error):
            reason = _first_sentence(error)
        elif zipfile.is_zipfile(path):  # torch.save's format, holding objects that only code can rebuild
            reason = "it holds Python objects, such as a whole pickled model: save model.state_dict() instead"
        else:
            reason = "it is not a file that torch.save or safetensors wrote"
        raise BackboneError(f"--weights {path} is not a state dict that loads safely: {reason}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"--weights {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_file(model: nn.Module, arch: str, path: Path) -> None:
    """Load `path` into the ImageNet-shaped `model`; its classifier may be of any size (it is replaced next), and
    its first convolution may take grey images (a backbone this library trained and exported on grey data)."""
    state = read_state_dict(path)
    first = next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    theirs = state.get(f"{first}.weight")
    if theirs is not None and theirs.dim() == 4 and theirs.shape[1] == 1:
        _fit_input(model, 1, arch)
    own = model.state_dict()
    head = {name for name in own if name.startswith(_head_name(model) + ".")}
    missing = sorted(set(own) - set(state) - head)
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(k for k in set(own) & set(state) - head if own[k].shape != state[k].shape)
    if missing or unexpected or misshapen:
        parts = [f"{label} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''} ({len(keys)})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("of other shapes", misshapen))
                 if keys]
        raise BackboneError(f"--weights {path} does not fit {arch}: {'; '.join(parts)}")
    model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)


def _head_name(model: nn.Module) -> str:
    """The classifier: the last Linear (or 1x1 Conv2d) layer with ImageNet's 1000 outputs, by its module name."""
    heads = [name for name, m in model.named_modules()
             if (isinstance(m, nn.Linear) and m.out_features == IMAGENET_CLASSES)
             or (isinstance(m, nn.Conv2d) and m.out_channels == IMAGENET_CLASSES)]
    if not heads:
        raise BackboneError("this backbone has no layer of 1000 outputs to replace by the data's classifier")
    return heads[-1]


def classifier(model: nn.Module) -> nn.Module:
    """The layer a backbone was given for the data's classes (the one `--backbone-lr-scale` leaves at `--lr`).
    Raises BackboneError for a model that `build_backbone` did not build."""
    name = getattr(model, CLASSIFIER, None)
    if name is None:
        raise BackboneError(f"{type(model).__name__} is not a torchvision or timm backbone: it has no new classifier")
    return model.get_submodule(name)


def _replace_head(model: nn.Module, num_classes: int, arch: str) -> None:
    if arch.startswith(TIMM):
        model.reset_classifier(num_classes)
        new_head = model.get_classifier()
        setattr(model, CLASSIFIER, next(name for name, m in model.named_modules() if m is new_head))
        return
    name = _head_name(model)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, bias=old.bias is not None)
    setattr(parent, child, new)
    setattr(model, CLASSIFIER, name)


def _fit_input(model: nn.Module, in_channels: int, arch: str) -> None:
    """Give the first convolution `in_channels` inputs: grey images sum the three channels' weights (an image of
    equal R, G and B gives the pretrained response); other counts are refused."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first.in_channels == in_channels:
        return
    if in_channels != 1 or first.in_channels != 3:
        raise BackboneError(f"{arch} takes {first.in_channels}-channel images; these have {in_channels}")
    with torch.no_grad():
        first.weight = nn.Parameter(first.weight.sum(1, keepdim=True))
    first.in_channels = 1
