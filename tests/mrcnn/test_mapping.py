"""Dataclasses from plain mappings: types checked and coerced, nested sections, and one error
line naming the dotted key; `merge` and `to_plain`."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mrcnn.mapping import check, from_mapping, merge, reprefix, to_plain


@dataclass
class Inner:
    size: int = 4
    ratio: float = 0.5
    sizes: tuple[float, ...] = (1.0, 2.0)
    pair: tuple[int, int] = (0, 1)

    def validate(self) -> None:
        check(0 < self.ratio <= 1, "ratio", "must be in (0, 1]")


@dataclass
class Outer:
    name: str = "x"
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def test_nested_values_are_coerced():
    out = from_mapping(
        Outer, {"name": "y", "inner": {"size": 8.0, "ratio": 1, "sizes": [3, 4.5], "pair": [2, 3]}}
    )
    assert out == Outer("y", False, Inner(8, 1.0, (3.0, 4.5), (2, 3)))
    assert type(out.inner.size) is int and type(out.inner.ratio) is float
    assert type(out.inner.sizes[0]) is float
    assert from_mapping(Outer, {"inner": None}) == Outer()  # an empty section: defaults
    assert from_mapping(Outer, Outer(name="z")) == Outer(name="z")  # an instance passes


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"nmae": "y"}, r"unknown config key 'nmae' \(known: flag, inner, name\)"),
        ({"inner": {"sise": 1}}, "unknown config key 'inner.sise'"),
        ({"flag": 1}, "config key 'flag' must be true or false, got 1"),
        ({"name": 3}, "config key 'name' must be a string, got 3"),
        ({"inner": {"size": 2.5}}, "config key 'inner.size' must be an integer, got 2.5"),
        ({"inner": {"size": True}}, "config key 'inner.size' must be an integer, got True"),
        ({"inner": {"ratio": "half"}}, "config key 'inner.ratio' must be a number"),
        ({"inner": {"ratio": False}}, "config key 'inner.ratio' must be a number"),
        ({"inner": {"sizes": 3}}, "config key 'inner.sizes' must be a list, got 3"),
        ({"inner": {"pair": [1, 2, 3]}}, "config key 'inner.pair' needs 2 values, got 3"),
        ({"inner": {"ratio": 2}}, r"config key 'inner.ratio' must be in \(0, 1\]"),
        ({"inner": 5}, "config key 'inner' must be a mapping, got int"),
    ],
)
def test_errors_name_the_dotted_key(d, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        from_mapping(Outer, d)


def test_prefix_and_noun():
    with pytest.raises(ValueError, match=r"^params key 'train.inner.ratio' must be in \(0, 1\]"):
        from_mapping(Outer, {"inner": {"ratio": 3}}, prefix="train.", noun="params key")
    with pytest.raises(ValueError, match="^params key 'train' must be a mapping, got list"):
        from_mapping(Outer, [], prefix="train.", noun="params key")
    with pytest.raises(ValueError, match="^config key '<root>' must be a mapping"):
        from_mapping(Outer, "x")


def test_unsupported_types_are_a_programming_error():
    @dataclass
    class Bad:
        maybe: int | None = None

    with pytest.raises(TypeError, match="unsupported type for maybe"):
        from_mapping(Bad, {"maybe": 1})


def test_reprefix():
    assert reprefix("config key 'a' is bad", "x.") == "config key 'x.a' is bad"
    assert reprefix("params key 'a' is bad", "x.", "params key") == "params key 'x.a' is bad"
    assert reprefix("something else", "x.") == "something else"


def test_to_plain_and_merge():
    assert to_plain({"a": (1, (2, 3)), "b": [{"c": (4,)}]}) == {"a": [1, [2, 3]], "b": [{"c": [4]}]}
    base = {"a": {"x": 1, "y": 2}, "b": 1, "c": {"z": 0}}
    merged = merge(base, {"a": {"y": 3}, "b": {"new": 1}, "c": Inner(size=1)})
    assert merged == {
        "a": {"x": 1, "y": 3},  # merged, not replaced
        "b": {"new": 1},  # a mapping over a scalar replaces it
        "c": {"z": 0, "size": 1, "ratio": 0.5, "sizes": [1.0, 2.0], "pair": [0, 1]},
    }
    assert base == {"a": {"x": 1, "y": 2}, "b": 1, "c": {"z": 0}}  # base untouched
