"""Hosts described as data: what kind of model, where its layers are, where its weights come from."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from peftport.assets import Source, locked, peftport_home
from peftport.atomic import staged_folder

# Host kinds: how a task is put to the host and how it is scored.
ENCODER_CLASSIFIER = "encoder-classifier"  # BERT family: a classification head on the pooled output
TEXT_TO_TEXT = "text-to-text"  # T5 family: the decoder generates the label word
DECODER_LM = "decoder-lm"  # GPT-2 / Llama family: the label word is the next token
KINDS = (ENCODER_CLASSIFIER, TEXT_TO_TEXT, DECODER_LM)


@dataclass(frozen=True)
class Layout:
    """Where a family keeps its transformer layers, relative to the task model's root.

    `layer_stacks` are module paths whose children are numbered layers (T5 has two stacks);
    projections are paths inside one layer. Porting and layer maps read these, never model code.
    """

    family: str
    kind: str
    layer_stacks: tuple[str, ...]
    attention: dict[str, str] = field(default_factory=dict)  # q/k/v/o -> path inside a layer
    mlp: dict[str, str] = field(default_factory=dict)  # up/down -> path inside a layer
    embeddings: str = ""
    num_layers_key: str = "num_hidden_layers"
    hidden_key: str = "hidden_size"

    def __hash__(self) -> int:  # dict fields: hash the stable JSON form
        return hash(json.dumps(self.__dict__, sort_keys=True))


# One row per model family ("model_type" in config.json). Adding a family is one row here.
LAYOUTS: dict[str, Layout] = {
    "bert": Layout(
        family="bert",
        kind=ENCODER_CLASSIFIER,
        layer_stacks=("bert.encoder.layer",),
        attention={
            "q": "attention.self.query",
            "k": "attention.self.key",
            "v": "attention.self.value",
            "o": "attention.output.dense",
        },
        mlp={"up": "intermediate.dense", "down": "output.dense"},
        embeddings="bert.embeddings",
    ),
    "t5": Layout(
        family="t5",
        kind=TEXT_TO_TEXT,
        layer_stacks=("encoder.block", "decoder.block"),
        attention={
            "q": "layer.0.SelfAttention.q",
            "k": "layer.0.SelfAttention.k",
            "v": "layer.0.SelfAttention.v",
            "o": "layer.0.SelfAttention.o",
        },
        mlp={"up": "layer.-1.DenseReluDense.wi", "down": "layer.-1.DenseReluDense.wo"},
        embeddings="shared",
        num_layers_key="num_layers",
        hidden_key="d_model",
    ),
    "gpt2": Layout(
        family="gpt2",
        kind=DECODER_LM,
        layer_stacks=("transformer.h",),
        attention={"qkv": "attn.c_attn", "o": "attn.c_proj"},
        mlp={"up": "mlp.c_fc", "down": "mlp.c_proj"},
        embeddings="transformer.wte",
        num_layers_key="n_layer",
        hidden_key="n_embd",
    ),
    "llama": Layout(
        family="llama",
        kind=DECODER_LM,
        layer_stacks=("model.layers",),
        attention={
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.o_proj",
        },
        mlp={"up": "mlp.up_proj", "down": "mlp.down_proj"},
        embeddings="model.embed_tokens",
    ),
}


@dataclass(frozen=True)
class Built:
    """A host folder made by peftport itself (a conversion, a derivation, a tiny random model).

    `recipe` is every input that determines the result; the folder is cached under a hash of it
    and built atomically (in a temporary folder, then renamed), so a killed build leaves nothing
    that a later run would trust.
    """

    recipe: tuple[tuple[str, str], ...]  # sorted (key, value) pairs, JSON-able
    build: Callable[[Path, dict[str, str]], None]  # writes a HF checkpoint folder

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.recipe).encode()).hexdigest()[:16]

    def describe(self) -> str:
        r = dict(self.recipe)
        return f"built by peftport ({r.get('how', 'recipe')} {self.key})"

    def folder(self) -> Path:
        return peftport_home() / "hosts" / f"{dict(self.recipe).get('name', 'host')}-{self.key}"

    def resolve(self) -> Path:
        out = self.folder()
        if (out / ".complete").exists():
            return out
        with locked(out):
            if not (out / ".complete").exists():
                self._build_locked(out)
        return out

    def _build_locked(self, out: Path) -> None:
        # replace: an incomplete folder at `out` is a killed build's
        with staged_folder(out, replace=True) as stage:
            self.build(stage, dict(self.recipe))
            (stage / "peftport-recipe.json").write_text(json.dumps(dict(self.recipe), indent=2))
            (stage / ".complete").write_text("ok")


@dataclass(frozen=True)
class HostSpec:
    id: str
    family: str
    description: str
    sources: tuple[Source | Built, ...]
    license: str = ""
    parent: str | None = None  # for derived hosts: the host it was trained further from

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.family]

    @property
    def kind(self) -> str:
        return self.layout.kind

    def env_var(self) -> str:
        return "PEFTPORT_HOST_" + "".join(c if c.isalnum() else "_" for c in self.id).upper()
