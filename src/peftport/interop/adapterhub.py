"""AdapterHub adapter folders, both ways. peftport's techniques ARE AdapterHub `adapters`
1.3.0, so a module's tensors keep their names and its config is the technique's own
`to_adapters()`; an import asks every technique which of its configs stands for the folder's
(`TechniqueConfig.from_adapters`) and checks the answer by mapping it back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from peftport.atomic import write_folder
from peftport.errors import PeftportError
from peftport.hosts.spec import ENCODER_CLASSIFIER, LAYOUTS
from peftport.interop import folders, names
from peftport.interop.names import INIT_ONLY, listing, rename_part

# --- AdapterHub export (pure) -----------------------------------------------------------------


def adapterhub_export(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> dict[str, tuple[dict[str, Any], dict[str, torch.Tensor]] | None]:
    """{"adapter": (config, tensors), "head": (config, tensors) or None} as adapters 1.3.0's
    save_adapter would write them, but complete: every module tensor under its state-dict name
    (so T5 Compacter's phm_rule, which save_adapter drops, is there) and the config's `flat`
    as trained. The head is written only for encoder classifiers: on LM hosts adapters would save
    the LM head (tied to the embeddings) and overwrite the host with it on loading."""
    from peftport.techniques import make_config

    cfg = make_config(meta["technique"], meta["config"])
    target = folders.ModuleHost.of(meta)
    hidden = target.dims.get("hidden_size")
    common = {
        "hidden_size": hidden,
        "model_class": LAYOUTS[meta["host_family"]].model_class,
        "model_name": folders.base_model_name(target.host_id),
        "model_type": meta["host_family"],
        "version": names.ADAPTERS_VERSION,
    }
    heads = list(meta.get("head_keys") or [])
    name = meta.get("adapter_name", "peftport")
    adapter_cfg = {**common, "config": cfg.to_adapters().to_dict(), "name": name}
    module = {k: v for k, v in tensors.items() if k not in heads}
    head = None
    if meta["host_kind"] == ENCODER_CLASSIFIER and heads:
        words = list(meta["label_words"])
        head_cfg = {
            **common,
            "config": None,
            "name": None,
            "num_labels": len(words),
            "label2id": {w: i for i, w in enumerate(words)},
        }
        head = (head_cfg, {k: tensors[k] for k in heads})
    return {"adapter": (adapter_cfg, module), "head": head}


def export_adapterhub(
    module_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False
) -> Path:
    """Write an AdapterHub adapter folder (any technique) that `model.load_adapter(folder,
    use_safetensors=True)` loads into a fresh, `adapters.init`-ed copy of the host."""
    from peftport.module import load_module

    tensors, meta = load_module(module_dir)
    parts = adapterhub_export(tensors, meta)
    adapter_cfg, module = parts["adapter"]  # type: ignore[misc]
    files = {
        names.AH_CONFIG: folders.json_bytes(adapter_cfg),
        names.AH_WEIGHTS: folders.safetensors_bytes(module),
        names.SIDECAR: folders.json_bytes(folders.sidecar(meta, "adapterhub")),
    }
    if parts["head"] is not None:
        head_cfg, head = parts["head"]
        files[names.AH_HEAD_CONFIG] = folders.json_bytes(head_cfg)
        files[names.AH_HEAD_WEIGHTS] = folders.safetensors_bytes(head)
    return write_folder(Path(out_dir), files, overwrite=overwrite)


# --- AdapterHub import --------------------------------------------------------------------


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj))  # tuples -> lists, for comparing configs


def adapterhub_config_to_peftport(c: Mapping[str, Any], where: str) -> tuple[str, Any]:
    """(technique, TechniqueConfig) whose adapters config equals `c` (init-only fields aside);
    PeftportError naming the first field that has no peftport equivalent."""
    from peftport.techniques import ordered

    theirs = {k: v for k, v in _plain(dict(c)).items() if k not in INIT_ONLY}
    best: tuple[str, list[str]] | None = None
    for tech in ordered():
        fields_ = tech.config_cls.from_adapters(c)
        if fields_ is None:
            continue
        try:
            cfg = tech.make_config(fields_)
        except PeftportError as e:
            raise PeftportError(
                f"{where}: field 'config' has no peftport equivalent: {e}"
            ) from None
        ours = {k: v for k, v in _plain(cfg.to_adapters().to_dict()).items() if k not in INIT_ONLY}
        diff = [
            f"config.{k} is {theirs.get(k)!r} (peftport's {tech.name} gives {ours.get(k)!r})"
            for k in sorted(set(ours) | set(theirs))
            if ours.get(k) != theirs.get(k)
        ]
        if not diff:
            return tech.name, cfg
        best = best or (tech.name, diff)
    if best is None:
        raise PeftportError(
            f"{where}: field 'config' (architecture "
            f"{c.get('architecture')!r}) is none of peftport's techniques"
        )
    raise PeftportError(
        f"{where}: an AdapterHub {best[0]} that peftport cannot reproduce: {listing(best[1], 4)}"
    )


def _canonical_state(
    h: Any, name: str, weights: Mapping[str, torch.Tensor], where: str
) -> dict[str, torch.Tensor]:
    """File keys (state-dict names, any alias of a shared tensor) -> peftport's canonical names
    on the attached host. Unknown keys and disagreeing aliases are errors."""
    from peftport.techniques import _module_tensors

    live = h.model.state_dict(keep_vars=True)
    canon = {id(t): k for k, t in _module_tensors(h.model, name).items()}
    out: dict[str, torch.Tensor] = {}
    stray = []
    for key, value in sorted(weights.items()):
        t = live.get(key)
        if t is None or id(t) not in canon:
            stray.append(key)
            continue
        k = canon[id(t)]
        if k in out and not torch.equal(out[k], value):
            raise PeftportError(
                f"{where}: {key} and another name of the same tensor ({k}) hold different values"
            )
        out[k] = value
    if stray:
        raise PeftportError(
            f"{where}: tensors that are not part of this module on host "
            f"{h.spec.id!r}: {listing(stray)}"
        )
    return out


def _adapterhub_head(folder: Path, h: Any, where: str) -> dict[str, torch.Tensor]:
    cfg_path = folder / names.AH_HEAD_CONFIG
    if h.kind != ENCODER_CLASSIFIER:
        # LM hosts: adapters' with_head=True saves the host's own LM head; accept it only if it
        # IS the host's (loading a different one would change the host, not add a module)
        if (folder / names.AH_HEAD_WEIGHTS).is_file() or (folder / names.AH_HEAD_PICKLE).is_file():
            head = folders.read_safetensors(
                folders.weights_file(
                    folder,
                    names.AH_HEAD_WEIGHTS,
                    names.AH_HEAD_PICKLE,
                    "or delete the head files: on LM hosts they hold the host's own LM head",
                )
            )
            own = h.model.state_dict()
            differ = sorted(
                k for k, v in head.items() if k not in own or not torch.equal(own[k], v)
            )
            if differ:
                raise PeftportError(
                    f"{where}: head tensors {listing(differ)} differ from host "
                    f"{h.spec.id!r}'s own; loading them would change the host"
                )
        return {}
    if not cfg_path.is_file():
        raise PeftportError(
            f"{folder}: no {names.AH_HEAD_CONFIG}; a module for an encoder classifier "
            "needs its trained head (save the adapter with with_head=True)"
        )
    head_cfg = folders.read_json(cfg_path)
    cls = head_cfg.get("model_class")
    if cls != h.spec.layout.model_class:
        raise PeftportError(
            f"{cfg_path}: field 'model_class' is {cls!r}; peftport's head is the static head of "
            f"{h.spec.layout.model_class} (a flexible AdapterHub head replaces the host's "
            "pooler with layers of its own, which a peftport module cannot carry)"
        )
    head = folders.read_safetensors(
        folders.weights_file(
            folder,
            names.AH_HEAD_WEIGHTS,
            names.AH_HEAD_PICKLE,
            "model.save_adapter(..., use_safetensors=True)",
        )
    )
    return folders.head_state(head, h, where, str(folder / names.AH_HEAD_WEIGHTS))


def import_adapterhub(
    folder: str | Path,
    *,
    host: Any,
    out_dir: str | Path,
    task: str,
    label_words: Sequence[str],
    overwrite: bool = False,
) -> Path:
    """Read an AdapterHub adapter folder (safetensors only) and write the equivalent peftport
    module for `host`; returns its path."""
    from peftport.techniques import get_technique

    src = folders.open_folder(folder, names.AH_CONFIG)
    config_path = src / names.AH_CONFIG
    full = folders.read_json(config_path)
    weights_path = folders.weights_file(
        src,
        names.AH_WEIGHTS,
        names.AH_PICKLE,
        "load it with adapters and save_adapter(..., use_safetensors=True)",
    )
    folders.check_out(out_dir, overwrite)
    if not isinstance(full.get("config"), dict) or not isinstance(full.get("name"), str):
        raise PeftportError(
            f"{config_path}: fields 'config' (an object) and 'name' (a string) are required"
        )
    technique, cfg = adapterhub_config_to_peftport(full["config"], str(config_path))
    h = folders.loaded_host(host, len(label_words))
    where = str(weights_path)
    if full.get("model_type") and full["model_type"] != h.spec.family:
        raise PeftportError(
            f"{config_path}: field 'model_type' is {full['model_type']!r}, host "
            f"{h.spec.id!r} is {h.spec.family}"
        )
    hidden = int(getattr(h.model.config, LAYOUTS[h.spec.family].hidden_key))
    if full.get("hidden_size") not in (None, hidden):
        raise PeftportError(
            f"{config_path}: field 'hidden_size' is {full['hidden_size']}, host "
            f"{h.spec.id!r} has {hidden}"
        )
    folders.check_labels(h, label_words, where)
    old = full["name"]
    name = old if old.isidentifier() else "peftport"
    weights = {
        rename_part(k, old, name): v for k, v in folders.read_safetensors(weights_path).items()
    }
    head = _adapterhub_head(src, h, where)
    hint = folders.read_sidecar(src)

    extra = {
        "format": "adapterhub",
        "folder": str(src),
        "name": old,
        "version": full.get("version"),
        "model_name": full.get("model_name"),
    }
    target = folders.ImportTarget(out_dir, task, label_words, overwrite)
    try:
        return folders.finish_import(
            h,
            technique,
            cfg,
            name,
            lambda _model: _canonical_state(h, name, weights, where),
            head,
            hint=hint,
            extra=extra,
            target=target,
            where=where,
        )
    except PeftportError as e:
        # known faults of folders adapters itself saved: say so beside the error
        hints = [
            text
            for fault, text in get_technique(technique).adapterhub_hints.items()
            if fault in str(e)
        ]
        if hints:
            raise PeftportError(f"{e}\n({'; '.join(hints)})") from None
        raise
