"""Hosts described as data: what kind of model, where its layers are, where its weights come from."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftport.assets import Source, locked, peftport_home
from peftport.atomic import staged_folder

# Host kinds: how a task is put to the host and how it is scored.
ENCODER_CLASSIFIER = "encoder-classifier"  # BERT family: a classification head on the pooled output
TEXT_TO_TEXT = "text-to-text"  # T5 family: the decoder generates the label word
DECODER_LM = "decoder-lm"  # GPT-2 / Llama family: the label word is the next token
KINDS = (ENCODER_CLASSIFIER, TEXT_TO_TEXT, DECODER_LM)


@dataclass(frozen=True)
class Layout:
    """What peftport knows about a model family, as data: porting, layer maps, shape checks,
    interop and the tiny test hosts read these, never model code or tables of their own.

    `layer_stacks` are module paths (relative to the task model's root) whose children are
    numbered layers (T5 has two stacks); projections are paths inside one layer.
    """

    family: str
    kind: str
    model_class: str  # the transformers class peftport loads (AdapterHub compares it by name)
    layer_stacks: tuple[str, ...]
    attention: dict[str, str] = field(default_factory=dict)  # q/k/v/o -> path inside a layer
    mlp: dict[str, str] = field(default_factory=dict)  # up/down -> path inside a layer
    embeddings: str = ""
    # embedding tensors outside `embeddings` (T5's per-stack aliases of `shared`, GPT-2's
    # position table), recognised by one part of their name
    embedding_parts: tuple[str, ...] = ()
    position_table: str = ""  # an absolute position table's path; "" for relative / rotary
    num_layers_key: str = "num_hidden_layers"
    more_layers_keys: tuple[str, ...] = ()  # config.json layer counts of the further stacks
    hidden_key: str = "hidden_size"
    # config.json fields a module's shapes depend on: two hosts port into each other only if
    # these agree (the depth keys aside when a layer map pairs their layers)
    shape_keys: tuple[str, ...] = ()
    tiny_class: str = ""  # a tiny random host of this family: the class it is built with
    tiny_config: dict[str, Any] = field(default_factory=dict)  # and its config (but vocab_size)

    def __hash__(self) -> int:  # dict fields: hash the stable JSON form
        return hash(json.dumps(self.__dict__, sort_keys=True))

    @property
    def depth_keys(self) -> tuple[str, ...]:
        """The config.json layer counts, one per layer stack (a layer map is sized by the
        first)."""
        return (self.num_layers_key, *self.more_layers_keys)

    def shape(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The `shape_keys` of a config.json; a further stack's missing depth is the first's
        (as transformers reads T5's num_decoder_layers)."""
        sig = {k: config.get(k) for k in self.shape_keys}
        for k in self.more_layers_keys:
            if sig.get(k) is None:
                sig[k] = config.get(self.num_layers_key)
        return sig

    def depth(self, config: Mapping[str, Any]) -> int | None:
        """The depth a layer map counts (the first stack's layers), or None if not given."""
        n = self.shape(config).get(self.num_layers_key)
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def _attention(base: str, qkv: tuple[str, str, str], o: str) -> dict[str, str]:
    """q/k/v: modules inside `base`; o: its own path (BERT keeps it outside `base`)."""
    return {**{n: f"{base}.{part}" for n, part in zip("qkv", qkv, strict=True)}, "o": o}


# One row per model family ("model_type" in config.json). Adding a family is one row here.
LAYOUTS: dict[str, Layout] = {
    "bert": Layout(
        family="bert",
        kind=ENCODER_CLASSIFIER,
        model_class="BertForSequenceClassification",
        layer_stacks=("bert.encoder.layer",),
        attention=_attention("attention.self", ("query", "key", "value"), "attention.output.dense"),
        mlp={"up": "intermediate.dense", "down": "output.dense"},
        embeddings="bert.embeddings",
        position_table="bert.embeddings.position_embeddings",
        shape_keys=("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"),
        tiny_class="BertModel",
        tiny_config=dict(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=128,
        ),
    ),
    "t5": Layout(
        family="t5",
        kind=TEXT_TO_TEXT,
        model_class="T5ForConditionalGeneration",
        layer_stacks=("encoder.block", "decoder.block"),
        attention=_attention("layer.0.SelfAttention", ("q", "k", "v"), "layer.0.SelfAttention.o"),
        mlp={"up": "layer.-1.DenseReluDense.wi", "down": "layer.-1.DenseReluDense.wo"},
        embeddings="shared",
        embedding_parts=("embed_tokens",),
        num_layers_key="num_layers",
        more_layers_keys=("num_decoder_layers",),
        hidden_key="d_model",
        shape_keys=("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads"),
        tiny_class="T5ForConditionalGeneration",
        tiny_config=dict(
            d_model=16,
            d_kv=8,
            d_ff=32,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=2,
            pad_token_id=0,
            eos_token_id=5,
            decoder_start_token_id=0,
        ),
    ),
    "gpt2": Layout(
        family="gpt2",
        kind=DECODER_LM,
        model_class="GPT2LMHeadModel",
        layer_stacks=("transformer.h",),
        attention={"qkv": "attn.c_attn", "o": "attn.c_proj"},
        mlp={"up": "mlp.c_fc", "down": "mlp.c_proj"},
        embeddings="transformer.wte",
        embedding_parts=("wte", "wpe"),
        position_table="transformer.wpe",
        num_layers_key="n_layer",
        hidden_key="n_embd",
        shape_keys=("n_embd", "n_layer", "n_head", "n_inner"),
        tiny_class="GPT2LMHeadModel",
        tiny_config=dict(
            n_embd=16,
            n_layer=2,
            n_head=2,
            n_positions=128,
            bos_token_id=6,
            eos_token_id=5,
            pad_token_id=0,
        ),
    ),
    "llama": Layout(
        family="llama",
        kind=DECODER_LM,
        model_class="LlamaForCausalLM",
        layer_stacks=("model.layers",),
        attention=_attention("self_attn", ("q_proj", "k_proj", "v_proj"), "self_attn.o_proj"),
        mlp={"up": "mlp.up_proj", "down": "mlp.down_proj"},
        embeddings="model.embed_tokens",
        embedding_parts=("embed_tokens",),
        shape_keys=(
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "head_dim",
        ),
        tiny_class="LlamaForCausalLM",
        tiny_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=6,
            eos_token_id=5,
            pad_token_id=0,
        ),
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

    def cached(self) -> Path | None:
        """The folder if it is built already, else None; never builds."""
        out = self.folder()
        return out if (out / ".complete").exists() else None

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
