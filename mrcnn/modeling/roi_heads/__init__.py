"""RoI heads: `RoIHeads` (heads.py) composes the box head, the class-specific mask head, and the
optional keypoint and MaskIoU heads, each in the file named for it."""
