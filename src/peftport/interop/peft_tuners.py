"""PEFT's tuners, LoRA and (IA)^3, both ways: AdapterHub puts both on the same sites (its
LoRA modules), so they share finding the modules, GPT-2's fused q/k/v projection and the checks
on PEFT fields peftport cannot reproduce. See peftport.interop's docstring for the mapping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peftport.errors import PeftportError
from peftport.hosts.spec import LAYOUTS
from peftport.interop import peft_codec as codec
from peftport.interop.folders import ModuleHost
from peftport.interop.names import (
    BASE_CHANGING_INITS,
    IA3_NAMES,
    LORA_NAMES,
    PEFT_UNSUPPORTED,
    PEFT_WEIGHTS,
    TUNER_HEAD_NAMES,
    fill_name,
    listing,
    parse_name,
)


def _fused_site(family: str) -> str | None:
    """The fused q/k/v projection of a family (GPT-2's attn.c_attn), from the host layout."""
    return LAYOUTS[family].attention.get("qkv")


def _is_fused(path: str, family: str) -> bool:
    site = _fused_site(family)
    return bool(site) and (path == site or path.endswith("." + site))


def _modules_by_path(
    tensors: Mapping[str, torch.Tensor],
    name: str,
    parts: Mapping[str, tuple[str, str]],
    heads: Sequence[str],
    where: str,
) -> dict[str, dict[str, torch.Tensor]]:
    """path -> {part: tensor} for the module tensors named by `parts`' AdapterHub templates;
    any other non-head tensor is an error (it would be silently lost)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    stray = []
    for key, value in sorted(tensors.items()):
        if key in heads:
            continue
        for part, (ours, _theirs) in parts.items():
            got = parse_name(ours, key, name)
            if got is not None:
                out.setdefault(got["path"], {})[part] = value
                break
        else:
            stray.append(key)
    if stray:
        raise PeftportError(
            f"{where}: tensors that do not fit the table of names: {listing(stray)}"
        )
    incomplete = [p for p, got in out.items() if set(got) != set(parts)]
    if incomplete:
        raise PeftportError(
            f"{where}: modules missing one of {sorted(parts)}: {listing(incomplete)}"
        )
    return out


def fuse_qkv_lora(
    a: torch.Tensor, b: torch.Tensor, enabled: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """AdapterHub's grouped LoRA on a fused q/k/v projection -> one plain LoRA of rank n*r.

    a: (n*r, in), group g = rows g*r..; b: (n*H, r), group g = rows g*H..; groups follow the
    enabled matrices in q, k, v order. Returns A = a and B (3H, n*r), block g placed at the rows
    of its matrix and the columns of its group (zeros elsewhere), so B @ A = the grouped update.
    """
    n = len(enabled)
    r, width = a.shape[0] // n, b.shape[0] // n
    fused = b.new_zeros(3 * width, n * r)
    for g, matrix in enumerate(enabled):
        m = "qkv".index(matrix)
        fused[m * width : (m + 1) * width, g * r : (g + 1) * r] = b[g * width : (g + 1) * width]
    return a, fused


def split_qkv_lora(
    a: torch.Tensor, b: torch.Tensor, enabled: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """The inverse of `fuse_qkv_lora` when `b` has its block structure (rows of disabled
    matrices zero, each enabled block only in its own column group): (a, b_grouped, r); None
    otherwise."""
    n = len(enabled)
    rank, width = a.shape[0], b.shape[0] // 3
    if n == 0 or rank % n:
        return None
    r = rank // n
    blocks = []
    for m, matrix in enumerate("qkv"):
        rows = b[m * width : (m + 1) * width]
        if matrix not in enabled:
            if rows.any():
                return None
            continue
        g = list(enabled).index(matrix)
        outside = torch.cat([rows[:, : g * r], rows[:, (g + 1) * r :]], dim=1)
        if outside.any():
            return None
        blocks.append(rows[:, g * r : (g + 1) * r])
    return a, torch.cat(blocks), r


def _pad_rank(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A LoRA padded to a higher rank with zero rows of A and zero columns of B: same update."""
    extra = rank - a.shape[0]
    return (
        torch.cat([a, a.new_zeros(extra, a.shape[1])]),
        torch.cat([b, b.new_zeros(b.shape[0], extra)], dim=1),
    )


def lora_to_peft(
    tensors: codec.Tensors, meta: Mapping[str, Any], where: str, facts: codec.HostFacts
) -> codec.Converted:
    from peftport.techniques import make_config

    cfg = make_config(meta["technique"], meta["config"])
    family, name = meta["host_family"], meta.get("adapter_name", "peftport")
    heads = list(meta.get("head_keys") or [])
    mods = _modules_by_path(tensors, name, LORA_NAMES, heads, where)
    enabled = [m for m in "qkv" if m in cfg.targets]
    # a fused q/k/v LoRA becomes rank n*r (see fuse_qkv_lora); the others are padded to match
    widen = len(enabled) if any(_is_fused(p, family) for p in mods) else 1
    rank = cfg.r * widen
    out: dict[str, torch.Tensor] = {}
    for path, ab in mods.items():
        a, b = ab["A"], ab["B"]
        if _is_fused(path, family):
            a, b = fuse_qkv_lora(a, b, enabled)
        elif widen > 1:
            a, b = _pad_rank(a, b, rank)
        out[fill_name(LORA_NAMES["A"][1], path=path)] = a
        out[fill_name(LORA_NAMES["B"][1], path=path)] = b
    head, save = codec.export_head(tensors, meta, TUNER_HEAD_NAMES, where)
    out.update(head)
    config = codec.peft_common(meta, "LORA")
    config.update(
        r=rank,
        lora_alpha=cfg.alpha * widen,
        lora_dropout=cfg.dropout,
        target_modules=codec.target_regex(sorted(mods), ModuleHost.of(meta).dims, family),
        fan_in_fan_out=family == "gpt2",  # GPT-2's Conv1D stores weights (in, out)
        bias="none",
        use_rslora=False,
        use_dora=False,
        init_lora_weights=True,
        modules_to_save=save or None,
        layers_to_transform=None,
        layers_pattern=None,
        rank_pattern={},
        alpha_pattern={},
    )
    return config, out


def ia3_to_peft(
    tensors: codec.Tensors, meta: Mapping[str, Any], where: str, facts: codec.HostFacts
) -> codec.Converted:
    from peftport.techniques import make_config

    cfg = make_config(meta["technique"], meta["config"])
    alpha = cfg.to_adapters().alpha  # AdapterHub multiplies the vector by alpha (1 by default)
    family, name = meta["host_family"], meta.get("adapter_name", "peftport")
    heads = list(meta.get("head_keys") or [])
    mods = _modules_by_path(tensors, name, IA3_NAMES, heads, where)
    enabled = [m for m in "qkv" if m in cfg.targets]
    out: dict[str, torch.Tensor] = {}
    for path, got in mods.items():
        vec = got["l"] if alpha == 1 else got["l"] * alpha  # (out, 1)
        if _is_fused(path, family):  # (n*H, 1) -> (3H, 1), disabled matrices scaled by one
            width = vec.shape[0] // len(enabled)
            full = vec.new_ones(3 * width, 1)
            for g, matrix in enumerate(enabled):
                m = "qkv".index(matrix)
                full[m * width : (m + 1) * width] = vec[g * width : (g + 1) * width]
            vec = full
        out[fill_name(IA3_NAMES["l"][1], path=path)] = vec
    head, save = codec.export_head(tensors, meta, TUNER_HEAD_NAMES, where)
    out.update(head)
    config = codec.peft_common(meta, "IA3")
    config.update(
        target_modules=codec.target_regex(sorted(mods), ModuleHost.of(meta).dims, family),
        feedforward_modules=[],  # output scaling everywhere, as AdapterHub does (docstring)
        fan_in_fan_out=family == "gpt2",
        init_ia3_weights=True,
        modules_to_save=save or None,
    )
    return config, out


@dataclass(frozen=True)
class Site:
    """One module AdapterHub's LoRA / (IA)^3 can adapt on a host (found by `adapters.init`)."""

    path: str
    location: str  # selfattn | intermediate | output (the config flag that switches it on)
    matrices: tuple[str, ...]  # ("q",), ("k",), ("v",); ("q", "k", "v") if fused; () FFN
    in_features: int
    out_features: int


def lora_sites(model: Any) -> dict[str, Site]:
    """path -> Site for every module adapters 1.3.0 wraps for LoRA on this model."""
    import adapters
    from adapters.methods.lora import LoRALinear, LoRAMergedLinear

    with torch.random.fork_rng(devices=[]):  # adapters.init may draw random numbers
        adapters.init(model)
    sites = {}
    for path, mod in model.named_modules():
        if isinstance(mod, LoRAMergedLinear):
            sites[path] = Site(path, "selfattn", ("q", "k", "v"), mod.in_features, mod.out_features)
        elif isinstance(mod, LoRALinear):
            where = mod.location_key.removesuffix("_lora")
            matrices = (mod.attn_key,) if mod.attn_key else ()
            sites[path] = Site(path, where, matrices, mod.in_features, mod.out_features)
    return sites


def _site_listing(sites: Mapping[str, Site]) -> str:
    shapes = sorted({re.sub(r"\.\d+\.", ".N.", p) for p in sites})
    return listing(shapes, 12)


def _check_peft_fields(config: Mapping[str, Any], path: Path) -> None:
    for field_, (fine, why) in PEFT_UNSUPPORTED.items():
        value = config.get(field_)
        if value is None or value == fine or (not value and not fine):
            continue
        raise PeftportError(
            f"{path}: field {field_!r} is {value!r}; peftport cannot import it: {why}"
        )
    init = config.get("init_lora_weights")
    if (
        isinstance(init, str)
        and init.lower().startswith(BASE_CHANGING_INITS)
        or config.get("loftq_config")
    ):
        raise PeftportError(
            f"{path}: field 'init_lora_weights' is {init!r}: that initialisation changes the "
            "base model's weights, so the adapter only fits the changed model; convert it first "
            "(peft: save_pretrained(..., path_initial_model_for_weight_conversion=...))"
        )
    save = [
        m
        for m in (config.get("modules_to_save") or [])
        if m
        not in (
            "classifier",
            "score",
            *(lay.position_table for lay in LAYOUTS.values() if lay.position_table),
        )
    ]
    if save:
        raise PeftportError(
            f"{path}: field 'modules_to_save' lists {save}; a peftport module "
            "carries no host weights besides the classification head"
        )


def _scale_fold(alpha: float, r: int) -> tuple[int, float]:
    """(integer alpha for AdapterHub, factor to fold into B) giving the scaling alpha / r."""
    if float(alpha).is_integer() and alpha > 0:
        return int(alpha), 1.0
    return r, float(alpha) / r  # scaling 1, the rest folded into B


def _resolve_site(path: str, sites: Mapping[str, Site], prefix: str) -> Site | None:
    """A PEFT module path on this host's task model; a LoRA saved on the bare encoder
    (e.g. BertModel) names its modules without the base-model prefix."""
    return sites.get(path) or sites.get(f"{prefix}.{path}")


def _peft_tuner_modules(
    folder: codec.PeftFolder, names: Mapping[str, tuple[str, str]], h: Any
) -> dict[str, tuple[Site, dict[str, torch.Tensor]]]:
    """PEFT's modules, each at the AdapterHub site it adapts: path -> (site, {part: tensor})."""
    _check_peft_fields(folder.config, folder.config_path)
    sites, prefix = lora_sites(h.model), h.model.base_model_prefix
    technique, config_path = folder.technique, folder.config_path
    out: dict[str, tuple[Site, dict[str, torch.Tensor]]] = {}
    stray, unsited = [], []
    for key, value in sorted(folder.tensors.items()):
        if key in folder.used:
            continue
        for part, (_ours, theirs) in names.items():
            got = parse_name(theirs, key)
            if got is not None:
                site = _resolve_site(got["path"], sites, prefix)
                if site is None:
                    unsited.append(got["path"])
                    if folder.drop_unsupported:
                        path = got["path"]
                        folder.dropped[path] = folder.dropped.get(path, 0) + value.numel()
                else:
                    out.setdefault(site.path, (site, {}))[1][part] = value
                break
        else:
            stray.append(key)
    if unsited and not folder.drop_unsupported:
        raise PeftportError(
            f"{config_path}: field 'target_modules' adapts {listing(sorted(set(unsited)))}, "
            f"which AdapterHub cannot adapt on this host (it adapts: {_site_listing(sites)}); "
            "--drop-unsupported imports the rest without them (a different function: the "
            "warning says how much of the module is dropped)"
        )
    if stray:
        raise PeftportError(
            f"{config_path.parent / PEFT_WEIGHTS}: tensors that are neither "
            f"{technique} weights nor the head: {listing(stray)}"
        )
    if not out:
        raise PeftportError(f"{config_path.parent / PEFT_WEIGHTS}: no {technique} weights")
    return out


def lora_from_peft(folder: codec.PeftFolder, h: Any, name: str, where: str) -> codec.Converted:
    """PEFT LoRA modules -> (peftport lora config, module tensors by AdapterHub name)."""
    config, hint = folder.config, folder.hint
    mods = _peft_tuner_modules(folder, LORA_NAMES, h)
    rank = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", 8))
    for path, (site, ab) in mods.items():
        if set(ab) != {"A", "B"}:
            raise PeftportError(f"{where}: module {path} lacks lora_A or lora_B")
        a, b = ab["A"], ab["B"]
        if a.shape != (rank, site.in_features) or b.shape != (site.out_features, rank):
            raise PeftportError(
                f"{where}: module {path}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do "
                f"not fit r={rank} on this host (lora_A must be ({rank}, {site.in_features}), "
                f"lora_B ({site.out_features}, {rank}))"
            )
    hinted = [m for m in "qkv" if m in (hint.get("targets") or ())]
    fused = {p: s for p, (s, _) in mods.items() if len(s.matrices) == 3}
    # a fused q/k/v LoRA exported by peftport has rank n*r in block form; undo that if it fits
    enabled = hinted or sorted(
        {m for p in fused for m in "qkv" if _block(mods[p][1]["B"], m).any()}, key="qkv".index
    )
    split: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
    for p in fused:
        got = split_qkv_lora(mods[p][1]["A"], mods[p][1]["B"], enabled)
        if got is None:
            split = {}
            break
        split[p] = got
    r = rank // len(enabled) if split and enabled else rank
    if split and r != rank:
        for p, (_s, ab) in mods.items():  # the others must be zero-padded to rank n*r
            if p not in split and (ab["A"][r:].any() or ab["B"][:, r:].any()):
                split, r = {}, rank
                break
    widen = rank // r
    alpha_ah, fold = _scale_fold(alpha / widen, r)
    state: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    flags = {"intermediate": False, "output": False}
    for path, (site, ab) in mods.items():
        if path in split:
            a, b, _ = split[path]
            targets |= set(enabled)
        elif site.matrices == ("q", "k", "v"):  # general fused LoRA: one group per matrix
            used = enabled or ["q", "k", "v"]
            beyond = [m for m in "qkv" if m not in used and _block(ab["B"], m).any()]
            if beyond:
                raise PeftportError(
                    f"{where}: module {path} adapts {beyond} too, beyond the "
                    f"matrices {used} of the other layers"
                )
            a = torch.cat([ab["A"]] * len(used))
            b = torch.cat([_block(ab["B"], m) for m in used])
            targets |= set(used)
        else:
            a, b = ab["A"][:r], ab["B"][:, :r]
            targets |= set(site.matrices)
            if site.location in flags:
                flags[site.location] = True
        state[fill_name(LORA_NAMES["A"][0], name, path=path)] = a
        state[fill_name(LORA_NAMES["B"][0], name, path=path)] = b if fold == 1.0 else b * fold
    cfg = {
        "r": r,
        "alpha": alpha_ah,
        "targets": [m for m in "qkv" if m in targets],
        "dropout": float(config.get("lora_dropout", 0.0) or 0.0),
        **flags,
    }
    return cfg, state


def _block(b: torch.Tensor, matrix: str) -> torch.Tensor:
    """Rows of a fused (3H, ...) tensor that belong to q, k or v."""
    width = b.shape[0] // 3
    m = "qkv".index(matrix)
    return b[m * width : (m + 1) * width]


def ia3_from_peft(folder: codec.PeftFolder, h: Any, name: str, where: str) -> codec.Converted:
    """PEFT IA3 vectors -> (peftport ia3 config, module tensors by AdapterHub name)."""
    config, hint = folder.config, folder.hint
    mods = _peft_tuner_modules(folder, IA3_NAMES, h)
    ff = config.get("feedforward_modules") or []
    for path, (site, got) in mods.items():
        vec = got["l"]
        if vec.shape == (1, site.in_features) and vec.shape != (site.out_features, 1):
            raise PeftportError(
                f"{where}: field 'feedforward_modules' ({ff!r}) makes PEFT scale the INPUT of "
                f"{path}; AdapterHub's (IA)^3 scales module outputs only (on the feed-forward "
                "path: the up-projection's output, before the activation), a different function"
            )
        if vec.shape != (site.out_features, 1):
            raise PeftportError(
                f"{where}: module {path}: ia3_l is {tuple(vec.shape)}, this host "
                f"needs ({site.out_features}, 1)"
            )
    hinted = [m for m in "qkv" if m in (hint.get("targets") or ())]
    targets: set[str] = set()
    flags = {"intermediate": False, "output": False}
    fused_enabled = (
        hinted
        or sorted(
            {
                m
                for p, (s, got) in mods.items()
                if len(s.matrices) == 3
                for m in "qkv"
                if not torch.equal(_block(got["l"], m), torch.ones_like(_block(got["l"], m)))
            },
            key="qkv".index,
        )
        or ["k", "v"]
    )
    state = {}
    for path, (site, got) in mods.items():
        vec = got["l"]
        if len(site.matrices) == 3:
            rest = [m for m in "qkv" if m not in fused_enabled]
            if any(not torch.equal(_block(vec, m), torch.ones_like(_block(vec, m))) for m in rest):
                raise PeftportError(
                    f"{where}: module {path} scales {rest} too, beyond the "
                    f"matrices {fused_enabled} of the other layers"
                )
            vec = torch.cat([_block(vec, m) for m in fused_enabled])
            targets |= set(fused_enabled)
        else:
            targets |= set(site.matrices)
            if site.location == "output":
                raise PeftportError(
                    f"{where}: module {path} is AdapterHub's 'output' site, "
                    "which peftport's (IA)^3 config does not switch on"
                )
            if site.location in flags:
                flags[site.location] = True
        state[fill_name(IA3_NAMES["l"][0], name, path=path)] = vec
    cfg = {"targets": [m for m in "qkv" if m in targets], "intermediate": flags["intermediate"]}
    return cfg, state


LORA = codec.PeftCodec("LORA", TUNER_HEAD_NAMES, lora_to_peft, lora_from_peft)
IA3 = codec.PeftCodec("IA3", TUNER_HEAD_NAMES, ia3_to_peft, ia3_from_peft)
