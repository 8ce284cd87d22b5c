"""`params.yaml` validation, fuzzed (issue 23): the project's real params.yaml, mutated the ways
hand-edited files go wrong, loads or raises the stages' one-line user error (`ValueError`, which
`pipeline.cli.run_main` prints as `pipeline.<stage>: error: ...` and exits 1), never another
exception.

Mutations of the document: a value replaced by a wrong type (string, list, mapping, null, bool,
a string that looks like a number, a date), a non-finite or huge or negative number, a key
removed or an unknown one added (also non-string keys), a section removed, emptied or replaced
by a scalar or list. Mutations of the text: a byte-order mark, Windows line ends, tabs, an empty
or whitespace-only file, a cut at a random point, a random character inserted (a YAML syntax
error), bytes that are not UTF-8, a second document, a Python tag.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from pipeline import params as params_mod
from tests.fuzz import fuzz, fuzz_settings

REAL = Path(__file__).resolve().parents[2] / "params.yaml"
BASE = yaml.safe_load(REAL.read_text())

BAD_VALUES = st.one_of(
    st.sampled_from(
        [
            None,
            True,
            "",
            "abc",
            "1e-3",
            "12",
            [],
            [1, 2],
            [[1]],
            {},
            {"a": 1},
            {1: 2},
            math.nan,
            math.inf,
            -math.inf,
            -1,
            0,
            -(10**30),
            10**30,
            1e308,
            -0.5,
            0.5,
        ]
    ),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.dates(),
)


def _paths(doc: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path of the nested mapping `doc` (sections, keys, nested keys)."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    return out


PATHS = _paths(BASE)


@st.composite
def mutated_document(draw) -> tuple[dict, list[str]]:
    """The real params.yaml with 1-3 structural mutations -> (document, what was done)."""
    doc = copy.deepcopy(BASE)
    done = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = doc
        for k in path[:-1]:
            parent = parent.get(k) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        kind = draw(st.sampled_from(["value", "remove", "unknown_key", "nonstring_key"]))
        if kind == "value":
            parent[path[-1]] = draw(BAD_VALUES)
        elif kind == "remove":
            parent.pop(path[-1], None)
        elif kind == "unknown_key":
            parent[draw(st.sampled_from(["sorce", "extra", "Image_Size", "x.y"]))] = 1
        else:
            parent[draw(st.sampled_from([1, None, 2.5, True]))] = draw(BAD_VALUES)
        done.append(f"{kind}")
    return doc, done


TEXT_MUTATIONS = ["bom", "crlf", "tabs", "empty", "blank", "cut", "insert", "latin1", "two_docs"]


@st.composite
def mutated_text(draw) -> tuple[bytes, str]:
    """The real params.yaml's text damaged as a file -> (bytes, the mutation)."""
    text = REAL.read_text()
    kind = draw(st.sampled_from([*TEXT_MUTATIONS, "tag"]))
    at = draw(st.integers(0, len(text)))
    if kind == "bom":
        return ("\ufeff" + text).encode(), kind
    if kind == "crlf":
        return text.replace("\n", "\r\n").encode(), kind
    if kind == "tabs":
        return text.replace("  ", "\t", draw(st.integers(1, 5))).encode(), kind
    if kind == "empty":
        return b"", kind
    if kind == "blank":
        return b"\n  \n# only a comment\n", kind
    if kind == "cut":
        return text[:at].encode(), kind
    if kind == "insert":
        char = draw(st.sampled_from([":", "[", "{", "]", "'", '"', "\t", "- ", "&a ", "*b ", "|"]))
        return (text[:at] + char + text[at:]).encode(), kind
    if kind == "latin1":
        return text[:at].encode() + b"\xe9\xff" + text[at:].encode(), kind
    if kind == "two_docs":
        return (text + "\n---\ndata: {}\n").encode(), kind
    return (text + "\nevil: !!python/object/apply:os.system ['true']\n").encode(), kind


def _load(content: bytes) -> str:
    """validate_file and load on a file holding `content` -> "ok" or the error's type name;
    anything but ValueError fails the test."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_bytes(content)
        try:
            params_mod.validate_file(path)
            params_mod.load(path)
        except ValueError as e:
            assert str(e).strip(), "an error without a message"
            return "ValueError"
        return "ok"


@fuzz
@fuzz_settings(150)
@given(case=mutated_document())
def test_fuzz_mutated_params_load_or_raise_one_value_error(case):
    doc, done = case
    try:
        content = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode()
    except yaml.YAMLError:  # a value yaml cannot write (none so far): nothing to test
        return
    event(_load(content))
    for kind in done:
        event(kind)


@fuzz
@fuzz_settings(60)
@given(case=mutated_text())
def test_fuzz_damaged_params_text_loads_or_raises_one_value_error(case):
    content, kind = case
    event(f"{kind}: {_load(content)}")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"data: [\n", "is not valid YAML"),
        (b"data:\n\tsource: shapes\n", "is not valid YAML"),
        (b"a: 1\n---\nb: 2\n", "is not valid YAML"),
        (b"data: !!python/object/apply:os.system ['true']\n", "is not valid YAML"),
        (b"data:\n  source: \xe9\n", "is not UTF-8 text"),
        (b"model: [1, 2]\n", "params section 'model' must be a mapping, got list"),
        (b"model: hello\n", "params section 'model' must be a mapping, got str"),
        (b"model: {null: 1}\n", "unknown params key 'model.None'"),
        (b"model: {rpn: {1: 2, foo: 3}}\n", "unknown params key 'model.rpn."),
        (b"data: {1: 2, foo: 3}\n", "unknown params key 'data."),
    ],
)
def test_what_the_fuzz_found_is_one_value_error(tmp_path, content, says):
    """Each of these raised yaml's own errors or a TypeError (a traceback from every stage)."""
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(ValueError) as e:
        params_mod.validate_file(path)
    assert says in str(e.value)


def test_a_bom_and_windows_line_ends_are_read(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(("\ufeff" + REAL.read_text()).replace("\n", "\r\n").encode())
    assert params_mod.load(path).shards.image_size == BASE["shards"]["image_size"]


def test_a_stage_on_a_broken_params_file_prints_one_line_and_exits_1(tmp_path):
    (tmp_path / "params.yaml").write_text("shards:\n  image_size: [128\n  resize_mode: square\n")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.shards", "--params", "params.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pipeline.shards: error:" in lines[0] and "params.yaml is not valid YAML" in lines[0]
    assert "line 3" in lines[0]
