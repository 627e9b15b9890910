"""peftport.diagnostics: weight distances, linear CKA, layer maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from peftport import diagnostics as D
from peftport.errors import PeftportError


def _layer_of(name: str) -> str | None:
    parts = name.split(".")
    if "layer" in parts:
        return f"layer.{parts[parts.index('layer') + 1]}"
    if name.startswith("emb"):
        return "embeddings"
    return None


# --------------------------------------------------------------------------------------------
# Weight distances
# --------------------------------------------------------------------------------------------


def test_relative_weight_distance_values_and_pooling():
    a = {
        "layer.0.w": torch.ones(2, 2),  # ||a|| = 2
        "layer.0.b": torch.zeros(3),
        "layer.1.w": torch.full((4,), 2.0),  # ||a|| = 4
        "emb.w": np.array([3.0, 4.0]),  # numpy works too; ||a|| = 5
    }
    b = {
        "layer.0.w": torch.ones(2, 2) * 1.5,  # ||b - a|| = 1
        "layer.0.b": torch.zeros(3),
        "layer.1.w": torch.full((4,), 2.0),
        "emb.w": np.array([3.0, 4.0]) * 1.1,
    }
    dist = D.relative_weight_distance(a, b, _layer_of)
    assert dist == {
        "embeddings": pytest.approx(0.1),
        "layer.0": pytest.approx(0.5),  # sqrt(1 + 0) / sqrt(4 + 0)
        "layer.1": 0.0,
    }
    # Pooled over the tensors of a group, not averaged.
    a2 = {"layer.0.x": torch.tensor([3.0]), "layer.0.y": torch.tensor([4.0])}
    b2 = {"layer.0.x": torch.tensor([3.0]), "layer.0.y": torch.tensor([4.0 + 5.0])}
    assert D.relative_weight_distance(a2, b2, _layer_of)["layer.0"] == pytest.approx(1.0)


def test_compare_state_dicts_reports_skipped():
    a = {
        "layer.0.w": torch.ones(2, 2),
        "layer.0.only_a": torch.ones(1),
        "layer.1.w": torch.ones(2, 3),
        "layer.1.ids": torch.arange(4),
        "pooler.w": torch.ones(2),
    }
    b = {
        "layer.0.w": torch.ones(2, 2, dtype=torch.bfloat16) * 2,
        "layer.0.only_b": torch.ones(1),
        "layer.1.w": torch.ones(3, 2),
        "layer.1.ids": torch.arange(4),
        "pooler.w": torch.ones(2) * 3,
    }
    rep = D.compare_state_dicts(a, b, _layer_of)
    assert rep.distances == {"layer.0": pytest.approx(1.0)}
    assert rep.tensors == {"layer.0": 1}
    assert rep.skipped == {
        "layer.0.only_a": "only in a",
        "layer.0.only_b": "only in b",
        "layer.1.ids": "not floating point",
        "layer.1.w": "shape (2, 3) vs (3, 2)",
    }
    assert rep.ungrouped == ["pooler.w"]


def test_relative_weight_distance_zero_base():
    a = {"layer.0.w": torch.zeros(2), "layer.1.w": torch.zeros(2)}
    b = {"layer.0.w": torch.zeros(2), "layer.1.w": torch.ones(2)}
    dist = D.relative_weight_distance(a, b, _layer_of)
    assert math.isnan(dist["layer.0"]) and dist["layer.1"] == math.inf


# --------------------------------------------------------------------------------------------
# CKA
# --------------------------------------------------------------------------------------------


def _random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_linear_cka_identity_and_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)) @ rng.normal(size=(8, 8))
    assert D.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q = _random_orthogonal(8, rng)
    assert D.linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
    assert D.linear_cka(x, 7.5 * x + 3.0) == pytest.approx(1.0, abs=1e-12)  # scale and shift
    y = np.tanh(x[:, :5]) + 0.1 * rng.normal(size=(50, 5))  # different width
    base = D.linear_cka(x, y)
    assert 0.0 < base < 1.0
    assert D.linear_cka(x @ q * 0.01, y) == pytest.approx(base, rel=1e-10)
    assert D.linear_cka(y, x) == pytest.approx(base, rel=1e-12)  # symmetric


def test_linear_cka_both_computation_paths_agree():
    rng = np.random.default_rng(1)
    # Wide features (d > n) use the n x n Gram route; narrow ones the d x d route.
    x = rng.normal(size=(10, 40))
    y = x[:, :30] + 0.5 * rng.normal(size=(10, 30))
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = np.linalg.norm(yc.T @ xc) ** 2 / (
        np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    )
    assert D.linear_cka(x, y) == pytest.approx(expected, rel=1e-10)
    x2, y2 = rng.normal(size=(60, 3)), rng.normal(size=(60, 4))
    x2c, y2c = x2 - x2.mean(0), y2 - y2.mean(0)
    k, l_ = x2c @ x2c.T, y2c @ y2c.T
    expected2 = np.sum(k * l_) / (np.linalg.norm(k) * np.linalg.norm(l_))
    assert D.linear_cka(x2, y2) == pytest.approx(expected2, rel=1e-10)


def test_linear_cka_independent_data_small_and_tensors():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 6, generator=g)
    y = torch.randn(2000, 5, generator=g)
    assert D.linear_cka(x, y) < 0.02
    # Leading dimensions are flattened: (batch, seq, hidden) works like (batch*seq, hidden).
    h = torch.randn(4, 5, 6, generator=g, dtype=torch.bfloat16)
    assert D.linear_cka(h, h.reshape(20, 6)) == pytest.approx(1.0, abs=1e-12)


def test_linear_cka_constant_is_nan():
    rng = np.random.default_rng(2)
    assert math.isnan(D.linear_cka(np.ones((5, 3)), rng.normal(size=(5, 2))))


def test_linear_cka_errors():
    with pytest.raises(PeftportError, match="same examples"):
        D.linear_cka(np.ones((5, 2)), np.ones((6, 2)))
    with pytest.raises(PeftportError, match=r"shape \(n, d\)"):
        D.linear_cka(np.ones(5), np.ones((5, 2)))
    with pytest.raises(PeftportError, match="at least 2 examples"):
        D.linear_cka(np.ones((1, 2)), np.ones((1, 2)))
    with pytest.raises(PeftportError, match="NaN or inf"):
        D.linear_cka(np.array([[1.0], [np.nan]]), np.ones((2, 1)))
    with pytest.raises(PeftportError, match="width 0"):
        D.linear_cka(np.ones((3, 0)), np.ones((3, 1)))


def test_cka_matrix_and_layer_map():
    rng = np.random.default_rng(3)
    n = 64
    origin = [rng.normal(size=(n, 12)) for _ in range(4)]
    q = _random_orthogonal(12, rng)
    # Receiver layer j is a rotated, rescaled origin layer 2*j+1 (+ a little noise).
    receiver = [2.0 * origin[2 * j + 1] @ q + 0.01 * rng.normal(size=(n, 12)) for j in range(2)]
    m = D.cka_matrix(origin, receiver)
    assert m.shape == (4, 2)
    for i in range(4):
        for j in range(2):
            assert m[i, j] == pytest.approx(D.linear_cka(origin[i], receiver[j]), rel=1e-12)
    assert D.cka_layer_map(m) == [1, 3]
    assert m[1, 0] > 0.99 and m[0, 0] < 0.5


def test_cka_matrix_errors():
    x = np.ones((4, 2))
    with pytest.raises(PeftportError, match="at least one layer"):
        D.cka_matrix([], [x])
    with pytest.raises(PeftportError, match="host b layer 1 has 5 examples, expected 4"):
        D.cka_matrix([x], [x, np.ones((5, 2))])
    with pytest.raises(PeftportError, match="host a layer 0"):
        D.cka_matrix([np.ones(4)], [x])


def test_cka_layer_map_ties_nan_and_errors():
    m = np.array([[0.5, 0.2], [0.5, 0.9], [0.1, 0.9]])
    assert D.cka_layer_map(m) == [0, 1]  # ties go to the lowest origin index
    assert D.cka_layer_map([[np.nan, 0.1], [0.3, np.nan]]) == [1, 0]
    with pytest.raises(PeftportError, match="no finite CKA"):
        D.cka_layer_map([[np.nan, 0.1], [np.nan, 0.2]])
    with pytest.raises(PeftportError, match="non-empty"):
        D.cka_layer_map(np.zeros((0, 3)))
    with pytest.raises(PeftportError, match="non-empty"):
        D.cka_layer_map([0.1, 0.2])


# --------------------------------------------------------------------------------------------
# Layer maps
# --------------------------------------------------------------------------------------------


def test_stride_map():
    assert D.stride_map(3, 6) == [1, 3, 5]
    assert D.stride_map(5, 12) == [1, 4, 6, 9, 11]
    assert D.stride_map(4, 4) == [0, 1, 2, 3]
    assert D.stride_map(6, 3) == [0, 0, 1, 1, 2, 2]
    assert D.stride_map(3, 1) == [0, 0, 0]
    assert D.stride_map(1, 12) == [11]
    for r in range(1, 15):
        for o in range(1, 15):
            m = D.stride_map(r, o)
            assert D.check_layer_map(m, r, o) == m
            assert m[-1] == o - 1 and m == sorted(m)


def test_identity_and_first_k():
    assert D.identity_map(3, 3) == [0, 1, 2]
    assert D.first_k_map(2, 6) == [0, 1]
    with pytest.raises(PeftportError, match="equal depths"):
        D.identity_map(3, 6)
    with pytest.raises(PeftportError, match="origin only 2"):
        D.first_k_map(3, 2)


def test_layer_map_count_errors():
    with pytest.raises(PeftportError, match="n_recv must be at least 1"):
        D.stride_map(0, 3)
    with pytest.raises(PeftportError, match="n_orig must be an integer"):
        D.stride_map(3, 2.5)
    with pytest.raises(PeftportError, match="n_orig must be an integer"):
        D.identity_map(1, True)


def test_check_layer_map():
    assert D.check_layer_map([0, np.int64(2)], 2, 3) == [0, 2]
    with pytest.raises(PeftportError, match="2 entries but the receiver has 3"):
        D.check_layer_map([0, 1], 3, 3)
    with pytest.raises(PeftportError, match=r"entry 1 is 3: must be an origin layer in \[0, 3\)"):
        D.check_layer_map([0, 3], 2, 3)
    with pytest.raises(PeftportError, match="entry 0"):
        D.check_layer_map([-1, 0], 2, 3)
    with pytest.raises(PeftportError, match="entry 0"):
        D.check_layer_map([0.0, 1], 2, 3)


def test_errors_are_value_errors_too():
    with pytest.raises(ValueError):
        D.first_k_map(5, 1)
