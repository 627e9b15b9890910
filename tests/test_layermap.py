"""Layer maps: one parser for every form (CLI text, study-file values, the stored form), one
resolver for every strategy, and an error for every way a map can be wrong that names the value
and says what was expected."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from peftport.errors import PeftportError
from peftport.layermap import (
    IDENTITY,
    STRATEGIES,
    LayerMap,
    load_resolved,
    normalise_layer_map,
    parse_layer_map,
    provenance,
    resolve_stacks,
    resolved_json,
    split_layer,
)

EXPLICIT_315 = LayerMap("explicit", (3, 1, 5))

# (value as given, the LayerMap it parses to)
PARSED = [
    ("identity", IDENTITY),
    ("first_k", LayerMap("first_k")),
    ("  First-K ", LayerMap("first_k")),  # case, dashes and spaces as people type them
    ("STRIDE", LayerMap("stride")),
    ("cka", LayerMap("cka")),
    ("3,1,5", EXPLICIT_315),
    ("3, 1, 5,", EXPLICIT_315),  # a trailing comma is no error
    ("[3, 1, 5]", EXPLICIT_315),
    ("0:3,1:1,2:5", EXPLICIT_315),
    ("2:5, 0=3,1:1", EXPLICIT_315),  # pairs in any order, ':' or '='
    ([3, 1, 5], EXPLICIT_315),
    ((3, 1, 5), EXPLICIT_315),
    (np.array([3, 1, 5]), EXPLICIT_315),
    ({2: 5, 0: 3, 1: 1}, EXPLICIT_315),  # a study file's mapping, receiver -> origin
    ({"strategy": "stride"}, LayerMap("stride")),  # the stored form
    ({"strategy": "cka", "compare": {"texts": 32}}, LayerMap("cka")),  # a unit config's
    ({"strategy": "explicit", "layers": [3, 1, 5]}, EXPLICIT_315),
    (EXPLICIT_315, EXPLICIT_315),
]


@pytest.mark.parametrize("value,expected", PARSED, ids=[repr(v) for v, _ in PARSED])
def test_parse(value, expected):
    got = parse_layer_map(value)
    assert got == expected and isinstance(got, LayerMap)
    assert parse_layer_map(got.as_dict()) == got, "the stored form reads back"
    assert all(type(v) is int for v in got.layers or ())


# (value, words the error must contain)
PARSE_ERRORS = [
    ("", ["layer map is empty", "a layer map is one of"]),
    ("[ ]", ["layer map is empty"]),
    ([], ["layer map is empty"]),
    ({}, ["layer map is empty"]),
    ("strided", ["unknown layer map 'strided'", "Did you mean 'stride'?", "'1,3,5'"]),
    ("bogus", ["unknown layer map 'bogus'", "A layer map is one of identity, first_k"]),
    ("explicit", ["unknown layer map 'explicit'"]),
    ("1,x,3", ["layer map '1,x,3'", "'x' is neither a strategy", "RECEIVER:ORIGIN pairs"]),
    ("-1,2", ["'-1' is neither a strategy"]),
    ("0-1:2", ["layer map '0-1:2'", "entry '0-1:2' is not RECEIVER:ORIGIN"]),
    ("1, 2:3", ["entry '1' is not RECEIVER:ORIGIN"]),
    ("0:1,0:2,1:1", ["layer map '0:1,0:2,1:1' gives receiver layer 0 twice"]),
    ("0:1,2:3", ["gives no origin layer for receiver layer(s) [1]", "from 0 to 2"]),
    ([1, 2, -1], ["layer map [1, 2, -1]", "entry 2 is -1", "a whole number, 0 or more"]),
    ([1, 2.0], ["entry 1 is 2.0"]),
    ([True, 1], ["entry 0 is True"]),
    ({0: 1, "a": 2}, ["receiver layer 'a' is not a whole number"]),
    ({1: 1}, ["no origin layer for receiver layer(s) [0]"]),
    (3.5, ["must be a strategy name, a list or a mapping, got float"]),
    (None, ["got NoneType"]),
    ({"strategy": "strid"}, ["unknown layer map 'strid'", "Did you mean 'stride'?"]),
    ({"strategy": "stride", "layers": [1]}, ["only an explicit map has 'layers'"]),
    ({"strategy": "explicit"}, ["an explicit map needs its 'layers' list"]),
    ({"strategy": "explicit", "layers": []}, ["layer map is empty"]),
    ({"strategy": "stride", "by": 2}, ["stored layer map", "expected {'strategy'"]),
]


@pytest.mark.parametrize("value,words", PARSE_ERRORS, ids=[repr(v) for v, _ in PARSE_ERRORS])
def test_parse_errors(value, words):
    with pytest.raises(PeftportError) as e:
        parse_layer_map(value)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_the_value_itself_is_checked():
    with pytest.raises(PeftportError, match="unknown layer map strategy 'random'"):
        LayerMap("random")
    with pytest.raises(PeftportError, match="needs the origin layer"):
        LayerMap("explicit")
    with pytest.raises(PeftportError, match="needs the origin layer"):
        LayerMap("explicit", (0, -1))
    with pytest.raises(PeftportError, match="stride takes no layers"):
        LayerMap("stride", (0,))
    assert LayerMap("explicit", [np.int64(2), 0]).layers == (2, 0)


# (map, origin layers, receiver layers, resolved)
CKA = np.array([[0.9, 0.1, 0.2], [0.2, 0.3, 0.8], [0.1, 0.7, 0.4], [0.5, 0.7, 0.1]])
RESOLVED = [
    (IDENTITY, 3, 3, (0, 1, 2)),
    (LayerMap("first_k"), 6, 3, (0, 1, 2)),
    (LayerMap("first_k"), 3, 3, (0, 1, 2)),
    (LayerMap("stride"), 6, 3, (1, 3, 5)),
    (LayerMap("stride"), 12, 5, (1, 4, 6, 9, 11)),
    (LayerMap("stride"), 3, 6, (0, 0, 1, 1, 2, 2)),  # a deeper receiver repeats origin layers
    (LayerMap("cka"), 4, 3, (0, 2, 1)),  # per receiver layer the most similar; ties: lowest
    (EXPLICIT_315, 6, 3, (3, 1, 5)),
    (LayerMap("explicit", (0, 0)), 1, 2, (0, 0)),
]


@pytest.mark.parametrize("lmap,n_o,n_r,expected", RESOLVED)
def test_resolve(lmap, n_o, n_r, expected):
    got = lmap.resolve(n_o, n_r, CKA if lmap.strategy == "cka" else None)
    assert got == expected and all(type(v) is int for v in got)
    assert lmap.problem(n_o, n_r) is None


class Comparison:
    """What the resolver reads of a `HostComparison`."""

    origin, receiver, origin_layers, receiver_layers = "a", "b", 4, 3
    cka = tuple(tuple(r) for r in CKA)


def test_cka_from_a_host_comparison():
    assert LayerMap("cka").resolve(4, 3, Comparison()) == (0, 2, 1)
    nan = CKA.copy()
    nan[0, 0] = np.nan  # never chosen
    assert LayerMap("cka").resolve(4, 3, nan) == (3, 2, 1)


# (map, origin layers, receiver layers, comparison, words the error must contain)
RESOLVE_ERRORS = [
    (
        IDENTITY,
        6,
        3,
        None,
        [
            "layer map identity gives receiver layer i origin layer i",
            "it ports 6 origin layers into 3 receiver layers",
            "use stride or cka",
        ],
    ),
    (
        LayerMap("first_k"),
        3,
        6,
        None,
        [
            "layer map first_k",
            "(the receiver is deeper)",
            "use stride (which repeats origin layers) or cka",
        ],
    ),
    (
        LayerMap("explicit", (1, 3)),
        6,
        3,
        None,
        ["layer map [1, 3] has 2 entries", "receiver layer(s) [2] have none"],
    ),
    (
        LayerMap("explicit", (1, 3, 5, 0)),
        6,
        3,
        None,
        ["has 4 entries", "the receiver has no layer(s) [3]"],
    ),
    (
        LayerMap("explicit", (1, 3, 6)),
        6,
        3,
        None,
        ["names origin layer(s) [6]", "(origin layers 0..5)"],
    ),
    (LayerMap("cka"), 4, 3, None, ["the cka layer map needs a host comparison"]),
    (
        LayerMap("cka"),
        4,
        2,
        Comparison(),
        ["comparison is of a (4 layers) and b (3 layers)", "wanted for 4 -> 2 layers"],
    ),
    (LayerMap("cka"), 4, 2, CKA, ["CKA matrix has shape (4, 3)", "wanted for 4 -> 2 layers"]),
    (LayerMap("cka"), 2, 1, [[np.nan], [np.nan]], ["receiver layer(s) [0] have no finite CKA"]),
    (LayerMap("stride"), 0, 3, None, ["n_origin must be a whole number of layers >= 1, got 0"]),
    (LayerMap("stride"), 3, 2.0, None, ["n_receiver must be a whole number", "got 2.0"]),
]


@pytest.mark.parametrize("lmap,n_o,n_r,comparison,words", RESOLVE_ERRORS)
def test_resolve_errors(lmap, n_o, n_r, comparison, words):
    with pytest.raises(PeftportError) as e:
        lmap.resolve(n_o, n_r, comparison)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_problem_names_the_pair_and_the_key():
    """The study file checks maps against depths without raising, in its own words."""
    got = IDENTITY.problem(4, 2, subject="a -> b", name="layer_map")
    assert got == (
        "layer_map identity gives receiver layer i origin layer i, but a -> b ports 4 "
        "origin layers into 2 receiver layers: use stride or cka"
    )
    assert LayerMap("cka").problem(4, 2) is None, "cka is checked once the comparison is there"
    assert LayerMap("stride").problem(2, 4) is None


def test_stored_forms_are_the_ones_stores_and_unit_ids_hold():
    """Unit ids hash `as_dict()`; the store keeps resolved maps as JSON lists: both must stay."""
    assert LayerMap("stride").as_dict() == {"strategy": "stride"}
    assert EXPLICIT_315.as_dict() == {"strategy": "explicit", "layers": [3, 1, 5]}
    assert json.dumps(EXPLICIT_315.as_dict(), sort_keys=True) == (
        '{"layers": [3, 1, 5], "strategy": "explicit"}'
    )
    assert [m.describe() for m in (LayerMap("cka"), EXPLICIT_315)] == ["cka", "explicit [3, 1, 5]"]
    assert resolved_json((1, np.int64(3))) == "[1, 3]"
    assert load_resolved("[1, 3]") == [1, 3]
    assert load_resolved('{"encoder.block": [1, 3], "decoder.block": [0]}', "encoder.block") == [
        1,
        3,
    ]
    for text, words in [("[0,", "not JSON"), ("[]", "not a list"), ('{"x": [1]}', "not a list")]:
        with pytest.raises(PeftportError, match=words):
            load_resolved(text)
    assert STRATEGIES == ("identity", "first_k", "stride", "cka")


T5 = ("encoder.block", "decoder.block")


def test_resolve_stacks_and_provenance():
    maps, note = resolve_stacks(LayerMap("stride"), {s: 4 for s in T5}, {s: 2 for s in T5}, T5)
    assert maps == {"encoder.block": (1, 3), "decoder.block": (1, 3)} and note == ""
    assert provenance(maps, T5) == ({0: 1, 1: 3}, {"0": 1, "1": 3})  # one map for both stacks
    maps, note = resolve_stacks(
        LayerMap("cka"), {s: 4 for s in T5}, {s: 2 for s in T5}, T5, CKA[:, :2]
    )
    assert maps == {"encoder.block": (0, 2), "decoder.block": (1, 3)}
    assert note == "cka maps encoder.block (the compared stack); decoder.block mapped by stride"
    assert provenance(maps, T5) == (
        {"encoder.block": {0: 0, 1: 2}, "decoder.block": {0: 1, 1: 3}},
        {"encoder.block": {"0": 0, "1": 2}, "decoder.block": {"0": 1, "1": 3}},
    )
    # a stack without known depths is one the module does not touch
    maps, _ = resolve_stacks(IDENTITY, {"encoder.block": 2}, {s: 2 for s in T5}, T5)
    assert provenance(maps, T5)[1] == {"encoder.block": {"0": 0, "1": 1}}
    with pytest.raises(PeftportError, match=r"but a -> b \(decoder.block\) ports 4 origin"):
        resolve_stacks(
            IDENTITY,
            {s: 4 for s in T5},
            {"encoder.block": 4, "decoder.block": 2},
            T5,
            subject="a -> b",
        )


def test_resolved_maps_per_stack_and_in_tensor_names():
    assert normalise_layer_map(None, T5) is None
    assert normalise_layer_map([1, 0], T5) == {s: {0: 1, 1: 0} for s in T5}
    assert normalise_layer_map({"decoder.block": {0: 1}}, T5) == {
        "encoder.block": {},
        "decoder.block": {0: 1},
    }
    for bad, words in [
        ({"x.block": {0: 0}}, "unknown layer stacks ['x.block']"),
        ({0: True}, "non-negative integers"),
        ("01", "a mapping or a list"),
    ]:
        with pytest.raises(PeftportError, match=re.escape(words)):
            normalise_layer_map(bad, T5)
    assert split_layer("encoder.block.3.layer.0.x", T5) == ("encoder.block", 3, "layer.0.x")
    assert split_layer("encoder.block.final.x", T5) is None
    assert split_layer("shared.weight", T5) is None
