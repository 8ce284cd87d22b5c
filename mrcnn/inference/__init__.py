"""Inference after the network: the detection layer (torch), and the torch-free rest:
`Detections`, post-processing to original pixels, the mask paste, masks as their M x M grid
(COCO RLE without pasting), input checks and tiled inference.

Only `detection_layer` imports torch; everything else here runs with numpy and Pillow alone, so
an exported model (`mrcnn.export.OnnxModel`) shares it without torch.
"""
