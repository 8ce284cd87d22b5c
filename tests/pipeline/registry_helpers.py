"""Shared by the MLflow tests: a fresh SQLite tracking store in a few milliseconds, a tiny model
that detects something even untrained, and synthetic images."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from mrcnn import presets, weights
from mrcnn.modeling.model import MaskRCNN, build_model

CLASS_NAMES = ("background", "square", "circle", "triangle")


@functools.cache
def _template_db() -> Path:
    """An SQLite file with MLflow's tables, created once per test session (creating them runs
    MLflow's migrations, seconds on a small CPU)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
    path = folder / "mlflow.db"
    store = SqlAlchemyStore(f"sqlite:///{path}", str(folder / "artifacts"))
    store.engine.dispose()
    return path


def fresh_store(folder: Path) -> str:
    """Tracking URI of a new, empty SQLite store in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(_template_db(), folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


def tiny_model(seed: int = 0) -> MaskRCNN:
    """shapes_small (128 px) with score_thresh 0: untrained, it still returns detections."""
    torch.manual_seed(seed)
    cfg = presets.shapes_small(inference={"score_thresh": 0.0, "detections_per_img": 10})
    cfg = cfg.replace(class_names=list(CLASS_NAMES))
    return build_model(cfg).eval()


def save_model(model: MaskRCNN, path: Path, extra: dict | None = None, preset: str = "") -> Path:
    return weights.save(model, path, extra=extra, preset=preset)


def synthetic_images() -> list[np.ndarray]:
    """Two seeded images of different sizes with a few filled shapes on noise."""
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((96, 128), (150, 110)):
        im = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        for _ in range(3):
            y, x = int(rng.integers(0, h - 30)), int(rng.integers(0, w - 30))
            s = int(rng.integers(12, 30))
            im[y : y + s, x : x + s] = rng.integers(100, 256, 3, dtype=np.uint8)
        out.append(im)
    return out
