"""Own data end to end: a labelme folder through `download`; the shipped configs run as written.

The config tests take `configs/coco_8gpu.yaml` and `configs/finetune.yaml` as they are and shrink
only what cannot run here (data: tiny shapes or a generated labelme folder; 128 px; CPU; two
iterations). Their relative paths (`train.init_weights`, `train.storage_path`,
`data.local_dir`, the tracking URI) must reach the Ray worker, whose working directory is not
the project, as absolute paths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mrcnn import weights
from pipeline.stages import download, shards, train
from tests import REPO_ROOT


def labelme_folder(root: Path, n: int = 12, size: int = 96) -> Path:
    """n labelme files with a square ("box") and a triangle ("tri") each, plus labels.txt."""
    root.mkdir(parents=True)
    (root / "labels.txt").write_text("__ignore__\n_background_\nbox\ntri\n")
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        x, y = (int(v) for v in rng.integers(5, 40, 2))
        img[y : y + 30, x : x + 30] = 220
        tri = [[60, 60], [90, 60], [75, 90]]
        shapes = [
            {
                "label": "box",
                "points": [[x, y], [x + 30, y + 30]],
                "shape_type": "rectangle",
                "group_id": None,
            },
            {"label": "tri", "points": tri, "shape_type": "polygon", "group_id": None},
        ]
        Image.fromarray(img).save(root / f"img{i:02d}.jpg", quality=95)
        doc = {
            "shapes": shapes,
            "imagePath": f"img{i:02d}.jpg",
            "imageData": None,
            "imageHeight": size,
            "imageWidth": size,
        }
        (root / f"img{i:02d}.json").write_text(json.dumps(doc))
    return root


def test_download_converts_a_labelme_folder_once(tmp_path, monkeypatch):
    labelme_folder(tmp_path / "proj" / "own")
    (tmp_path / "proj" / "params.yaml").write_text(
        "data:\n  source: local\n  local_dir: own\n  val_fraction: 0.25\n"
    )
    monkeypatch.chdir(tmp_path / "proj")
    download.main(["--params", "params.yaml"])
    raw = tmp_path / "proj" / "data" / "raw" / "local"
    report = json.loads((raw / "conversion_report.json").read_text())
    assert report["format"] == "labelme" and report["categories"] == ["box", "tri"]
    assert {s: c["images"] for s, c in report["splits"].items()} == {"train": 9, "val": 3}
    assert report["skipped"] == {"background_category": 1}
    val = json.loads((raw / "annotations" / "instances_val.json").read_text())
    assert len(val["annotations"]) == 6 and {c["name"] for c in val["categories"]} == {"box", "tri"}
    mtime = (raw / "annotations" / "instances_val.json").stat().st_mtime_ns
    download.main(["--params", "params.yaml"])  # unchanged folder: not converted again
    assert (raw / "annotations" / "instances_val.json").stat().st_mtime_ns == mtime
    (tmp_path / "proj" / "own" / "img00.json").unlink()  # a changed folder is converted again
    download.main(["--params", "params.yaml"])
    report = json.loads((raw / "conversion_report.json").read_text())
    assert sum(c["images"] for c in report["splits"].values()) == 11


def _shrunk(config: str, project: Path) -> dict:
    """The shipped config with only what cannot run here replaced."""
    p = yaml.safe_load((REPO_ROOT / "configs" / config).read_text())
    if p["data"]["source"] == "shapes" or config == "coco_8gpu.yaml":
        shapes = {"num_train": 8, "num_val": 4, "image_size": 128, "min_size": 10, "max_size": 25}
        p["data"] = {"source": "shapes", "shapes": shapes}
    else:
        labelme_folder(project / p["data"]["local_dir"], n=8, size=128)
    p["shards"] |= {
        "image_size": 128,
        "mini_mask_shape": 28,
        "samples_per_shard": 8,
        "num_workers": 1,
    }
    p["train"] |= {
        "use_gpu": False,
        "num_workers": 1,
        "cpus_per_worker": 1,
        "batch_size": 1,
        "reference_batch": 1,
        "iterations": 2,
        "warmup_iters": 1,
        "checkpoint_every": 2,
        "compile": False,
        "loader_workers": 0,
    }
    return p


def _pretrained(params: dict, project: Path) -> dict[str, torch.Tensor]:
    """Write the checkpoint `train.init_weights` names (as written: a relative path) with
    random weights of the right kind -> its state dict."""
    from torchvision.models import resnet50
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    path = project / params["train"]["init_weights"]
    assert not Path(params["train"]["init_weights"]).is_absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    if "maskrcnn" in path.name:  # torchvision's COCO Mask R-CNN: 91 classes
        sd = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    else:  # an ImageNet ResNet-50
        sd = resnet50().state_dict()
    torch.save(sd, path)
    return sd


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("config", ["coco_8gpu.yaml", "finetune.yaml"])
def test_shipped_config_runs_as_written(config, tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    params = _shrunk(config, project)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    checkpoint = _pretrained(params, project)
    monkeypatch.chdir(project)  # as dvc runs the stages; Ray's workers run elsewhere
    download.main(["--params", "params.yaml"])
    shards.main(["--params", "params.yaml"])
    train.main(["--params", "params.yaml"])
    assert os.getcwd() == str(project)
    model = weights.load(project / "models" / "final")
    # The stem is frozen (torchvision_r50_fpn trains the top 3 stages): still the checkpoint's.
    stem = checkpoint.get("backbone.body.conv1.weight", checkpoint.get("conv1.weight"))
    assert torch.equal(model.state_dict()["backbone.body.conv1.weight"], stem)
    assert (project / params["train"]["storage_path"]).is_dir()  # runs/ in the project
    assert (project / "mlflow.db").is_file()
    if config == "finetune.yaml":
        assert model.num_classes == 3  # box, tri + background: predictors re-initialised
        assert "box" in model.class_names and "tri" in model.class_names


IGNORE_SHAPE = {  # one `__ignore__` polygon, of no class, in the picture's top-right corner
    "label": "__ignore__",
    "points": [[70, 2], [94, 2], [94, 26], [70, 26]],
    "shape_type": "polygon",
    "group_id": None,
}


def test_an_ignore_shape_is_one_ignored_region_in_every_count(
    tmp_path, monkeypatch, capsys, caplog
):
    """Issue 22 item 8: one `__ignore__` shape is one crowd annotation per class in the COCO
    file (COCOeval ignores a crowd's own category only), but one ignored region in what the
    download and shards stages print and log, in the manifest, and in the shards' crowd boxes;
    the log names the conversion report where it is after the rename, not the temporary
    folder it was written in."""
    own = labelme_folder(tmp_path / "proj" / "own", n=4)
    doc = json.loads((own / "img00.json").read_text())
    doc["shapes"].append(IGNORE_SHAPE)
    (own / "img00.json").write_text(json.dumps(doc))
    (tmp_path / "proj" / "params.yaml").write_text(
        "data:\n  source: local\n  local_dir: own\n  val_fraction: 0.25\n"
        "shards:\n  image_size: 96\n  mini_mask_shape: 14\n  num_workers: 1\n"
    )
    monkeypatch.chdir(tmp_path / "proj")
    with caplog.at_level("INFO"):
        download.main(["--params", "params.yaml"])
    summary = json.loads(capsys.readouterr().out)
    counts = list(summary["splits"].values())
    assert sum(c["instances"] for c in counts) == 8  # a box and a triangle per image
    assert sum(c["ignored_regions"] for c in counts) == 1
    assert all(set(c) == {"images", "instances", "ignored_regions"} for c in counts)
    raw = tmp_path / "proj" / "data" / "raw" / "local"
    report = json.loads((raw / "conversion_report.json").read_text())
    assert sum(c["ignored_regions"] for c in report["splits"].values()) == 1
    log = caplog.text
    assert "1 ignored region" in log and "ignored regions" not in log
    assert f"see {raw / 'conversion_report.json'}" in log and ".converting" not in log
    crowd = [
        a
        for s in ("train", "val")
        for a in json.loads((raw / "annotations" / f"instances_{s}.json").read_text())[
            "annotations"
        ]
        if a["iscrowd"]
    ]
    assert sorted(a["category_id"] for a in crowd) == [1, 2]  # one per class: COCO's way

    caplog.clear()
    shards.main(["--params", "params.yaml"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and [line.split(":")[0] for line in lines] == ["train", "val"]
    assert sum("1 ignored region," in line or "1 ignored region;" in line for line in lines) == 1
    assert all(" 0 ignored regions" in line for line in lines if "1 ignored region" not in line)
    manifests = [
        json.loads((tmp_path / "proj" / "data" / "shards" / s / "manifest.json").read_text())
        for s in ("train", "val")
    ]
    assert sum(m["counts"]["ignored_regions"] for m in manifests) == 1
    assert sum(m["counts"]["source_ignored_regions"] for m in manifests) == 1
    assert sum(m["counts"]["source_instances"] for m in manifests) == 8
    from mrcnn.data import ShardDataset

    boxes = [
        ShardDataset(tmp_path / "proj" / "data" / "shards" / s)[i].crowd_boxes
        for s in ("train", "val")
        for i in range(len(ShardDataset(tmp_path / "proj" / "data" / "shards" / s)))
    ]
    assert sorted(len(b) for b in boxes) == [0, 0, 0, 1]  # one box for the one region


def test_an_ignored_region_ignores_detections_of_every_class(tmp_path):
    """Evaluation stays right with one region written as a crowd per class: a detection of
    either class inside the `__ignore__` polygon costs nothing, one outside it does."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    from mrcnn.evaluation import coco_evaluate
    from pipeline.formats import convert

    own = labelme_folder(tmp_path / "own", n=2)
    for name in ("img00.json", "img01.json"):
        doc = json.loads((own / name).read_text())
        doc["shapes"].append(IGNORE_SHAPE)
        (own / name).write_text(json.dumps(doc))
    convert(own, tmp_path / "coco", "labelme", val_fraction=0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "coco" / "annotations" / "instances_train.json"))
    objects = [a for a in gt.dataset["annotations"] if not a["iscrowd"]]
    perfect = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 0.5,
        }
        for a in objects
    ]
    inside = [
        {"image_id": i, "category_id": c, "bbox": [72, 4, 20, 20], "score": 0.9}
        for i in gt.getImgIds()
        for c in (1, 2)
    ]
    outside = [{**d, "bbox": [2, 70, 20, 20]} for d in inside]
    with contextlib.redirect_stdout(io.StringIO()):
        ignored = coco_evaluate(gt, perfect + inside, ("bbox",), backend="pycocotools")
        counted = coco_evaluate(gt, perfect + outside, ("bbox",), backend="pycocotools")
    assert ignored.metrics["bbox"]["AP"] == 1.0
    assert counted.metrics["bbox"]["AP"] < 0.9
