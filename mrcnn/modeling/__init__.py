"""The model: backbone, anchors, RPN, RoI heads, targets, losses, and `MaskRCNN` / `build_model`.

images -> backbone (ResNet + FPN) -> rpn (head + anchors + proposal layer)
       -> roi_heads (box, mask, keypoint, MaskIoU heads) -> losses | RawDetections
"""
