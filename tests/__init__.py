"""Tests mirror mrcnn/ and pipeline/; CPU only, small and deterministic."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout: params.yaml, dvc.yaml, configs/
