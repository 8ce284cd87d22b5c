"""Weights in and out.

- `load_torchvision(model, state_dict)`: torchvision's `maskrcnn_resnet50_fpn` state dict (e.g. its
  COCO checkpoint, 37.9 box / 34.6 mask AP) into a model built from
  `presets.torchvision_r50_fpn()`, or a `keypointrcnn_resnet50_fpn` state dict into one built from
  `presets.torchvision_keypoint_r50_fpn()`. Missing or extra keys raise.
- `load_backbone(model, state_dict)`: an ImageNet ResNet/ResNeXt checkpoint into the body, to start
  training from it.
- `save(model, path)` / `load(path)`: our own format, a folder with `model.safetensors` (tensors
  only, no pickle) and `config.json`; `load` rebuilds the model with `build_model`.
- `read_state_dict(path)`: a local `.pth`/`.pt` (with `weights_only=True`) or `.safetensors` file.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from torch import Tensor

from mrcnn.backbone import load_backbone_state_dict
from mrcnn.config import Config
from mrcnn.model import MaskRCNN, build_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

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
def load_torchvision(model: MaskRCNN, state_dict: dict[str, Tensor]) -> None:
    """Load a torchvision `maskrcnn_resnet50_fpn` (or `keypointrcnn_resnet50_fpn`) state dict;
    raises on missing/extra keys."""
    ours = {
        torchvision_key(k): v
        for k, v in state_dict.items()
        if not k.endswith("num_batches_tracked")
    }
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    missing, extra = sorted(expected - set(ours)), sorted(set(ours) - expected)
    if missing or extra:
        raise ValueError(
            "state dict does not fit this model (build it with presets.torchvision_r50_fpn, or "
            "presets.torchvision_keypoint_r50_fpn for a Keypoint R-CNN, and "
            f"the checkpoint's num_classes): missing {_few(missing)}, unexpected {_few(extra)}"
        )
    own = model.state_dict()
    for k, v in ours.items():
        if own[k].shape != v.shape:
            raise ValueError(
                f"'{k}' has shape {tuple(v.shape)}, the model has {tuple(own[k].shape)}"
            )
    model.load_state_dict(ours, strict=False)


def load_backbone(model: MaskRCNN, state_dict: dict[str, Tensor]) -> None:
    """Initialise the ResNet body from an ImageNet checkpoint (torchvision key names)."""
    load_backbone_state_dict(model.backbone.body, state_dict)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors from a local checkpoint; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]  # training checkpoints keep the weights under "model"
    return sd


def save(model: MaskRCNN, path: str | Path, extra: dict | None = None) -> Path:
    """Write `path/model.safetensors` + `path/config.json` (atomically, via a temp folder)."""
    from safetensors.torch import save_file

    if model.cfg is None:
        raise ValueError("model has no config attached; build it with mrcnn.build_model(cfg)")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp / WEIGHTS_FILE))
    meta = {"config": model.cfg.to_dict(), **(extra or {})}
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def load(path: str | Path, device: str | torch.device = "cpu") -> MaskRCNN:
    """Rebuild a model saved by `save` (eval mode, on `device`)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not a saved model (expected {CONFIG_FILE} and {WEIGHTS_FILE} in it)"
        )
    meta = json.loads((path / CONFIG_FILE).read_text())
    model = build_model(Config.from_dict(meta["config"]))
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    return model.to(device).eval()


def _few(keys: list[str]) -> str:
    return str(keys[:5])[:-1] + (f", ... ({len(keys)} in all)]" if len(keys) > 5 else "]")
