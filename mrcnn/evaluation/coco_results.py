"""Detections <-> COCO results format (what `COCOeval` and COCO tools read).

One result per instance: `{"image_id", "category_id", "bbox": [x, y, w, h], "score", "segmentation":
RLE}` where the RLE is `pycocotools.mask.encode` of the instance mask with its `counts` decoded to a
string (JSON-safe). Encoding is lossless: `decode_masks(encode_masks(m))` gives `m` back. Masks kept
as the mask head's grid and box (`mrcnn.inference.grid_masks.GridMasks`, from
`MaskRCNN.postprocess(..., grid_masks=True)`) are encoded from the grid, no pixel pasted.

Keypoint models add `"keypoints": [x1, y1, s1, x2, y2, s2, ...]` (COCO's flat layout; the third
value of each is the keypoint's score where COCO's ground truth has its visibility, as detectron2
writes them; COCOeval reads only x and y). Mask Scoring R-CNN models add `"segm_score"`, the mask's
own score, which `mrcnn.evaluation.coco_eval.coco_evaluate` ranks the segm results by (the bbox
results keep `"score"`). A model without a mask head writes no `"segmentation"`.

`ResultsEncoder` runs `to_coco_results` over worker processes while the caller goes on
detecting (COCO val: 500,000 masks to encode).
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Mapping, Sequence
from multiprocessing.pool import AsyncResult, Pool
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from mrcnn.inference.detections import Detections
from mrcnn.inference.grid_masks import GridMasks


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """bool/uint8 `[N, H, W]` -> N COCO RLEs `{"size": [H, W], "counts": str}`."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    # pycocotools wants a Fortran-ordered uint8 [H, W, N].
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def decode_masks(rles: list[Mapping[str, Any]], shape: tuple[int, int] | None = None) -> np.ndarray:
    """COCO RLEs (string or bytes counts) -> bool `[N, H, W]`; `shape` is used when N = 0."""
    if not rles:
        h, w = shape if shape is not None else (0, 0)
        return np.zeros((0, h, w), dtype=bool)
    fixed = [
        {"size": list(r["size"]), "counts": r["counts"].encode("ascii")}
        if isinstance(r["counts"], str)
        else dict(r)
        for r in rles
    ]
    return mask_utils.decode(fixed).transpose(2, 0, 1).astype(bool)


def to_coco_results(
    det: Detections,
    image_id: int,
    category_ids: Mapping[int, int] | None = None,
    file_name: str | None = None,
) -> list[dict[str, Any]]:
    """One image's detections -> COCO result dicts (bbox as `[x, y, w, h]` in pixels).

    `category_ids` maps model labels to dataset category ids (labels are used as they are when it
    is None); a label missing from it raises `KeyError`. `file_name` is added to each result when
    given (COCO tools ignore extra keys). `det.masks` is bool [N, H, W] or `GridMasks`.
    """
    if isinstance(det.masks, GridMasks):
        rles = det.masks.encode()
    else:
        masks = np.asarray(det.masks)
        has_masks = masks.ndim == 3 and masks.shape[1] * masks.shape[2] > 0
        rles = encode_masks(masks) if has_masks else None
    # Python floats and ints once per array (the same values as float() of each element).
    boxes = np.asarray(det.boxes).tolist()
    scores = np.asarray(det.scores).tolist()
    labels = np.asarray(det.labels).tolist()
    mask_scores = None if det.mask_scores is None else np.asarray(det.mask_scores).tolist()
    keypoints = None
    if det.keypoints is not None:
        kp = np.asarray(det.keypoints)  # [N, K, 3] -> N flat lists [x1, y1, s1, x2, ...]
        keypoints = kp.reshape(kp.shape[0], kp.shape[1] * kp.shape[2]).tolist()
    out = []
    for i in range(len(det)):
        x1, y1, x2, y2 = boxes[i]
        label = int(labels[i])
        result: dict[str, Any] = {"image_id": int(image_id)}
        if file_name is not None:
            result["file_name"] = file_name
        result.update(
            category_id=int(category_ids[label]) if category_ids is not None else label,
            bbox=[x1, y1, x2 - x1, y2 - y1],
            score=scores[i],
        )
        if rles is not None:
            result["segmentation"] = rles[i]
        if mask_scores is not None:
            result["segm_score"] = mask_scores[i]
        if keypoints is not None:
            result["keypoints"] = keypoints[i]
        out.append(result)
    return out


def _encode_images(
    detections: Sequence[Detections],
    image_ids: Sequence[int],
    category_ids: Mapping[int, int] | None,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for det, image_id in zip(detections, image_ids, strict=True):
        out += to_coco_results(det, image_id, category_ids)
    return out


class ResultsEncoder:
    """`to_coco_results` for image after image, over `num_workers` processes.

        with ResultsEncoder(category_ids, num_workers=2) as encoder:
            for batch in batches:
                encoder.add(model.postprocess(model.predict(batch), batch, grid_masks=True),
                            batch.image_ids.tolist())
            results = encoder.results()

    `add` hands a batch's detections to a worker and returns at once (the caller goes on with
    the next batch), waiting only when `2 * num_workers` batches are already queued (bounded
    memory). With `num_workers=0` it encodes in the caller's process. `results()` returns
    every result in the order the images were added. Workers are forked (they run numpy and
    pycocotools only) where the platform allows, else spawned.
    """

    def __init__(self, category_ids: Mapping[int, int] | None = None, num_workers: int = 0) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.category_ids = dict(category_ids) if category_ids is not None else None
        self.num_workers = num_workers
        self._done: list[dict[str, Any]] = []
        self._pending: deque[AsyncResult] = deque()
        self._pool: Pool | None = None
        if num_workers > 0:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self._pool = ctx.Pool(num_workers)

    def add(self, detections: Sequence[Detections], image_ids: Sequence[int]) -> None:
        """Queue one batch: `detections[i]` are the detections of image `image_ids[i]`."""
        ids = [int(i) for i in image_ids]
        if self._pool is None:
            self._done += _encode_images(detections, ids, self.category_ids)
            return
        while len(self._pending) >= 2 * self.num_workers:
            self._done += self._pending.popleft().get()
        task = (list(detections), ids, self.category_ids)
        self._pending.append(self._pool.apply_async(_encode_images, task))

    def results(self) -> list[dict[str, Any]]:
        """Every result so far, in the order the images were added (waits for the workers)."""
        while self._pending:
            self._done += self._pending.popleft().get()
        return self._done

    def close(self) -> None:
        """Stop the workers (pending work is dropped; call `results()` first)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
        self._pending.clear()

    def __enter__(self) -> ResultsEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
