"""Porting methods: each has an exact expected result on tiny hosts (copy is the ported
condition; a scale of 1, a full subspace and an identity alignment change nothing; align undoes a
known rotation of the hidden space), and align ports across hidden widths."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import BertConfig, BertModel

from peftport.errors import PeftportError, UnknownNameError
from peftport.hosts import load_host
from peftport.hosts.tiny import _vocab, write_tokenizer
from peftport.methods import (
    Alignment,
    HiddenMap,
    MethodInputs,
    ParsedMethod,
    fit_map,
    parse_method,
    port_with_method,
)
from peftport.module import load_module, module_meta, save_module
from peftport.porting import PortingError, port
from peftport.porting_io import port_module
from peftport.techniques import attach, load_module_state, module_state
from test_porting import receiver, trained
from test_techniques import forward, load, one_thread, perturb, small_config  # noqa: F401

BERT = ["lora", "adapter", "prefix", "prompt", "compacter", "ia3"]
SCALABLE = ["lora", "adapter", "compacter", "ia3"]
ALIGNABLE = ["lora", "adapter", "prefix", "prompt"]


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


# --- parsing and the registry -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text,name,params",
    [
        ("copy", "copy", {}),
        ("scaled:0.5", "scaled", {"factor": 0.5}),
        ("subspace", "subspace", {"rank": None}),
        ("subspace:4", "subspace", {"rank": 4}),
        ("align", "align", {"fit": "procrustes"}),
        ("align:lstsq", "align", {"fit": "lstsq"}),
    ],
)
def test_methods_parse(text, name, params):
    assert parse_method(text) == ParsedMethod(name, params)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("scaleed:0.5", "Did you mean 'scaled'"),
        ("scaled", "needs a finite factor"),
        ("scaled:x", "needs a finite factor"),
        ("subspace:0", "rank >= 1"),
        ("copy:2", "takes no parameter"),
        ("align:svd", "procrustes or lstsq"),
    ],
)
def test_bad_methods_are_clear_errors(text, needle):
    with pytest.raises((PeftportError, UnknownNameError), match=needle):
        parse_method(text)


# --- copy, scaled, subspace ----------------------------------------------------------------


@pytest.mark.parametrize("technique", BERT)
def test_copy_is_the_ported_condition_bit_for_bit(technique):
    _, tensors, meta = trained("bert", technique)
    _, spec = receiver("bert", technique)
    same_state(
        port_with_method(tensors, meta, spec, "copy"), port(tensors, meta, spec, "ported", seed=5)
    )


@pytest.mark.parametrize("technique", SCALABLE)
def test_a_scale_of_one_is_copy(technique):
    _, tensors, meta = trained("bert", technique)
    _, spec = receiver("bert", technique)
    same_state(
        port_with_method(tensors, meta, spec, "scaled:1"),
        port(tensors, meta, spec, "ported", seed=5),
    )


@pytest.mark.parametrize("technique", SCALABLE)
def test_a_scale_of_zero_is_the_host_alone_and_half_is_half_the_change(technique):
    origin, tensors, meta = trained("bert", technique)
    model, spec = receiver("bert", technique)
    head = {k: v for k, v in tensors.items() if k.startswith("classifier.")}
    load_module_state(model, port_with_method(tensors, meta, spec, "scaled:0"))
    with_zero = forward(model, "bert")
    # the host with the module's head and a neutral module: what scaled:0 must give
    neutral = {**spec.fresh, **head}
    if technique == "lora":  # a fresh LoRA has B = 0, the neutral update
        neutral = {
            k: (torch.zeros_like(v) if k.endswith("lora_B") else v) for k, v in neutral.items()
        }
    if technique in ("adapter", "compacter"):
        neutral = {
            k: (torch.zeros_like(v) if ".adapter_up." in k and not k.endswith("W_right") else v)
            for k, v in neutral.items()
        }
    if technique == "ia3":
        neutral = {
            k: (torch.ones_like(v) if k.endswith("lora_B") else v) for k, v in neutral.items()
        }
    load_module_state(model, neutral)
    torch.testing.assert_close(with_zero, forward(model, "bert"), atol=1e-6, rtol=0)
    if technique == "lora":  # B -> B / 2 exactly
        half = port_with_method(tensors, meta, spec, "scaled:0.5")
        for k, v in half.items():
            want = tensors[k] * 0.5 if k.endswith("lora_B") else tensors[k]
            assert torch.equal(v, want), k
    if technique == "ia3":
        half = port_with_method(tensors, meta, spec, "scaled:0.5")
        for k, v in half.items():
            if k.endswith("lora_B"):
                torch.testing.assert_close(v, 1 + 0.5 * (tensors[k] - 1))


@pytest.mark.parametrize("technique", ["prefix", "prompt"])
def test_scaling_a_prefix_or_prompt_is_refused(technique):
    _, tensors, meta = trained("bert", technique)
    _, spec = receiver("bert", technique)
    with pytest.raises(PortingError, match="no neutral value"):
        port_with_method(tensors, meta, spec, "scaled:0.5")


def test_full_subspace_is_copy_and_a_rank_projects():
    _, tensors, meta = trained("bert", "lora")
    model, spec = receiver("bert", "lora")
    w = weights(model)
    full = port_with_method(tensors, meta, spec, "subspace", inputs=MethodInputs(w))
    same_state(full, port(tensors, meta, spec, "ported", seed=5), atol=1e-6)
    low = port_with_method(tensors, meta, spec, "subspace:3", inputs=MethodInputs(w))
    key = "bert.encoder.layer.0.attention.self.query.loras.peftport.lora_B"
    u, _, _ = torch.linalg.svd(w["bert.encoder.layer.0.attention.self.query.weight"])
    inside = u[:, :3].T @ low[key]  # what is left lies in the top 3 left singular vectors
    torch.testing.assert_close(u[:, :3] @ inside, low[key], atol=1e-6, rtol=0)
    assert not torch.allclose(low[key], tensors[key], atol=1e-3)


@pytest.mark.parametrize("technique", ["adapter", "ia3"])
def test_subspace_is_for_lora_only(technique):
    _, tensors, meta = trained("bert", technique)
    model, spec = receiver("bert", technique)
    with pytest.raises(PortingError, match="LoRA only"):
        port_with_method(tensors, meta, spec, "subspace", inputs=MethodInputs(weights(model)))


# --- align -------------------------------------------------------------------------------


def rotation(d: int, seed: int = 7) -> torch.Tensor:
    """A random orthogonal d x d matrix that keeps the all-ones direction, so it commutes with
    layer norm's centring (a layer norm with gain 1 and bias 0 then commutes with it)."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(
        torch.cat([torch.ones(d, 1), torch.randn(d, d - 1, generator=g)], dim=1).double()
    )
    inner, _ = torch.linalg.qr(torch.randn(d - 1, d - 1, generator=g).double())
    block = torch.eye(d, dtype=torch.float64)
    block[1:, 1:] = inner
    return basis @ block @ basis.T


def rotate_bert(model, r: torch.Tensor) -> None:
    """Rewrite a BERT classifier's weights for the hidden space h -> h @ r: the same function,
    every hidden state rotated (its layer norms must have gain 1 and bias 0)."""
    sd = model.state_dict()
    rf = r.float()
    with torch.no_grad():
        for k, v in sd.items():
            if "LayerNorm" in k:
                assert torch.equal(
                    v, torch.ones_like(v) if k.endswith("weight") else torch.zeros_like(v)
                ), k
            elif ".embeddings." in k and k.endswith("weight"):
                v.copy_(v @ rf)
            elif any(s in k for s in ("attention.self.", "intermediate.dense", "pooler.dense")):
                if k.endswith("weight"):
                    v.copy_(v @ rf)  # reads the hidden space
            elif ".output.dense" in k:  # both read another space (heads, feed-forward)
                v.copy_(rf.T @ v if k.endswith("weight") else v @ rf)  # writes it


def rotated_pair(technique: str):
    origin, tensors, meta = trained("bert", technique)
    r = rotation(16)
    rotated = copy.deepcopy(load("bert").model)
    rotate_bert(rotated, r)
    model, spec = receiver("bert", technique, model=rotated)
    return origin, tensors, meta, model, spec, r


def hand_alignment(r: torch.Tensor, origin_model, receiver_model, layers: int = 2) -> Alignment:
    m = HiddenMap(r.double(), r.double().T.clone())
    maps = {(i, j): m for i in range(layers + 1) for j in range(layers + 1)}
    return Alignment("procrustes", maps, weights(origin_model), weights(receiver_model))


@pytest.mark.parametrize(
    "technique,family",
    [(t, "bert") for t in ALIGNABLE]
    + [("lora", "llama"), ("adapter", "gpt2"), ("adapter", "llama")],
)
def test_an_identity_alignment_changes_nothing(technique, family):
    origin, tensors, meta = trained(family, technique)
    model, spec = receiver(family, technique)
    # the receiver is the origin's host itself, carried by the identity
    al = hand_alignment(torch.eye(16), origin.model, model)
    got = port_with_method(tensors, meta, spec, "align", inputs=MethodInputs(alignment=al))
    same_state(got, port(tensors, meta, spec, "ported", seed=5), atol=1e-5)


@pytest.mark.parametrize("technique", ALIGNABLE)
def test_align_undoes_a_known_rotation_of_the_hidden_space(technique):
    origin, tensors, meta, model, spec, r = rotated_pair(technique)
    want = forward(origin.model, "bert")
    copied = port_with_method(tensors, meta, spec, "copy")
    load_module_state(model, copied)
    if technique != "prefix":  # a prefix lives in key/value space, which the rotation keeps
        assert not torch.allclose(forward(model, "bert"), want, atol=1e-3), "copy is not enough"
    al = hand_alignment(r, origin.model, model)
    load_module_state(
        model, port_with_method(tensors, meta, spec, "align", inputs=MethodInputs(alignment=al))
    )
    torch.testing.assert_close(forward(model, "bert"), want, atol=1e-5, rtol=0)


def test_fitted_alignment_recovers_the_rotation():
    from peftport.alignfit import fit_alignment
    from peftport.hosts import LoadedHost

    origin = load("bert")
    r = rotation(16)
    rotated = copy.deepcopy(origin.model)
    rotate_bert(rotated, r)
    host_r = LoadedHost(**{**origin.__dict__, "model": rotated})
    al = fit_alignment(origin, host_r, texts=24)
    # layer norm centres every hidden state: the all-ones direction carries no data, and the
    # fit is the rotation on the rest
    centre = torch.eye(16, dtype=torch.float64) - 1 / 16
    for i in range(3):
        torch.testing.assert_close(centre @ al.get(i, i).forward, centre @ r, atol=1e-5, rtol=0)
    assert al.info["rows"] == "tokens" and al.info["texts"] == 24
    # and the fitted maps carry a LoRA module across: the origin's outputs come back
    o_host, tensors, meta = trained("bert", "lora")
    model, spec = receiver("bert", "lora", model=rotated)
    al = fit_alignment(load("bert"), host_r, texts=24)
    al = Alignment(al.kind, al.maps, weights(load("bert").model), al.receiver_weights)
    load_module_state(
        model, port_with_method(tensors, meta, spec, "align", inputs=MethodInputs(alignment=al))
    )
    torch.testing.assert_close(
        forward(model, "bert"), forward(o_host.model, "bert"), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    "technique,family,needle",
    [
        ("compacter", "bert", "cannot carry compacter modules"),
        ("ia3", "bert", "cannot carry ia3 modules"),
        ("lora", "gpt2", "on bert, llama hosts only"),
        ("lora", "t5", "on bert, llama hosts only"),
        ("adapter", "t5", "on bert, gpt2, llama hosts only"),
    ],
)
def test_align_refuses_what_it_cannot_carry(technique, family, needle):
    origin, tensors, meta = trained(family, technique)
    model, spec = receiver(family, technique)
    al = hand_alignment(torch.eye(16), origin.model, model)
    with pytest.raises(PortingError, match=needle):
        port_with_method(tensors, meta, spec, "align", inputs=MethodInputs(alignment=al))


def test_fit_map_exact_on_hand_made_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    r = rotation(6, seed=3)
    m = fit_map(x.T @ (x @ r))
    torch.testing.assert_close(m.forward, r)
    wide = torch.linalg.qr(torch.randn(9, 6, generator=g, dtype=torch.float64))[0].T  # 6 x 9
    ls = fit_map(x.T @ (x @ wide), x.T @ x, (x @ wide).T @ (x @ wide), "lstsq")
    torch.testing.assert_close(ls.forward, wide)
    torch.testing.assert_close((x @ wide) @ ls.backward, x)


# --- across hidden widths -------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_host(tmp_path_factory):
    """A tiny BERT 32 wide (the tiny hosts are 16 wide), saved as a local host folder."""
    out = tmp_path_factory.mktemp("tiny-bert-32")
    torch.manual_seed(3)
    BertModel(
        BertConfig(
            vocab_size=len(_vocab()),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    ).save_pretrained(out)
    write_tokenizer(out, "bert")
    return out


def saved_module(tmp_path, technique: str):
    host = load("bert")
    att = attach(host.model, "bert", technique, small_config(technique), seed=0)
    perturb(host.model, seed=1)
    meta = module_meta(att, host, task="sst2", label_words=["negative", "positive"], steps=10)
    return save_module(tmp_path / "module", module_state(host.model), meta)


@pytest.mark.parametrize("technique", ["lora", "adapter"])
def test_a_width_16_module_ports_by_align_into_a_width_32_host(tmp_path, wide_host, technique):
    src = saved_module(tmp_path, technique)
    path, meta = port_module(
        src, str(wide_host), "ported", 0, tmp_path / "out", method="align", align_texts=24
    )
    info = meta["port"]
    assert info["method"] == "align" and info["fit"] == "procrustes"
    assert (info["origin_hidden_size"], info["receiver_hidden_size"]) == (16, 32)
    tensors, saved = load_module(path)
    assert json.loads(json.dumps(saved["port"]))["method"] == "align"
    host = load_host(str(wide_host))
    attach(host.model, "bert", technique, small_config(technique), seed=0)
    load_module_state(host.model, tensors)
    logits = forward(host.model, "bert")
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()


def test_without_align_the_width_error_names_it_and_suggests_align(tmp_path, wide_host):
    src = saved_module(tmp_path, "lora")
    with pytest.raises(PortingError, match=r"origin 16, receiver 32.*--method align"):
        port_module(src, str(wide_host), "ported", 0, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_copy_is_recorded_and_methods_need_the_ported_condition(tmp_path):
    src = saved_module(tmp_path, "lora")
    _, meta = port_module(src, "tiny-bert", "ported", 0, tmp_path / "a")
    assert meta["port"]["method"] == "copy"
    _, meta = port_module(src, "tiny-bert", "ported", 0, tmp_path / "b", method="scaled:0.5")
    assert meta["port"]["method"] == "scaled" and meta["port"]["factor"] == 0.5
    with pytest.raises(PeftportError, match="applies to the ported condition"):
        port_module(src, "tiny-bert", "sampled", 0, tmp_path / "c", method="scaled:0.5")


def test_load_into_ports_as_peftport_port_does(tmp_path):
    """One porting step (`runs.port_into`): a module loaded under a condition and a method, as
    a study's post unit and `adapt` load it, holds exactly the tensors `peftport port` saves."""
    from peftport.data import load_dataset
    from peftport.runs import load_into

    src = saved_module(tmp_path, "lora")
    path, _ = port_module(src, "tiny-bert", "ported", 0, tmp_path / "out", method="scaled:0.5")
    saved, _ = load_module(path)
    data = load_dataset("tiny_sentiment")
    h, att, _ = load_into(src, "tiny-bert", data, 0, condition="ported", method="scaled:0.5")
    same_state(module_state(h.model, att.name), saved)
    with pytest.raises(PeftportError, match="applies to the ported condition"):
        load_into(src, "tiny-bert", data, 0, condition="random", method="scaled:0.5")
