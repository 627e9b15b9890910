"""How different are two hosts? Weight distances, representation similarity, layer maps.

Pure functions (numpy; torch tensors are accepted and read as float64 without importing torch):
- `relative_weight_distance` / `compare_state_dicts`: ||b - a||_F / ||a||_F per group of tensors
  (e.g. per layer) between two state dicts whose names and shapes match;
- `linear_cka` / `cka_matrix`: linear centered kernel alignment (Kornblith et al., ICML 2019) of
  two hosts' hidden states on the same inputs, per pair of layers;
- layer maps, for porting a module between hosts of different depth. A layer map is a list whose
  index is the receiver layer and whose value is the origin layer whose module it receives (both
  0-based): `identity_map`, `first_k_map`, `stride_map`, and `cka_layer_map` (the most similar
  origin layer by CKA). `check_layer_map` validates one.

Malformed input raises `DiagnosticsError`, a `PeftportError` that is also a `ValueError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from peftport.errors import PeftportError

__all__ = [
    "DiagnosticsError",
    "WeightDistanceReport",
    "check_layer_map",
    "cka_layer_map",
    "cka_matrix",
    "compare_state_dicts",
    "first_k_map",
    "identity_map",
    "linear_cka",
    "relative_weight_distance",
    "stride_map",
]


class DiagnosticsError(PeftportError, ValueError):
    """Inputs to a host diagnostic do not fit together (shapes, sizes, layer counts)."""


def _to_numpy(x: Any, dtype: type = np.float64) -> NDArray[Any]:
    """A torch tensor (any device or dtype, bfloat16 included) or array-like, as numpy."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if dtype is np.float64 and getattr(x, "is_floating_point", lambda: False)():
            x = x.double()
        return np.asarray(x.numpy(), dtype=dtype)
    return np.asarray(x, dtype=dtype)


def _is_floating(x: Any) -> bool:
    if hasattr(x, "is_floating_point"):
        return bool(x.is_floating_point())
    return bool(np.issubdtype(np.asarray(x).dtype, np.floating))


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in (x.shape if hasattr(x, "shape") else np.shape(x)))


# --------------------------------------------------------------------------------------------
# Weight distances
# --------------------------------------------------------------------------------------------


@dataclass
class WeightDistanceReport:
    """Result of `compare_state_dicts`.

    `distances`: group -> ||b - a||_F / ||a||_F over all compared tensors of the group (the
    norms are pooled: sqrt(sum ||b_t - a_t||^2) / sqrt(sum ||a_t||^2)); nan when the group's a
    is all zeros and so is the difference, inf when only a is all zeros.
    `tensors`: group -> number of tensors compared.
    `skipped`: name -> why it was not compared ("only in a", "only in b",
    "shape (..) vs (..)", "not floating point").
    `ungrouped`: names present in both for which `layer_of` returned None (deliberately left out).
    """

    distances: dict[str, float] = field(default_factory=dict)
    tensors: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    ungrouped: list[str] = field(default_factory=list)


def compare_state_dicts(
    state_a: Mapping[str, Any],
    state_b: Mapping[str, Any],
    layer_of: Callable[[str], str | None],
) -> WeightDistanceReport:
    """Relative Frobenius distance of b from a, per group, with what was skipped and why.

    `layer_of(name)` gives a tensor's group (e.g. "layer.3", "embeddings") or None to leave it
    out. Only tensors present in both state dicts with the same shape and a floating dtype are
    compared; everything else is listed in `skipped` (names in sorted order). Computed in
    float64.
    """
    report = WeightDistanceReport()
    diff_sq: dict[str, float] = {}
    base_sq: dict[str, float] = {}
    for name in sorted(set(state_a) | set(state_b)):
        if name not in state_b:
            report.skipped[name] = "only in a"
            continue
        if name not in state_a:
            report.skipped[name] = "only in b"
            continue
        ta, tb = state_a[name], state_b[name]
        sa, sb = _shape(ta), _shape(tb)
        if sa != sb:
            report.skipped[name] = f"shape {sa} vs {sb}"
            continue
        if not (_is_floating(ta) and _is_floating(tb)):
            report.skipped[name] = "not floating point"
            continue
        group = layer_of(name)
        if group is None:
            report.ungrouped.append(name)
            continue
        a = _to_numpy(ta)
        b = _to_numpy(tb)
        diff_sq[group] = diff_sq.get(group, 0.0) + float(np.sum((b - a) ** 2))
        base_sq[group] = base_sq.get(group, 0.0) + float(np.sum(a * a))
        report.tensors[group] = report.tensors.get(group, 0) + 1
    for group in sorted(diff_sq):
        num, den = math.sqrt(diff_sq[group]), math.sqrt(base_sq[group])
        if den > 0:
            report.distances[group] = num / den
        else:
            report.distances[group] = math.inf if num > 0 else math.nan
    return report


def relative_weight_distance(
    state_a: Mapping[str, Any],
    state_b: Mapping[str, Any],
    layer_of: Callable[[str], str | None],
) -> dict[str, float]:
    """group -> ||b - a||_F / ||a||_F (see `compare_state_dicts`, which also reports the tensors
    that were skipped because a name or shape did not match)."""
    return compare_state_dicts(state_a, state_b, layer_of).distances


# --------------------------------------------------------------------------------------------
# CKA
# --------------------------------------------------------------------------------------------


@dataclass
class _Centered:
    x: NDArray[np.float64]  # (n, d), centered columns, unit Frobenius norm (or all zero)
    self_norm: float  # ||x^T x||_F of the normalised x (0 for constant features)


def _features(h: Any, what: str) -> NDArray[np.float64]:
    x = _to_numpy(h)
    if x.ndim < 2:
        raise DiagnosticsError(f"{what}: features need shape (n, d) or (..., d), got {x.shape}")
    if x.shape[-1] < 1:
        raise DiagnosticsError(f"{what}: features have width 0")
    x = x.reshape(-1, x.shape[-1])
    if x.shape[0] < 2:
        raise DiagnosticsError(f"{what}: CKA needs at least 2 examples, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise DiagnosticsError(f"{what}: features contain NaN or inf")
    return x


def _center(x: NDArray[np.float64]) -> _Centered:
    xc = x - x.mean(axis=0, keepdims=True)
    norm = float(np.linalg.norm(xc))
    if norm == 0.0 or not math.isfinite(norm):
        return _Centered(np.zeros_like(xc), 0.0)
    xc = xc / norm  # CKA is invariant to isotropic scaling; this keeps sums far from overflow
    n, d = xc.shape
    gram = xc.T @ xc if d <= n else xc @ xc.T  # same non-zero spectrum, same Frobenius norm
    return _Centered(xc, float(np.linalg.norm(gram)))


def _cka_centered(a: _Centered, b: _Centered) -> float:
    if a.self_norm == 0.0 or b.self_norm == 0.0:
        return math.nan
    n, d1 = a.x.shape
    d2 = b.x.shape[1]
    if n * d1 * d2 <= n * n * (d1 + d2):
        cross = float(np.sum((b.x.T @ a.x) ** 2))  # ||Y^T X||_F^2
    else:
        cross = float(np.sum((a.x @ a.x.T) * (b.x @ b.x.T)))  # tr(K L), same value
    return cross / (a.self_norm * b.self_norm)


def linear_cka(x: Any, y: Any) -> float:
    """Linear CKA of two representations of the same n examples (Kornblith et al., 2019):

        CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F),

    Xc, Yc the column-centred features, (n, d1) and (n, d2) (widths may differ); more leading
    dimensions (batch, sequence, d) are flattened into n, so mask padding before calling. In
    [0, 1]; 1 for X vs itself; invariant to orthogonal transforms and isotropic scaling of
    either side. nan when one side is constant (no variance). Computed in float64.
    """
    xa = _features(x, "X")
    yb = _features(y, "Y")
    if xa.shape[0] != yb.shape[0]:
        raise DiagnosticsError(
            f"CKA compares the same examples: X has {xa.shape[0]} rows, Y has {yb.shape[0]}"
        )
    return _cka_centered(_center(xa), _center(yb))


def cka_matrix(hiddens_a: Sequence[Any], hiddens_b: Sequence[Any]) -> NDArray[np.float64]:
    """Linear CKA between every layer of host a (rows) and every layer of host b (columns).

    Each element of `hiddens_a` / `hiddens_b` is one layer's features for the same n examples
    (see `linear_cka`). Pass the origin host as `a` and the receiver as `b` to feed
    `cka_layer_map`. Indices are positions in the lists: if you pass transformers'
    `hidden_states` (which start with the embedding output), index 0 is the embeddings; pass
    `hidden_states[1:]` for index = transformer block.
    """
    if len(hiddens_a) == 0 or len(hiddens_b) == 0:
        raise DiagnosticsError(
            f"cka_matrix needs at least one layer per host, got {len(hiddens_a)} and "
            f"{len(hiddens_b)}"
        )
    ca = [_center(_features(h, f"host a layer {i}")) for i, h in enumerate(hiddens_a)]
    cb = [_center(_features(h, f"host b layer {j}")) for j, h in enumerate(hiddens_b)]
    n = ca[0].x.shape[0]
    for what, layers in (("a", ca), ("b", cb)):
        for i, c in enumerate(layers):
            if c.x.shape[0] != n:
                raise DiagnosticsError(
                    f"host {what} layer {i} has {c.x.shape[0]} examples, expected {n} "
                    "(all layers must describe the same inputs)"
                )
    out = np.empty((len(ca), len(cb)), dtype=np.float64)
    for i, a in enumerate(ca):
        for j, b in enumerate(cb):
            out[i, j] = _cka_centered(a, b)
    return out


# --------------------------------------------------------------------------------------------
# Layer maps: index = receiver layer, value = origin layer (0-based)
# --------------------------------------------------------------------------------------------


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise DiagnosticsError(f"{what} must be an integer number of layers, got {value!r}")
    if int(value) < 1:
        raise DiagnosticsError(f"{what} must be at least 1, got {value}")
    return int(value)


def identity_map(n_recv: int, n_orig: int) -> list[int]:
    """Receiver layer i gets origin layer i; the hosts must have the same depth."""
    r, o = _count(n_recv, "n_recv"), _count(n_orig, "n_orig")
    if r != o:
        raise DiagnosticsError(
            f"identity layer map needs equal depths, got {r} receiver and {o} origin layers; "
            "use first_k_map, stride_map or cka_layer_map"
        )
    return list(range(r))


def first_k_map(n_recv: int, n_orig: int) -> list[int]:
    """Receiver layer i gets origin layer i: the first n_recv origin layers (n_recv <= n_orig)."""
    r, o = _count(n_recv, "n_recv"), _count(n_orig, "n_orig")
    if r > o:
        raise DiagnosticsError(
            f"first_k_map: the receiver has {r} layers but the origin only {o}; "
            "use stride_map (which repeats origin layers) or cka_layer_map"
        )
    return list(range(r))


def stride_map(n_recv: int, n_orig: int) -> list[int]:
    """Spread the receiver's layers uniformly over the origin's depth.

    Receiver layer i (0-based) gets origin layer round_half_up((i + 1) * n_orig / n_recv) - 1,
    clamped at 0, computed in exact integer arithmetic. So the last receiver layer always gets
    the last origin layer; 6 -> 3 gives [1, 3, 5]; 12 -> 5 gives [1, 4, 6, 9, 11]; equal
    depths give the identity; a deeper receiver repeats origin layers (3 -> 6 gives
    [0, 0, 1, 1, 2, 2]).
    """
    r, o = _count(n_recv, "n_recv"), _count(n_orig, "n_orig")
    # round_half_up(k * o / r) = floor((2 k o + r) / (2 r))
    return [max(0, (2 * (i + 1) * o + r) // (2 * r) - 1) for i in range(r)]


def cka_layer_map(matrix: Any) -> list[int]:
    """For each receiver layer (column), the origin layer (row) with the highest CKA.

    `matrix` is `cka_matrix(origin_hiddens, receiver_hiddens)`, shape (n_orig, n_recv). Ties go
    to the lowest origin index; NaN entries (constant features) are never chosen; a column with
    no finite entry is an error.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise DiagnosticsError(
            f"cka_layer_map needs a non-empty (origin layers x receiver layers) matrix, "
            f"got shape {m.shape}"
        )
    finite = np.isfinite(m)
    bad = np.flatnonzero(~finite.any(axis=0))
    if bad.size:
        raise DiagnosticsError(
            f"receiver layer(s) {bad.tolist()} have no finite CKA with any origin layer "
            "(constant features?)"
        )
    filled = np.where(finite, m, -np.inf)
    return [int(i) for i in np.argmax(filled, axis=0)]  # argmax: first (lowest) index on ties


def check_layer_map(layer_map: Sequence[int], n_recv: int, n_orig: int) -> list[int]:
    """Validate a layer map (one entry per receiver layer, each an origin layer in range)."""
    r, o = _count(n_recv, "n_recv"), _count(n_orig, "n_orig")
    values = list(layer_map)
    if len(values) != r:
        raise DiagnosticsError(
            f"layer map has {len(values)} entries but the receiver has {r} layers"
        )
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= int(v) < o:
            raise DiagnosticsError(
                f"layer map entry {i} is {v!r}: must be an origin layer in [0, {o})"
            )
    return [int(v) for v in values]
