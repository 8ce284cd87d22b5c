"""`params.yaml` -> typed, validated sections: one dataclass per stage section.

    >>> load_section("params.yaml", "shards", ShardsParams).image_size
    128

Each section is a dataclass whose fields are the section's keys, with defaults, and a
`validate()` that raises `ValueError` naming the key. `load_section` reads one section, rejects
unknown keys (`ValueError: unknown params key 'data.sorce' ...`), checks types and runs
`validate()`. A missing section or key keeps its default. A field may itself be a dataclass
(a nested mapping in the YAML, e.g. `data.shapes`).

To add a section: write its dataclass below and call `load_section(path, "name", NameParams)`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mrcnn import presets
from mrcnn.config import Config, InputConfig, from_mapping, reprefix
from mrcnn.data.shapes import ShapesSpec
from mrcnn.data.writer import ShardOptions
from pipeline.formats import FORMATS

T = TypeVar("T")

DATA_SOURCES = ("shapes", "coco", "local")
SPLITS = ("train", "val")
IMAGE_FORMATS = ("auto", "png", "jpeg")


DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(device: str, key: str = "device") -> None:
    """`auto`, `cpu`, `cuda` or `cuda:N` (see `pipeline.training.runtime.resolve_device`)."""
    check(DEVICE_PATTERN.fullmatch(device) is not None, key, "must be auto, cpu, cuda or cuda:N")


def check_range(v: tuple[float, ...], key: str, top: float) -> None:
    """`[]` (off) or `[lo, hi]` with 0 < lo <= hi <= top."""
    ok = not v or (len(v) == 2 and 0 < v[0] <= v[1] <= top)
    check(ok, key, f"must be [] or [lo, hi] with 0 < lo <= hi <= {top}")


def check(ok: bool, key: str, why: str) -> None:
    """Raise `ValueError("params key 'key' why")` unless `ok` (the section prefix is added by
    `load_section`)."""
    if not ok:
        raise ValueError(f"params key '{key}' {why}")


@dataclass
class DataParams:
    """`data`: where the raw COCO-layout dataset comes from (`pipeline.download`)."""

    source: str = "shapes"  # shapes | coco | local
    local_dir: str = ""  # source=local: your labelled folder (relative to the project root)
    local_format: str = "auto"  # auto | coco | coco_single | labelme | via | yolo | masks
    val_fraction: float = 0.2  # formats without a val split: share of images to val, by image
    splits: tuple[str, ...] = SPLITS
    # source=coco: the official server; tests point it at a local http.server.
    coco_base_url: str = "http://images.cocodataset.org"
    keep_archives: bool = True  # source=coco: keep the zips (in data/downloads/) after extracting
    shapes: ShapesSpec = field(default_factory=ShapesSpec)

    def validate(self) -> None:
        check(self.source in DATA_SOURCES, "source", f"must be one of {DATA_SOURCES}")
        check(
            self.source != "local" or bool(self.local_dir),
            "local_dir",
            "must name your dataset folder when source is 'local'",
        )
        check(self.local_format in FORMATS, "local_format", f"must be one of {FORMATS}")
        check(0 <= self.val_fraction < 1, "val_fraction", "must be in [0, 1)")
        check(
            len(self.splits) > 0 and set(self.splits) <= set(SPLITS),
            "splits",
            f"must be a non-empty subset of {SPLITS}",
        )
        check(
            self.coco_base_url.startswith(("http://", "https://")),
            "coco_base_url",
            "must be an http(s) URL",
        )
        try:
            self.shapes.validate()
        except ValueError as e:
            raise ValueError(reprefix(str(e), "shapes.", "params key")) from None


@dataclass
class ShardsParams:
    """`shards`: resize/pad, mini-masks and the shard files (`pipeline.shards`).

    The library default image_size is 1024 (COCO); params.yaml sets 128 for shapes.
    """

    image_size: int = 1024
    resize_mode: str = "square"  # square | pad64 | short_side
    min_size: int = 800  # short_side mode only
    mini_mask_shape: int = 56  # side m of the m x m mini-masks
    # Encoding of the resized image: auto = PNG for PNG sources (exact), JPEG for the rest.
    image_format: str = "auto"
    jpeg_quality: int = 95
    samples_per_shard: int = 256
    # Images without a usable instance: kept as negatives (val keeps them so that evaluation
    # sees every image) or reported as skipped.
    keep_negatives_train: bool = False
    keep_negatives_val: bool = True
    # Instances whose box in the padded frame is narrower or shorter than this are reported.
    min_box_size: float = 1.0
    num_workers: int = 0  # processes; 0 = all cores

    def validate(self) -> None:
        # The model's own input rules (mrcnn.config.InputConfig): shards and model must agree.
        try:
            InputConfig(self.image_size, self.resize_mode, self.min_size).validate()
        except ValueError as e:
            raise ValueError(reprefix(str(e), "", "params key")) from None
        check(4 <= self.mini_mask_shape <= 256, "mini_mask_shape", "must be in 4..256")
        check(self.image_format in IMAGE_FORMATS, "image_format", f"must be one of {IMAGE_FORMATS}")
        check(1 <= self.jpeg_quality <= 100, "jpeg_quality", "must be in 1..100")
        check(self.samples_per_shard >= 1, "samples_per_shard", "must be >= 1")
        check(self.min_box_size >= 0, "min_box_size", "must be >= 0")
        check(self.num_workers >= 0, "num_workers", "must be >= 0 (0 = all cores)")

    @staticmethod
    def normalize(d: dict[str, Any]) -> dict[str, Any]:
        """`mini_mask_shape: [56, 56]` (matterport's spelling) is `56`; mini-masks are square."""
        shape = d.get("mini_mask_shape")
        if isinstance(shape, (list, tuple)):
            check(
                len(shape) == 2 and shape[0] == shape[1],
                "mini_mask_shape",
                f"must be one side (56) or a square [h, w] with h == w, got {list(shape)}",
            )
            d = {**d, "mini_mask_shape": shape[0]}
        return d

    def options(self, split: str) -> ShardOptions:
        """The writer's options for `split`: this section's shared fields, and the split's
        keep_negatives_<split>."""
        names = [f.name for f in dataclasses.fields(ShardOptions) if f.name != "keep_negatives"]
        shared = {name: getattr(self, name) for name in names}
        return ShardOptions(**shared, keep_negatives=getattr(self, f"keep_negatives_{split}"))


@dataclass
class InspectParams:
    """`inspect`: the data / anchor / mini-mask pictures (`pipeline.inspect`). The anchors and
    their IoU thresholds are the `model` section's, so the pictures show what the model uses."""

    split: str = "train"
    num_samples: int = 6
    seed: int = 0
    anchors_per_level: int = 6  # drawn per level in anchors_per_level.png

    def validate(self) -> None:
        check(self.split in SPLITS, "split", f"must be one of {SPLITS}")
        check(1 <= self.num_samples <= 64, "num_samples", "must be in 1..64")
        check(self.anchors_per_level >= 1, "anchors_per_level", "must be >= 1")


@dataclass
class MlflowParams:
    """`mlflow`: the tracking store every stage logs to (`pipeline.tracking`)."""

    # sqlite:///relative.db is taken from the project root (the folder holding params.yaml);
    # http(s)://host:port is a tracking server (docs/mlflow.md: one on PostgreSQL).
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "mrcnn"
    # Where new experiments keep artifacts: "" = <project>/mlartifacts/<experiment> for a local
    # store, the server's default for an http store. A relative path is taken from the project.
    artifact_location: str = ""

    def validate(self) -> None:
        check(bool(self.tracking_uri.strip()), "tracking_uri", "must not be empty")
        check(bool(self.experiment.strip()), "experiment", "must not be empty")


@dataclass
class EvaluateParams:
    """`evaluate`: COCO bbox + segm AP of models/final on the val shards (`pipeline.evaluate`)."""

    batch_size: int = 8
    num_overlays: int = 8  # val images drawn (prediction next to ground truth) in overlays.png
    num_step_images: int = 2  # val images drawn step by step in steps/ (0 = none)
    score_thresh: float = -1.0  # < 0: the model's own inference.score_thresh
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    max_images: int = 0  # the first N val images only; 0 = all
    # Also write reports/evaluate/results.json (every detection, COCO results format; for COCO
    # val with 100 detections per image that is hundreds of MB).
    write_results: bool = False
    # Processes decoding the shards (DataLoader) and, as many again, RLE-encoding the masks
    # (`mrcnn.coco_results.ResultsEncoder`); 0 = both in the main process.
    num_workers: int = 0
    backend: str = "faster"  # COCOeval: faster (faster-coco-eval, C++) | pycocotools (reference)
    # Keypoint models: one OKS sigma per keypoint type; empty = COCO's 17 person sigmas.
    oks_sigmas: tuple[float, ...] = ()

    def validate(self) -> None:
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(1 <= self.num_overlays <= 64, "num_overlays", "must be in 1..64")
        check(all(s > 0 for s in self.oks_sigmas), "oks_sigmas", "must be > 0")
        check(0 <= self.num_step_images <= 16, "num_step_images", "must be in 0..16")
        check(self.score_thresh < 1, "score_thresh", "must be < 1 (< 0 keeps the model's)")
        check_device(self.device)
        check(self.max_images >= 0, "max_images", "must be >= 0 (0 = all)")
        check(self.num_workers >= 0, "num_workers", "must be >= 0")
        check(self.backend in ("faster", "pycocotools"), "backend", "must be faster | pycocotools")


@dataclass
class ExportParams:
    """`export`: registration in the MLflow model registry (`pipeline.export`)."""

    registered_model: str = "mrcnn-shapes"
    portable: bool = True  # also write + check the whole-model ONNX file (mrcnn/export.py)
    champion_metric: str = "segm.AP"  # a key of metrics/eval.json; higher is better

    def validate(self) -> None:
        name_ok = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.registered_model)
        check(name_ok is not None, "registered_model", "must be letters, digits, '.', '_', '-'")
        key_ok = re.fullmatch(r"\w+(\.\w+)*", self.champion_metric)
        check(key_ok is not None, "champion_metric", "must be a key of eval.json, e.g. segm.AP")


@dataclass
class PredictParams:
    """`predict`: inference on image files (`pipeline.predict`)."""

    score_thresh: float = -1.0  # < 0: the model's own inference.score_thresh
    batch_size: int = 4
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N

    def validate(self) -> None:
        check(self.score_thresh < 1, "score_thresh", "must be < 1 (< 0 keeps the model's)")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check_device(self.device)


# train.placement -> Ray's placement-group strategy for the worker group
PLACEMENTS = {"pack": "PACK", "spread": "SPREAD", "strict_spread": "STRICT_SPREAD"}


@dataclass
class TrainParams:
    """`train`: data-parallel training with Ray Train (`pipeline.train`).

    `lr`, `iterations`, `warmup_iters` and `steps` are given at `reference_batch` images per
    iteration and scale with the real global batch (workers x batch_size): the lr linearly, the
    iteration counts inversely (Goyal et al., 2017), so one setting serves 1 CPU or 8 GPUs.
    """

    num_workers: int = 1  # Ray Train workers: CPU processes here, one per GPU with use_gpu
    use_gpu: bool = False
    cpus_per_worker: int = 2  # torch threads per worker on CPU
    batch_size: int = 8  # images per worker per iteration
    reference_batch: int = 8
    iterations: int = 800
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9, the paper's recipe)
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | step
    warmup_iters: int = 50
    steps: tuple[float, ...] = (0.75, 1.0)  # step schedule: lr x0.1 at these fractions
    grad_clip: float = 10.0  # max gradient norm; 0 = off
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    compile: bool = False  # torch.compile the fixed-shape parts (GPU)
    channels_last: bool = False
    max_gt: int = 16  # ground-truth slots per image (COCO: 100)
    loader_workers: int = 0  # DataLoader processes per Ray worker
    hflip: bool = True
    scale_jitter: tuple[float, ...] = ()  # [lo, hi]: each image scaled by U(lo, hi); [] = off
    short_sides: tuple[int, ...] = ()  # multi-scale: short side drawn from these px (<= frame)
    random_crop: tuple[float, ...] = ()  # [lo, hi]: crop U(lo, hi) of each side; [] = off
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 200
    eval_every: int = 0  # val segm AP every N iterations (sweeps); 0 = only in `evaluate`
    eval_images: int = 100  # val images used by those periodic evaluations
    max_failures: int = 2  # worker-group restarts from the last checkpoint
    run_name: str = "shapes"  # Ray run = <run_name>-<hash of shards/model/train params>
    storage_path: str = "runs"  # Ray Train storage: a folder, or s3://bucket/prefix on a cluster
    placement: str = "pack"  # workers' placement group: pack | spread | strict_spread (nodes)
    shard_cache: str = ""  # s3:// shards: a local folder per node for whole shards; "" = none
    init_weights: str = ""  # torchvision Mask R-CNN (.pth) or ImageNet ResNet checkpoint

    def global_batch(self, world_size: int | None = None) -> int:
        """Images per iteration over all workers (`world_size` defaults to num_workers)."""
        return self.batch_size * max(1, world_size or self.num_workers)

    def validate(self) -> None:
        check(self.num_workers >= 0, "num_workers", "must be >= 0 (0 = in-process, no Ray)")
        for name in ("cpus_per_worker", "batch_size", "reference_batch", "iterations"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        check(self.optimizer in ("adamw", "sgd"), "optimizer", "must be adamw or sgd")
        check(self.lr > 0, "lr", "must be > 0")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(self.schedule in ("cosine", "step"), "schedule", "must be cosine or step")
        check(self.warmup_iters >= 0, "warmup_iters", "must be >= 0")
        check(all(0 < s <= 1 for s in self.steps), "steps", "must be fractions in (0, 1]")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0")
        check(self.max_gt >= 1, "max_gt", "must be >= 1")
        check_range(self.scale_jitter, "scale_jitter", float("inf"))  # LSJ: [0.1, 2.0]
        check_range(self.random_crop, "random_crop", 1.0)
        check(all(s >= 1 for s in self.short_sides), "short_sides", "must be sizes in px")
        check(not (self.scale_jitter and self.short_sides), "short_sides", "excludes scale_jitter")
        for name in ("log_every", "checkpoint_every"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        check(self.eval_every >= 0, "eval_every", "must be >= 0")
        check(self.max_failures >= 0, "max_failures", "must be >= 0")
        check(self.placement in PLACEMENTS, "placement", f"must be one of {sorted(PLACEMENTS)}")
        check(
            re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.run_name) is not None,
            "run_name",
            "must be letters, digits, '.', '_', '-'",
        )


def load_model_config(
    path: str | Path, *, num_classes: int, image_size: int, class_names: tuple[str, ...] = ()
) -> Config:
    """The `model` section -> `mrcnn.Config`: a preset (`model.preset`) with the section's
    other keys merged over it; the dataset fixes classes and input size."""
    return model_config(
        load_params(path).get("model") or {},
        num_classes=num_classes,
        image_size=image_size,
        class_names=class_names,
    )


def model_config(
    section: dict[str, Any],
    *,
    num_classes: int,
    image_size: int,
    class_names: tuple[str, ...] = (),
) -> Config:
    """A `model` section given as a dict -> `mrcnn.Config` (what `load_model_config` does for
    a file; sweeps apply each trial's sampled values to the section first)."""
    section = dict(section)
    preset = section.pop("preset", "shapes_small")
    try:
        cfg = presets.get(preset, num_classes=num_classes, image_size=image_size)
        return cfg.replace(**section, class_names=list(class_names))
    except ValueError as e:
        raise ValueError(reprefix(str(e), "model.", "params key")) from None


def load_params(path: str | Path) -> dict[str, Any]:
    """The whole YAML file as a dict (empty for an empty file)."""
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(doc).__name__}")
    return doc


def load_section(path: str | Path, section: str, cls: type[T]) -> T:
    """Read `section` of the YAML file at `path` into the dataclass `cls` (validated)."""
    return from_dict(cls, load_params(path).get(section) or {}, section)


def from_dict(cls: type[T], d: Any, section: str) -> T:
    """Build and validate `cls` from a mapping; errors name `section.key`."""
    if not isinstance(d, dict):
        raise ValueError(f"params section '{section}' must be a mapping, got {type(d).__name__}")
    if hasattr(cls, "normalize"):
        try:
            d = cls.normalize(d)
        except ValueError as e:
            raise ValueError(reprefix(str(e), f"{section}.", "params key")) from None
    return from_mapping(cls, d, prefix=f"{section}.", noun="params key")


def to_dict(obj: Any) -> dict[str, Any]:
    """A section as a plain, JSON/YAML-safe dict (tuples become lists)."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(obj))
