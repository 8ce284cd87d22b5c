"""The shapes labelling tools draw without a polygon (rectangles, circles, ellipses) as the
polygons COCO stores: flat `[x0, y0, x1, y1, ...]` lists in pixels (labelme, VIA)."""

from __future__ import annotations

import math

import numpy as np


def rectangle(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def ellipse(
    cx: float, cy: float, rx: float, ry: float, theta: float = 0.0, n: int = 32
) -> list[float]:
    """A polygon with `n` vertices on the ellipse (radians `theta` rotation)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(theta), math.sin(theta)
    pts = np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)
    return pts.round(2).reshape(-1).tolist()
