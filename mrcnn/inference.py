"""Alias kept for the layout in ARCHITECTURE.md: the detection layer lives in
`mrcnn.detection_layer`, the mask paste in `mrcnn.mask_paste`."""

from mrcnn.detection_layer import MIN_BOX_SIZE, detection_layer, select_class_masks
from mrcnn.mask_paste import paste_masks_in_image

__all__ = ["MIN_BOX_SIZE", "detection_layer", "paste_masks_in_image", "select_class_masks"]
