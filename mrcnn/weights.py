"""Weights in and out.

- `load_init(model, path)`: what `train.init_weights` names, whatever it is: a torchvision Mask
  R-CNN checkpoint (`.pth`), a folder written by `save` (any class count), or an ImageNet ResNet
  checkpoint (backbone only). Returns the tensors it re-initialised (fine-tuning, below).
- `load_torchvision(model, state_dict)`: torchvision's `maskrcnn_resnet50_fpn` state dict (e.g. its
  COCO checkpoint, 37.9 box / 34.6 mask AP) into a model built from
  `presets.torchvision_r50_fpn()`, or a `keypointrcnn_resnet50_fpn` state dict into one built from
  `presets.torchvision_keypoint_r50_fpn()`. Missing or extra keys raise.

Fine-tuning. When the checkpoint was trained for another number of classes, only the
class-specific predictors differ: class scores `[K, D]`, box deltas `[4K, D]` and mask logits
`[K, C, 1, 1]` (`PREDICTORS`). Those are skipped, re-initialised as a fresh model would have them,
and logged with their shapes; everything else loads. Any other shape mismatch, or a missing or
extra key, raises naming the tensor.
- `load_backbone(model, state_dict)`: an ImageNet ResNet/ResNeXt checkpoint into the body, to start
  training from it.
- `save(model, path)` / `load(path)`: our own format, a folder with `model.safetensors` (tensors
  only, no pickle) and `config.json` (the config, the preset it came from, a class map: see
  `read_meta`); `load` rebuilds the model with `build_model`.
- `read_state_dict(path)`: a local `.pth`/`.pt` (with `weights_only=True`) or `.safetensors` file.

A file that is not what it claims (empty, text, truncated, a pickle of something else, a zip or
safetensors file with other content, a saved-model folder without its config.json) raises one
`ValueError` naming the file and saying what it is instead; nothing is ever unpickled beyond
tensors (`torch.load(..., weights_only=True)`).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
from pathlib import Path

import torch
from torch import Tensor

from mrcnn.config import Config
from mrcnn.modeling.backbone import load_backbone_state_dict
from mrcnn.modeling.model import MaskRCNN, build_model

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

# The class-specific predictors (our key prefix -> rows per class along dim 0).
PREDICTORS = {
    "roi_heads.box_head.cls_score.": 1,
    "roi_heads.box_head.bbox_pred.": 4,
    "roi_heads.mask_head.logits.": 1,
}

# torchvision key -> ours; first matching pattern wins, keys matching none are kept as they are.
_TORCHVISION_RENAMES = [
    (r"^rpn\.head\.conv\.0\.0\.", "rpn.head.conv."),  # torchvision >= 0.13
    (r"^roi_heads\.box_predictor\.", "roi_heads.box_head."),
    (r"^roi_heads\.mask_head\.(\d+)\.0\.", r"roi_heads.mask_head.convs.\1."),  # >= 0.13
    (r"^roi_heads\.mask_head\.mask_fcn(\d+)\.", None),  # older: mask_fcn1..4 (1-based)
    (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_heads.mask_head.deconv."),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_heads.mask_head.logits."),
    # keypointrcnn_resnet50_fpn: Sequential(conv, ReLU, ...) -> convs.N; the predictor's deconv
    (r"^roi_heads\.keypoint_head\.(\d+)\.", None),
    (r"^roi_heads\.keypoint_predictor\.kps_score_lowres\.", "roi_heads.keypoint_head.deconv."),
]


def torchvision_key(key: str) -> str:
    """Our name for a torchvision Mask R-CNN state-dict key."""
    for pattern, repl in _TORCHVISION_RENAMES:
        m = re.match(pattern, key)
        if not m:
            continue
        if repl is None and key.startswith("roi_heads.keypoint_head."):  # 2N (conv) -> convs.N
            return f"roi_heads.keypoint_head.convs.{int(m.group(1)) // 2}." + key[m.end() :]
        if repl is None:  # mask_fcnN -> convs.(N-1)
            return f"roi_heads.mask_head.convs.{int(m.group(1)) - 1}." + key[m.end() :]
        return re.sub(pattern, repl, key)
    return key


@torch.no_grad()
def load_torchvision(model: MaskRCNN, state_dict: dict[str, Tensor]) -> list[str]:
    """Load a torchvision `maskrcnn_resnet50_fpn` state dict (or one with our key names).

    Missing or extra keys and shape mismatches raise `ValueError` naming the tensor, except the
    class-specific predictors when the class count differs (see the module doc). Returns the
    keys that were skipped and re-initialised (empty when the class counts agree).
    """
    ours = {torchvision_key(k): v for k, v in state_dict.items()}
    return load_full(
        model,
        ours,
        hint="build it with presets.torchvision_r50_fpn, or presets.torchvision_keypoint_r50_fpn "
        "for a Keypoint R-CNN, and the checkpoint's backbone",
    )


@torch.no_grad()
def load_full(model: MaskRCNN, state_dict: dict[str, Tensor], hint: str = "") -> list[str]:
    """Load a whole-model state dict in our key names, fine-tuning aware (see the module doc).

    Returns the re-initialised predictor keys, sorted.
    """
    sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    own = model.state_dict()
    expected = {k for k in own if not k.endswith("num_batches_tracked")}
    missing, extra = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or extra:
        raise ValueError(
            f"state dict does not fit this model{' (' + hint + ')' if hint else ''}: "
            f"missing {_few(missing)}, unexpected {_few(extra)}"
        )
    ckpt_classes = _checkpoint_classes(sd)
    skipped = []
    for k, v in sd.items():
        if own[k].shape == v.shape:
            continue
        if _is_refittable(k, v.shape, own[k].shape, ckpt_classes, model.num_classes):
            skipped.append(k)
            continue
        raise ValueError(f"'{k}' has shape {tuple(v.shape)}, the model has {tuple(own[k].shape)}")
    if skipped and len(skipped) != len(_predictor_keys(sd)):  # every predictor, or none
        bad = sorted(k for k in _predictor_keys(sd) if k not in skipped)[0]
        raise ValueError(
            f"'{bad}' has shape {tuple(sd[bad].shape)} for {model.num_classes} classes, but "
            f"the checkpoint's class scores are for {ckpt_classes} classes"
        )
    model.load_state_dict({k: v for k, v in sd.items() if k not in skipped}, strict=False)
    if skipped:
        model.roi_heads.box_head.reset_predictors()
        if getattr(model.roi_heads, "mask_head", None) is not None:  # keypoint models have none
            model.roi_heads.mask_head.reset_predictors()
        logger.info(
            "fine-tuning from %d classes to %d: re-initialised the class-specific predictors %s",
            ckpt_classes,
            model.num_classes,
            ", ".join(f"{k} {tuple(sd[k].shape)}->{tuple(own[k].shape)}" for k in skipped),
        )
    return sorted(skipped)


def load_init(model: MaskRCNN, path: str | Path) -> list[str]:
    """Initialise `model` from `path` before training (`train.init_weights`).

    path: a folder written by `save` (any class count); a `.pth` / `.pt` / `.safetensors` file
          holding a whole Mask R-CNN (torchvision's key names or ours, e.g. torchvision's COCO
          checkpoint); or an ImageNet ResNet / ResNeXt checkpoint (torchvision key names), which
          initialises the backbone body only.
    Returns the re-initialised predictor keys (empty unless the class count differs). Raises
    `FileNotFoundError` when nothing is at `path` and `ValueError` naming the tensor on any
    mismatch other than the class count.
    """
    path = Path(path)
    if path.is_dir():
        skipped = load_full(model, _saved_tensors(path), hint=_config_hint(path))
        logger.info("initialised from the saved model %s", path)
        return skipped
    sd = read_state_dict(path)
    if any(k.startswith(("roi_heads.", "rpn.", "backbone.")) for k in sd):
        skipped = load_torchvision(model, sd)
        logger.info("initialised the whole model from %s", path)
        return skipped
    load_backbone(model, sd)
    logger.info("initialised the backbone body from the ImageNet checkpoint %s", path)
    return []


def _predictor_keys(sd: dict[str, Tensor]) -> list[str]:
    return [k for k in sd if k.startswith(tuple(PREDICTORS))]


def _checkpoint_classes(sd: dict[str, Tensor]) -> int:
    w = sd.get("roi_heads.box_head.cls_score.weight")
    return int(w.shape[0]) if w is not None else -1


def _is_refittable(
    key: str, ckpt: torch.Size, ours: torch.Size, ckpt_classes: int, num_classes: int
) -> bool:
    """A predictor tensor that differs from ours only by the class count along dim 0."""
    rows = next((r for p, r in PREDICTORS.items() if key.startswith(p)), None)
    return (
        rows is not None
        and ckpt_classes != num_classes
        and ckpt[1:] == ours[1:]
        and ckpt[0] == rows * ckpt_classes
        and ours[0] == rows * num_classes
    )


def _config_hint(path: Path) -> str:
    try:
        cfg = json.loads((path / CONFIG_FILE).read_text())["config"]
        return (
            f"the checkpoint is a {cfg['backbone']['arch']} model with {cfg['num_classes']} classes"
        )
    except (OSError, KeyError, TypeError, ValueError):
        return ""


def load_backbone(model: MaskRCNN, state_dict: dict[str, Tensor]) -> None:
    """Initialise the ResNet body from an ImageNet checkpoint (torchvision key names)."""
    load_backbone_state_dict(model.backbone.body, state_dict)


class NotASavedModelError(FileNotFoundError, ValueError):
    """A path given as a saved model (`save`'s folder) that is not one: nothing there, a file,
    or a folder without config.json / model.safetensors. Both a `FileNotFoundError` (what it
    always was) and a `ValueError` (what every other "not what it claims" weights error is)."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors from a local checkpoint; never unpickles arbitrary objects. Raises
    `FileNotFoundError` when nothing is there and `ValueError` naming the file and saying why
    when it is not a state dict of tensors (torch's `.pth` / `.pt` zip, a safetensors file, or a
    training checkpoint's `model`): empty, text, truncated, a pickle of something else, another
    format under the name, a mapping without tensor values or with keys that are not names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is not a weights file: it is empty (0 bytes)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's advice (weights_only=False) is not ours to give
        what = _looks_like(path)
        hint = "" if what.startswith("a zip") else f"; {what}"  # a zip: a pickle of objects
        raise ValueError(f"{path} is not a checkpoint of tensors (.pth / .pt){hint}") from e
    except Exception as e:  # zip, pickle and safetensors each raise their own kinds
        raise ValueError(
            f"{path} is not a weights file torch can read ({_looks_like(path)}; "
            f"{type(e).__name__}: {_first_line(e)})"
        ) from e
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]  # training checkpoints keep the weights under "model"
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path} holds no state dict of tensors (a {type(sd).__name__})")
    if not sd:
        raise ValueError(f"{path} holds no tensors (an empty state dict)")
    odd = [k for k in sd if not isinstance(k, str)]
    if odd:
        raise ValueError(
            f"{path} is not a state dict: a key is a {type(odd[0]).__name__}, not a name"
        )
    return sd


def _looks_like(path: Path) -> str:
    """What a file that failed to load seems to be, from its first bytes (for the message)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, but not a whole PyTorch checkpoint (truncated or another zip)"
    if len(head) >= 9 and head[8:9] == b"{":
        return "it looks like a safetensors file: name it .safetensors"
    if head.startswith(b"\x80"):
        return "a Python pickle, not a PyTorch checkpoint"
    try:
        head.decode("utf-8")
        return "it is text"
    except UnicodeDecodeError:
        return "unrecognised bytes"


def _first_line(error: BaseException) -> str:
    return str(error).strip().split("\n")[0][:160] or type(error).__name__


def _saved_tensors(path: Path) -> dict[str, Tensor]:
    """`path/model.safetensors` of a saved model folder (`NotASavedModelError` when absent,
    `ValueError` when it is not a safetensors file)."""
    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise NotASavedModelError(
            f"{path} is a folder but holds no {WEIGHTS_FILE} (expected a folder written by "
            "mrcnn.weights.save, or a .pth / .safetensors file)"
        )
    return read_state_dict(file)


def save(model: MaskRCNN, path: str | Path, extra: dict | None = None, *, preset: str = "") -> Path:
    """Write `path/model.safetensors` + `path/config.json` (atomically, via a temp folder).

    config.json holds `config` (`Config.to_dict()`), beside it `preset` (the `mrcnn.presets`
    name the config was built from, when given) and the keys of `extra` (e.g. a class map);
    `read_meta` reads it back."""
    from safetensors.torch import save_file

    if model.cfg is None:
        raise ValueError("model has no config attached; build it with mrcnn.build_model(cfg)")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp / WEIGHTS_FILE))
    meta = {
        "config": model.cfg.to_dict(),
        **({"preset": preset} if preset else {}),
        **(extra or {}),
    }
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def load(
    path: str | Path, device: str | torch.device = "cpu", *, channels_last: bool | None = None
) -> MaskRCNN:
    """Rebuild a model saved by `save` (eval mode, on `device`).

    `channels_last` (`MaskRCNN.use_channels_last`): None picks it on CPU, where oneDNN's NHWC
    convolutions make eager inference 1.2-1.4x faster with the same detections up to float
    rounding (docs/benchmarks.md, "Model"); an exporter passes False to trace the plain layout.

    Raises `NotASavedModelError` (a `FileNotFoundError` and a `ValueError`) when `path` is not
    a folder holding config.json and model.safetensors, and `ValueError` naming the file when
    one of them is not what it claims (config.json not JSON or not a config, model.safetensors
    damaged or holding tensors of another model)."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise NotASavedModelError(
            f"{path} is not a saved model (expected {CONFIG_FILE} and {WEIGHTS_FILE} in it)"
        )
    meta = read_meta(path)
    try:
        cfg = Config.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path / CONFIG_FILE} holds no usable model config ({e})") from None
    model = build_model(cfg)
    tensors = _saved_tensors(path)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:  # missing / unexpected keys, shapes of another model
        details = " ".join(str(e).split("\n")[1:3]).strip()[:300]
        raise ValueError(
            f"{path / WEIGHTS_FILE} does not fit the model its {CONFIG_FILE} describes: {details}"
        ) from None
    model = model.to(device).eval()
    if channels_last is None:
        channels_last = model.device.type == "cpu"
    if channels_last:
        model.use_channels_last()
    return model


def read_meta(path: str | Path) -> dict:
    """The config.json of a folder written by `save`: `config`, and `preset`, `class_map`, ...
    where they were saved (a model saved before presets were recorded has no `preset`).
    `ValueError` naming the file when it is not a JSON object."""
    file = Path(path) / CONFIG_FILE
    try:
        meta = json.loads(file.read_bytes())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{file} is not JSON ({_first_line(e)})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{file} is not a JSON object (a {type(meta).__name__})")
    return meta


def _few(keys: list[str]) -> str:
    return str(keys[:5])[:-1] + (f", ... ({len(keys)} in all)]" if len(keys) > 5 else "]")
