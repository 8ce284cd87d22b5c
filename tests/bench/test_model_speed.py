"""bench/model_speed.py's argument handling and ratios (no model runs here; the whole script runs
in tests/bench/test_gpu_check.py)."""

import pytest

from bench.model_speed import VARIANTS, Variant, parse_args, ratios


def test_flags_describe_one_variant_against_torchvision():
    args = parse_args(["--amp", "--compile", "--channels-last"])
    assert args.variant_list == [
        ("ours", Variant("ours", amp=True, compile="default", channels_last=True)),
        ("torchvision", Variant("torchvision", amp=True)),
    ]
    assert args.phases == ["train", "infer"]


def test_named_variants_and_phases():
    args = parse_args(["--variants", "all", "--phases", "infer"])
    names = [n for n, _ in args.variant_list]
    assert names == ["ours_bf16", "tv_bf16", "ours_fp32", "tv_fp32", "ours_bf16_compile_cl"]
    assert args.phases == ["infer"]
    assert VARIANTS["ours_bf16_compile_ro"].compile == "reduce-overhead"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--variants", "ours_fp16"], "unknown variant(s) ['ours_fp16']"),
        (["--phases", "eval"], "--phases takes train, infer or train,infer"),
    ],
)
def test_bad_arguments_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_ratios_pair_equal_precision_only():
    def v(model, amp, train, infer=None):
        r = {"config": {"model": model, "amp": amp}, "train": {"images_per_s": train}}
        if infer is not None:
            r["infer"] = {"images_per_s": infer}
        return r

    out = ratios(
        {
            "ours_bf16": v("ours", True, 40.0, 20.0),
            "ours_fp32": v("ours", False, 12.0),
            "tv_bf16": v("torchvision", True, 10.0, 16.0),
            "tv_fp32": v("torchvision", False, 8.0),
            "broken": {"config": {"model": "ours", "amp": True}, "error": "x"},
        }
    )
    assert out == {
        "train": {"ours_bf16/tv_bf16": 4.0, "ours_fp32/tv_fp32": 1.5},
        "infer": {"ours_bf16/tv_bf16": 1.25},
    }
