"""Alias for one release (listed in the README): `OnnxModel` moved to `mrcnn.export`
(`from mrcnn.export import OnnxModel`; torch-free as before)."""

from mrcnn.export.onnx_model import OnnxModel  # noqa: F401
