"""Techniques: registry, configs and their recorded defaults, the support table (against
adapters itself and against docs/techniques.md), attach / module_state / load_module_state.

The helpers at the top (CASES, small_config, load, forward, perturb) are shared with
test_porting.py and test_module_file.py.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from peftport.errors import PeftportError
from peftport.hosts import DECODER_LM, ENCODER_CLASSIFIER, KINDS, TEXT_TO_TEXT, load_host
from peftport.techniques import (
    ORDER,
    SUPPORT,
    TECHNIQUES,
    attach,
    defaults_markdown,
    get_technique,
    head_keys,
    load_module_state,
    make_config,
    module_keys,
    module_state,
    set_module_active,
    support_table_markdown,
    supports,
    trainable_parameters,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "techniques.md"
TINY = {"bert": "tiny-bert", "t5": "tiny-t5", "gpt2": "tiny-gpt2", "llama": "tiny-llama"}
FAMILY_KIND = {
    "bert": ENCODER_CLASSIFIER,
    "t5": TEXT_TO_TEXT,
    "gpt2": DECODER_LM,
    "llama": DECODER_LM,
}
# Width-16 hosts: Compacter's default reduction (32) leaves no bottleneck; 4 gives width 4.
SMALL = {"compacter": {"reduction_factor": 4}}
CASES = [(t, f) for t in ORDER for f in TINY if SUPPORT[t][FAMILY_KIND[f]].ok]
REFUSED = [(t, f) for t in ORDER for f in TINY if not SUPPORT[t][FAMILY_KIND[f]].ok]
CASE_IDS = [f"{t}-{f}" for t, f in CASES]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run ~40x faster on one thread than on two busy cores (thread sync dominates
    2-layer, width-16 matmuls). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_config(technique: str) -> dict:
    return dict(SMALL.get(technique, {}))


def load(family: str):
    return load_host(TINY[family])


def batch(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A padded batch of 3 rows (lengths 7, 5, 3) of random ids from the tiny vocabulary."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 60, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    out = {"input_ids": ids, "attention_mask": mask}
    if family == "t5":
        out["decoder_input_ids"] = torch.tensor([[0, 9], [0, 10], [0, 11]])
    return out


def forward(model, family: str, seed: int = 0) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch(family, seed)).logits.detach().clone()


def perturb(model, name: str = "peftport", seed: int = 1, scale: float = 0.5) -> None:
    """Stand-in for training: move every module and head tensor by seeded noise (a fresh LoRA,
    IA3 or bottleneck adapter changes nothing, so an identity test on it could not fail)."""
    from peftport.techniques import _head_tensors, _module_tensors

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*_module_tensors(model, name).values(), *_head_tensors(model).values()]:
            t.add_(torch.randn(t.shape, generator=g) * scale)


# --- registry and configs ---------------------------------------------------------------


def test_registry_has_the_six_techniques_in_order():
    assert list(ORDER) == ["adapter", "lora", "prefix", "compacter", "prompt", "ia3"]
    assert set(TECHNIQUES) == set(ORDER)


def test_unknown_technique_suggests_close_names():
    with pytest.raises(PeftportError, match="Did you mean 'lora'"):
        get_technique("lorra")


def test_recorded_defaults():
    d = {t: get_technique(t).defaults() for t in ORDER}
    assert d["adapter"] == {
        "variant": "pfeiffer",
        "reduction_factor": 16,
        "non_linearity": "relu",
        "dropout": 0.0,
    }
    assert d["lora"] == {
        "r": 8,
        "alpha": 16,
        "targets": ["q", "v"],
        "dropout": 0.0,
        "intermediate": False,
        "output": False,
    }
    assert d["prefix"]["prefix_length"] == 30 and d["prefix"]["flat"] is False
    assert d["prefix"]["bottleneck_size"] == 512
    assert d["compacter"]["phm_dim"] == 4 and d["compacter"]["reduction_factor"] == 32
    assert d["prompt"]["prompt_length"] == 10
    assert d["ia3"] == {"targets": ["k", "v"], "intermediate": True}


def test_houlsby_variant_records_its_own_non_linearity():
    cfg = make_config("adapter", {"variant": "houlsby"})
    assert cfg.non_linearity == "swish"
    assert type(cfg.to_adapters()).__name__ == "DoubleSeqBnConfig"
    assert type(make_config("adapter").to_adapters()).__name__ == "SeqBnConfig"


def test_configs_map_to_adapters_configs():
    lora = make_config("lora").to_adapters()
    assert (lora.r, lora.alpha, list(lora.attn_matrices)) == (8, 16, ["q", "v"])
    prefix = make_config("prefix").to_adapters()
    assert (prefix.prefix_length, prefix.flat, prefix.bottleneck_size) == (30, False, 512)
    comp = make_config("compacter").to_adapters()
    assert (comp.phm_layer, comp.phm_dim, comp.reduction_factor) == (True, 4, 32)
    assert comp.shared_phm_rule is True
    assert make_config("prompt").to_adapters().prompt_length == 10
    ia3 = make_config("ia3").to_adapters()
    assert (ia3.composition_mode, list(ia3.attn_matrices), ia3.intermediate_lora) == (
        "scale",
        ["k", "v"],
        True,
    )


@pytest.mark.parametrize("technique", ORDER)
def test_config_is_frozen_and_round_trips(technique):
    cls = get_technique(technique).config_cls
    cfg = cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.some_field = 1  # type: ignore[attr-defined]
    assert cls.from_dict(cfg.as_dict()) == cfg
    assert all(cls.field_help().values()), "every field documents itself"


@pytest.mark.parametrize(
    "technique,bad",
    [
        ("adapter", {"variant": "pfeifer"}),
        ("adapter", {"reduction_factor": 0}),
        ("adapter", {"reduction_factor": "16"}),
        ("lora", {"r": 0}),
        ("lora", {"targets": ["q", "x"]}),
        ("lora", {"alpha": True}),
        ("prefix", {"prefix_length": 0}),
        ("compacter", {"variant": "x"}),
        ("prompt", {"combine": "suffix"}),
        ("ia3", {"targets": [], "intermediate": False}),
        ("lora", {"rank": 4}),
    ],
)
def test_bad_configs_are_clear_errors(technique, bad):
    with pytest.raises(PeftportError, match=technique):
        make_config(technique, bad)


def test_config_of_another_technique_is_refused():
    with pytest.raises(PeftportError, match="takes a LoraConfig"):
        make_config("lora", make_config("ia3"))


# --- the support table ---------------------------------------------------------------------


def test_support_table_covers_every_technique_and_kind():
    assert set(SUPPORT) == set(ORDER)
    for row in SUPPORT.values():
        assert set(row) == set(KINDS)
    assert supports("prompt", "bert") and not supports("prompt", "t5")
    assert not supports("prompt", DECODER_LM)


def test_docs_carry_the_support_table_and_defaults():
    text = DOCS.read_text()
    assert support_table_markdown() in text, "docs/techniques.md: regenerate the support table"
    assert defaults_markdown() in text, "docs/techniques.md: regenerate the defaults table"


@pytest.mark.parametrize("technique,family", REFUSED, ids=[f"{t}-{f}" for t, f in REFUSED])
def test_refused_cells_are_refused_by_adapters_and_by_attach(technique, family):
    import adapters

    host = load(family)
    adapters.init(host.model)
    with pytest.raises(ValueError, match="not supported"):  # adapters itself refuses the cell
        host.model.add_adapter("probe", config=make_config(technique).to_adapters())
    host = load(family)
    with pytest.raises(PeftportError, match="not supported on .* It works on: encoder-classifier"):
        attach(host.model, family, technique)


# --- attach and the module state -------------------------------------------------------------


@pytest.mark.parametrize("technique,family", CASES, ids=CASE_IDS)
def test_attach_freezes_host_and_counts_trainable(technique, family):
    host = load(family)
    total = host.num_parameters()
    att = attach(host.model, family, technique, small_config(technique), seed=0)
    state = module_state(host.model)
    keys = module_keys(host.model)
    heads = head_keys(host.model)
    assert keys and all("peftport" in k.split(".") for k in keys)
    assert set(state) == set(keys) | set(heads)
    module_n = sum(state[k].numel() for k in keys)
    head_n = sum(state[k].numel() for k in heads)
    assert att.module_parameters == module_n > 0
    assert att.trainable == trainable_parameters(host.model) == module_n + head_n
    assert (head_n > 0) == (family == "bert")
    trainable = {n for n, p in host.model.named_parameters() if p.requires_grad}
    assert all("peftport" in n.split(".") or n in heads for n in trainable)
    # the host itself is unchanged and frozen
    assert host.num_parameters() == total + module_n
    assert not host.model.training, "attach leaves the train/eval mode alone"


def test_head_trainability_is_explicit():
    host = load("bert")
    att = attach(host.model, "bert", "lora", seed=0, train_head=False)
    assert att.head_keys == ("classifier.weight", "classifier.bias")
    assert not any(host.model.get_parameter(k).requires_grad for k in att.head_keys)
    assert att.trainable == att.module_parameters
    host = load("bert")
    att = attach(host.model, "bert", "lora", seed=0, train_head=True)
    assert all(host.model.get_parameter(k).requires_grad for k in att.head_keys)
    assert att.trainable == att.module_parameters + 16 * 2 + 2
    assert not host.model.bert.pooler.dense.weight.requires_grad


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_compacter_shared_rule_is_in_the_state(family):
    host = load(family)
    attach(host.model, family, "compacter", small_config("compacter"))
    rules = [k for k in module_state(host.model) if k.endswith("phm_rule")]
    assert rules and all(
        k.startswith(("shared_parameters.", "bert.shared_parameters.")) for k in rules
    )


@pytest.mark.parametrize("family", ["bert", "t5", "gpt2"])
def test_prefix_pool_appears_once_outside_the_layers(family):
    host = load(family)
    attach(host.model, family, "prefix")
    keys = module_keys(host.model)
    assert keys and all(".prefix_tuning.pool." not in k for k in keys)
    sd_aliases = [k for k in host.model.state_dict() if "peftport" in k.split(".")]
    assert len(sd_aliases) > len(keys), "adapters registers the pool under every layer"


def test_compacter_width_is_checked_against_the_host():
    host = load("t5")
    with pytest.raises(PeftportError, match="multiples of phm_dim 4.*reduction factors that work"):
        attach(host.model, "t5", "compacter")


def test_attach_refuses_reuse_of_a_name_and_a_wrong_family():
    host = load("gpt2")
    attach(host.model, "gpt2", "lora")
    with pytest.raises(PeftportError, match="already carries a module named 'peftport'"):
        attach(host.model, "gpt2", "ia3")
    with pytest.raises(PeftportError, match="gpt2 model, not llama"):
        attach(load("gpt2").model, "llama", "lora")
    with pytest.raises(PeftportError, match="identifier"):
        attach(load("gpt2").model, "gpt2", "lora", name="my module")


@pytest.mark.parametrize("technique,family", CASES, ids=CASE_IDS)
def test_same_seed_same_init_and_rng_untouched(technique, family):
    a = load(family)
    rng = torch.get_rng_state()
    attach(a.model, family, technique, small_config(technique), seed=4)
    assert torch.equal(torch.get_rng_state(), rng), "attach must not move the caller's RNG"
    b = load(family)
    attach(b.model, family, technique, small_config(technique), seed=4)
    sa, sb = module_state(a.model), module_state(b.model)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = load(family)
    attach(c.model, family, technique, small_config(technique), seed=5)
    sc = module_state(c.model)
    differs = any(not torch.equal(sa[k], sc[k]) for k in sa)
    # IA3 starts at exactly one: without a head, every seed gives the same fresh module
    assert differs == (technique != "ia3" or family == "bert")


def test_module_state_is_a_copy():
    host = load("bert")
    attach(host.model, "bert", "lora")
    state = module_state(host.model)
    k = next(iter(state))
    state[k].add_(1.0)
    assert not torch.equal(state[k], module_state(host.model)[k])


def test_module_state_without_head():
    host = load("bert")
    attach(host.model, "bert", "adapter")
    assert not any(k.startswith("classifier") for k in module_state(host.model, include_head=False))


@pytest.mark.parametrize("technique,family", CASES, ids=CASE_IDS)
def test_load_module_state_round_trip_and_switch(technique, family):
    a = load(family)
    attach(a.model, family, technique, small_config(technique), seed=0)
    perturb(a.model)
    want = forward(a.model, family)
    b = load(family)
    attach(b.model, family, technique, small_config(technique), seed=9)
    assert not torch.allclose(forward(b.model, family), want, atol=1e-5)
    load_module_state(b.model, module_state(a.model))
    torch.testing.assert_close(forward(b.model, family), want, rtol=1e-5, atol=1e-6)
    set_module_active(b.model, False)
    assert not torch.allclose(forward(b.model, family), want, atol=1e-4)
    set_module_active(b.model, True)
    torch.testing.assert_close(forward(b.model, family), want, rtol=1e-5, atol=1e-6)


def test_load_module_state_is_strict():
    a = load("bert")
    attach(a.model, "bert", "lora")
    state = module_state(a.model)
    key = next(k for k in state if "lora_A" in k)
    missing = {k: v for k, v in state.items() if k != key}
    with pytest.raises(PeftportError, match=r"missing tensors \(1\):\n  " + re.escape(key)):
        load_module_state(a.model, missing)
    extra = dict(state, **{"bert.encoder.layer.0.loras.peftport.x": torch.zeros(1)})
    with pytest.raises(PeftportError, match="unexpected tensors"):
        load_module_state(a.model, extra)
    bad = dict(state, **{key: torch.zeros(3, 3)})
    with pytest.raises(PeftportError, match="shape mismatches"):
        load_module_state(a.model, bad)
    partial_head = {k: v for k, v in state.items() if k != "classifier.bias"}
    with pytest.raises(PeftportError, match="classifier.bias"):
        load_module_state(a.model, partial_head)
    # the head is optional as a group
    load_module_state(a.model, {k: v for k, v in state.items() if not k.startswith("classifier")})
    with pytest.raises(PeftportError, match="no module named 'other'"):
        load_module_state(a.model, state, name="other")
    with pytest.raises(PeftportError, match="no module named 'other'"):
        set_module_active(a.model, False, name="other")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_prefix_on_decoders_switches_to_eager_and_learns_with_padding(family):
    host = load(family)
    assert host.model.config._attn_implementation != "eager"
    attach(host.model, family, "prefix", {"prefix_length": 5})
    assert host.model.config._attn_implementation == "eager"
    b = batch(family)
    labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    host.model(**b, labels=labels).loss.backward()
    grads = [p.grad for n, p in host.model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0, "prefix gradients vanished (sdpa?)"


# --- capabilities: what a technique declares, checked against what it does ------------------

# technique -> (layer_mappable, eager_attention kinds, neutral_fill, peft_type, PEFT refuses it)
# Adding a technique: its file in src/peftport/techniques/ and one row here.
CAPABILITIES = {
    "adapter": (True, set(), None, None, True),
    "lora": (True, set(), 0.0, "LORA", False),
    "prefix": (False, {DECODER_LM}, None, "PREFIX_TUNING", False),
    "compacter": (True, set(), None, None, True),
    "prompt": (True, set(), None, "PROMPT_TUNING", True),
    "ia3": (True, set(), 1.0, "IA3", False),
}


def test_every_technique_declares_its_capabilities():
    assert set(CAPABILITIES) == set(TECHNIQUES)
    for name, (mappable, eager, neutral, peft_type, refused) in CAPABILITIES.items():
        t = get_technique(name)
        assert set(t.support) == set(KINDS), name
        assert (t.layer_mappable, set(t.eager_attention), t.neutral_fill, t.peft_type) == (
            mappable,
            eager,
            neutral,
            peft_type,
        ), name
        assert bool(t.peft_refused) == refused, name
        assert t.peft_exportable == (peft_type is not None and not refused), name


def test_no_code_outside_techniques_tells_techniques_apart_by_name():
    """Behaviour per technique is asked of the technique: a name compared outside
    src/peftport/techniques/ would be a second place to edit when a technique is added."""
    src = Path(__file__).resolve().parents[1] / "src" / "peftport"
    names = "|".join(re.escape(t) for t in TECHNIQUES)
    quoted = rf"""["']({names})["']"""
    compare = re.compile(rf"(==|!=|\bin)\s*[(\[{{]?\s*{quoted}|{quoted}\s*(==|!=|\bin\b)")
    found = [
        f"{path.relative_to(src)}:{i}: {line.strip()}"
        for path in sorted(src.rglob("*.py"))
        if "techniques" not in path.parts
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if compare.search(line)
    ]
    assert not found, found


@pytest.mark.parametrize("technique", ORDER)
def test_from_adapters_inverts_to_adapters_and_only_for_its_own(technique):
    """Each technique reads back its own AdapterHub config (a non-default one, so a reader
    that ignored the config could not pass) and no other technique claims it."""
    changed = {
        "adapter": {"variant": "houlsby", "reduction_factor": 8},
        "lora": {"r": 4, "alpha": 8, "targets": ["q", "k"], "output": True},
        "prefix": {"prefix_length": 7, "flat": True},
        "compacter": {"variant": "pfeiffer", "phm_dim": 2, "reduction_factor": 8},
        "prompt": {"prompt_length": 3, "combine": "prefix_after_bos"},
        "ia3": {"targets": ["q"], "intermediate": False},
    }[technique]
    cfg = make_config(technique, changed)
    theirs = cfg.to_adapters().to_dict()
    assert make_config(technique, get_technique(technique).config_cls.from_adapters(theirs)) == cfg
    claimed = [t for t in ORDER if get_technique(t).config_cls.from_adapters(theirs) is not None]
    assert claimed == [technique]


@pytest.mark.parametrize("technique", [t for t in ORDER if CAPABILITIES[t][2] is not None])
def test_the_neutral_fill_leaves_the_host_unchanged(technique):
    """Every module tensor set to the declared neutral value computes the host alone."""
    host = load("bert")
    attach(host.model, "bert", technique, small_config(technique), seed=0)
    perturb(host.model)  # a fresh module may already be neutral: move it off first
    state = module_state(host.model, include_head=False)
    neutral = get_technique(technique).neutral_fill
    load_module_state(host.model, {k: torch.full_like(v, neutral) for k, v in state.items()})
    with_module = forward(host.model, "bert")
    set_module_active(host.model, False)
    assert torch.allclose(with_module, forward(host.model, "bert"), atol=1e-6)


def test_a_new_technique_is_one_file(monkeypatch):
    """A technique registered with its declarations alone (no edit elsewhere) is listed,
    supported where it says, attached (switching to eager attention where it says), refused by
    PEFT export with its reason and kept away from layer maps that move layers."""
    from dataclasses import dataclass

    from peftport.interop import check_peft_exportable
    from peftport.module import module_meta
    from peftport.porting import PortingError, ReceiverSpec, port
    from peftport.techniques import Support, Technique, TechniqueConfig, supported_kinds
    from peftport.techniques.base import YES, doc

    @dataclass(frozen=True)
    class FakeConfig(TechniqueConfig):
        technique = "fake"

        r: int = doc(2, "rank")

        def to_adapters(self):
            import adapters

            return adapters.LoRAConfig(r=self.r, alpha=self.r)

        @classmethod
        def from_adapters(cls, c):
            return None

    fake = Technique(
        config_cls=FakeConfig,
        summary="a LoRA under another name",
        reference="this test",
        order=99,
        support={
            ENCODER_CLASSIFIER: YES,
            TEXT_TO_TEXT: Support(False, "not here"),
            DECODER_LM: YES,
        },
        layer_mappable=False,
        eager_attention=frozenset({ENCODER_CLASSIFIER}),
        peft_refused="PEFT has no fake",
    )
    monkeypatch.setitem(TECHNIQUES._entries, "fake", fake)
    assert "`fake`" in support_table_markdown() and "| `fake` | `r` | 2 |" in defaults_markdown()
    assert supported_kinds("fake") == [ENCODER_CLASSIFIER, DECODER_LM]
    with pytest.raises(PeftportError, match="not supported on text-to-text hosts .not here."):
        attach(load("t5").model, "t5", "fake")
    host = load("bert")
    assert host.model.config._attn_implementation != "eager"
    att = attach(host.model, "bert", "fake", {"r": 3})
    assert host.model.config._attn_implementation == "eager" and att.config.r == 3
    with pytest.raises(PeftportError, match="no faithful PEFT export for 'fake': PEFT has no"):
        check_peft_exportable("fake", "bert")
    meta = module_meta(att, host, task="toy", label_words=["a", "b"], steps=1)
    tensors = module_state(host.model)
    other = load("bert")
    spec = ReceiverSpec.from_attached(attach(other.model, "bert", "fake", {"r": 3}))
    with pytest.raises(PortingError, match="cannot be applied"):
        port(tensors, meta, spec, "ported", seed=0, layer_map={0: 1, 1: 0})
    assert set(port(tensors, meta, spec, "ported", seed=0, layer_map={0: 0, 1: 1})) == set(tensors)


# --- real host -------------------------------------------------------------------------------


def _docs_counts() -> dict[str, tuple[int, int]]:
    """technique -> (module, head) from the trainable-parameter table in docs/techniques.md."""
    section = DOCS.read_text().split("## Trainable parameters on minilm-l6", 1)[1]
    out = {}
    for m in re.finditer(r"^\| `(\w+)` \| ([\d,]+) \| ([\d,]+) \|", section, re.M):
        out[m.group(1)] = (int(m.group(2).replace(",", "")), int(m.group(3).replace(",", "")))
    return out


@pytest.mark.slow
def test_trainable_counts_on_minilm_l6_match_the_docs():
    documented = _docs_counts()
    assert set(documented) == set(ORDER)
    for technique in ORDER:
        host = load_host("minilm-l6")
        att = attach(host.model, "bert", technique, seed=0)
        assert (att.module_parameters, att.trainable - att.module_parameters) == documented[
            technique
        ], technique
