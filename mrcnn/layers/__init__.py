"""Layers: the building blocks the model and the export graph share.

`box_coder` (box deltas, clipping), `nms` (batched NMS into fixed [B, k] slots), `matcher`
(IoU matching + balanced sampling), `poolers` (multi-level RoIAlign: the `Pooler`), `resample`
(separable bilinear resampling of small masks into frames).
"""
