"""Hosts: registry, loading, forward passes, derivation, clear errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

from peftport.cli import app
from peftport.errors import PeftportError, UnknownNameError
from peftport.hosts import HOSTS, get_host, load_host

runner = CliRunner()


@pytest.mark.parametrize("host", ["tiny-bert", "tiny-t5", "tiny-gpt2", "tiny-llama"])
def test_tiny_hosts_forward(host):
    h = load_host(host)
    enc = h.tokenizer(["the movie is great", "bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        if h.kind == "text-to-text":
            out = h.model(**enc, decoder_input_ids=torch.zeros(2, 1, dtype=torch.long)).logits
        else:
            out = h.model(**enc).logits
    assert torch.isfinite(out).all()
    assert len(h.fingerprint) == 64
    assert load_host(host).fingerprint == h.fingerprint  # built once, deterministic


def test_unknown_host_did_you_mean():
    with pytest.raises(PeftportError, match="Did you mean 'minilm-l6'"):
        get_host("minilm-l7")
    with pytest.raises(UnknownNameError):
        HOSTS.get("minlm-l6")


def test_folder_without_config(tmp_path):
    with pytest.raises(PeftportError, match="no config.json"):
        get_host(str(tmp_path))


def test_pickle_only_checkpoint_refused(tmp_path):
    src = load_host("tiny-bert").folder
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(PeftportError, match="does not unpickle"):
        load_host(str(tmp_path))


def test_hub_id_offline_is_clear():
    with pytest.raises(PeftportError, match="offline .* not in the hub cache"):
        load_host("google/flan-t5-base")


def test_unsupported_family(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(PeftportError, match="model_type 'whisper' is not a supported family"):
        get_host(str(tmp_path))


def test_cli_hosts_list_and_errors():
    res = runner.invoke(app, ["hosts", "list", "--json"])
    assert res.exit_code == 0, res.output
    ids = {r["id"] for r in json.loads(res.output)}
    assert {"minilm-l6", "minilm-l3", "minilm-l6-tuned", "flan-t5-base"} <= ids


def test_cli_user_error_exits_2_without_traceback():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "peftport", "hosts", "show", "minilm-l7"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Did you mean 'minilm-l6'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_derive_tiny_is_deterministic_and_drifts(isolated_home):
    from peftport.hosts.derive import read_drift

    args = [
        "hosts",
        "derive",
        "--name",
        "tiny-child",
        "--from",
        "tiny-bert",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--max-length",
        "32",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    child = load_host("tiny-child")
    parent = load_host("tiny-bert")
    assert child.spec.parent == "tiny-bert"
    assert child.fingerprint != parent.fingerprint
    drift = read_drift(child.folder)["drift"]
    assert set(drift) >= {"embeddings", "layer.0", "layer.1"}
    assert all(v > 0 for v in drift.values())
    parent_state = parent.model.state_dict()
    for k, v in child.model.state_dict().items():
        if "pooler" in k:  # carried over from the parent, not re-initialised
            assert torch.equal(v, parent_state[k])
    # Same recipe again: reuses the cached build; same name, other recipe: refused.
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, args[:-1] + ["48"])
    assert res.exit_code != 0 and "exists with another recipe" in str(res.exception)
    # A rebuild from scratch gives the same weights.
    import shutil

    shutil.rmtree(isolated_home / "hosts")
    assert runner.invoke(app, args[:2] + ["--name", "tiny-child2"] + args[4:]).exit_code == 0
    assert load_host("tiny-child2").fingerprint == child.fingerprint


@pytest.mark.slow
def test_minilm_l6_real_archive_forward():
    h = load_host("minilm-l6")
    assert h.num_parameters() == 22_713_216 + 384 * 2 + 2  # BertModel (with pooler) + 2-way head
    enc = h.tokenizer(["a gripping, beautiful film"], return_tensors="pt")
    with torch.no_grad():
        hidden = h.model.bert(**enc).last_hidden_state
    assert hidden.shape == (1, enc["input_ids"].shape[1], 384)
    assert h.fingerprint == load_host("minilm-l6").fingerprint


@pytest.mark.slow
def test_minilm_l6_tuned_is_derived_with_documented_drift():
    from peftport.hosts.derive import read_drift

    tuned = load_host("minilm-l6-tuned")
    parent = load_host("minilm-l6")
    assert tuned.spec.parent == "minilm-l6"
    assert tuned.fingerprint != parent.fingerprint
    info = read_drift(tuned.folder)
    layers = [v for k, v in info["drift"].items() if k.startswith("layer.")]
    assert len(layers) == 6
    assert min(layers) > 0.005 and max(layers) < 0.2  # moved, but still the same model
    assert info["mlm_loss_last10"] < info["mlm_loss_first10"]
    pooled = {k: v for k, v in tuned.model.state_dict().items() if "pooler" in k}
    for k, v in parent.model.state_dict().items():
        if "pooler" in k:
            assert torch.equal(v, pooled[k])


@pytest.mark.parametrize("host", ["tiny-bert", "tiny-t5", "tiny-gpt2", "tiny-llama"])
def test_layout_reads_a_family_config(host):
    """A host's Layout knows its config.json: the shape fields (all present on a real host),
    the depth a layer map counts, the class the model loads as, its tiny recipe."""
    from peftport.hosts import host_folder

    h = load_host(host)
    layout = h.spec.layout
    cfg = json.loads((host_folder(h.spec) / "config.json").read_text())
    shape = layout.shape(cfg)
    assert set(shape) == set(layout.shape_keys) and set(layout.depth_keys) <= set(shape)
    assert layout.depth(cfg) == len(h.model.get_submodule(layout.layer_stacks[0])) == 2
    assert shape[layout.hidden_key] == 16 == layout.tiny_config[layout.hidden_key]
    if layout.family != "bert":  # tiny-bert is built as a BertModel, loaded as a classifier
        assert layout.tiny_class == layout.model_class
    assert type(h.model).__name__ == layout.model_class
    if layout.position_table:
        assert h.model.get_submodule(layout.position_table).weight.shape[1] == 16


def test_layout_shape_of_a_partial_config():
    from peftport.hosts.spec import LAYOUTS

    t5 = LAYOUTS["t5"]
    # transformers reads a missing num_decoder_layers as num_layers
    assert t5.shape({"d_model": 8, "num_layers": 3})["num_decoder_layers"] == 3
    assert t5.depth({"num_layers": 3}) == 3
    assert t5.depth({}) is None and LAYOUTS["bert"].depth({"num_hidden_layers": True}) is None


def test_cached_sources_never_build(isolated_home):
    """`cached()` peeks: None before a build, the folder after (what the study file check uses
    to compare shapes without building or downloading anything)."""
    built = get_host("tiny-bert").sources[-1]
    assert built.cached() is None
    folder = built.resolve()
    assert built.cached() == folder
