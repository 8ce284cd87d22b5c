"""What a predict run writes, as it goes: per-image overlays, COCO results, the image list.

`PredictionWriter` records each image's detections (ordinary or tiled) and `write()` puts
`results.json` and `images.json` into the output folder; `pipeline.predict` calls it in a
`finally`, so whatever stops a run, what was done is on disk. `collect_inputs` turns the user's
files and folders into unique output names (`ImageInput`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mrcnn.data.image_file import IMAGE_SUFFIXES
from mrcnn.evaluation.coco_results import to_coco_results
from mrcnn.fileio import save_png_atomic, write_json_atomic

log = logging.getLogger("pipeline.predict")


@dataclass(frozen=True)
class ImageInput:
    path: Path
    name: str  # relative name used in outputs: "folder/sub/a.jpg" or "a.jpg"
    overlay: str = ""  # the overlay's relative path: "folder/sub/a.png"


# Overlays of tiled images are drawn this many full-resolution masks at a time.
_OVERLAY_MASK_BYTES = 256 * 1024 * 1024


class PredictionWriter:
    """What a predict run has done so far, written out by `write` whatever happens."""

    def __init__(
        self,
        out_dir: Path,
        net: Any,
        class_map: dict[int, int] | None,
        source: dict,
        keypoint_thresh: float = 0.0,
    ):
        self.out_dir = out_dir
        self.keypoint_thresh = keypoint_thresh  # overlays: keypoints scoring above it
        self.net = net
        self.class_map = class_map
        self.source = source
        self.class_names = net.class_names or None
        self.results: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.complete = False
        self.stopped = ""
        (out_dir / "overlays").mkdir(parents=True, exist_ok=True)

    def skip(self, item: ImageInput, error: Exception) -> None:
        """Record (images.json) and log, one line, a file that is not a usable image; `reason`
        is `ImageReadError.reason` (corrupt_image, missing_image)."""
        reason = getattr(error, "reason", "corrupt_image")
        message = " ".join(str(error).split())
        log.warning("skipped %s (%s): %s", item.name, reason, message)
        self.skipped.append(
            {"path": str(item.path), "file_name": item.name, "reason": reason, "error": message}
        )

    def finish_batch(self, pending: list[tuple[int, ImageInput, np.ndarray]]) -> None:
        """Detect, draw and record the pending images (then forget them)."""
        if not pending:
            return
        arrays = [image for _, _, image in pending]
        dets = self.net.detect(arrays, batch_size=len(arrays))
        for (image_id, item, image), det in zip(pending, dets, strict=True):
            self._record(image_id, item, image, det, tiled=False)
        pending.clear()

    def detect_tiled(
        self,
        image_id: int,
        item: ImageInput,
        image: np.ndarray,
        tile: int,
        overlap: float,
        batch_size: int,
    ) -> None:
        from mrcnn.inference.tiling import detect_tiled

        det = detect_tiled(
            self.net,
            image,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            nms_thresh=float(self.net.roi_heads.detection_layer.nms_thresh),
        )
        self._record(image_id, item, image, det, tiled=True)

    def _record(self, image_id: int, item: ImageInput, image: np.ndarray, det: Any, tiled: bool):
        from mrcnn.inference.detections import Detections
        from mrcnn.visualize import colors, draw_instances

        h, w = image.shape[:2]
        if isinstance(det, Detections):
            picture = draw_instances(
                image,
                det.boxes,
                det.masks,
                det.labels,
                self.class_names,
                det.scores,
                keypoints=getattr(det, "keypoints", None),
                keypoint_thresh=self.keypoint_thresh,
            )
            self.results += to_coco_results(det, image_id, self.class_map, file_name=item.name)
        else:  # TiledDetections: full-resolution masks a bounded group at a time
            picture, palette = image, colors(len(det))
            group = max(1, _OVERLAY_MASK_BYTES // max(1, h * w))
            for s in range(0, len(det), group):
                idx = list(range(s, min(len(det), s + group)))
                part = Detections(det.boxes[idx], det.scores[idx], det.labels[idx], det.masks(idx))
                picture = draw_instances(
                    picture,
                    part.boxes,
                    part.masks,
                    part.labels,
                    self.class_names,
                    part.scores,
                    instance_colors=palette[idx],
                )
                self.results += to_coco_results(part, image_id, self.class_map, item.name)
        save_png_atomic(picture, self.out_dir / "overlays" / item.overlay)
        self.images.append(
            {
                "id": image_id,
                "file_name": item.name,
                "path": str(item.path),
                "height": h,
                "width": w,
                "detections": len(det),
                "tiled": tiled,
            }
        )

    def write(self) -> dict[str, Any]:
        summary = {
            "model": self.source,
            "score_thresh": float(self.net.roi_heads.detection_layer.score_thresh),
            "complete": self.complete,
            "num_images": len(self.images),
            "num_detections": len(self.results),
            "num_skipped": len(self.skipped),
            "images": self.images,
            "skipped": self.skipped,
        }
        if self.stopped:
            summary["stopped"] = self.stopped
        write_json_atomic(self.out_dir / "results.json", self.results, indent=None)
        write_json_atomic(self.out_dir / "images.json", summary)
        line = (
            f"{len(self.images)} images, {len(self.results)} detections -> {self.out_dir}; "
            f"{len(self.skipped)} skipped"
            + (
                f" (unreadable: {', '.join(s['file_name'] for s in self.skipped[:3])}"
                f"{', ...' if len(self.skipped) > 3 else ''}; see images.json)"
                if self.skipped
                else ""
            )
            + ("" if self.complete else f"; STOPPED early ({self.stopped or 'interrupted'})")
        )
        (log.info if self.complete and not self.skipped else log.warning)("%s", line)
        return summary


def collect_inputs(inputs: list[Path]) -> list[ImageInput]:
    """Files as given, folders searched recursively for image suffixes (sorted); output names
    are made unique ("a.jpg", "a_2.jpg") so no overlay overwrites another, and each overlay is
    `<name without its suffix>.png` (deduplicated the same way: `a.jpg` + `a.png` in one folder
    give `a.png` and `a_2.png`)."""
    found: list[ImageInput] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            base = path.resolve().name
            found += [ImageInput(p, f"{base}/{p.relative_to(path).as_posix()}") for p in files]
            _note_other_files(path, len(files))
        elif path.is_file():
            found.append(ImageInput(path, path.name))
        else:
            raise FileNotFoundError(f"input {path} does not exist")
    if not found:
        raise FileNotFoundError("no input images given")
    names = _unique([item.name for item in found])
    overlays = _unique([str(Path(n).with_suffix(".png").as_posix()) for n in names])
    return [ImageInput(i.path, n, o) for i, n, o in zip(found, names, overlays, strict=True)]


def _note_other_files(folder: Path, num_images: int) -> None:
    """One line naming the files of `folder` left out for their suffix (nothing is dropped
    unsaid: an image saved as .heic or .jpe is not read, and the user should know)."""
    others = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if others:
        log.info(
            "%s: %d image files; %d other files not read (not an image suffix: %s%s)",
            folder,
            num_images,
            len(others),
            ", ".join(others[:3]),
            ", ..." if len(others) > 3 else "",
        )


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        n = seen.get(name, 0) + 1
        seen[name] = n
        if n > 1:
            stem, dot, suffix = name.rpartition(".")
            name = f"{stem}_{n}{dot}{suffix}" if dot else f"{suffix}_{n}"
        out.append(name)
    return out
