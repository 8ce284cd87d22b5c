"""Evaluation of a dataset: batched detection over shards -> COCO results.

`predict_dataset` is what the evaluate stage, the periodic validation during training and the sweeps
all run; `mrcnn.evaluation.coco_eval.coco_evaluate` then scores its output. Masks are not pasted:
they stay the mask head's M x M grid and box (`postprocess(..., grid_masks=True)`) and their RLE is
computed from the grid (`mrcnn.inference.grid_masks`), over `encode_workers` processes while the
model goes on detecting (`mrcnn.evaluation.coco_results.ResultsEncoder`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from mrcnn.data import category_ids as label_to_category
from mrcnn.data import eval_batches
from mrcnn.evaluation.coco_results import ResultsEncoder

if TYPE_CHECKING:
    from mrcnn.data import ShardDataset
    from mrcnn.modeling.model import MaskRCNN


def predict_dataset(
    model: MaskRCNN,
    dataset: ShardDataset,
    batch_size: int,
    *,
    category_ids: Mapping[int, int] | None = None,
    max_images: int = 0,
    num_workers: int = 0,
    encode_workers: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Detect on every sample of `dataset` -> COCO results.

    Batches of `batch_size` images from `eval_batches` go through `model.predict` and
    `model.postprocess` (boxes and masks in original-image pixels) on the model's device.
    Each result is `{"image_id", "category_id", "bbox": [x, y, w, h], "score",
    "segmentation": RLE}` with `image_id` the source COCO id. `category_ids` maps model labels
    to dataset category ids (default: the dataset's class map). `max_images` > 0 keeps the
    first that many samples. `num_workers`: DataLoader processes decoding the shards;
    `encode_workers`: processes RLE-encoding the masks (0: both in this process).
    """
    from torch.utils.data import Subset

    if category_ids is None:
        if not dataset.class_map:
            raise ValueError(f"the shards in {dataset.root} have no class map in their manifest")
        category_ids = label_to_category(dataset.class_map)
    n = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    source = dataset if n == len(dataset) else Subset(dataset, range(n))
    device = model.device
    bar = tqdm(total=n, desc="evaluate", unit="img", disable=None if progress else True)
    with torch.no_grad(), ResultsEncoder(category_ids, encode_workers) as encoder:
        for batch in eval_batches(source, batch_size, num_workers=num_workers):
            # Ground truth is not needed for inference: only the image tensors travel.
            inputs = replace(
                batch, gt_boxes=None, gt_labels=None, gt_mini_masks=None, gt_valid=None
            ).to(device, non_blocking=True)
            detections = model.postprocess(model.predict(inputs), inputs, grid_masks=True)
            encoder.add(detections, batch.image_ids.tolist())
            bar.update(len(batch))
        results = encoder.results()
    bar.close()
    return results
