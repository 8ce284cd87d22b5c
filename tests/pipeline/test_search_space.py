"""pipeline.search_space: tune.space parsing, validation against the params, sampling, applying."""

from __future__ import annotations

import shutil

import pytest
import yaml

from pipeline.paramfile import from_dict, load_section
from pipeline.search_space import (
    Dimension,
    apply,
    dvc_set_args,
    nested,
    parse_space,
)
from pipeline.sweep.config import Sweep, load_sweep
from pipeline.sweep.entry import max_concurrent_trials, search_algorithm
from pipeline.train_params import TrainParams, TuneParams
from tests import REPO_ROOT

ROOT = REPO_ROOT
DATASET = {"num_classes": 4, "image_size": 128, "class_names": ("BG", "square", "circle", "tri")}


def _checker():
    base = {"train": {}, "model": {}}
    sweep = Sweep("t", base, None, DATASET, "", "")  # type: ignore[arg-type]
    return sweep.trial_params


def test_project_space_parses_and_validates_against_the_params():
    tp, sweep = load_sweep(ROOT / "params.yaml", DATASET)
    assert isinstance(tp, TuneParams) and tp.metric == "segm_AP" and tp.mode == "max"
    assert sweep.space.keys[:2] == ["train.lr", "train.weight_decay"]
    assert sweep.space["train.lr"].log_scale
    # The trials' own train keys come from the tune section.
    assert sweep.sections["train"]["iterations"] == tp.iterations
    assert sweep.sections["train"]["eval_every"] == tp.eval_every
    # The default sweep fits the 20-minute budget only with short trials.
    assert tp.iterations < load_section(ROOT / "params.yaml", "train", TrainParams).iterations


def test_each_kind_samples_inside_its_declared_space():
    from ray.tune.search.variant_generator import generate_variants

    space = parse_space(
        {
            "train.lr": {"loguniform": [1e-4, 1e-2]},
            "model.rpn.nms_thresh": {"uniform": [0.6, 0.8]},
            "train.max_gt": {"randint": [4, 9]},
            "model.roi_heads.batch_size_per_image": {"choice": [32, 64]},
            "model.anchors.sizes": {"choice": [[8, 16, 32, 64, 128], [12, 24, 48, 96, 192]]},
            "train.optimizer": {"grid": ["adamw", "sgd"]},
        },
        check=_checker(),
    )
    seen = {k: set() for k in space.keys}
    for seed in range(40):
        for _, config in generate_variants(space.param_space(), random_state=seed):
            values = space.decode(config)
            assert space.contains(values), values
            params, cfg = _checker()(values)  # every sample builds valid params
            assert params.lr == values["train.lr"]
            assert list(cfg.anchors.sizes) == [float(s) for s in values["model.anchors.sizes"]]
            for k, v in values.items():
                seen[k].add(repr(v))
    # Both lists were drawn (sampled as an index, decoded back), both grid values used.
    assert len(seen["model.anchors.sizes"]) == 2 and len(seen["train.optimizer"]) == 2
    assert seen["train.max_gt"] <= {repr(i) for i in range(4, 9)}
    assert len(seen["train.max_gt"]) == 5  # 9 excluded, as in tune.randint
    assert isinstance(space["model.anchors.sizes"].domain().categories[0], int)  # index


def test_contains_rejects_values_outside():
    lr = Dimension("train.lr", "loguniform", (1e-4, 1e-2))
    assert lr.contains(1e-3) and not lr.contains(0.1) and not lr.contains("0.001")
    sizes = Dimension("model.anchors.sizes", "choice", ([8, 16], [12, 24]))
    assert sizes.contains([8.0, 16.0]) and not sizes.contains([8, 24])
    n = Dimension("train.max_gt", "randint", (4, 9))
    assert n.contains(8) and not n.contains(9) and not n.contains(True)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"train.lrr": {"uniform": [0.1, 0.2]}}, r"tune.space.train.lrr'.*unknown params key"),
        ({"model.rpn.nms_tresh": {"uniform": [0.5, 0.7]}}, r"model.rpn.nms_tresh"),
        ({"lr": {"uniform": [0.1, 0.2]}}, r"tune.space.lr'.*train or model"),
        ({"data.source": {"choice": ["shapes"]}}, r"tune.space.data.source'"),
        ({"train.iterations": {"choice": [10, 20]}}, r"sets it from tune.iterations"),
        ({"train.lr": {"logunifrom": [0.1, 0.2]}}, r"unknown distribution 'logunifrom'"),
        ({"train.lr": {"loguniform": [0.0, 0.2]}}, r"0 < low"),
        ({"train.lr": {"uniform": [0.2, 0.1]}}, r"low < high"),
        ({"train.lr": 0.1}, r"must be one distribution"),
        ({"train.max_gt": {"randint": [4.5, 9]}}, r"integer bounds"),
        ({"train.lr": {"choice": []}}, r"non-empty list"),
        ({"train.lr": {"choice": [0.1, 0.1]}}, r"lists a value twice"),
        # Values are checked at both ends of a range and for every option.
        ({"train.lr": {"uniform": [-1.0, 0.1]}}, r"value -1.0.*train.lr' must be > 0"),
        ({"model.rpn.nms_thresh": {"uniform": [0.5, 1.5]}}, r"value 1.5.*nms_thresh"),
        ({"model.anchors.sizes": {"choice": [[8, 16, 32, 64, 128], [8, 16]]}}, r"\[8, 16\]"),
        ({"train.batch_size": {"choice": [8, "big"]}}, r"train.batch_size' must be an integer"),
        ({}, r"tune.space' is empty"),
    ],
)
def test_bad_space_names_the_key(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_space(spec, check=_checker())


def test_apply_and_nested_set_dotted_keys_without_touching_the_base():
    base = {"train": {"lr": 0.001}, "model": {"preset": "shapes_small"}}
    values = {"train.lr": 0.002, "model.rpn.nms_thresh": 0.65}
    out = apply(base, values)
    assert out == {
        "train": {"lr": 0.002},
        "model": {"preset": "shapes_small", "rpn": {"nms_thresh": 0.65}},
    }
    assert base["train"]["lr"] == 0.001 and "rpn" not in base["model"]
    assert nested(values) == {"train": {"lr": 0.002}, "model": {"rpn": {"nms_thresh": 0.65}}}


def test_dvc_set_args_apply_the_values_through_dvc(tmp_path):
    """The printed `dvc exp run -S ...` arguments, given to DVC's own override code, turn the
    project's params.yaml into one holding exactly the best values."""
    import shlex

    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    doc = yaml.safe_load(params.read_text())
    values = {
        "train.lr": 0.0012345678901,
        "train.weight_decay": 1.5e-05,
        "model.rpn.nms_thresh": 0.65,
        "model.anchors.sizes": [12, 24, 48, 96, 192],
    }
    args = dvc_set_args(values, doc)
    assert args[:2] == ["-S", "train.lr=0.0012345678901"]  # present in params.yaml: plain
    assert "++model.rpn.nms_thresh=0.65" in args  # absent: Hydra's add-or-override
    overrides = [shlex.split(a)[0] for a in args[1::2]]
    apply_overrides(params, overrides)
    after = yaml.safe_load(params.read_text())
    assert after["train"]["lr"] == values["train.lr"]
    assert after["train"]["weight_decay"] == values["train.weight_decay"]
    assert after["model"]["rpn"]["nms_thresh"] == 0.65
    assert after["model"]["anchors"]["sizes"] == [12, 24, 48, 96, 192]
    assert after["model"]["preset"] == "shapes_small" and after["data"] == doc["data"]
    assert after["tune"] == doc["tune"]  # the space's dotted keys survive DVC's rewrite


def test_concurrency_from_resources():
    cpu = TrainParams(num_workers=1, cpus_per_worker=2)
    assert max_concurrent_trials(cpu, {"CPU": 2.0}) == 1
    assert max_concurrent_trials(cpu, {"CPU": 9.0}) == 4
    assert max_concurrent_trials(cpu, {"CPU": 1.0}) == 1  # at least one
    gpu = TrainParams(num_workers=2, use_gpu=True)
    assert max_concurrent_trials(gpu, {"CPU": 128.0, "GPU": 8.0}) == 4


def test_search_algorithms():
    from ray.tune.search import BasicVariantGenerator

    alg = search_algorithm(TuneParams(), max_concurrent=1)
    assert isinstance(alg, BasicVariantGenerator) and alg.max_concurrent == 1
    with pytest.raises(ValueError, match="unknown 'grid_walk'"):
        search_algorithm(from_dict(TuneParams, {"search_alg": "grid_walk"}, "tune"))
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        with pytest.raises(ValueError, match="pip install optuna"):
            search_algorithm(from_dict(TuneParams, {"search_alg": "optuna"}, "tune"))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"metric": "segm_ap"}, r"tune.metric' must be one of"),
        ({"metric": "loss"}, r"tune.mode' must be min for metric loss"),
        ({"reduction_factor": 1}, r"tune.reduction_factor' must be > 1"),
        ({"scheduler": "pbt"}, r"tune.scheduler' must be asha or fifo"),
        ({"spce": {}}, r"unknown params key 'tune.spce'"),
    ],
)
def test_bad_tune_section_names_the_key(tmp_path, section, message):
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["tune"].update(section)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=message):
        load_sweep(path, DATASET)


def test_grace_period_longer_than_a_trial_is_an_error(tmp_path):
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["tune"].update(iterations=50, grace_period=100)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match="tune.grace_period"):
        load_sweep(path, DATASET)
