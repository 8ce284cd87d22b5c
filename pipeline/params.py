"""`params.yaml` -> typed, validated sections: one dataclass per stage section, and `Params`,
the whole file.

    >>> load("params.yaml").shards.image_size
    128

Each section is a dataclass whose fields are the section's keys, with defaults, and a
`validate()` that raises `ValueError` naming the key. Reading a section rejects unknown keys
(`ValueError: unknown params key 'data.sorce' ...`), checks types and runs `validate()`
(`pipeline.paramfile.load_section`). A missing section or key keeps its default. A field may
itself be a dataclass (a nested mapping in the YAML, e.g. `data.shapes`).

`load` reads and checks the whole file at once (every section, unknown sections too) into
`Params`, what each stage's `run(params, paths)` takes; `validate_file` is the same check. Each
stage and `pipeline.tune` run it before any work (`pipeline.cli.run_main`), so a typo in
`evaluate:` fails `train` in seconds instead of after an hour of training.

`num_workers` means the same in every section: worker processes, 0 = none (the main process does
the work), -1 = one per core (`pipeline.paramfile.worker_processes`); `train.num_workers` counts
Ray Train workers (0: training runs in-process).

To add a section: write its dataclass below and add it to `SECTIONS` and `Params`. The file
machinery is in `pipeline.paramfile`; the `train` and `tune` sections in `pipeline.train_params`;
`export` and `predict` in `pipeline.serve_params`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrcnn.config import Config, InputConfig
from mrcnn.data.layout import SPLITS
from mrcnn.data.shapes import ShapesSpec
from mrcnn.data.writer import ShardOptions
from mrcnn.mapping import reprefix
from pipeline.formats import FORMATS
from pipeline.layout import project_root, under
from pipeline.paramfile import (
    ALL_CORES,
    check,
    check_device,
    check_workers,
    from_dict,
    load_params,
    model_config,
    model_preset,
)
from pipeline.search_space import parse_space
from pipeline.serve_params import ExportParams, PredictParams
from pipeline.train_params import TrainParams, TuneParams

DATA_SOURCES = ("shapes", "coco", "local")
IMAGE_FORMATS = ("auto", "png", "jpeg")


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
    num_workers: int = ALL_CORES  # worker processes: -1 = one per core, 0 = none (this process)

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
        check_workers(self.num_workers)

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
    # (`mrcnn.evaluation.coco_results.ResultsEncoder`), then evaluating bbox / segm / keypoints
    # side by side (`coco_evaluate(processes=)`); 0 = none (all in the main process), -1 = one
    # per core.
    num_workers: int = 0
    backend: str = "faster"  # COCOeval: faster (faster-coco-eval, C++) | pycocotools (reference)
    # Keypoint models: one OKS sigma per keypoint type; empty = COCO's 17 person sigmas.
    oks_sigmas: tuple[float, ...] = ()
    # Overlays draw a predicted keypoint only where its score (the heatmap logit) passes this
    # (Detectron's kp_thresh).
    keypoint_thresh: float = 2.0
    # Error analysis (bbox, segm; docs/evaluate.md): confusion matrix and error pictures at this
    # score (< 0: the model's own inference.score_thresh), the N images with the most weighted
    # errors, and COCO analyze()'s PR breakdown (about two more COCOevals per IoU type).
    confusion_thresh: float = -1.0
    num_error_images: int = 8
    pr_breakdown: bool = True

    def validate(self) -> None:
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(1 <= self.num_overlays <= 64, "num_overlays", "must be in 1..64")
        check(all(s > 0 for s in self.oks_sigmas), "oks_sigmas", "must be > 0")
        check(0 <= self.num_step_images <= 16, "num_step_images", "must be in 0..16")
        check(self.score_thresh < 1, "score_thresh", "must be < 1 (< 0 keeps the model's)")
        check_device(self.device)
        check(self.max_images >= 0, "max_images", "must be >= 0 (0 = all)")
        check_workers(self.num_workers)
        check(self.backend in ("faster", "pycocotools"), "backend", "must be faster | pycocotools")
        check(math.isfinite(self.keypoint_thresh), "keypoint_thresh", "must be a number")
        check(self.confusion_thresh < 1, "confusion_thresh", "must be < 1 (< 0: the model's)")
        check(0 <= self.num_error_images <= 64, "num_error_images", "must be in 0..64")


SECTIONS: dict[str, type | None] = {
    "data": DataParams,
    "shards": ShardsParams,
    "inspect": InspectParams,
    "model": None,  # mrcnn.Config: checked by model_config
    "train": TrainParams,
    "tune": TuneParams,  # + tune.space, checked by pipeline.search_space.parse_space
    "mlflow": MlflowParams,
    "evaluate": EvaluateParams,
    "export": ExportParams,
    "predict": PredictParams,
}


@dataclass(frozen=True)
class Params:
    """The whole params file, typed: one field per section, defaults where the file has none.
    Every stage's `run(params, paths)` takes it and reads its own sections only (the ones
    dvc.yaml's `params:` lists for it).

    `model` stays the mapping the file holds (a preset and keys over it): it becomes an
    `mrcnn.Config` once the dataset gives classes and image size (`model_config`). The sweep's
    `tune.space` is read by `pipeline.sweep.config.load_sweep`, not kept here.
    """

    data: DataParams = field(default_factory=DataParams)
    shards: ShardsParams = field(default_factory=ShardsParams)
    inspect: InspectParams = field(default_factory=InspectParams)
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainParams = field(default_factory=TrainParams)
    tune: TuneParams = field(default_factory=TuneParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    export: ExportParams = field(default_factory=ExportParams)
    predict: PredictParams = field(default_factory=PredictParams)

    @property
    def preset(self) -> str:
        """The preset the model section builds on (`pipeline.paramfile.model_preset`)."""
        return model_preset(self.model)

    def model_config(
        self, *, num_classes: int, image_size: int, class_names: tuple[str, ...] = ()
    ) -> Config:
        """The `model` section -> `mrcnn.Config` for a dataset of `num_classes` (background
        included) at `image_size`."""
        return model_config(
            self.model, num_classes=num_classes, image_size=image_size, class_names=class_names
        )


def load(path: str | Path) -> Params:
    """Read and check the whole params file (as `validate_file`) -> `Params`. Its relative paths
    (`data.local_dir`, `train.init_weights`) are made absolute from the project root
    (`pipeline.layout.project_root`), whatever the working directory (Ray workers run
    elsewhere)."""
    params = _read(path)[0]
    root = project_root(path)
    data, train = params.data, params.train
    if data.local_dir:
        data = dataclasses.replace(data, local_dir=str(under(root, data.local_dir)))
    if train.init_weights:
        train = dataclasses.replace(train, init_weights=str(under(root, train.init_weights)))
    return dataclasses.replace(params, data=data, train=train)


def validate_file(path: str | Path) -> dict[str, Any]:
    """Check every section of the params file -> the document. An unknown section or key, a
    value of the wrong type or out of range raises `ValueError` naming it; a missing file
    `FileNotFoundError`. (The sweep's trials are checked against the dataset by `pipeline.tune`.)
    """
    return _read(path)[1]


def _read(path: str | Path) -> tuple[Params, dict[str, Any]]:
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"no params file {path} (run from the project folder or pass --params FILE)"
        )
    doc = load_params(path)
    for name in doc:
        if name not in SECTIONS:
            near = difflib.get_close_matches(str(name), SECTIONS, n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise ValueError(
                f"unknown params section '{name}' in {path} ({hint}sections: {', '.join(SECTIONS)})"
            )
    sections = {}
    for name, cls in SECTIONS.items():
        section = doc.get(name) or {}
        if cls is TuneParams and isinstance(section, dict) and "space" in section:
            section = dict(section)
            parse_space(section.pop("space"))
        if cls is not None:
            sections[name] = from_dict(cls, section, name)
    params = Params(**sections, model=doc.get("model") or {})
    params.model_config(num_classes=2, image_size=params.shards.image_size)  # checks `model`
    return params, doc
