"""The module artifact: a safetensors file plus checked JSON metadata, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from peftport.errors import PeftportError
from peftport.module import (
    META_FILE,
    SCHEMA_VERSION,
    TENSOR_FILE,
    load_module,
    module_meta,
    read_meta,
    save_module,
)
from peftport.techniques import attach, load_module_state, make_config, module_state
from test_techniques import (  # noqa: F401 - one_thread: an autouse fixture
    load,
    one_thread,
    perturb,
)

KEY = "bert.encoder.layer.{}.attention.self.{}.loras.peftport.lora_{}"


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {
        KEY.format(i, m, ab): torch.randn((8, 16) if ab == "A" else (16, 8), generator=g)
        for i in (0, 1)
        for m in ("query", "value")
        for ab in "AB"
    }
    out["classifier.weight"] = torch.randn(2, 16, generator=g)
    out["classifier.bias"] = torch.zeros(2)
    return out


def meta(**changes) -> dict:
    base = {
        "technique": "lora",
        "config": {"r": 8, "alpha": 16, "targets": ["q", "v"]},
        "host_kind": "encoder-classifier",
        "host_family": "bert",
        "origin_host": "tiny-bert",
        "origin_fingerprint": "f" * 64,
        "task": "sst2",
        "label_words": ["negative", "positive"],
        "steps": 100,
        "seed": 0,
        "metrics": {"accuracy": 0.75},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def rewrite_meta(folder: Path, **changes) -> None:
    m = json.loads((folder / META_FILE).read_text())
    for k, v in changes.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    (folder / META_FILE).write_text(json.dumps(m))


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- round trip -----------------------------------------------------------------------------


def test_round_trip(tmp_path):
    t = tensors()
    path = save_module(tmp_path / "m", t, meta())
    assert entries(path) == sorted([TENSOR_FILE, META_FILE])
    assert entries(tmp_path) == ["m"], "no temporary folder left behind"
    got, m = load_module(path)
    assert got.keys() == t.keys() and all(torch.equal(got[k], t[k]) for k in t)
    assert m["schema_version"] == SCHEMA_VERSION and m["format"] == "peftport-module"
    assert m["num_tensors"] == 10 and m["num_parameters"] == sum(v.numel() for v in t.values())
    assert m["head_keys"] == ["classifier.bias", "classifier.weight"]
    assert {"torch", "transformers", "adapters", "safetensors", "python"} <= set(m["versions"])
    assert m["versions"]["adapters"] == "1.3.0"
    assert m["metrics"] == {"accuracy": 0.75} and m["steps"] == 100
    assert len(m["sha256"]) == 64
    assert m["config"] == make_config("lora").as_dict(), "the full config, defaults included"
    # either file of the folder names the module too
    assert load_module(path / TENSOR_FILE)[1] == m == read_meta(path / META_FILE)


def test_the_same_module_always_gets_the_same_hash(tmp_path):
    # the store and users compare modules by sha256: identical tensors, identical file bytes
    # (safetensors writes a metadata map in hash order; with several keys the order varied)
    digests = {
        read_meta(save_module(tmp_path / f"m{i}", tensors(), meta()))["sha256"] for i in range(8)
    }
    assert len(digests) == 1


def test_real_module_round_trip_loads_strictly(tmp_path):
    host = load("t5")
    att = attach(host.model, "t5", "compacter", {"reduction_factor": 4}, seed=0)
    perturb(host.model)
    state = module_state(host.model)
    m = module_meta(att, host, task="sst2", label_words=["negative", "positive"], steps=3)
    assert m["host_dims"] == {"hidden_size": 16, "layers": {"encoder.block": 2, "decoder.block": 2}}
    got, loaded = load_module(save_module(tmp_path / "c", state, m))
    assert any(k.endswith("phm_rule") for k in got), "the shared Compacter rule travels"
    other = load("t5")
    attach(other.model, "t5", "compacter", {"reduction_factor": 4}, seed=1)
    load_module_state(other.model, got)
    assert all(torch.equal(module_state(other.model)[k], state[k]) for k in state)
    assert loaded["config"]["reduction_factor"] == 4 and loaded["trainable"] == att.trainable


def test_save_is_refused_over_an_existing_module_unless_asked(tmp_path):
    path = save_module(tmp_path / "m", tensors(), meta())
    with pytest.raises(PeftportError, match="already exists"):
        save_module(path, tensors(), meta(steps=1))
    assert load_module(path)[1]["steps"] == 100
    save_module(path, tensors(), meta(steps=1), overwrite=True)
    assert load_module(path)[1]["steps"] == 1
    assert entries(tmp_path) == ["m"]
    empty = tmp_path / "empty"
    empty.mkdir()
    save_module(empty, tensors(), meta())  # an empty folder is fine


def test_saving_a_loaded_meta_again_recomputes_the_filled_fields(tmp_path):
    _, m = load_module(save_module(tmp_path / "a", tensors(), meta()))
    t = tensors()
    t["classifier.bias"] = torch.ones(2)
    _, m2 = load_module(save_module(tmp_path / "b", t, m))
    assert m2["sha256"] != m["sha256"]


# --- invalid saves write nothing --------------------------------------------------------------


@pytest.mark.parametrize(
    "changes,expect",
    [
        ({"technique": None}, "missing required field.*technique"),
        ({"steps": "100"}, "field 'steps' must be an integer"),
        ({"steps": True}, "field 'steps' must be an integer"),
        ({"steps": -1}, "'steps' must be >= 0"),
        ({"technique": "lorra"}, "field 'technique'.*Did you mean 'lora'"),
        ({"config": {"rank": 8}}, "field 'config': lora config: unknown field"),
        ({"config": {"r": "8"}}, "field 'config': .*'r' must be an integer"),
        ({"host_kind": "encoder"}, "field 'host_kind' must be one of"),
        ({"host_family": "t5"}, "host_family 't5' is a text-to-text family"),
        ({"label_words": [1, 2]}, "label_words"),
        ({"metrics": {"accuracy": float("nan")}}, "not JSON-able"),
        (
            {"technique": "prompt", "config": {}, "host_kind": "text-to-text", "host_family": "t5"},
            "not supported on text-to-text",
        ),
    ],
)
def test_invalid_meta_is_refused_before_writing(tmp_path, changes, expect):
    with pytest.raises(PeftportError, match=expect):
        save_module(tmp_path / "m", tensors(), meta(**changes))
    assert entries(tmp_path) == []


def test_other_fields_are_kept(tmp_path):
    _, m = load_module(
        save_module(
            tmp_path / "m", tensors(), meta(train_config={"lr": 1e-3}, environment={"git": "abc"})
        )
    )
    assert m["train_config"] == {"lr": 1e-3} and m["environment"] == {"git": "abc"}


def test_tensors_must_carry_the_module_name(tmp_path):
    with pytest.raises(PeftportError, match="module name 'peftport'"):
        save_module(tmp_path / "m", {"classifier.weight": torch.zeros(2, 2)}, meta())
    with pytest.raises(PeftportError, match="at least one tensor"):
        save_module(tmp_path / "m", {}, meta())
    with pytest.raises(PeftportError, match="module name 'other'"):
        save_module(tmp_path / "m", tensors(), meta(adapter_name="other"))
    assert entries(tmp_path) == []


def test_a_failing_write_leaves_nothing(tmp_path, monkeypatch):
    import peftport.module as module

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(module, "package_versions", boom)
    with pytest.raises(OSError, match="disk full"):
        save_module(tmp_path / "m", tensors(), meta())
    assert entries(tmp_path) == []


# --- corrupted or mismatched files are refused on loading -------------------------------------


@pytest.fixture
def saved(tmp_path) -> Path:
    return save_module(tmp_path / "m", tensors(), meta())


def test_flipped_byte_is_caught_by_the_hash(saved):
    data = bytearray((saved / TENSOR_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (saved / TENSOR_FILE).write_bytes(bytes(data))
    with pytest.raises(
        PeftportError,
        match=r"module.safetensors: sha256 .* does not match "
        r"field 'sha256'.*changed or corrupted",
    ):
        load_module(saved)


def test_replaced_tensor_file_is_caught(saved):
    t = tensors()
    t[KEY.format(0, "query", "A")] += 1
    save_file(t, str(saved / TENSOR_FILE))
    with pytest.raises(PeftportError, match="does not match field 'sha256'"):
        load_module(saved)


def test_garbage_with_a_matching_hash_is_still_refused(saved):
    from peftport.assets import sha256_file

    (saved / TENSOR_FILE).write_bytes(b"not a safetensors file at all")
    rewrite_meta(saved, sha256=sha256_file(saved / TENSOR_FILE))
    with pytest.raises(PeftportError, match="not a readable safetensors file"):
        load_module(saved)


def test_tensor_count_and_head_keys_are_checked(saved):
    from peftport.assets import sha256_file

    t = tensors()
    del t["classifier.bias"]
    save_file(t, str(saved / TENSOR_FILE))
    rewrite_meta(saved, sha256=sha256_file(saved / TENSOR_FILE))
    with pytest.raises(PeftportError, match="holds 9 tensors, field 'num_tensors'"):
        load_module(saved)
    rewrite_meta(saved, num_tensors=9)
    with pytest.raises(PeftportError, match="head tensors .* differ from field 'head_keys'"):
        load_module(saved)


def test_non_finite_tensors_are_refused(saved):
    from peftport.assets import sha256_file

    t = tensors()
    t["classifier.bias"] = torch.tensor([float("nan"), 0.0])
    save_file(t, str(saved / TENSOR_FILE))
    rewrite_meta(saved, sha256=sha256_file(saved / TENSOR_FILE))
    with pytest.raises(PeftportError, match="non-finite values in \\['classifier.bias'\\]"):
        load_module(saved)


@pytest.mark.parametrize(
    "changes,expect",
    [
        (
            {"schema_version": 2},
            "field 'schema_version' is 2; this peftport reads schema version 1",
        ),
        ({"schema_version": None}, "field 'schema_version' is None"),
        ({"format": "something"}, "field 'format'.*not a peftport module"),
        ({"seed": None}, "missing required field.*seed"),
        ({"config": {"r": 0}}, "field 'config'.*r must be >= 1"),
        ({"technique": "ia3"}, "field 'config': ia3 config: unknown field"),
        ({"sha256": None}, "field 'sha256' is missing"),
        ({"tensor_file": "weights.bin"}, "field 'tensor_file' must be 'module.safetensors'"),
    ],
)
def test_mismatched_metadata_is_refused(saved, changes, expect):
    rewrite_meta(saved, **changes)
    with pytest.raises(PeftportError, match=expect) as err:
        load_module(saved)
    assert "module.json" in str(err.value), "the message names the file"


def test_missing_and_unreadable_files(tmp_path, saved):
    with pytest.raises(PeftportError, match="no such module folder"):
        load_module(tmp_path / "nope")
    (saved / META_FILE).write_text("{not json")
    with pytest.raises(PeftportError, match="module.json: not valid JSON"):
        load_module(saved)
    (saved / META_FILE).unlink()
    with pytest.raises(PeftportError, match="no module.json; not a peftport module"):
        load_module(saved)
    other = save_module(tmp_path / "o", tensors(), meta())
    (other / TENSOR_FILE).unlink()
    with pytest.raises(PeftportError, match="module.safetensors: missing"):
        load_module(other)
    with pytest.raises(PeftportError, match="not a module folder"):
        (tmp_path / "file.txt").write_text("x")
        load_module(tmp_path / "file.txt")


def test_module_code_never_unpickles():
    """No torch.load, no pickle import anywhere in the artifact and porting code."""
    import ast

    import peftport.module as module
    import peftport.porting as porting

    for mod in (module, porting):
        tree = ast.parse(Path(mod.__file__).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr != "load" or getattr(node.value, "id", "") != "torch"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                assert not any("pickle" in n for n in names)
