"""How alike are two hosts, layer by layer? And which origin layer should each receiver layer get?

`compare_hosts(origin, receiver)` loads both hosts and measures, on a deterministic seeded sample
of unlabelled text:
- the relative weight distance ||r - o||_F / ||o||_F per layer, where tensor names and shapes
  match (`diagnostics.compare_state_dicts`; anything else is counted as skipped);
- the linear CKA (Kornblith et al., 2019) between every block output of the origin's main layer
  stack and every block output of the receiver's, and between their embedding outputs.

The result, a `HostComparison`, chooses layer maps for porting a per-layer module between hosts
of different depth (`layer_map("cka")`: each receiver layer gets the origin layer whose
representations are most similar) and gives one summary distance; `peftport.layermap` parses
and resolves every layer map (a cka map from this comparison).

CKA is computed from streamed second moments: per batch, X^T Y for every pair of layers is added
up in float64, and centring happens at the end (Xc^T Yc = X^T Y - n mx my^T). That is the same
number `diagnostics.linear_cka` gives on the stacked features (a test checks it) while holding
(layers x layers) d x d matrices instead of every token's hidden state for every layer.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from peftport.configs import CompareSettings
from peftport.diagnostics import check_layer_map, compare_state_dicts, stride_map
from peftport.errors import PeftportError
from peftport.layermap import STRATEGIES as LAYER_MAP_STRATEGIES
from peftport.layermap import parse_layer_map, split_layer

__all__ = [
    "FEATURES",
    "LAYER_MAP_STRATEGIES",
    "HostComparison",
    "compare_cached",
    "compare_hosts",
    "host_depth",
    "layer_group",
    "render_comparison_png",
    "sample_texts",
]

FEATURES = ("tokens", "mean-pooled")

_BATCH = 16


def _float_out(x: float) -> float | str:
    """JSON has no NaN or infinity: write them as the strings float() reads back."""
    return x if math.isfinite(x) else str(x)


def _float_in(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float | str):
        raise PeftportError(f"host comparison: {what} must be a number, got {x!r}")
    try:
        return float(x)
    except ValueError:
        raise PeftportError(f"host comparison: {what} must be a number, got {x!r}") from None


@dataclass(frozen=True)
class HostComparison:
    """Two hosts compared (see the module docstring). Layer indices are 0-based blocks of the
    main layer stack; `cka[i][j]` pairs origin block i with receiver block j."""

    origin: str  # host ids as given
    receiver: str
    origin_layers: int  # transformer blocks in the compared stack
    receiver_layers: int
    stack: str  # the layer stack compared (e.g. "bert.encoder.layer"; for T5 the encoder)
    cka: tuple[tuple[float, ...], ...]  # (origin_layers x receiver_layers) CKA of block outputs
    embedding_cka: float  # CKA of the embedding outputs
    weight_distance: dict[str, float]  # "embeddings", "layer.0", ..., "other" -> ||r-o||/||o||
    features: str  # "tokens" (same tokenisation on both) or "mean-pooled" (one row per text)
    corpus: str
    texts: int
    max_length: int
    seed: int
    weight_compared: int = 0  # tensors compared for weight_distance
    weight_skipped: int = 0  # tensors not compared: shapes differ or only in one host
    # (origin_layers + 1) x (receiver_layers + 1), index 0 = embeddings: cka with its borders
    cka_full: tuple[tuple[float, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("origin_layers", "receiver_layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PeftportError(
                    f"host comparison: {name} must be a positive integer, got {v!r}"
                )
        if self.features not in FEATURES:
            raise PeftportError(
                f"host comparison: features must be one of {list(FEATURES)}, got {self.features!r}"
            )
        cka = tuple(tuple(float(v) for v in row) for row in self.cka)
        if len(cka) != self.origin_layers or any(len(r) != self.receiver_layers for r in cka):
            raise PeftportError(
                f"host comparison: cka must be {self.origin_layers} x {self.receiver_layers} "
                f"(origin layers x receiver layers), got {len(cka)} rows of lengths "
                f"{sorted({len(r) for r in cka})}"
            )
        full = tuple(tuple(float(v) for v in row) for row in self.cka_full)
        if full and (
            len(full) != self.origin_layers + 1
            or any(len(r) != self.receiver_layers + 1 for r in full)
        ):
            raise PeftportError(
                f"host comparison: cka_full must be {self.origin_layers + 1} x "
                f"{self.receiver_layers + 1} (embeddings + layers on each side)"
            )
        # frozen: normalise lists (from JSON) to tuples once, here
        object.__setattr__(self, "cka", cka)
        object.__setattr__(self, "cka_full", full)
        object.__setattr__(self, "embedding_cka", float(self.embedding_cka))
        object.__setattr__(
            self, "weight_distance", {str(k): float(v) for k, v in self.weight_distance.items()}
        )

    def layer_map(self, strategy: str) -> list[int]:
        """The layer map a strategy gives for these two hosts (index = receiver layer, value =
        origin layer); "cka" uses this comparison. Errors say why a strategy does not fit."""
        m = parse_layer_map(strategy)
        return list(m.resolve(self.origin_layers, self.receiver_layers, self))

    def distance(self, layer_map: Sequence[int] | None = None) -> float:
        """1 - mean over receiver layers j of cka[map[j]][j]: 0 when every receiver layer has a
        perfectly similar origin layer under the map. Default map: stride (which pairs layers at
        the same relative depth, so the number does not depend on the CKA it scores)."""
        m = (
            stride_map(self.receiver_layers, self.origin_layers)
            if layer_map is None
            else check_layer_map(layer_map, self.receiver_layers, self.origin_layers)
        )
        return 1.0 - float(np.mean([self.cka[o][j] for j, o in enumerate(m)]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (NaN and infinities as strings); `from_dict` is its inverse."""
        d = asdict(self)
        d["cka"] = [[_float_out(v) for v in row] for row in self.cka]
        d["cka_full"] = [[_float_out(v) for v in row] for row in self.cka_full]
        d["embedding_cka"] = _float_out(self.embedding_cka)
        d["weight_distance"] = {k: _float_out(v) for k, v in self.weight_distance.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HostComparison:
        if not isinstance(d, Mapping):
            raise PeftportError(f"host comparison: expected an object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        required = {
            f.name
            for f in fields(cls)
            if f.name not in ("weight_compared", "weight_skipped", "cka_full")
        }
        missing = sorted(required - set(d))
        unknown = sorted(set(d) - names)
        if missing or unknown:
            raise PeftportError(
                f"host comparison: missing fields {missing}, unknown fields {unknown}"
            )
        kw = dict(d)

        def matrix(key: str) -> tuple[tuple[float, ...], ...]:
            rows = kw.get(key, [])
            if not isinstance(rows, list | tuple) or not all(
                isinstance(r, list | tuple) for r in rows
            ):
                raise PeftportError(f"host comparison: {key} must be a list of lists")
            return tuple(
                tuple(_float_in(v, f"{key}[{i}][{j}]") for j, v in enumerate(r))
                for i, r in enumerate(rows)
            )

        kw["cka"] = matrix("cka")
        kw["cka_full"] = matrix("cka_full")
        kw["embedding_cka"] = _float_in(kw["embedding_cka"], "embedding_cka")
        wd = kw["weight_distance"]
        if not isinstance(wd, Mapping):
            raise PeftportError("host comparison: weight_distance must be an object")
        kw["weight_distance"] = {
            str(k): _float_in(v, f"weight_distance[{k!r}]") for k, v in wd.items()
        }
        return cls(**kw)


# --------------------------------------------------------------------------------------------
# Hosts: depth, weights, hidden states
# --------------------------------------------------------------------------------------------


def host_depth(host: Any) -> int:
    """Blocks in a host's main layer stack (T5: the encoder).

    `host`: a host id / folder / hub id or a `HostSpec` (read from config.json, no weights
    loaded), a `LoadedHost`, or a transformers model.
    """
    from peftport.hosts import LAYOUTS, HostSpec, LoadedHost, get_host, host_folder

    if isinstance(host, LoadedHost):
        return len(host.model.get_submodule(host.layout.layer_stacks[0]))
    config = getattr(host, "config", None)
    if config is not None and hasattr(host, "get_submodule"):  # a transformers model
        family = getattr(config, "model_type", "")
        if family not in LAYOUTS:
            raise PeftportError(
                f"model of type {family!r}: not a supported family ({', '.join(sorted(LAYOUTS))})"
            )
        return len(host.get_submodule(LAYOUTS[family].layer_stacks[0]))
    if isinstance(host, str):
        host = get_host(host)
    if not isinstance(host, HostSpec):
        raise PeftportError(
            f"host_depth: expected a host id, HostSpec, LoadedHost or model, got "
            f"{type(host).__name__}"
        )
    folder = host_folder(host)
    cfg = json.loads((folder / "config.json").read_text())
    family = host.family or cfg.get("model_type", "")
    if family not in LAYOUTS:
        raise PeftportError(f"host {host.id!r}: model_type {family!r} is not a supported family")
    key = LAYOUTS[family].num_layers_key
    depth = cfg.get(key)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise PeftportError(
            f"host {host.id!r}: {folder / 'config.json'} has no positive {key!r} (got {depth!r})"
        )
    return depth


def layer_group(name: str, layout: Any) -> str:
    """A weight's group for the distance table: "layer.<i>" in the main stack ("<stack>.<i>" in
    another, e.g. T5's decoder), "embeddings", or "other"."""
    if (split := split_layer(name, layout.layer_stacks)) is not None:
        stack, idx, _ = split
        return f"layer.{idx}" if stack == layout.layer_stacks[0] else f"{stack}.{idx}"
    emb = layout.embeddings
    if emb and (name == emb or name.startswith(emb + ".")):
        return "embeddings"
    if set(layout.embedding_parts) & set(name.split(".")):
        return "embeddings"
    return "other"


def _pretrained_state(host: Any) -> dict[str, Any]:
    """The host's pretrained tensors: tied aliases once (first name), and on encoder classifiers
    without the task head, which `load_host` initialises afresh (random, so never comparable)."""
    from peftport.hosts import ENCODER_CLASSIFIER

    model = host.model
    prefix = model.base_model_prefix + "." if host.kind == ENCODER_CLASSIFIER else ""
    out: dict[str, Any] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, t in model.state_dict().items():
        if prefix and not name.startswith(prefix):
            continue
        key = (t.data_ptr(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def sample_texts(corpus: str, texts: int, seed: int) -> list[str]:
    """A deterministic seeded choice of `texts` distinct texts of an unlabelled corpus (all of
    them, in a seeded order, when it has fewer)."""
    from peftport.data import unlabelled_texts

    pool = unlabelled_texts(corpus)
    if len(pool) < 2:
        raise PeftportError(f"corpus {corpus!r} has {len(pool)} text(s); CKA needs at least 2")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(pool))[: min(texts, len(pool))]
    return [pool[i] for i in idx]


class _Moments:
    """Streamed second moments of two sets of layer features over the same rows, in float64:
    enough for the linear CKA of every (origin layer, receiver layer) pair."""

    def __init__(self) -> None:
        self.n = 0
        self.sum_a: list[Any] = []
        self.sum_b: list[Any] = []
        self.aa: list[Any] = []
        self.bb: list[Any] = []
        self.ab: list[list[Any]] = []

    def add(self, feats_a: list[Any], feats_b: list[Any]) -> None:
        import torch

        a = [x.to(torch.float64) for x in feats_a]  # each (rows, d_a)
        b = [y.to(torch.float64) for y in feats_b]  # each (rows, d_b)
        if not self.aa:
            self.sum_a = [x.sum(0) for x in a]
            self.sum_b = [y.sum(0) for y in b]
            self.aa = [x.T @ x for x in a]
            self.bb = [y.T @ y for y in b]
            self.ab = [[x.T @ y for y in b] for x in a]
        else:
            for i, x in enumerate(a):
                self.sum_a[i] += x.sum(0)
                self.aa[i] += x.T @ x
                for j, y in enumerate(b):
                    self.ab[i][j] += x.T @ y
            for j, y in enumerate(b):
                self.sum_b[j] += y.sum(0)
                self.bb[j] += y.T @ y
        self.n += a[0].shape[0]

    def cka(self) -> np.ndarray:
        """(len(a) x len(b)) linear CKA; NaN where one side has no variance."""
        import torch

        if self.n < 2:
            raise PeftportError(f"CKA needs at least 2 feature rows, got {self.n}")
        n = self.n
        mean_a = [s / n for s in self.sum_a]
        mean_b = [s / n for s in self.sum_b]

        def self_norm(m: Any, mean: Any) -> float:
            c = m - n * torch.outer(mean, mean)
            norm = float(torch.linalg.matrix_norm(c))
            # constant features: what is left is rounding error of the uncentred moment
            return norm if norm > 1e-12 * float(torch.linalg.matrix_norm(m)) else 0.0

        na = [self_norm(m, mu) for m, mu in zip(self.aa, mean_a, strict=True)]
        nb = [self_norm(m, mu) for m, mu in zip(self.bb, mean_b, strict=True)]
        out = np.full((len(na), len(nb)), np.nan)
        for i, mu_a in enumerate(mean_a):
            for j, mu_b in enumerate(mean_b):
                if na[i] == 0.0 or nb[j] == 0.0:
                    continue
                c = self.ab[i][j] - n * torch.outer(mu_a, mu_b)
                out[i, j] = float((c * c).sum()) / (na[i] * nb[j])
        # CKA lies in [0, 1]; rounding can step past 1 by an ulp or two (NaN stays NaN)
        return np.clip(out, 0.0, 1.0)


def _encode(tokenizer: Any, sample: list[str], max_length: int) -> list[list[int]]:
    enc = tokenizer(sample, truncation=True, max_length=max_length, padding=False)
    ids = [list(x) for x in enc["input_ids"]]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise PeftportError(f"the tokenizer gives no tokens for sample text(s) {empty[:5]}")
    return ids


def _pad(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):  # right padding: positions 0..len-1 stay the real tokens
        ids[k, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[k, : len(r)] = 1
    return ids, mask


class _Hidden:
    """Runs a host's main stack and returns [embedding output, block 0 output, ...] (B, T, d).

    Block outputs come from forward hooks on the layout's layer stack, not from
    `hidden_states[1:]`: T5, GPT-2 and Llama apply their final layer norm to the last entry of
    `hidden_states`, which would make the last layer unlike the others. The embedding output
    is `hidden_states[0]` (output_hidden_states=True).
    """

    def __init__(self, host: Any) -> None:
        from peftport.hosts import TEXT_TO_TEXT

        self.model = host.model
        self.stack = host.layout.layer_stacks[0]
        self.blocks = list(self.model.get_submodule(self.stack))
        # only the part that makes the stack's hidden states: no classifier, decoder or LM head
        self.runner = (
            self.model.get_encoder() if host.kind == TEXT_TO_TEXT else self.model.base_model
        )
        tok = host.tokenizer
        self.pad_id = (
            tok.pad_token_id
            if tok.pad_token_id is not None
            else (tok.eos_token_id if tok.eos_token_id is not None else 0)
        )

    def __call__(self, ids: Any, mask: Any) -> list[Any]:
        import torch

        outs: list[Any] = [None] * len(self.blocks)

        def hook(i: int):
            def f(_module: Any, _inputs: Any, output: Any) -> None:
                outs[i] = output[0] if isinstance(output, tuple) else output

            return f

        handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(self.blocks)]
        try:
            with torch.no_grad():
                res = self.runner(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        finally:
            for h in handles:
                h.remove()
        missing = [i for i, o in enumerate(outs) if o is None]
        if missing:
            raise PeftportError(f"{self.stack}: block(s) {missing} did not run")
        return [res.hidden_states[0].float(), *(o.float() for o in outs)]


def _check_families(origin: Any, receiver: Any) -> None:
    if origin.family and receiver.family and origin.family != receiver.family:
        raise PeftportError(
            f"cannot compare {origin.id} ({origin.family}, {origin.kind}) with {receiver.id} "
            f"({receiver.family}, {receiver.kind}): hosts of different families have different "
            "layer layouts and tokenisers; compare hosts of one family"
        )


def compare_hosts(
    origin: str,
    receiver: str,
    *,
    corpus: str = "rt_plots",
    texts: int = 256,
    max_length: int = 64,
    seed: int = 0,
    progress: bool = False,
    reverse_of: HostComparison | None = None,
) -> HostComparison:
    """Load both hosts and compare them (weights and hidden-state CKA) on `texts` texts of an
    unlabelled corpus, each cut to `max_length` tokens. Deterministic for fixed inputs.

    `reverse_of`: the comparison receiver -> origin with the same settings. Linear CKA is
    symmetric, so its matrices are transposed instead of running both hosts on the sample
    again (the expensive part); only the weight distances, which divide by the origin's norm,
    are computed. The numbers equal a direct computation up to float rounding."""
    from peftport.hosts import get_host, load_host

    for name, v, low in (("texts", texts, 2), ("max_length", max_length, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise PeftportError(f"compare: {name} must be an integer >= {low}, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PeftportError(f"compare: seed must be an integer, got {seed!r}")
    o_spec, r_spec = get_host(origin), get_host(receiver)
    _check_families(o_spec, r_spec)  # before loading anything, when the families are known
    sample = sample_texts(corpus, texts, seed)
    o_host = load_host(o_spec)
    r_host = load_host(r_spec)
    _check_families(o_host.spec, r_host.spec)  # hub ids learn their family on loading
    for h in (o_host, r_host):
        h.model.float().eval()

    report = compare_state_dicts(
        _pretrained_state(o_host),
        _pretrained_state(r_host),
        lambda name: layer_group(name, o_host.layout),
    )

    o_run, r_run = _Hidden(o_host), _Hidden(r_host)
    if reverse_of is not None:
        return _reversed(
            reverse_of,
            origin,
            receiver,
            o_run,
            r_run,
            report,
            (corpus, len(sample), max_length, seed),
        )
    o_ids = _encode(o_host.tokenizer, sample, max_length)
    r_ids = _encode(r_host.tokenizer, sample, max_length)
    tokens = o_ids == r_ids
    # Longest first, in batches of similar length: less padding to run; the order is fixed by
    # the sample, so the result is too.
    order = sorted(range(len(sample)), key=lambda k: (-max(len(o_ids[k]), len(r_ids[k])), k))
    batches = [order[s : s + _BATCH] for s in range(0, len(order), _BATCH)]
    if progress:  # a bar on a terminal, a plain line every 30 s in a log
        from peftport.progress import bar

        batches = bar(
            batches, desc=f"comparing {o_host.spec.id} with {r_host.spec.id}", unit="batch"
        )
    moments = _Moments()
    for rows in batches:
        ids_a, mask_a = _pad([o_ids[k] for k in rows], o_run.pad_id)
        ids_b, mask_b = _pad([r_ids[k] for k in rows], r_run.pad_id)
        ha, hb = o_run(ids_a, mask_a), r_run(ids_b, mask_b)
        if tokens:  # the same tokens on both sides: one row per real (unpadded) token
            keep = mask_a.bool()
            fa, fb = [h[keep] for h in ha], [h[keep] for h in hb]
        else:  # one row per text: the mean over its own real tokens on each host
            wa = mask_a.unsqueeze(-1).float()
            wb = mask_b.unsqueeze(-1).float()
            fa = [(h * wa).sum(1) / wa.sum(1) for h in ha]
            fb = [(h * wb).sum(1) / wb.sum(1) for h in hb]
        moments.add(fa, fb)
    full = moments.cka()

    n_o, n_r = len(o_run.blocks), len(r_run.blocks)
    return HostComparison(
        origin=origin,
        receiver=receiver,
        origin_layers=n_o,
        receiver_layers=n_r,
        stack=o_run.stack,
        cka=tuple(tuple(float(v) for v in row[1:]) for row in full[1:]),
        embedding_cka=float(full[0, 0]),
        weight_distance=dict(report.distances),
        features="tokens" if tokens else "mean-pooled",
        corpus=corpus,
        texts=len(sample),
        max_length=max_length,
        seed=seed,
        weight_compared=sum(report.tensors.values()),
        weight_skipped=len(report.skipped),
        cka_full=tuple(tuple(float(v) for v in row) for row in full),
    )


def _reversed(
    rev: HostComparison,
    origin: str,
    receiver: str,
    o_run: Any,
    r_run: Any,
    report: Any,
    settings: tuple[str, int, int, int],
) -> HostComparison:
    have = (rev.corpus, rev.texts, rev.max_length, rev.seed)
    if have != settings or (rev.origin_layers, rev.receiver_layers) != (
        len(r_run.blocks),
        len(o_run.blocks),
    ):
        raise PeftportError(
            f"host comparison: the comparison {rev.origin} -> {rev.receiver} given to derive "
            f"{origin} -> {receiver} has other settings or depths ({have} vs {settings})"
        )
    return HostComparison(
        origin=origin,
        receiver=receiver,
        origin_layers=rev.receiver_layers,
        receiver_layers=rev.origin_layers,
        stack=o_run.stack,
        cka=tuple(zip(*rev.cka, strict=True)),
        embedding_cka=rev.embedding_cka,
        weight_distance=dict(report.distances),
        features=rev.features,
        corpus=rev.corpus,
        texts=rev.texts,
        max_length=rev.max_length,
        seed=rev.seed,
        weight_compared=sum(report.tensors.values()),
        weight_skipped=len(report.skipped),
        cka_full=tuple(zip(*rev.cka_full, strict=True)) if rev.cka_full else (),
    )


# --------------------------------------------------------------------------------------------
# One cache for `peftport hosts compare` and every study: $PEFTPORT_HOME/comparisons/
# --------------------------------------------------------------------------------------------


def cache_key(
    origin_fingerprint: str, receiver_fingerprint: str, settings: Mapping[str, Any]
) -> str:
    """The cache file's name: both hosts' weight fingerprints (in order) and the settings."""
    import hashlib

    blob = json.dumps(
        {
            "what": "host comparison",
            "origin": origin_fingerprint,
            "receiver": receiver_fingerprint,
            "settings": {k: settings[k] for k in ("corpus", "texts", "max_length", "seed")},
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_dir() -> Any:
    from peftport.assets import peftport_home

    return peftport_home() / "comparisons"


def _cached(key: str, origin: str, receiver: str) -> HostComparison | None:
    from dataclasses import replace

    path = cache_dir() / f"{key}.json"
    try:
        c = HostComparison.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, PeftportError, TypeError):
        return None  # none, or unreadable: computed (and written) again
    return replace(c, origin=origin, receiver=receiver)  # the weights decide, not the names


def host_fingerprint(name: str) -> str | None:
    """The weight fingerprint of a host (None when its folder cannot be found: no caching)."""
    from peftport.hosts import get_host, host_folder, weights_fingerprint

    try:
        return weights_fingerprint(host_folder(get_host(name)))
    except Exception:  # noqa: BLE001 - a host only loadable otherwise is compared uncached
        return None


def compare_cached(
    origin: str,
    receiver: str,
    settings: CompareSettings | None = None,
    *,
    progress: bool = False,
    fingerprints: tuple[str | None, str | None] | None = None,
) -> tuple[HostComparison, str]:
    """`compare_hosts` with `settings` (default: `CompareSettings()`) through the shared cache:
    returns (comparison, how), how = "cached" (this direction computed before, by `hosts
    compare` or a study), "reversed" (the other direction was: derived from it, `reverse_of`)
    or "computed". `fingerprints`: the hosts' weight fingerprints when the caller knows them
    (else found from the hosts' folders)."""
    from peftport.atomic import write_json

    settings = (settings or CompareSettings()).as_dict()
    o_fp, r_fp = fingerprints or (host_fingerprint(origin), host_fingerprint(receiver))
    kw: dict[str, Any] = dict(settings, progress=progress)
    if o_fp is None or r_fp is None:
        return compare_hosts(origin, receiver, **kw), "computed"
    key = cache_key(o_fp, r_fp, settings)
    hit = _cached(key, origin, receiver)
    if hit is not None:
        return hit, "cached"
    rev = _cached(cache_key(r_fp, o_fp, settings), receiver, origin)
    how = "reversed" if rev is not None else "computed"
    c = compare_hosts(origin, receiver, **kw, reverse_of=rev)
    with contextlib.suppress(OSError):  # a read-only home: the result stands, only not kept
        write_json(cache_dir() / f"{key}.json", c.to_dict())
    return c, how


# --------------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------------


def _group_order(name: str) -> tuple[int, int, str]:
    if name == "embeddings":
        return (0, 0, name)
    head, _, idx = name.rpartition(".")
    if idx.isdigit():
        return (1 if head == "layer" else 2, int(idx), head)
    return (3, 0, name)


def ordered_groups(weight_distance: Mapping[str, float]) -> list[str]:
    """Weight-distance groups in reading order: embeddings, layers by index, other stacks, the
    rest."""
    return sorted(weight_distance, key=_group_order)


def render_comparison_png(c: HostComparison) -> bytes:
    """A PNG: the CKA heatmap (origin rows x receiver columns, embeddings first when known) and
    the weight-distance bars. matplotlib's object API (Agg), no global state."""
    import io

    from matplotlib.figure import Figure

    full = bool(c.cka_full)
    m = np.asarray(c.cka_full if full else c.cka, dtype=np.float64)
    rows = (["emb"] if full else []) + [str(i) for i in range(c.origin_layers)]
    cols = (["emb"] if full else []) + [str(j) for j in range(c.receiver_layers)]
    groups = ordered_groups(c.weight_distance)
    fig = Figure(figsize=(11, max(3.5, 0.45 * len(rows) + 1.5)), layout="constrained")
    ax_h, ax_b = fig.subplots(1, 2, width_ratios=[1.1, 1])
    im = ax_h.imshow(np.ma.masked_invalid(m), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax_h.set_xticks(range(len(cols)), cols)
    ax_h.set_yticks(range(len(rows)), rows)
    ax_h.set_xlabel(f"receiver {c.receiver} layer")
    ax_h.set_ylabel(f"origin {c.origin} layer")
    ax_h.set_title(f"linear CKA ({c.features}, {c.texts} texts of {c.corpus})", fontsize=9)
    if m.size <= 400:  # numbers stay readable up to about 20 x 20
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                v = m[i, j]
                ax_h.text(
                    j,
                    i,
                    "n/a" if not math.isfinite(v) else f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v < 0.6 else "black",
                )
    try:
        picked = c.layer_map("cka")
    except PeftportError:  # a receiver layer without any finite CKA: nothing to outline
        picked = []
    off = 1 if full else 0
    for j, i in enumerate(picked):  # the cka layer map, outlined
        ax_h.add_patch(_rect(j + off, i + off))
    fig.colorbar(im, ax=ax_h, shrink=0.8)
    if groups:
        vals = [c.weight_distance[g] for g in groups]
        shown = [v if math.isfinite(v) else 0.0 for v in vals]
        ax_b.barh(range(len(groups)), shown, color="#0072B2")
        ax_b.set_yticks(range(len(groups)), groups)
        ax_b.invert_yaxis()
        for k, v in enumerate(vals):
            ax_b.text(shown[k], k, f" {v:.3g}", va="center", fontsize=7)
        ax_b.set_xlabel("||receiver - origin|| / ||origin||")
        ax_b.set_xlim(left=0.0)
        ax_b.set_title(
            f"weight distance ({c.weight_compared} tensors compared, {c.weight_skipped} skipped)",
            fontsize=9,
        )
    else:
        ax_b.set_axis_off()
        ax_b.text(
            0.5,
            0.5,
            "no tensors with matching names and shapes",
            ha="center",
            va="center",
            transform=ax_b.transAxes,
        )
    fig.suptitle(
        f"{c.origin} -> {c.receiver}: distance {c.distance():.3f} (1 - mean CKA under "
        "the stride map); outlined: the cka layer map",
        fontsize=10,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def _rect(x: int, y: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5)
