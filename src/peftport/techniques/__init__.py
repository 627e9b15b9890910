"""The PEFT techniques of the study, and one way to attach any of them to any host.

Every technique is AdapterHub `adapters` 1.3.0, so techniques differ only in themselves. Each
lives in one small file: a frozen, documented config dataclass, its mapping to and from an
`adapters` config, and a `TECHNIQUE` that declares what the rest of peftport asks of it (host
kinds it supports, whether a layer map may move its layers, eager attention, its neutral value,
its PEFT counterpart; see `base.Technique`). Every such file in this package is registered by
name on import. This module holds the shared API the training engine and porting use:

    att = attach(model, family, "lora", {"r": 4}, seed=0)   # freeze the host, add the module
    state = module_state(model)                             # the module's tensors (+ head)
    load_module_state(other_model, state)                   # strict: names and shapes
    set_module_active(model, False)                         # the host alone again

Module tensors are named by their state-dict keys on the host, which contain the module's name
as one dot-separated part (`...query.loras.peftport.lora_A`). A tensor that adapters registers
under several names (the prefix-tuning pool is reachable from every layer) appears once, under
its shortest name, which lies outside the layer stacks. On encoder classifiers the head (the
task model's parameters outside the base model, e.g. `classifier.weight`) belongs to the module:
it is freshly initialised by `attach` with the same seed and travels with the module.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from peftport.errors import PeftportError
from peftport.hosts.spec import DECODER_LM, ENCODER_CLASSIFIER, KINDS, LAYOUTS, TEXT_TO_TEXT
from peftport.registry import Registry
from peftport.techniques.base import Support, Technique, TechniqueConfig

__all__ = [
    "TECHNIQUES",
    "ORDER",
    "SUPPORT",
    "Support",
    "Technique",
    "TechniqueConfig",
    "Attached",
    "get_technique",
    "ordered",
    "make_config",
    "supports",
    "supported_kinds",
    "attach",
    "module_state",
    "load_module_state",
    "set_module_active",
    "trainable_parameters",
    "module_keys",
    "head_keys",
    "host_dims",
    "support_table_markdown",
    "defaults_markdown",
]

TECHNIQUES: Registry[Technique] = Registry("technique")
# Every module of this package that defines TECHNIQUE is a technique: adding one is one file.
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _mod = importlib.import_module(f"{__name__}.{_info.name}")
    if isinstance(getattr(_mod, "TECHNIQUE", None), Technique):
        TECHNIQUES.add(_mod.TECHNIQUE.name, _mod.TECHNIQUE)


def ordered() -> list[Technique]:
    """The registered techniques in the order of tables and listings (the paper's four first,
    then the extras)."""
    return sorted((t for _, t in TECHNIQUES.items()), key=lambda t: (t.order, t.name))


# Snapshots of the registry as imported, for listings and study files.
ORDER: tuple[str, ...] = tuple(t.name for t in ordered())
# technique -> host kind -> support, declared by each technique. Checked against reality by
# tests/test_techniques.py and printed into docs/techniques.md (a test compares the two).
SUPPORT: dict[str, dict[str, Support]] = {t.name: dict(t.support) for t in ordered()}
KIND_HOSTS = {ENCODER_CLASSIFIER: "BERT", TEXT_TO_TEXT: "T5", DECODER_LM: "GPT-2, Llama"}


def get_technique(name: str) -> Technique:
    return TECHNIQUES.get(name)


def make_config(
    technique: str, config: Mapping[str, Any] | TechniqueConfig | None = None
) -> TechniqueConfig:
    return get_technique(technique).make_config(config)


def _kind_of(kind_or_family: str) -> str:
    if kind_or_family in KINDS:
        return kind_or_family
    if kind_or_family in LAYOUTS:
        return LAYOUTS[kind_or_family].kind
    raise PeftportError(
        f"unknown host kind or family {kind_or_family!r} (kinds: "
        f"{', '.join(KINDS)}; families: {', '.join(sorted(LAYOUTS))})"
    )


def supports(technique: str, kind_or_family: str) -> bool:
    """Whether `technique` works on hosts of this kind (or family)."""
    return get_technique(technique).supports(_kind_of(kind_or_family))


def supported_kinds(technique: str) -> list[str]:
    return [k for k in KINDS if get_technique(technique).supports(k)]


def unsupported_message(technique: str, kind: str) -> str:
    why = get_technique(technique).support[kind].note
    here = [t.name for t in ordered() if t.supports(kind)]
    return (
        f"technique {technique!r} is not supported on {kind} hosts"
        f"{f' ({why})' if why else ''}. It works on: "
        f"{', '.join(supported_kinds(technique)) or 'nothing'}; on {kind} hosts use one "
        f"of: {', '.join(here)}. See docs/techniques.md for the support table."
    )


def check_supported(technique: str, kind_or_family: str) -> None:
    kind = _kind_of(kind_or_family)
    if not supports(technique, kind):
        raise PeftportError(unsupported_message(get_technique(technique).name, kind))


# --- the shared API ---------------------------------------------------------------------


@dataclass
class Attached:
    """What `attach` did: the model (changed in place) and the module it now carries."""

    model: Any
    name: str
    technique: str
    config: TechniqueConfig
    trainable: int  # parameters with requires_grad (module + head if trained)
    head_keys: tuple[str, ...]  # encoder classifiers: the head's parameter names; else ()
    family: str
    kind: str
    seed: int
    dims: dict[str, Any]  # host_dims(model, family)

    @property
    def module_parameters(self) -> int:
        return sum(t.numel() for t in _module_tensors(self.model, self.name).values())


def host_dims(model: Any, family: str) -> dict[str, Any]:
    """Hidden size and the depth of each layer stack: what a module's shapes depend on."""
    layout = LAYOUTS[family]
    layers = {}
    for stack in layout.layer_stacks:
        try:
            layers[stack] = len(model.get_submodule(stack))
        except AttributeError:
            layers[stack] = 0
    return {"hidden_size": int(getattr(model.config, layout.hidden_key)), "layers": layers}


def _family_of_model(model: Any) -> str | None:
    family = getattr(getattr(model, "config", None), "model_type", None)
    return family if family in LAYOUTS else None


def _check_name(name: str) -> None:
    if not name or not name.isidentifier():
        raise PeftportError(
            f"module name {name!r} must be a Python identifier (it becomes part "
            "of every tensor name)"
        )


def _module_tensors(model: Any, name: str) -> dict[str, torch.Tensor]:
    """Canonical name -> the live parameter/buffer of module `name`; shared tensors once,
    under their shortest name (ties: alphabetical)."""
    groups: dict[int, list[str]] = {}
    objects: dict[int, torch.Tensor] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if name in key.split("."):
            groups.setdefault(id(value), []).append(key)
            objects[id(value)] = value
    out = {min(keys, key=lambda k: (len(k), k)): objects[i] for i, keys in groups.items()}
    return dict(sorted(out.items()))


def _head_tensors(model: Any) -> dict[str, torch.Tensor]:
    """Encoder classifiers: the task head's parameters (outside the base model), by name."""
    family = _family_of_model(model)
    if family is None or LAYOUTS[family].kind != ENCODER_CLASSIFIER:
        return {}
    base = model.base_model
    out = {}
    for child_name, child in model.named_children():
        if child is base:
            continue
        for pname, p in child.named_parameters():
            out[f"{child_name}.{pname}"] = p
    return out


def module_keys(model: Any, name: str = "peftport") -> list[str]:
    """The module's tensor names on this model (no head)."""
    return list(_module_tensors(model, name))


def head_keys(model: Any) -> list[str]:
    return list(_head_tensors(model))


def _reinit_head(model: Any) -> None:
    heads = {n.split(".")[0] for n in _head_tensors(model)}
    for child_name in sorted(heads):
        for sub in getattr(model, child_name).modules():
            model._init_weights(sub)


def attach(
    model: Any,
    family: str,
    technique: str,
    config: Mapping[str, Any] | TechniqueConfig | None = None,
    *,
    name: str = "peftport",
    seed: int = 0,
    train_head: bool = True,
) -> Attached:
    """Add technique `technique` to `model` (in place) as module `name`, ready to train.

    - freezes every host parameter; the module's tensors are trainable; on encoder classifiers
      the head is re-initialised (with `seed`, after the module) and trainable iff `train_head`;
    - the module's fresh initialisation is drawn under `torch.manual_seed(seed)` inside a forked
      RNG: the same seed gives the same tensors, and the caller's RNG stream is untouched;
    - a technique that needs eager attention on this host kind (prefix tuning on decoders: with
      sdpa a padded batch masks the prefix out and its gradients are zero) switches the host;
    - the model's train/eval mode is left as it was.
    Raises PeftportError for an unknown technique, an unsupported (technique, host kind) pair,
    a config the host cannot take, or a name already in use.
    """
    import adapters

    tech = get_technique(technique)
    cfg = tech.make_config(config)
    _check_name(name)
    if family not in LAYOUTS:
        raise PeftportError(f"unknown host family {family!r}; known: {', '.join(sorted(LAYOUTS))}")
    model_family = _family_of_model(model)
    if model_family is not None and model_family != family:
        raise PeftportError(f"attach: the model is a {model_family} model, not {family}")
    layout = LAYOUTS[family]
    check_supported(tech.name, layout.kind)
    dims = host_dims(model, family)
    cfg.check_host(dims["hidden_size"], host=f"this {family} host")

    with torch.random.fork_rng(devices=[]):  # adapters.init draws random numbers too
        adapters.init(model)
    if name in model.adapters_config:
        raise PeftportError(f"the model already carries a module named {name!r}")
    if layout.kind in tech.eager_attention and model.config._attn_implementation != "eager":
        model.set_attn_implementation("eager")
        if model.config._attn_implementation != "eager":
            raise PeftportError(
                f"{tech.name} on a {layout.kind} host needs eager attention and this model "
                "cannot switch after loading; load the host with attn_implementation='eager'"
            )

    was_training = model.training
    quiet = logging.getLogger("adapters")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "adapters available but none are activated": expected here
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.add_adapter(name, config=cfg.to_adapters())
            if layout.kind == ENCODER_CLASSIFIER:
                _reinit_head(model)
        model.train_adapter(name)
    finally:
        quiet.setLevel(level)
    model.train(was_training)

    # Trainability set explicitly: train_adapter leaves some heads trainable and not others.
    module = {id(t) for t in _module_tensors(model, name).values()}
    heads = _head_tensors(model)
    head_ids = {id(t) for t in heads.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in module or (train_head and id(p) in head_ids))
    return Attached(
        model=model,
        name=name,
        technique=tech.name,
        config=cfg,
        trainable=trainable_parameters(model),
        head_keys=tuple(heads),
        family=family,
        kind=layout.kind,
        seed=seed,
        dims=dims,
    )


def module_state(
    model: Any, name: str = "peftport", include_head: bool = True
) -> dict[str, torch.Tensor]:
    """CPU copies of exactly the module's tensors (and the head, on encoder classifiers)."""
    tensors = _module_tensors(model, name)
    if not tensors:
        raise PeftportError(f"the model carries no module named {name!r}")
    if include_head:
        tensors.update(_head_tensors(model))
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def _listing(title: str, items: list[str], limit: int = 20) -> str:
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}):\n  " + "\n  ".join(items[:limit]) + more


def load_module_state(
    model: Any, state: Mapping[str, torch.Tensor], name: str = "peftport"
) -> None:
    """Copy `state` into module `name` (and the head, if `state` has head tensors).

    Strict: every module tensor must be present, nothing else may be, and shapes must match;
    otherwise a PeftportError lists the missing, unexpected and mis-shaped tensors and nothing is
    changed. Head tensors are optional as a group: all or none.
    """
    targets = _module_tensors(model, name)
    if not targets:
        raise PeftportError(f"the model carries no module named {name!r}")
    heads = _head_tensors(model)
    given = set(state)
    missing = sorted(set(targets) - given)
    if given & set(heads):
        missing += sorted(set(heads) - given)
    unexpected = sorted(given - set(targets) - set(heads))
    dest = {**targets, **heads}
    wrong = [
        f"{k}: given {tuple(state[k].shape)}, module has {tuple(dest[k].shape)}"
        for k in sorted(given & set(dest))
        if tuple(state[k].shape) != tuple(dest[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = [f"module state does not fit module {name!r} on this model"]
        if missing:
            parts.append(_listing("missing tensors", missing))
        if unexpected:
            parts.append(_listing("unexpected tensors", unexpected))
        if wrong:
            parts.append(_listing("shape mismatches", wrong))
        raise PeftportError("\n".join(parts))
    with torch.no_grad():
        for k, v in state.items():
            dest[k].copy_(v.to(device=dest[k].device, dtype=dest[k].dtype))


def set_module_active(model: Any, active: bool, name: str = "peftport") -> None:
    """Switch module `name` on or off for the forward pass (its tensors stay in place)."""
    if not hasattr(model, "adapters_config") or name not in model.adapters_config:
        raise PeftportError(f"the model carries no module named {name!r}")
    model.set_active_adapters(name if active else None)


def trainable_parameters(model: Any) -> int:
    """Parameters with requires_grad (each shared tensor once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- tables for docs and the CLI ------------------------------------------------------------


def support_table_markdown() -> str:
    head = "| technique | " + " | ".join(f"{k} ({KIND_HOSTS[k]})" for k in KINDS) + " |"
    rule = "|---" * (len(KINDS) + 1) + "|"
    rows = [
        f"| `{t.name}` | " + " | ".join(t.support[k].cell() for k in KINDS) + " |"
        for t in ordered()
    ]
    return "\n".join([head, rule, *rows])


def defaults_markdown() -> str:
    lines = ["| technique | field | default | meaning |", "|---|---|---|---|"]
    for t in ordered():
        cfg = t.config_cls()
        for f in fields(t.config_cls):
            value = getattr(cfg, f.name)
            shown = ", ".join(value) if isinstance(value, tuple) else str(value)
            lines.append(f"| `{t.name}` | `{f.name}` | {shown} | {f.metadata.get('help', '')} |")
    return "\n".join(lines)
