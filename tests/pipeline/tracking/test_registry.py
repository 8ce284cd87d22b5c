"""pipeline.tracking.registry on a local SQLite store: versions registered and found by their
weights digest, the champion / challenger aliases, the tags and description of a version, and
what it refuses. (The export stage drives all of it end to end: tests/pipeline/stages/
test_export.py.)"""

from __future__ import annotations

import json
import logging
from importlib import metadata

import mlflow
import pytest
import yaml
from mlflow.types import DataType

from mrcnn.fileio import file_digest, json_digest
from pipeline.tracking import registry as reg
from pipeline.tracking.pyfunc import Heads, output_columns
from tests.pipeline.registry_helpers import fresh_store

NAME = "mrcnn-unit"


@pytest.fixture()
def store(tmp_path):
    """A fresh store as the current tracking URI (the registry functions use it), and the URI
    of a run artifact to register versions from."""
    previous = mlflow.get_tracking_uri()
    uri = fresh_store(tmp_path)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    run = client.create_run(client.create_experiment("e"))
    client.log_text(run.info.run_id, "stand-in", "model/MLmodel")
    try:
        yield {"client": client, "source": f"runs:/{run.info.run_id}/model"}
    finally:
        mlflow.set_tracking_uri(previous)


def _version(store, sha: str, metric: float | None = None, description: str = "") -> str:
    tags = {reg.WEIGHTS_TAG: sha}
    if metric is not None:
        tags[reg.METRIC_TAG + "segm.AP"] = repr(metric)
    return reg.register(NAME, store["source"], tags, description)


def _aliases(store) -> dict[str, str]:
    model = store["client"].get_registered_model(NAME)
    return {k: str(v) for k, v in model.aliases.items()}


def test_register_creates_versions_with_tags_and_description(store):
    assert _version(store, "aa", description="first") == "1"
    assert _version(store, "bb") == "2"
    v1 = store["client"].get_model_version(NAME, "1")
    assert v1.tags == {reg.WEIGHTS_TAG: "aa"} and v1.description == "first"
    assert not store["client"].get_model_version(NAME, "2").description


def test_find_version_by_weights_digest(store):
    assert reg.find_version(NAME, "aa") is None  # no such model yet
    for sha in ("aa", "bb", "aa"):
        _version(store, sha)
    assert reg.find_version(NAME, "aa") == "1"  # the first version with these weights
    assert reg.find_version(NAME, "bb") == "2"
    assert reg.find_version(NAME, "cc") is None


def test_update_version_sets_tags_and_description(store):
    _version(store, "aa", 0.25, "old")
    reg.update_version(NAME, "1", {reg.METRIC_TAG + "segm.AP": "0.5", "data": "x"}, "new")
    v = store["client"].get_model_version(NAME, "1")
    assert v.tags == {reg.WEIGHTS_TAG: "aa", "metrics.segm.AP": "0.5", "data": "x"}
    assert v.description == "new"


def test_champion_moves_only_on_strict_improvement(store):
    client = store["client"]
    _version(store, "v1", 0.5)
    assert reg.assign_alias(NAME, "1", "segm.AP", 0.5) == ("champion", None)
    _version(store, "v2", 0.4)
    assert reg.assign_alias(NAME, "2", "segm.AP", 0.4) == (
        "challenger",
        {"version": 1, "value": 0.5},
    )
    _version(store, "v3", 0.5)  # a tie keeps the champion
    assert reg.assign_alias(NAME, "3", "segm.AP", 0.5)[0] == "challenger"
    assert _aliases(store) == {"champion": "1", "challenger": "3"}
    # The challenger re-evaluated higher: promoted, and it holds one alias, not two.
    assert reg.assign_alias(NAME, "3", "segm.AP", 0.7) == (
        "champion",
        {"version": 1, "value": 0.5},
    )
    assert _aliases(store) == {"champion": "3"}
    decisions = [client.get_model_version(NAME, v).tags["export.decision"] for v in "123"]
    assert decisions == ["champion", "challenger", "champion"]
    # The champion itself again (e.g. re-exported): no previous champion to compare with.
    assert reg.assign_alias(NAME, "3", "segm.AP", 0.1) == ("champion", None)


def test_a_champion_without_the_metric_tag_is_replaced_with_a_warning(store, caplog):
    _version(store, "v1")  # registered by other means: no metrics.segm.AP tag
    store["client"].set_registered_model_alias(NAME, "champion", "1")
    _version(store, "v2", 0.1)
    with caplog.at_level(logging.WARNING, logger=reg.__name__):
        alias, previous = reg.assign_alias(NAME, "2", "segm.AP", 0.1)
    assert (alias, previous) == ("champion", {"version": 1, "value": None})
    assert "has no tag metrics.segm.AP" in caplog.text
    assert _aliases(store) == {"champion": "2"}


def test_is_improvement():
    assert reg.is_improvement(0.1, None)
    assert reg.is_improvement(0.51, 0.5)
    assert not reg.is_improvement(0.5, 0.5) and not reg.is_improvement(0.4, 0.5)


def test_metric_value_reads_dotted_keys_and_refuses_the_rest():
    evals = {"segm": {"AP": 0.25, "per_category": {"cat": 1}}, "bbox": {"AP": 1, "ok": True}}
    assert reg.metric_value(evals, "segm.AP") == 0.25
    assert reg.metric_value(evals, "bbox.AP") == 1.0 and isinstance(
        reg.metric_value(evals, "bbox.AP"), float
    )
    with pytest.raises(reg.ExportError, match=r"m\.json has no 'segm\.AR'.*champion_metric"):
        reg.metric_value(evals, "segm.AR", "m.json")
    with pytest.raises(reg.ExportError, match="has no 'segm.AP.x'"):
        reg.metric_value(evals, "segm.AP.x")
    for key in ("segm.per_category", "bbox.ok", "segm"):
        with pytest.raises(reg.ExportError, match="is not a number"):
            reg.metric_value(evals, key)


def test_should_register(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert reg.should_register("auto") == (True, "export.register is auto")
    monkeypatch.setenv("DVC_EXP_NAME", "tidy-oak")
    registered, why = reg.should_register("auto")
    assert not registered and "tidy-oak" in why and "export.register: true" in why
    assert reg.should_register("true") == (True, "export.register is true")
    assert reg.should_register("false") == (False, "export.register is false")


def test_version_tags_metrics_provenance_and_info(tmp_path):
    manifest = tmp_path / "train_manifest.json"
    manifest.write_text(json.dumps({"counts": {"images": 3}}))
    params = tmp_path / "params.yaml"
    doc = {"shards": {"image_size": 64}, "train": {"lr": 0.01}, "mlflow": {"experiment": "x"}}
    params.write_text(yaml.safe_dump(doc))
    evals = {"segm": {"AP": 0.5, "AP50": 0.75}, "bbox": {"AP": 0.25}}
    tags = reg.version_tags(
        evals,
        "segm.AP50",
        {"data": "shapes", "train.run": "", "weights.sha256": "ff"},
        (("train", manifest), ("val", tmp_path / "missing.json")),
        params,
    )
    provenance = {
        "manifest.train": file_digest(manifest, "md5"),
        "params.shards": {"image_size": 64},  # the sections training used, not mlflow
        "params.train": {"lr": 0.01},
    }
    assert tags == {
        "metrics.segm.AP": "0.5",
        "metrics.bbox.AP": "0.25",
        "metrics.segm.AP50": "0.75",
        "provenance.md5": json_digest(provenance, "md5"),
        "data": "shapes",  # empty info values are left out
        "weights.sha256": "ff",
    }
    # The champion metric among the headline ones is tagged once; missing metrics are skipped;
    # nothing to digest, no provenance tag.
    only = reg.version_tags({"segm": {"AP": 0.5}}, "segm.AP", {}, (), None)
    assert only == {"metrics.segm.AP": "0.5"}


def test_describe(tmp_path):
    names = ["background"] + [f"c{i}" for i in range(12)]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"counts": {"images": 40}, "class_names": names}))
    info = {"preset": "shapes_small", "data": "local", "train.iterations": "9", "train.run": "r"}
    text = reg.describe({"segm": {"AP": 0.1234}, "bbox": {"AP": 0.5}}, info, (("val", manifest),))
    assert text == (
        "Mask R-CNN, preset shapes_small, trained on local (40 val images; 12 classes: c0, c1, "
        "c2, c3, c4, c5, c6, c7, c8, c9...), 9 iterations (run r). Val segm AP 0.123, "
        "bbox AP 0.500."
    )
    assert reg.describe({}, {}, ()) == "Mask R-CNN, preset ?, trained on ?."


def test_requirements_pin_installed_versions(monkeypatch):
    pins = reg.requirements()
    assert pins[0] == f"mlflow=={metadata.version('mlflow').split('+')[0]}"
    assert [p.split("==")[0] for p in pins] == ["mlflow", *reg._REQUIREMENTS]
    assert all("+" not in p for p in pins)  # torch's +cu130 and the like are dropped
    assert reg.requirements(onnx=True)[-1].startswith("onnxruntime")
    real = metadata.version

    def version(dist):
        if dist == "pycocotools":
            raise metadata.PackageNotFoundError(dist)
        return "2.14.1+cu130" if dist == "torch" else real(dist)

    monkeypatch.setattr(metadata, "version", version)
    pins = reg.requirements()
    assert "pycocotools" in pins and "torch==2.14.1" in pins


def test_signature_lists_the_heads_columns():
    sig = reg.signature(Heads(masks=True, keypoints=17, mask_scores=True))
    assert [c.name for c in sig.inputs.inputs] == ["image"]
    assert sig.inputs.inputs[0].type == DataType.binary
    names = [c.name for c in sig.outputs.inputs]
    assert names == [n for n, _ in output_columns(Heads(True, 17, True))]
    plain = [c.name for c in reg.signature(Heads()).outputs.inputs]
    assert plain == [n for n, _ in output_columns(Heads())] and len(plain) < len(names)


def test_log_model_refuses_an_unknown_backend(tmp_path):
    with pytest.raises(reg.ExportError, match="pyfunc_backend must be one of torch, onnxruntime"):
        reg.log_model(tmp_path, backend="tensorrt")
    with pytest.raises(reg.ExportError, match="export.portable: true"):
        reg.log_model(tmp_path, backend="onnxruntime")
