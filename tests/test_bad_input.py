"""Bad and hostile input: every case is one clear line, exit code 2, and nothing written.

Table-driven: each row is (input, expected exit code, expected message fragment); every row runs
the real command line (`peftport.cli.main`, as `python -m peftport` runs it) and checks that the
folder it works in holds the same files afterwards. docs/reliability.md lists these promises.
"""

from __future__ import annotations

import json
import random
import sys
import warnings
from pathlib import Path

import pytest
import torch

from peftport import cli
from peftport.errors import PeftportError

BASE = """\
techniques: [lora]
pairs: [[tiny-bert, tiny-bert]]
data: [rotten_tomatoes]
pre_steps: [5]
post_steps: [3]
seeds: [0]
"""
TWO_CLASSES = "text,label\ngood film,positive\nbad film,negative\nfine film,positive\n" + "".join(
    f"movie number {i},{'positive' if i % 2 else 'negative'}\n" for i in range(40)
)
ONE_CLASS = "text,label\ngood film,positive\nfine film,positive\nnice film,positive\n"


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def run(capsys, monkeypatch):
    """Run the real CLI in this process: (exit code, stdout, stderr)."""

    def go(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["peftport", *args])
        code = 0
        try:
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return go


@pytest.fixture(scope="module")
def tiny_bert_on_disk():
    """Build tiny-bert once, so checks that read its config.json at plan time can."""
    from peftport.hosts import get_host, host_folder

    return host_folder(get_host("tiny-bert"))


# --- study files --------------------------------------------------------------------------


def _bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return BASE + "\n".join(lines) + "\n"


def _garbage(seed: int, alphabet: range) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.choice(alphabet) for _ in range(4000))


STUDY_ROWS = [
    # (id, file name, content, expected message fragment, the line it names or None)
    (
        "seed-beyond-sqlite",
        "s.yaml",
        BASE.replace("seeds: [0]", "seeds: [99999999999999999999]"),
        "seeds must be at most 9223372036854775807",
        6,
    ),
    (
        "steps-beyond-sqlite",
        "s.yaml",
        BASE.replace("pre_steps: [5]", f"pre_steps: [{2**64}]"),
        "pre-porting step counts must be at most",
        4,
    ),
    (
        "batch-beyond-int64",
        "s.yaml",
        BASE + f"train: {{batch_size: {2**70}}}\n",
        "batch_size must be at most",
        7,
    ),
    (
        "number-of-5000-digits",
        "s.yaml",
        BASE.replace("seeds: [0]", f"seeds: [{'9' * 5000}]"),
        "not a usable YAML file",
        None,
    ),
    (
        "not-utf8",
        "s.yaml",
        BASE.encode().replace(b"[lora]", b"[lora]  # caf\xe9"),
        "not UTF-8 text",
        1,
    ),
    ("alias-bomb-9x9", "s.yaml", _bomb(), "expands to more than 100,000 values", 12),
    (
        "deep-flow-sequences",
        "s.yaml",
        "x: " + "[" * 20000 + "]" * 20000 + "\n",
        "nested more than 64 levels deep",
        1,
    ),
    ("recursive-alias", "s.yaml", BASE + "x: &x [1, *x]\n", "refers to a node that contains it", 7),
    (
        "yaml-python-tag",
        "s.yaml",
        BASE + 'x: !!python/object/apply:os.system ["touch pwned"]\n',
        "could not determine a constructor",
        7,
    ),
    ("binary-garbage", "s.yaml", _garbage(0, range(256)), "not UTF-8 text", 1),
    ("ascii-control-garbage", "s.yaml", _garbage(1, range(128)), "is not allowed", None),
    ("printable-garbage", "s.yaml", _garbage(2, range(32, 127)), "s.yaml", None),
    ("too-large", "s.yaml", BASE + "# padding\n" * 120_000, "a study file is at most", None),
    (
        "toml-deep-nesting",
        "s.toml",
        "x = " + "[" * 5000 + "]" * 5000 + "\n",
        "not a usable TOML file",
        None,
    ),
    ("toml-not-utf8", "s.toml", b'name = "caf\xe9"\n', "not UTF-8 text", 1),
    (
        "data-outside-as-etc-passwd",
        "s.yaml",
        BASE.replace("[rotten_tomatoes]", "[../../../../etc/passwd]"),
        "unsupported file type",
        3,
    ),
    (
        "data-missing-file",
        "s.yaml",
        BASE.replace("[rotten_tomatoes]", "[missing.csv]"),
        "no such file",
        3,
    ),
    (
        "data-one-class",
        "s.yaml",
        BASE.replace("[rotten_tomatoes]", "[one.csv]"),
        "every row has label 'positive'",
        3,
    ),
    (
        "max-length-beyond-positions",
        "s.yaml",
        BASE + "train: {max_length: 512}\n",
        "position table holds 128 tokens",
        7,
    ),
    (
        "max-length-of-one-technique",
        "s.yaml",
        BASE.replace("techniques: [lora]", "techniques:\n  lora:\n    post: {max_length: 4096}"),
        "max_length 4096 is longer than host 'tiny-bert' can embed",
        3,
    ),
]


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize(
    ("name", "fname", "content", "fragment", "line"), STUDY_ROWS, ids=[r[0] for r in STUDY_ROWS]
)
def test_bad_study_file(
    tmp_path, run, tiny_bert_on_disk, command, name, fname, content, fragment, line
):
    study = tmp_path / fname
    study.write_bytes(content if isinstance(content, bytes) else content.encode())
    (tmp_path / "one.csv").write_text(ONE_CLASS)
    before = files(tmp_path)
    store = tmp_path / "store.sqlite"
    args = ["study", command, str(study)]
    if command == "run":
        args += ["--store", str(store), "--no-progress", "--workers", "0"]
    code, out, err = run(*args)
    assert code == 2, (out, err)
    assert fragment in err
    msg = err.strip()
    assert msg.startswith("error: ") and "\n" not in msg and "Traceback" not in err, err
    assert str(study) in msg, "the message names the file"
    if line is not None:
        assert f", line {line}" in msg
    assert files(tmp_path) == before, "nothing written"


def test_study_parsing_is_bounded_in_time(tmp_path, run):
    # a file just under the size bound is refused quickly: one parse, bounded work
    import time

    study = tmp_path / "s.yaml"
    study.write_text("x: [" + ",".join(["1"] * 200_000) + "]\n")
    start = time.perf_counter()
    code, _, err = run("study", "plan", str(study))
    assert code == 2 and "expands to more than" in err
    assert time.perf_counter() - start < 30


def test_a_mistyped_data_id_in_a_study_file_is_not_taken_for_a_path(tmp_path, run):
    study = tmp_path / "s.yaml"
    study.write_text(BASE.replace("[rotten_tomatoes]", "[rotten_tomatos]"))
    code, _, err = run("study", "plan", str(study))
    assert code == 2 and "Did you mean 'rotten_tomatoes'" in err, err


def test_data_paths_are_relative_to_the_study_file(tmp_path, run, monkeypatch):
    sub = tmp_path / "studies"
    sub.mkdir()
    (sub / "two.csv").write_text(TWO_CLASSES)
    (sub / "s.yaml").write_text(BASE.replace("[rotten_tomatoes]", "[two.csv]"))
    monkeypatch.chdir(tmp_path)  # not the study's folder
    code, out, err = run("study", "plan", str(sub / "s.yaml"), "--no-units")
    assert code == 0, err
    assert str(sub / "two.csv") in out


# --- the command line -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_module(tmp_path_factory):
    """A small LoRA module saved for tiny-bert (for evaluate / adapt / port rows)."""
    from peftport.hosts import load_host
    from peftport.module import module_meta, save_module
    from peftport.techniques import attach, module_state

    h = load_host("tiny-bert")
    att = attach(h.model, "bert", "lora", {"alpha": 8}, seed=0)
    meta = module_meta(att, h, task="toy", label_words=["negative", "positive"], steps=0)
    return save_module(tmp_path_factory.mktemp("mod") / "m", module_state(h.model), meta)


def _flip_alpha(module: Path, dest: Path) -> Path:
    """A copy of the module whose module.json has one bit flipped in the LoRA alpha."""
    import shutil

    shutil.copytree(module, dest)
    text = (dest / "module.json").read_text()
    i = text.index('"alpha": ') + len('"alpha": ')
    flipped = chr(ord(text[i]) ^ 1)  # "8" -> "9"
    (dest / "module.json").write_text(text[:i] + flipped + text[i + 1 :])
    return dest


TRAIN = ["train", "--host", "tiny-bert", "--technique", "lora", "--steps", "2"]
CLI_ROWS = [
    # (id, arguments (DATA, MODULE, TAMPERED, OUT are filled in), fragment)
    (
        "train-threads-0",
        [*TRAIN, "--data", "DATA", "--threads", "0", "--out", "OUT"],
        "threads must be positive, got 0",
    ),
    (
        "train-max-eval-0",
        [*TRAIN, "--data", "DATA", "--max-eval-examples", "0", "--out", "OUT"],
        "max_eval_examples must be positive, got 0",
    ),
    (
        "train-max-length-beyond-positions",
        [*TRAIN, "--data", "DATA", "--max-length", "1024", "--out", "OUT"],
        "--max-length 1024 is longer than host 'tiny-bert' can embed",
    ),
    (
        "train-seed-beyond-int64",
        [*TRAIN, "--data", "DATA", "--seed", str(2**64), "--out", "OUT"],
        "seed must be at most",
    ),
    (
        "train-one-class-csv",
        [*TRAIN, "--data", "ONE", "--out", "OUT"],
        "every row has label 'positive'",
    ),
    (
        "train-data-not-a-data-file",
        [*TRAIN, "--data", "STUDY", "--out", "OUT"],
        "unsupported file type '.yaml'",
    ),
    (
        "evaluate-max-eval-0",
        ["evaluate", "MODULE", "--host", "tiny-bert", "--data", "DATA", "--max-eval-examples", "0"],
        "max_eval_examples must be positive",
    ),
    (
        "evaluate-max-length-beyond-positions",
        ["evaluate", "MODULE", "--host", "tiny-bert", "--data", "DATA", "--max-length", "512"],
        "position table holds 128 tokens",
    ),
    (
        "adapt-max-length-beyond-positions",
        [
            "adapt",
            "MODULE",
            "--host",
            "tiny-bert",
            "--data",
            "DATA",
            "--steps",
            "1",
            "--max-length",
            "512",
            "--out",
            "OUT",
        ],
        "position table holds 128 tokens",
    ),
    (
        "evaluate-flipped-alpha",
        ["evaluate", "TAMPERED", "--host", "tiny-bert", "--data", "DATA"],
        "field(s) 'config' differ from those the module was saved with",
    ),
    (
        "adapt-flipped-alpha",
        [
            "adapt",
            "TAMPERED",
            "--host",
            "tiny-bert",
            "--data",
            "DATA",
            "--steps",
            "1",
            "--out",
            "OUT",
        ],
        "field(s) 'config' differ",
    ),
    (
        "port-flipped-alpha",
        ["port", "TAMPERED", "--to", "tiny-bert", "--out", "OUT"],
        "field(s) 'config' differ",
    ),
]


@pytest.mark.parametrize(("name", "args", "fragment"), CLI_ROWS, ids=[r[0] for r in CLI_ROWS])
def test_bad_command_line(tmp_path, run, tiny_module, name, args, fragment):
    (tmp_path / "two.csv").write_text(TWO_CLASSES)
    (tmp_path / "one.csv").write_text(ONE_CLASS)
    (tmp_path / "s.yaml").write_text(BASE)
    tampered = _flip_alpha(tiny_module, tmp_path / "tampered")
    fill = {
        "DATA": tmp_path / "two.csv",
        "ONE": tmp_path / "one.csv",
        "MODULE": tiny_module,
        "TAMPERED": tampered,
        "OUT": tmp_path / "out",
        "STUDY": tmp_path / "s.yaml",
    }
    before = files(tmp_path)
    code, out, err = run(*[str(fill.get(a, a)) for a in args])
    assert code == 2, (out, err)
    msg = err.strip().splitlines()[-1]
    assert msg.startswith("error: ") and fragment in msg, err
    assert "Traceback" not in err
    assert files(tmp_path) == before, "nothing written"


# --- module metadata ------------------------------------------------------------------------


def test_module_sha256_covers_the_metadata_that_changes_the_function(tmp_path, tiny_module):
    from peftport.module import load_module, read_meta, save_module

    tensors, meta = load_module(tiny_module)
    for key, value in [
        ("technique", "ia3"),
        ("label_words", ["bad", "good"]),
        ("host_kind", "decoder-lm"),
        ("adapter_name", "other"),
    ]:
        bad = tmp_path / key
        import shutil

        shutil.copytree(tiny_module, bad)
        m = json.loads((bad / "module.json").read_text())
        m[key] = value
        (bad / "module.json").write_text(json.dumps(m))
        with pytest.raises(PeftportError):  # refused: by the field checks or the sha256
            load_module(bad)
    # provenance (metrics, origin host id) is not the function: editing it is not refused
    m = json.loads((tiny_module / "module.json").read_text())
    m["metrics"] = {"accuracy": 0.5}
    edited = tmp_path / "edited"
    shutil.copytree(tiny_module, edited)
    (edited / "module.json").write_text(json.dumps(m))
    assert load_module(edited)[1]["metrics"] == {"accuracy": 0.5}
    # identical modules, identical sha256s
    digests = {
        read_meta(save_module(tmp_path / f"same{i}", tensors, meta))["sha256"] for i in range(3)
    }
    assert digests == {meta["sha256"]}


def test_an_old_module_is_verified_the_old_way_with_a_warning(tmp_path, tiny_module):
    """A module saved before the sha256 covered the metadata: its tensor file carries
    {"format": "peftport-module/1"}; it still loads, its tensors are still checked, and a
    warning says its metadata is not covered."""
    import hashlib
    import shutil

    from safetensors.torch import load_file, save

    from peftport.module import load_module

    old = tmp_path / "old"
    shutil.copytree(tiny_module, old)
    tensors = {k: v.clone() for k, v in load_file(str(old / "module.safetensors")).items()}
    data = save(dict(sorted(tensors.items())), metadata={"format": "peftport-module/1"})
    (old / "module.safetensors").write_bytes(data)
    m = json.loads((old / "module.json").read_text())
    m["sha256"] = hashlib.sha256(data).hexdigest()
    (old / "module.json").write_text(json.dumps(m))
    with pytest.warns(UserWarning, match="written by an older peftport"):
        got, meta = load_module(old)
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)
    (old / "module.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with warnings.catch_warnings(), pytest.raises(PeftportError, match="sha256"):
        warnings.simplefilter("ignore")
        load_module(old)


# --- PEFT import: a way out for unsupported sites -------------------------------------------


def test_import_drops_unsupported_peft_sites_only_when_asked(tmp_path, run):
    peft = pytest.importorskip("peft")
    from peftport.hosts import load_host
    from peftport.module import read_meta

    h = load_host("tiny-bert")
    cfg = peft.LoraConfig(
        task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "key", "value", "dense"]
    )
    model = peft.get_peft_model(h.model, cfg)
    model.save_pretrained(str(tmp_path / "peft"))
    (tmp_path / "two.csv").write_text(TWO_CLASSES)
    args = [
        "import",
        str(tmp_path / "peft"),
        "--format",
        "peft",
        "--host",
        "tiny-bert",
        "--data",
        str(tmp_path / "two.csv"),
        "--out",
        str(tmp_path / "m"),
    ]
    before = files(tmp_path)
    code, out, err = run(*args)
    assert code == 2 and "attention.output.dense" in err and "--drop-unsupported" in err, err
    assert files(tmp_path) == before, "nothing written"

    code, out, err = run(*args, "--drop-unsupported")
    assert code == 0, err
    warning = next(line for line in err.splitlines() if line.startswith("warning: "))
    assert "attention.output.dense" in warning and "pooler" in warning
    meta = read_meta(tmp_path / "m")
    dropped = meta["extra"]["imported"]["dropped"]
    assert f"{dropped['share']:.1%} of the module" in warning
    assert 0 < dropped["share"] < 1 and any("pooler" in s for s in dropped["sites"])
    assert meta["config"]["targets"] == ["q", "k", "v"]


def test_drop_unsupported_is_for_peft_folders(tmp_path, run):
    (tmp_path / "two.csv").write_text(TWO_CLASSES)
    (tmp_path / "ah").mkdir()
    code, _, err = run(
        "import",
        str(tmp_path / "ah"),
        "--format",
        "adapterhub",
        "--host",
        "tiny-bert",
        "--data",
        str(tmp_path / "two.csv"),
        "--out",
        str(tmp_path / "m"),
        "--drop-unsupported",
    )
    assert code == 2 and "--drop-unsupported is for --format peft" in err


# --- compute estimate -----------------------------------------------------------------------


def test_paper_plan_prints_a_compute_estimate(run):
    code, out, err = run("study", "plan", "--preset", "paper", "--no-units")
    assert code == 0, err
    assert "training steps: 1,776,000 shared" in out
    lines = [
        line
        for line in out.splitlines()
        if ("compute" in line or "A100" in line or "this CPU" in line or "host sizes" in line)
        and not line.startswith("on this machine:")  # the precision line (tests/test_device.py)
    ]
    assert len(lines) == 4, out
    assert "40% of 312 bf16 TFLOP/s" in out and "measured now" in out
    assert "t5-v1_1-large 783.2M parameters" in out  # from the published config's sizes


@pytest.mark.parametrize("host", ["tiny-bert", "tiny-gpt2", "tiny-llama", "tiny-t5"])
def test_parameter_counts_from_config_match_the_weights(host):
    from safetensors import safe_open

    from peftport.hosts import get_host, host_folder
    from peftport.study.compute import parameter_counts

    folder = host_folder(get_host(host))
    config = json.loads((folder / "config.json").read_text())
    n = 0
    with safe_open(str(next(folder.glob("*.safetensors"))), "pt") as f:
        for k in f.keys():  # noqa: SIM118 - safe_open is not iterable
            shape = f.get_slice(k).get_shape()
            n += int(torch.tensor(shape).prod()) if shape else 1
    total, body = parameter_counts(config)
    assert total == n and 0 < body < total


def test_estimate_scales_with_steps_and_names_unknown_hosts():
    from peftport.study.compute import estimate
    from peftport.study.plan import make_plan
    from peftport.study.spec import parse_study

    a = estimate(make_plan(parse_study(BASE, "a.yaml")))
    b = estimate(make_plan(parse_study(BASE.replace("[5]", "[10]"), "b.yaml")))
    assert b.train_flops > a.train_flops > 0 and a.unknown == ()
    assert a.gpu_hours() > 0 and a.cpu_hours(1e10, 2) > a.gpu_hours()


def test_estimate_counts_the_rows_real_tokens_when_host_and_data_are_on_disk(tmp_path):
    """Tokens are the mean row length as the host frames it (what a step really multiplies;
    batches are padded to their longest row, not to max_length), recomputed here with the
    host's own tokenizer; a data set not on disk counts max_length (an upper bound)."""
    from transformers import AutoTokenizer

    from peftport.data import load_dataset
    from peftport.hosts import get_host, host_folder
    from peftport.study.compute import SAMPLE_ROWS, estimate, host_size, mean_tokens
    from peftport.study.plan import make_plan
    from peftport.study.spec import parse_study

    data = tmp_path / "reviews.csv"
    data.write_text(TWO_CLASSES)
    spec = BASE.replace("[rotten_tomatoes]", f"[{data}]").replace("pre_steps: [5]\n", "")
    plan = make_plan(parse_study(spec + "pre_steps: [5]\n", "a.yaml"))
    e = estimate(plan)
    tok = AutoTokenizer.from_pretrained(str(host_folder(get_host("tiny-bert"))))
    rows = load_dataset(str(data)).train[:SAMPLE_ROWS]
    max_length = plan.units[0].config["train"]["max_length"]
    want = sum(len(tok(r.text, truncation=True, max_length=max_length)["input_ids"]) for r in rows)
    want /= len(rows)
    assert e.lengths == {("tiny-bert", str(data)): pytest.approx(want)}
    assert 3 < want < max_length  # short rows: far below the padded upper bound
    n = host_size("tiny-bert")[1]
    batch = plan.units[0].config["train"]["batch_size"]
    steps = sum(u.steps for u in plan.units)
    assert e.train_flops == pytest.approx(4 * n * steps * batch * want)

    missing = tmp_path / "gone.csv"
    assert mean_tokens("tiny-bert", str(missing), max_length) is None
    broken = tmp_path / "broken.csv"
    broken.write_text("words,stars\nnice,5\n")  # no text or label column
    assert mean_tokens("tiny-bert", str(broken), max_length) is None
    assert mean_tokens("no-such-host", str(data), max_length) is None


@pytest.mark.parametrize("what", ["no tokenizer files", "label words alike"])
def test_estimate_falls_back_to_max_length_when_rows_cannot_be_measured(
    tmp_path, monkeypatch, what
):
    """A host folder without a usable tokenizer, or label words the tokenizer cannot tell
    apart, leave the row length unknown (the estimate counts max_length) instead of failing
    `study plan`; `study run` names such a problem itself."""
    import transformers

    from peftport import tasks
    from peftport.errors import PeftportError
    from peftport.study import compute

    data = tmp_path / "reviews.csv"
    data.write_text(TWO_CLASSES)
    compute.mean_tokens.cache_clear()
    assert compute.mean_tokens("tiny-bert", str(data), 32) is not None  # measurable as it is

    def boom(*a, **kw):
        if what == "no tokenizer files":
            raise OSError("no tokenizer files in the folder")
        raise PeftportError("label words tokenise identically on this host")

    if what == "no tokenizer files":
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)
    else:
        monkeypatch.setattr(tasks, "encode", boom)
    compute.mean_tokens.cache_clear()
    assert compute.mean_tokens("tiny-bert", str(data), 32) is None
    compute.mean_tokens.cache_clear()
