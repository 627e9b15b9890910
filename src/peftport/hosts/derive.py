"""Derive a same-shape receiving host from a parent by continued masked-LM training.

This is the offline stand-in for the paper's raw -> instruction-tuned pairs (T5 v1.1 -> Flan-T5):
the child is the parent trained further, on text the task data never contains (Rotten Tomatoes
*plot* synopses, not reviews), so how far the weights drift is a dial (steps, learning rate).

Why masked-LM and not a contrastive objective: all-MiniLM-L6-v2 was itself trained contrastively,
so more of the same moves it little; masked-LM is a different objective, as instruction tuning is
for T5, and it moves every layer. The MLM head is fresh (the parent has none) and its decoder is
tied to the word embeddings, so the embeddings drift several times more than the layers. The
parent's pooler is carried over unchanged (BertForMaskedLM has none), so a classifier built on
the child does not get a silently re-initialised pooler.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftport.configfields import check_bounds, setting, settings
from peftport.errors import PeftportError

if TYPE_CHECKING:  # torch is imported where a host is built: `peftport --help` stays fast
    import torch


@dataclass(frozen=True)
class DeriveConfig:
    """How a host is derived. Each field's description is the one source of the options of
    `peftport hosts derive` and of a study file's `hosts: {NAME: {derive: {...}}}` keys."""

    parent: str = setting("minilm-l6", help="Parent host (BERT family).", key="from")
    # unlabelled text in no evaluation split
    corpus: str = setting("rt_plots", help="Unlabelled text corpus.")
    # 300 steps at lr 1e-4 moves each layer about 3% (relative Frobenius)
    steps: int = setting(300, help="Masked-LM steps: more steps, more drift.", gt=0)
    lr: float = setting(1e-4, help="Learning rate: higher, more drift.", gt=0, lt=1)
    batch_size: int = setting(16, help="Batch size.", gt=0)
    # plots are long: 64 tokens keeps a step under a second on 2 cores
    max_length: int = setting(64, help="Maximum tokens per text.", gt=0)
    mask_prob: float = setting(0.15, help="Share of the tokens masked.", gt=0, lt=1)
    warmup_steps: int = setting(30, help="Linear warmup steps.", ge=0)
    seed: int = setting(0, help="Seed for masking and batch order.")
    # speed only: not part of the recipe, so not a user's setting
    threads: int = setting(2, help="Torch threads while deriving.", internal=True)

    def __post_init__(self) -> None:
        check_bounds(self, prefix="derive: ")

    def as_recipe(self) -> dict[str, str]:
        d = {k: str(v) for k, v in asdict(self).items() if k != "threads"}  # threads: speed only
        d["version"] = "3"  # 3: masked positions only, plots cut into windows
        return d

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, str]) -> DeriveConfig:
        """The config a recipe (`as_recipe`, all text) was written from."""
        return cls(
            **{
                s.name: s.annotation(recipe[s.name])
                for s in settings(cls).values()
                if not s.internal
            }
        )


class DerivedHostConflict(PeftportError):
    """A derived host of that name is installed with another recipe."""


def install_derived_host(
    name: str,
    recipe: tuple[tuple[str, str], ...],
    parent: Any = None,
    echo: Callable[[str], None] | None = None,
) -> Path:
    """Build (or find cached) the host `recipe` describes (`peftport.hosts.derived_recipe`)
    and install it as the user-derived host NAME under $PEFTPORT_HOME/hosts/derived, where
    `get_host(NAME)` finds it in any process (local workers, and Ray workers on nodes that
    share $PEFTPORT_HOME). Returns its folder.

    `peftport hosts derive` and a study's derived hosts both install through here, so either
    finds the other's host. The same recipe again is a no-op; another recipe under an
    installed name is refused (DerivedHostConflict). parent: the parent's HostSpec (default:
    `get_host` of the recipe's parent); echo: progress lines."""
    from peftport.hosts import HOSTS, _build_derived, _derived_home, get_host
    from peftport.hosts.spec import Built

    if name in HOSTS or not name or "/" in name or name.startswith("."):
        raise PeftportError(f"derived host {name!r}: choose a new plain name (not a built-in id)")
    r = dict(recipe)
    target = _derived_home() / name
    meta_path = target / "peftport-host.json"
    if meta_path.exists():
        _check_same_recipe(name, meta_path, r)
        return target
    built = Built(recipe, _build_derived)
    if echo is not None and not (built.folder() / ".complete").exists():
        echo(
            f"deriving host {name} from {r['parent']}: {r['steps']} masked-LM steps at lr "
            f"{r['lr']} (about a second per step on 2 cores; built once and cached)"
        )
    folder = built.resolve()
    parent = parent if parent is not None else get_host(r["parent"])
    meta = {
        "family": parent.family,
        "parent": parent.id,
        "description": f"derived from {parent.id}: masked-LM on {r['corpus']}, "
        f"{r['steps']} steps, lr {r['lr']}, seed {r['seed']}",
        "recipe": r,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    shutil.copytree(folder, tmp, copy_function=_link_or_copy)
    (tmp / "peftport-host.json").write_text(json.dumps(meta, indent=2))
    try:
        tmp.rename(target)
    except OSError:  # another process installed it first: theirs stays if it is the same
        shutil.rmtree(tmp, ignore_errors=True)
        _check_same_recipe(name, meta_path, r)
    if echo is not None:
        drift = read_drift(folder) or {}
        layers = [v for k, v in (drift.get("drift") or {}).items() if k.startswith("layer.")]
        how = f"; mean layer drift {sum(layers) / len(layers):.3f}" if layers else ""
        echo(f"host {name}: derived from {r['parent']}, installed at {target}{how}")
    return target


def _check_same_recipe(name: str, meta_path: Path, recipe: dict[str, str]) -> None:
    if json.loads(meta_path.read_text()).get("recipe") != recipe:
        raise DerivedHostConflict(
            f"a derived host named {name!r} exists with another recipe ({meta_path.parent}); "
            "choose another name or delete that folder"
        )


def _link_or_copy(src: str, dst: str) -> None:
    """Hard links where the file system allows (a host's weights are ~90 MB; nothing writes to
    a built host folder), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def relative_drift(
    parent: dict[str, torch.Tensor], child: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Relative Frobenius distance ||child - parent|| / ||parent||, per layer and per part.

    Keys are grouped as "embeddings", "layer.<i>", "pooler"; shapes must match.
    """
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for key, p in parent.items():
        if key not in child or child[key].shape != p.shape or not p.is_floating_point():
            continue
        parts = key.split(".")
        group = f"layer.{parts[parts.index('layer') + 1]}" if "layer" in parts else parts[0]
        num[group] = num.get(group, 0.0) + float((child[key].float() - p.float()).pow(2).sum())
        den[group] = den.get(group, 0.0) + float(p.float().pow(2).sum())
    return {g: math.sqrt(num[g]) / math.sqrt(den[g]) for g in num if den[g] > 0}


def build_derived(out: Path, recipe: dict[str, str]) -> None:
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling

    from peftport.data import unlabelled_texts
    from peftport.hosts import get_host, host_folder

    cfg = DeriveConfig.from_recipe(recipe)
    parent_spec = get_host(cfg.parent)
    if parent_spec.family != "bert":
        raise PeftportError(
            f"derive: parent {cfg.parent!r} is {parent_spec.family}; masked-LM "
            "derivation is implemented for BERT-family hosts"
        )
    parent_dir = host_folder(parent_spec)
    texts = unlabelled_texts(cfg.corpus)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(parent_dir)
    # A fresh MLM head on the parent encoder; warnings about it are expected.
    import transformers

    transformers.logging.set_verbosity_error()
    model = BertForMaskedLM.from_pretrained(parent_dir, use_safetensors=True)
    transformers.logging.set_verbosity_warning()
    parent_state = {k: v.detach().clone() for k, v in model.bert.state_dict().items()}
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=cfg.mask_prob)
    # Plots are long: cut every plot into windows of max_length tokens, so all the text is used.
    width = cfg.max_length - 2  # room for [CLS] and [SEP]
    enc = []
    # whole plots are tokenised and then windowed: lift the length limit, which would only warn
    # ("sequence length is longer than the specified maximum") about rows never fed whole
    tok.model_max_length = 1 << 30
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        for start in range(0, len(ids), width):
            window = ids[start : start + width]
            if len(window) >= 8:
                enc.append(tok.build_inputs_with_special_tokens(window))
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / max(1, cfg.warmup_steps))
            * max(0.0, (cfg.steps - s) / max(1, cfg.steps - cfg.warmup_steps))
            if s >= cfg.warmup_steps
            else (s + 1) / max(1, cfg.warmup_steps)
        ),
    )
    model.train()
    order: list[int] = []
    t0 = time.time()
    from tqdm import tqdm

    bar = tqdm(
        range(cfg.steps),
        desc=f"deriving from {cfg.parent}",
        unit="step",
        leave=False,
        disable=None,
        mininterval=1.0,
    )
    losses = []
    for step in bar:
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(enc), generator=gen).tolist()
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        # the collator draws its masks from torch's global RNG, seeded above
        batch = collator([{"input_ids": enc[i]} for i in idx])
        # Scores only at masked positions: the vocabulary projection over every position costs
        # about 6x the encoder itself on CPU and contributes nothing to the loss.
        hidden = model.bert(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        target = batch["labels"]
        picked = target != -100  # (B, L)
        logits = model.cls(hidden[picked])  # (n_masked, vocab)
        loss = torch.nn.functional.cross_entropy(logits, target[picked])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    bar.close()
    seconds = time.time() - t0

    # Save the encoder as a BertModel checkpoint with the parent's pooler carried over.
    from safetensors.torch import load_file

    parent_weights = load_file(str(next(parent_dir.glob("*.safetensors"))))
    child = {k: v.detach().clone().contiguous() for k, v in model.bert.state_dict().items()}
    for k, v in parent_weights.items():
        if k.startswith("pooler."):
            child[k] = v
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(parent_dir)
    config.architectures = ["BertModel"]
    encoder = BertModel(config)
    missing, unexpected = encoder.load_state_dict(child, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"derived encoder keys: missing {missing}, unexpected {unexpected}")
    encoder.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (parent_dir / name).exists():
            shutil.copy(parent_dir / name, out / name)
    drift = relative_drift(parent_state, child)
    report = {
        "config": asdict(cfg),
        "parent_fingerprint": _parent_fp(parent_dir),
        "corpus_texts": len(texts),
        "corpus_windows": len(enc),
        "seconds": round(seconds, 1),
        "mlm_loss_first10": sum(losses[:10]) / min(10, len(losses)),
        "mlm_loss_last10": sum(losses[-10:]) / min(10, len(losses)),
        "drift": drift,
    }
    (out / "peftport-drift.json").write_text(json.dumps(report, indent=2))


def _parent_fp(folder: Path) -> str:
    from peftport.hosts import weights_fingerprint

    return weights_fingerprint(folder)


def read_drift(folder: Path) -> dict | None:
    p = folder / "peftport-drift.json"
    return json.loads(p.read_text()) if p.exists() else None
