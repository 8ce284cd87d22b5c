"""Alias for a release: the separable mask paste moved to `mrcnn.mask_paste`."""

from mrcnn.mask_paste import bilinear_matrix, paste_separable

__all__ = ["bilinear_matrix", "paste_separable"]
