"""Interop: PEFT adapter folders and AdapterHub folders, both ways.

Every exported folder is loaded by the other library itself (`peft.PeftModel.from_pretrained`,
`adapters`' `load_adapter`) on a fresh copy of the host and must give the logits peftport's own
model gives. Module tensors are moved off their initialisation first (a fresh LoRA B is zero, a
fresh IA3 vector one: an export of those would "match" whatever it wrote).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from peftport import interop
from peftport.errors import PeftportError
from peftport.hosts import load_host
from peftport.module import load_module, module_meta, save_module
from peftport.techniques import attach, load_module_state, make_config, module_state

try:
    import peft
except ImportError:  # only the tests that run peft itself need it (needs_peft)
    peft = None
needs_peft = pytest.mark.skipif(peft is None, reason="peft is not installed")

TINY = {"bert": "tiny-bert", "t5": "tiny-t5", "gpt2": "tiny-gpt2", "llama": "tiny-llama"}
WORDS = ["negative", "positive"]
SMALL = {
    "lora": {"r": 4, "alpha": 8},
    "lora-ffn": {
        "r": 4,
        "alpha": 12,
        "targets": ["q", "k", "v"],
        "intermediate": True,
        "output": True,
    },
    "ia3": {},
    "ia3-q": {"targets": ["q", "k", "v"]},
    "prefix": {"prefix_length": 3, "bottleneck_size": 8},
    "prefix-flat": {"prefix_length": 3, "flat": True},
    "prompt": {"prompt_length": 3},
    "adapter": {"reduction_factor": 4},
    "compacter": {"reduction_factor": 4},
}


@pytest.fixture(autouse=True)
def one_thread():
    """Width-16 hosts run far faster on one thread than on two busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def batch(family: str) -> dict[str, torch.Tensor]:
    """3 right-padded rows (lengths 7, 5, 3) of ids from the tiny vocabulary."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, 60, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    out = {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}
    if family == "t5":
        out["decoder_input_ids"] = torch.tensor([[0, 9], [0, 10], [0, 11]])
    return out


def logits(model, family: str) -> torch.Tensor:
    """Logits at the positions that count: decoders' padded positions are left out."""
    model.eval()
    b = batch(family)
    with torch.no_grad():
        out = model(**b).logits.float()
    return out[b["attention_mask"].bool()] if family in ("gpt2", "llama") else out


def perturb(model, name: str = "peftport", seed: int = 1) -> None:
    from peftport.techniques import _head_tensors, _module_tensors

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*_module_tensors(model, name).values(), *_head_tensors(model).values()]:
            t.add_(torch.randn(t.shape, generator=g) * 0.5)


def technique_of(case: str) -> str:
    return case.split("-")[0]


def make_module(tmp_path: Path, family: str, case: str) -> tuple[Path, torch.Tensor]:
    """A perturbed module on a tiny host, saved; and the logits peftport's model gives."""
    h = load_host(TINY[family])
    att = attach(h.model, family, technique_of(case), SMALL[case], seed=0)
    perturb(h.model)
    ref = logits(h.model, family)
    meta = module_meta(att, h, task="toy", label_words=WORDS, steps=3, seed=0)
    path = save_module(tmp_path / f"{case}-{family}", module_state(h.model), meta)
    return path, ref


def peft_logits(family: str, folder: Path) -> torch.Tensor:
    """Logits of the folder loaded by peft itself; a partial load (missing or unexpected adapter
    keys, which peft only warns about) fails the test."""
    import warnings

    h = load_host(TINY[family])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(h.model, str(folder))
    keys = [str(w.message) for w in caught if "keys" in str(w.message)]
    assert not keys, keys
    return logits(model, family)


def peftport_logits(family: str, module: Path) -> torch.Tensor:
    tensors, meta = load_module(module)
    h = load_host(TINY[family])
    attach(h.model, family, meta["technique"], meta["config"], name=meta["adapter_name"])
    load_module_state(h.model, tensors, meta["adapter_name"])
    return logits(h.model, family)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-4)


# --- PEFT export: loads in peft and gives the same outputs --------------------------------

PEFT_CASES = [
    ("bert", "lora"),
    ("bert", "lora-ffn"),
    ("bert", "ia3"),
    ("bert", "ia3-q"),
    ("bert", "prefix"),
    ("bert", "prefix-flat"),
    ("t5", "lora"),
    ("t5", "lora-ffn"),
    ("t5", "ia3"),
    ("gpt2", "lora"),
    ("gpt2", "lora-ffn"),
    ("gpt2", "ia3"),
    ("gpt2", "ia3-q"),
    ("gpt2", "prefix"),
    ("llama", "lora"),
    ("llama", "lora-ffn"),
    ("llama", "ia3"),
]


@needs_peft
@pytest.mark.parametrize("family,case", PEFT_CASES, ids=[f"{c}-{f}" for f, c in PEFT_CASES])
def test_peft_export_loads_in_peft_with_the_same_outputs(tmp_path, family, case):
    module, ref = make_module(tmp_path, family, case)
    base = load_host(TINY[family])
    assert not close(logits(base.model, family), ref), "the module must change the outputs"
    folder = interop.export_peft(module, tmp_path / "peft")
    assert sorted(p.name for p in folder.iterdir()) == [
        interop.PEFT_CONFIG,
        interop.PEFT_WEIGHTS,
        interop.SIDECAR,
    ]
    assert close(peft_logits(family, folder), ref)


@pytest.mark.parametrize("family,case", PEFT_CASES, ids=[f"{c}-{f}" for f, c in PEFT_CASES])
def test_peft_round_trip_gives_back_the_module(tmp_path, family, case):
    module, ref = make_module(tmp_path, family, case)
    folder = interop.export_peft(module, tmp_path / "peft")
    back = interop.import_peft(
        folder, host=TINY[family], out_dir=tmp_path / "back", task="toy", label_words=WORDS
    )
    (orig, meta), (got, new_meta) = load_module(module), load_module(back)
    assert new_meta["origin_host"] == TINY[family] and new_meta["task"] == "toy"
    assert new_meta["steps"] == 3 and new_meta["extra"]["imported"]["format"] == "peft"
    if case == "prefix":  # the MLP is evaluated away: a flat prefix with the same values
        assert new_meta["config"]["flat"] is True
        (flat,) = [v for k, v in got.items() if k.endswith("control_trans")]
        cfg = make_config("prefix", meta["config"])
        expected = interop.effective_prefix(orig, "peftport", cfg, "test").reshape(-1)
        assert torch.equal(flat, expected)
        assert close(peftport_logits(family, back), ref)
    else:
        assert new_meta["config"] == meta["config"]
        assert set(got) == set(orig)
        assert all(torch.equal(got[k], orig[k]) for k in orig)


@pytest.mark.parametrize("case", ["lora", "lora-ffn", "ia3"])
def test_gpt2_round_trip_without_the_sidecar(tmp_path, case):
    """Without peftport's provenance file the fused q/k/v layout is read off the tensors."""
    module, _ = make_module(tmp_path, "gpt2", case)
    folder = interop.export_peft(module, tmp_path / "peft")
    (folder / interop.SIDECAR).unlink()
    back = interop.import_peft(
        folder, host="tiny-gpt2", out_dir=tmp_path / "back", task="toy", label_words=WORDS
    )
    (orig, meta), (got, new_meta) = load_module(module), load_module(back)
    assert new_meta["config"] == meta["config"] and new_meta["steps"] == 0
    assert set(got) == set(orig) and all(torch.equal(got[k], orig[k]) for k in orig)


def test_peft_export_records_the_mapping(tmp_path):
    module, _ = make_module(tmp_path, "bert", "lora")
    folder = interop.export_peft(module, tmp_path / "peft")
    cfg = json.loads((folder / interop.PEFT_CONFIG).read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "SEQ_CLS"
    assert (cfg["r"], cfg["lora_alpha"], cfg["modules_to_save"]) == (4, 8, ["classifier"])
    assert cfg["target_modules"] == (
        r"(?:bert\.encoder\.layer\.\d+\.attention\.self\.query|"
        r"bert\.encoder\.layer\.\d+\.attention\.self\.value)"
    )
    weights = load_file(str(folder / interop.PEFT_WEIGHTS))
    assert weights[
        "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight"
    ].shape == (16, 4)
    assert "base_model.model.classifier.weight" in weights
    side = json.loads((folder / interop.SIDECAR).read_text())
    assert side["technique"] == "lora" and side["host"] == "tiny-bert"


def test_gpt2_fused_qkv_lora_is_block_diagonal_at_rank_n_times_r(tmp_path):
    module, _ = make_module(tmp_path, "gpt2", "lora")  # q, v at r=4 on c_attn
    folder = interop.export_peft(module, tmp_path / "peft")
    cfg = json.loads((folder / interop.PEFT_CONFIG).read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["fan_in_fan_out"]) == (8, 16, True)
    b = load_file(str(folder / interop.PEFT_WEIGHTS))[
        "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"
    ]
    assert b.shape == (48, 8)
    assert not b[16:32].any(), "k is not adapted"
    assert not b[:16, 4:].any() and not b[32:, :4].any(), "q and v use their own rank groups"


@needs_peft
def test_prefix_export_needs_the_shifted_position_table(tmp_path):
    """The one step where the libraries differ: PEFT's text starts at position prefix_length.
    With the host's own (unshifted) table the PEFT model gives other outputs."""
    module, ref = make_module(tmp_path, "bert", "prefix")
    folder = interop.export_peft(module, tmp_path / "peft")
    weights = load_file(str(folder / interop.PEFT_WEIGHTS))
    key = "base_model.bert.embeddings.position_embeddings.weight"
    own = load_host("tiny-bert").model.bert.embeddings.position_embeddings.weight.detach()
    assert torch.equal(weights[key][3:], own[:-3]) and not weights[key][:3].any()
    assert close(peft_logits("bert", folder), ref)
    weights[key] = own.clone()
    save_file(weights, str(folder / interop.PEFT_WEIGHTS))
    assert not close(peft_logits("bert", folder), ref)
    with pytest.raises(PeftportError, match="shifted down by 3"):
        interop.import_peft(
            folder, host="tiny-bert", out_dir=tmp_path / "b", task="toy", label_words=WORDS
        )


@needs_peft
def test_ia3_feedforward_is_output_scaling_not_peft_feedforward_modules(tmp_path):
    """AdapterHub scales the up-projection's output (before GELU); PEFT's feedforward_modules
    would scale the down-projection's input (after GELU) with the same vector: another
    function. The export uses output scaling, and an import of the other kind is refused."""
    module, ref = make_module(tmp_path, "bert", "ia3")
    folder = interop.export_peft(module, tmp_path / "peft")
    assert close(peft_logits("bert", folder), ref)
    cfg = json.loads((folder / interop.PEFT_CONFIG).read_text())
    assert cfg["feedforward_modules"] == []
    weights = load_file(str(folder / interop.PEFT_WEIGHTS))
    moved = {}
    for k, v in weights.items():
        if ".intermediate.dense." in k:
            k, v = k.replace("intermediate.dense", "output.dense"), v.reshape(1, -1)
        moved[k] = v
    save_file(moved, str(folder / interop.PEFT_WEIGHTS))
    cfg["target_modules"] = r".*\.(key|value)|bert\.encoder\.layer\.\d+\.output\.dense"
    cfg["feedforward_modules"] = r"bert\.encoder\.layer\.\d+\.output\.dense"
    (folder / interop.PEFT_CONFIG).write_text(json.dumps(cfg))
    (folder / interop.SIDECAR).unlink()
    other = peft_logits("bert", folder)
    assert not close(other, ref)
    with pytest.raises(PeftportError, match="feedforward_modules"):
        interop.import_peft(
            folder, host="tiny-bert", out_dir=tmp_path / "b", task="toy", label_words=WORDS
        )


@pytest.mark.parametrize(
    "family,case,why",
    [
        ("bert", "prompt", "after the position and token-type embeddings"),
        ("bert", "adapter", "no bottleneck"),
        ("bert", "compacter", "no Compacter"),
        ("t5", "prefix", "three separate prefixes"),
        ("llama", "prefix", "rotary positions"),
    ],
)
def test_peft_export_refuses_what_peft_computes_differently(tmp_path, family, case, why):
    module, _ = make_module(tmp_path, family, case)
    with pytest.raises(PeftportError, match=why):
        interop.export_peft(module, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


# --- PEFT import of folders peft itself wrote --------------------------------------------


def peft_trained(tmp_path: Path, family: str, config) -> tuple[Path, torch.Tensor]:
    """A PEFT model made by peft, moved off its initialisation, saved by peft."""
    h = load_host(TINY[family])
    model = peft.get_peft_model(h.model, config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    ref = logits(model, family)
    model.save_pretrained(str(tmp_path / "from-peft"))
    return tmp_path / "from-peft", ref


@needs_peft
def test_import_a_peft_lora_on_some_layers_and_matrices(tmp_path):
    cfg = peft.LoraConfig(
        task_type="SEQ_CLS", r=2, lora_alpha=5, target_modules=["query"], layers_to_transform=[1]
    )
    folder, ref = peft_trained(tmp_path, "bert", cfg)
    out = interop.import_peft(
        folder, host="tiny-bert", out_dir=tmp_path / "m", task="toy", label_words=WORDS
    )
    _, meta = load_module(out)
    assert meta["config"]["targets"] == ["q"] and meta["config"]["alpha"] == 5
    assert close(peftport_logits("bert", out), ref)


@needs_peft
def test_import_a_peft_lora_with_a_fractional_alpha_folds_the_scale(tmp_path):
    cfg = peft.LoraConfig(
        task_type="CAUSAL_LM", r=2, lora_alpha=3.5, target_modules=["c_attn"], fan_in_fan_out=True
    )
    folder, ref = peft_trained(tmp_path, "gpt2", cfg)
    out = interop.import_peft(
        folder, host="tiny-gpt2", out_dir=tmp_path / "m", task="toy", label_words=WORDS
    )
    _, meta = load_module(out)
    assert meta["config"]["targets"] == ["q", "k", "v"]
    assert (meta["config"]["r"], meta["config"]["alpha"]) == (2, 2)  # scale 1, 1.75 in B
    assert close(peftport_logits("gpt2", out), ref)


@needs_peft
def test_import_a_peft_ia3_on_t5(tmp_path):
    cfg = peft.IA3Config(
        task_type="SEQ_2_SEQ_LM", target_modules=["k", "v", "wi"], feedforward_modules=[]
    )
    folder, ref = peft_trained(tmp_path, "t5", cfg)
    out = interop.import_peft(
        folder, host="tiny-t5", out_dir=tmp_path / "m", task="toy", label_words=WORDS
    )
    _, meta = load_module(out)
    assert meta["config"] == {"targets": ["k", "v"], "intermediate": True}
    assert close(peftport_logits("t5", out), ref)


# --- PEFT import: every refusal -----------------------------------------------------------


@pytest.fixture
def bert_lora_folder(tmp_path) -> Path:
    module, _ = make_module(tmp_path, "bert", "lora")
    folder = interop.export_peft(module, tmp_path / "peft")
    (folder / interop.SIDECAR).unlink()
    return folder


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / interop.PEFT_CONFIG).read_text())
    cfg.update(changes)
    (folder / interop.PEFT_CONFIG).write_text(json.dumps(cfg))


def do_import(folder: Path, tmp_path: Path, host: str = "tiny-bert", **kw) -> Path:
    return interop.import_peft(
        folder, host=host, out_dir=tmp_path / "imported", task="toy", label_words=WORDS, **kw
    )


@pytest.mark.parametrize(
    "field,value",
    [
        ("use_dora", True),
        ("use_rslora", True),
        ("bias", "all"),
        ("rank_pattern", {"query": 2}),
        ("init_lora_weights", "pissa"),
    ],
)
def test_import_refuses_peft_fields_adapterhub_cannot_reproduce(
    bert_lora_folder, tmp_path, field, value
):
    edit_config(bert_lora_folder, **{field: value})
    with pytest.raises(PeftportError, match=f"field '{field}'"):
        do_import(bert_lora_folder, tmp_path)
    assert not (tmp_path / "imported").exists()


def test_import_refuses_pickled_weights(bert_lora_folder, tmp_path):
    (bert_lora_folder / interop.PEFT_WEIGHTS).rename(bert_lora_folder / interop.PEFT_PICKLE)
    with pytest.raises(PeftportError, match="never unpickles.*safe_serialization=True"):
        do_import(bert_lora_folder, tmp_path)


def test_import_refuses_modules_adapterhub_cannot_adapt(bert_lora_folder, tmp_path):
    weights = load_file(str(bert_lora_folder / interop.PEFT_WEIGHTS))
    renamed = {
        k.replace("attention.self.query", "attention.output.dense"): v for k, v in weights.items()
    }
    save_file(renamed, str(bert_lora_folder / interop.PEFT_WEIGHTS))
    with pytest.raises(PeftportError, match="target_modules.*attention.output.dense.*cannot"):
        do_import(bert_lora_folder, tmp_path)


def test_import_refuses_wrong_shapes(bert_lora_folder, tmp_path):
    weights = load_file(str(bert_lora_folder / interop.PEFT_WEIGHTS))
    key = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"
    weights[key] = torch.zeros(4, 24)
    save_file(weights, str(bert_lora_folder / interop.PEFT_WEIGHTS))
    with pytest.raises(PeftportError, match=r"lora_A \(4, 24\).*must be \(4, 16\)"):
        do_import(bert_lora_folder, tmp_path)


def test_import_refuses_a_head_for_other_labels(bert_lora_folder, tmp_path):
    with pytest.raises(
        PeftportError, match="head shapes.*classifier.weight: \\(2, 16\\), host needs \\(3, 16\\)"
    ):
        interop.import_peft(
            bert_lora_folder,
            host="tiny-bert",
            out_dir=tmp_path / "m",
            task="toy",
            label_words=["a", "b", "c"],
        )


def test_import_refuses_a_missing_head(bert_lora_folder, tmp_path):
    weights = load_file(str(bert_lora_folder / interop.PEFT_WEIGHTS))
    save_file(
        {k: v for k, v in weights.items() if "classifier" not in k},
        str(bert_lora_folder / interop.PEFT_WEIGHTS),
    )
    with pytest.raises(PeftportError, match="no classification head"):
        do_import(bert_lora_folder, tmp_path)


def test_import_checks_the_base_model_name(bert_lora_folder, tmp_path):
    edit_config(bert_lora_folder, base_model_name_or_path="someone/other-bert")
    with pytest.raises(PeftportError, match="base_model_name_or_path.*--any-base"):
        do_import(bert_lora_folder, tmp_path)
    do_import(bert_lora_folder, tmp_path, any_base=True)


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"peft_type": "PROMPT_TUNING"}, "soft tokens"),
        ({"peft_type": "LOHA"}, "peft_type.*LOHA"),
        ({"task_type": "CAUSAL_LM"}, "task_type"),
    ],
)
def test_import_refuses_other_peft_types_and_tasks(bert_lora_folder, tmp_path, changes, match):
    edit_config(bert_lora_folder, **changes)
    with pytest.raises(PeftportError, match=match):
        do_import(bert_lora_folder, tmp_path)


@needs_peft
def test_import_refuses_a_peft_prefix_on_llama(tmp_path):
    cfg = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    folder, _ = peft_trained(tmp_path, "llama", cfg)
    with pytest.raises(PeftportError, match="rotary"):
        do_import(folder, tmp_path, host="tiny-llama")


# --- AdapterHub folders ---------------------------------------------------------------------

AH_CASES = ["adapter", "lora", "prefix", "compacter", "prompt", "ia3"]


def adapters_logits(family: str, folder: Path) -> torch.Tensor:
    import adapters

    h = load_host(TINY[family])
    adapters.init(h.model)
    if family in ("gpt2", "llama"):
        h.model.set_attn_implementation("eager")  # as attach does for prefixes
    name = h.model.load_adapter(str(folder), use_safetensors=True, set_active=True)
    assert name == "peftport"
    return logits(h.model, family)


@pytest.mark.parametrize("case", AH_CASES)
def test_adapterhub_round_trip_on_bert(tmp_path, case):
    module, ref = make_module(tmp_path, "bert", case)
    folder = interop.export_adapterhub(module, tmp_path / "ah")
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [
            interop.AH_CONFIG,
            interop.AH_WEIGHTS,
            interop.AH_HEAD_CONFIG,
            interop.AH_HEAD_WEIGHTS,
            interop.SIDECAR,
        ]
    )
    assert close(adapters_logits("bert", folder), ref)  # head loaded by adapters too
    back = interop.import_adapterhub(
        folder, host="tiny-bert", out_dir=tmp_path / "back", task="toy", label_words=WORDS
    )
    (orig, meta), (got, new_meta) = load_module(module), load_module(back)
    assert new_meta["config"] == meta["config"] and new_meta["technique"] == case
    assert set(got) == set(orig) and all(torch.equal(got[k], orig[k]) for k in orig)


@pytest.mark.parametrize(
    "family,case", [("t5", "compacter"), ("gpt2", "lora"), ("llama", "prefix")]
)
def test_adapterhub_export_on_lm_hosts(tmp_path, family, case):
    """No head files on LM hosts (adapters would save the LM head and overwrite the host with
    it); T5 Compacter keeps its shared phm_rule, which adapters' own save_adapter drops."""
    module, ref = make_module(tmp_path, family, case)
    folder = interop.export_adapterhub(module, tmp_path / "ah")
    assert not (folder / interop.AH_HEAD_WEIGHTS).exists()
    if case == "compacter":
        assert "shared_parameters.peftport.phm_rule" in load_file(str(folder / interop.AH_WEIGHTS))
    assert close(adapters_logits(family, folder), ref)
    back = interop.import_adapterhub(
        folder, host=TINY[family], out_dir=tmp_path / "back", task="toy", label_words=WORDS
    )
    orig, got = load_module(module)[0], load_module(back)[0]
    assert set(got) == set(orig) and all(torch.equal(got[k], orig[k]) for k in orig)


def saved_by_adapters(tmp_path: Path, family: str, case: str) -> tuple[Path, torch.Tensor]:
    h = load_host(TINY[family])
    attach(h.model, family, technique_of(case), SMALL[case], name="task", seed=0)
    perturb(h.model, "task")
    ref = logits(h.model, family)
    h.model.save_adapter(
        str(tmp_path / "saved"), "task", use_safetensors=True, with_head=family == "bert"
    )
    return tmp_path / "saved", ref


@needs_peft
@pytest.mark.parametrize("case", ["lora", "compacter"])
def test_import_a_folder_saved_by_adapters_itself(tmp_path, case):
    folder, ref = saved_by_adapters(tmp_path, "bert", case)
    out = interop.import_adapterhub(
        folder, host="tiny-bert", out_dir=tmp_path / "m", task="toy", label_words=WORDS
    )
    _, meta = load_module(out)
    assert meta["adapter_name"] == "task" and meta["extra"]["imported"]["name"] == "task"
    assert close(peftport_logits("bert", out), ref)
    if case == "lora":  # and on to PEFT, under the module's own name
        assert close(peft_logits("bert", interop.export_peft(out, tmp_path / "peft")), ref)


def test_adapters_cannot_save_a_prefix_as_safetensors(tmp_path):
    """Why the export writes the files itself: adapters 1.3.0's own save_adapter(...,
    use_safetensors=True) fails on prefix tuning (its pool is shared by every layer)."""
    with pytest.raises(RuntimeError, match="share memory"):
        saved_by_adapters(tmp_path, "bert", "prefix")


def test_import_names_the_missing_t5_phm_rule_of_adapters_save_adapter(tmp_path):
    folder, _ = saved_by_adapters(tmp_path, "t5", "compacter")
    with pytest.raises(PeftportError, match="(?s)missing tensors.*phm_rule.*save_adapter"):
        interop.import_adapterhub(
            folder, host="tiny-t5", out_dir=tmp_path / "m", task="toy", label_words=WORDS
        )


@pytest.fixture
def bert_ah_folder(tmp_path) -> Path:
    module, _ = make_module(tmp_path, "bert", "lora")
    return interop.export_adapterhub(module, tmp_path / "ah")


def ah_import(folder: Path, tmp_path: Path, host: str = "tiny-bert") -> Path:
    return interop.import_adapterhub(
        folder, host=host, out_dir=tmp_path / "m", task="toy", label_words=WORDS
    )


def test_adapterhub_import_refuses_pickled_weights(bert_ah_folder, tmp_path):
    (bert_ah_folder / interop.AH_WEIGHTS).rename(bert_ah_folder / interop.AH_PICKLE)
    with pytest.raises(PeftportError, match="pytorch_adapter.bin.*never unpickles"):
        ah_import(bert_ah_folder, tmp_path)


def test_adapterhub_import_refuses_pickled_head(bert_ah_folder, tmp_path):
    (bert_ah_folder / interop.AH_HEAD_WEIGHTS).rename(bert_ah_folder / interop.AH_HEAD_PICKLE)
    with pytest.raises(PeftportError, match="pytorch_model_head.bin.*never unpickles"):
        ah_import(bert_ah_folder, tmp_path)


def test_adapterhub_import_refuses_wrong_shapes(bert_ah_folder, tmp_path):
    weights = load_file(str(bert_ah_folder / interop.AH_WEIGHTS))
    key = "bert.encoder.layer.0.attention.self.query.loras.peftport.lora_A"
    weights[key] = torch.zeros(4, 24)
    save_file(weights, str(bert_ah_folder / interop.AH_WEIGHTS))
    with pytest.raises(PeftportError, match=r"(?s)shape mismatches.*query.*given \(4, 24\)"):
        ah_import(bert_ah_folder, tmp_path)


def test_adapterhub_import_refuses_configs_peftport_cannot_reproduce(bert_ah_folder, tmp_path):
    cfg = json.loads((bert_ah_folder / interop.AH_CONFIG).read_text())
    cfg["config"]["use_gating"] = True
    (bert_ah_folder / interop.AH_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(PeftportError, match="config.use_gating is True"):
        ah_import(bert_ah_folder, tmp_path)


def test_adapterhub_import_refuses_another_model_type(bert_ah_folder, tmp_path):
    with pytest.raises(PeftportError, match="model_type.*bert.*gpt2"):
        ah_import(bert_ah_folder, tmp_path, host="tiny-gpt2")


def test_adapterhub_import_refuses_flexible_heads(bert_ah_folder, tmp_path):
    cfg = json.loads((bert_ah_folder / interop.AH_HEAD_CONFIG).read_text())
    cfg["model_class"] = "BertAdapterModel"
    (bert_ah_folder / interop.AH_HEAD_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(PeftportError, match="model_class.*pooler"):
        ah_import(bert_ah_folder, tmp_path)


def test_adapterhub_import_needs_the_head_on_encoders(bert_ah_folder, tmp_path):
    (bert_ah_folder / interop.AH_HEAD_CONFIG).unlink()
    with pytest.raises(PeftportError, match="with_head=True"):
        ah_import(bert_ah_folder, tmp_path)


# --- host checks, folders, formats, CLI -------------------------------------------------------


def test_export_checks_the_host_it_is_given(tmp_path):
    module, _ = make_module(tmp_path, "bert", "lora")
    with pytest.raises(PeftportError, match="bert host.*gpt2"):
        interop.export_peft(module, tmp_path / "peft", host="tiny-gpt2")
    meta = json.loads((module / "module.json").read_text())
    meta["port"] = {"receiver_host": "tiny-bert", "receiver_fingerprint": "0" * 64}
    (module / "module.json").write_text(json.dumps(meta))
    with pytest.raises(PeftportError, match="has other weights.*port it first"):
        interop.export_module(module, tmp_path / "ah", "adapterhub", host="tiny-bert")


def test_existing_folders_are_replaced_only_when_asked(tmp_path):
    module, _ = make_module(tmp_path, "bert", "ia3")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(PeftportError, match="already exists"):
        interop.export_peft(module, out)
    assert (out / "keep.txt").exists()
    interop.export_peft(module, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / interop.PEFT_WEIGHTS).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_unknown_format_is_a_clear_error(tmp_path):
    module, _ = make_module(tmp_path, "bert", "lora")
    with pytest.raises(
        PeftportError, match="unknown format 'onnx'; choose one of: peft, adapterhub"
    ):
        interop.export_module(module, tmp_path / "x", "onnx")
    with pytest.raises(PeftportError, match="unknown format"):
        interop.import_module(
            module, "onnx", host="tiny-bert", out_dir=tmp_path / "y", task="toy", label_words=WORDS
        )


def test_cli_export_then_import(tmp_path, monkeypatch, capsys):
    from typer.testing import CliRunner

    from peftport.cli import app, main

    module, ref = make_module(tmp_path, "bert", "lora")
    data = tmp_path / "d.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"text": f"{w} film {i}", "label": int(w == "good")})
            for i in range(20)
            for w in ("good", "bad")
        )
    )
    runner = CliRunner()
    res = runner.invoke(
        app, ["export", str(module), "--format", "peft", "--out", str(tmp_path / "p"), "--json"]
    )
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["type"] == "LORA" and interop.PEFT_WEIGHTS in info["files"]
    res = runner.invoke(
        app,
        [
            "import",
            str(tmp_path / "p"),
            "--format",
            "peft",
            "--host",
            "tiny-bert",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "m"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["technique"] == "lora"
    assert close(peftport_logits("bert", tmp_path / "m"), ref)
    res = runner.invoke(
        app, ["export", str(module), "--format", "adapterhub", "--out", str(tmp_path / "a")]
    )
    assert res.exit_code == 0 and "adapter.safetensors" in res.stdout, res.output
    # the real entry point: a user mistake is one line on stderr and exit status 2
    monkeypatch.setattr(
        sys,
        "argv",
        ["peftport", "export", str(module), "--format", "onnx", "--out", str(tmp_path / "x")],
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown format 'onnx'" in err and "Traceback" not in err


@needs_peft
@pytest.mark.slow
def test_minilm_lora_export_matches_peft(tmp_path):
    """The real host: a LoRA on minilm-l6 exported to PEFT gives the same logits in peft."""
    h = load_host("minilm-l6")
    att = attach(h.model, "bert", "lora", {"r": 8, "alpha": 16}, seed=0)
    perturb(h.model)
    ref = logits(h.model, "bert")
    meta = module_meta(att, h, task="toy", label_words=WORDS, steps=1, seed=0)
    module = save_module(tmp_path / "m", module_state(h.model), meta)
    folder = interop.export_peft(module, tmp_path / "peft")
    cfg = json.loads((folder / interop.PEFT_CONFIG).read_text())
    assert cfg["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    fresh = load_host("minilm-l6")
    got = logits(peft.PeftModel.from_pretrained(fresh.model, str(folder)), "bert")
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4)


# --- the remaining error paths ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["peft", "adapterhub"])
@pytest.mark.parametrize(
    "damage,match",
    [
        ("no-folder", "no such folder"),
        ("no-config", "no adapter_config.json"),
        ("bad-json", "not readable JSON"),
        ("no-weights", "no (adapter_model|adapter).safetensors"),
        ("bad-weights", "not a readable safetensors file"),
    ],
)
def test_damaged_folders_are_clear_errors(tmp_path, fmt, damage, match):
    module, _ = make_module(tmp_path, "bert", "lora")
    folder = interop.export_module(module, tmp_path / "f", fmt)
    weights = folder / (interop.PEFT_WEIGHTS if fmt == "peft" else interop.AH_WEIGHTS)
    if damage == "no-folder":
        folder = tmp_path / "nowhere"
    elif damage == "no-config":
        (folder / "adapter_config.json").unlink()
    elif damage == "bad-json":
        (folder / "adapter_config.json").write_text("{not json")
    elif damage == "no-weights":
        weights.unlink()
    else:
        weights.write_bytes(b"\x00" * 16)
    with pytest.raises(PeftportError, match=match):
        interop.import_module(
            folder, fmt, host="tiny-bert", out_dir=tmp_path / "m", task="toy", label_words=WORDS
        )
    assert not (tmp_path / "m").exists()


def test_export_refuses_an_encoder_module_without_its_head(tmp_path):
    h = load_host("tiny-bert")
    att = attach(h.model, "bert", "lora", SMALL["lora"], seed=0)
    meta = module_meta(att, h, task="toy", label_words=WORDS, steps=0, seed=0)
    module = save_module(tmp_path / "m", module_state(h.model, include_head=False), meta)
    with pytest.raises(PeftportError, match="no classification head.*untrained classifier"):
        interop.export_peft(module, tmp_path / "peft")


def test_import_refuses_empty_label_words(bert_lora_folder, tmp_path):
    with pytest.raises(PeftportError, match="label_words"):
        interop.import_peft(
            bert_lora_folder, host="tiny-bert", out_dir=tmp_path / "m", task="toy", label_words=[]
        )


@needs_peft
def test_import_refuses_a_peft_ia3_on_an_output_site(tmp_path):
    cfg = peft.IA3Config(
        task_type="SEQ_CLS", target_modules=r".*\.(key|\d+\.output\.dense)", feedforward_modules=[]
    )
    folder, _ = peft_trained(tmp_path, "bert", cfg)
    with pytest.raises(PeftportError, match="'output' site"):
        do_import(folder, tmp_path)


def test_import_refuses_a_head_on_an_lm_host(tmp_path):
    module, _ = make_module(tmp_path, "gpt2", "lora")
    folder = interop.export_peft(module, tmp_path / "peft")
    weights = load_file(str(folder / interop.PEFT_WEIGHTS))
    weights["base_model.model.score.weight"] = torch.zeros(2, 16)
    save_file(weights, str(folder / interop.PEFT_WEIGHTS))
    with pytest.raises(PeftportError, match="classification head.*decoder-lm"):
        do_import(folder, tmp_path, host="tiny-gpt2")


def test_adapterhub_lm_head_files_must_be_the_hosts_own(tmp_path):
    """adapters' default with_head=True saves the LM host's own lm_head: accepted as long as it
    IS the host's; a different one would change the host and is refused."""
    h = load_host("tiny-gpt2")
    attach(h.model, "gpt2", "lora", SMALL["lora"], name="task", seed=0)
    perturb(h.model, "task")
    ref = logits(h.model, "gpt2")
    h.model.save_adapter(str(tmp_path / "saved"), "task", use_safetensors=True, with_head=True)
    head = tmp_path / "saved" / interop.AH_HEAD_WEIGHTS
    assert "lm_head.weight" in load_file(str(head))
    out = ah_import(tmp_path / "saved", tmp_path, host="tiny-gpt2")
    assert close(peftport_logits("gpt2", out), ref)
    save_file(
        {"lm_head.weight": torch.zeros(len(load_file(str(head))["lm_head.weight"]), 16)}, str(head)
    )
    with pytest.raises(PeftportError, match="lm_head.weight.*would change the host"):
        interop.import_adapterhub(
            tmp_path / "saved",
            host="tiny-gpt2",
            out_dir=tmp_path / "m2",
            task="toy",
            label_words=WORDS,
        )


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"name": None}, "'name'"),
        ({"hidden_size": 32}, "hidden_size.*32.*16"),
        ({"config": {"architecture": "reft"}}, "none of peftport's techniques"),
    ],
)
def test_adapterhub_import_checks_the_config(bert_ah_folder, tmp_path, changes, match):
    cfg = json.loads((bert_ah_folder / interop.AH_CONFIG).read_text())
    cfg.update(changes)
    (bert_ah_folder / interop.AH_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(PeftportError, match=match):
        ah_import(bert_ah_folder, tmp_path)


def test_adapterhub_import_refuses_tensors_of_another_module(bert_ah_folder, tmp_path):
    weights = load_file(str(bert_ah_folder / interop.AH_WEIGHTS))
    weights["bert.encoder.layer.0.output.dense.loras.peftport.lora_A"] = torch.zeros(4, 32)
    save_file(weights, str(bert_ah_folder / interop.AH_WEIGHTS))
    with pytest.raises(PeftportError, match="not part of this module.*output.dense"):
        ah_import(bert_ah_folder, tmp_path)


def test_adapterhub_tests_run_without_peft():
    """peft is an optional dependency: with it missing, only the tests that run peft itself are
    skipped (an AdapterHub test and a PEFT export test, which needs no peft, still pass)."""
    import subprocess

    code = (
        "import sys; sys.modules['peft'] = None; import pytest; sys.exit(pytest.main(["
        f"{__file__!r}, '-q', '-p', 'no:cacheprovider', '-m', 'not slow', '-k', "
        "'adapterhub_import_refuses_pickled_weights or peft_export_records_the_mapping "
        "or import_a_peft_ia3_on_t5']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed, 1 skipped" in done.stdout, done.stdout


def test_every_technique_peft_takes_has_a_codec():
    """A technique that names a PEFT type and is not refused converts through a codec of that
    type; every refused one says why."""
    from peftport.techniques import ordered

    for tech in ordered():
        if tech.peft_exportable:
            assert interop.CODECS[tech.peft_type].peft_type == tech.peft_type
        else:
            assert interop.PEFT_REFUSED[tech.name] == tech.peft_refused
