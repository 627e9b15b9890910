"""Devices and precision: resolution, clear refusals (exit 2, nothing written, before any host
loads), CPU results unchanged, provenance, and bench/gpu_check.py on a machine without a GPU."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from peftport import device as devmod
from peftport.cli import app, main
from peftport.configs import TrainConfig
from peftport.device import ENV, Placement, default_device, resolve
from peftport.errors import PeftportError

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fake_gpu(monkeypatch, name: str = "NVIDIA A100", bf16: bool = True, count: int = 1) -> None:
    """torch believes it has `count` CUDA GPUs (nothing runs on them: resolution only)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: name)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)


# --- resolution ---------------------------------------------------------------------------


AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})  # e.g. Zen 3, Skylake client: no bf16
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512_vnni"}  # Skylake/Cascade Lake server: no bf16
ZEN4 = AVX512 | {"avx512_bf16"}
SAPPHIRE = AVX512 | {"avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}


@pytest.mark.parametrize(
    "flags, want",
    [
        (frozenset(), "fp32"),  # no /proc/cpuinfo (macOS) or an unknown CPU
        (AVX2, "fp32"),
        (AVX512, "fp32"),  # AVX-512 alone emulates bf16
        (ZEN4, "bf16"),
        (SAPPHIRE, "bf16"),
        (AVX512 | {"amx_bf16"}, "bf16"),
        (["avx2", "avx512_bf16"], "bf16"),  # any iterable of flags
    ],
)
def test_cpu_auto_precision_is_bf16_only_with_native_bf16(flags, want):
    assert devmod.cpu_auto_precision(flags) == want


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 amx_bf16\n"
        "bugs\t\t: spectre_v1\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    )
    assert devmod.cpu_flags(str(x86)) == {"fpu", "avx2", "amx_bf16"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 sve\n")
    assert devmod.cpu_flags(str(arm)) == {"fp", "asimd", "bf16", "sve"}
    assert devmod.cpu_auto_precision(devmod.cpu_flags(str(arm))) == "fp32"  # not measured there
    assert devmod.cpu_flags(str(tmp_path / "none")) == frozenset()


def native_bf16(monkeypatch, on: bool) -> None:
    """This CPU has (or lacks) native bf16, whatever the machine running the test has."""
    monkeypatch.setattr(devmod, "cpu_flags", lambda path="/proc/cpuinfo": ZEN4 if on else AVX2)


def test_auto_on_a_cpu_machine_follows_its_bf16(monkeypatch):
    native_bf16(monkeypatch, False)
    assert resolve() == Placement(device="cpu", precision="fp32")
    native_bf16(monkeypatch, True)
    assert resolve() == Placement(device="cpu", precision="bf16")
    assert resolve("cpu", "fp32") == Placement(device="cpu", precision="fp32")  # pinned: pinned
    native_bf16(monkeypatch, False)
    assert resolve("cpu", "bf16") == Placement(device="cpu", precision="bf16")
    assert resolve("cpu", bf16=True).precision == "bf16"  # the older setting, same thing
    assert resolve("cpu", deterministic=True).tf32 is False


@pytest.mark.parametrize(
    "gpu_bf16, device, precision, deterministic, want",
    [
        (True, "auto", "auto", False, ("cuda:0", "bf16", True)),
        (False, "auto", "auto", False, ("cuda:0", "fp32", True)),  # no bf16: fp32, not fp16
        (True, "cuda", "fp16", False, ("cuda:0", "fp16", True)),
        (True, "cuda:1", "fp32", True, ("cuda:1", "fp32", False)),  # deterministic: no TF32
        (True, "cpu", "auto", False, ("cpu", "fp32", False)),  # asked for CPU: CPU
    ],
)
def test_resolution_on_a_gpu(monkeypatch, gpu_bf16, device, precision, deterministic, want):
    fake_gpu(monkeypatch, bf16=gpu_bf16, count=2)
    native_bf16(monkeypatch, False)  # CPU auto: fp32 (a CPU without native bf16)
    p = resolve(device, precision, deterministic=deterministic)
    assert (p.device, p.precision, p.tf32) == want
    assert p.gpu == ("NVIDIA A100" if want[0].startswith("cuda") else None)
    assert p.loss_every == (devmod.LOSS_EVERY if want[0] != "cpu" else 1)
    assert (p.grad_scaler() is not None) == (want[1] == "fp16")


def test_env_names_what_auto_means(monkeypatch):
    fake_gpu(monkeypatch)
    monkeypatch.setenv(ENV, "cpu")
    assert resolve().device == "cpu"
    assert resolve("cuda").device == "cuda:0"  # an explicit device wins
    monkeypatch.setenv(ENV, "tpu")
    with pytest.raises(PeftportError, match=r"\$PEFTPORT_DEVICE: device must be one of"):
        resolve()


def test_default_device_sets_and_restores_the_env(monkeypatch):
    with default_device("cpu"):
        assert os.environ[ENV] == "cpu"
    assert ENV not in os.environ
    monkeypatch.setenv(ENV, "auto")
    with default_device("cpu"):
        assert os.environ[ENV] == "cpu"
    assert os.environ[ENV] == "auto"
    with pytest.raises(PeftportError, match="no CUDA GPU here"), default_device("cuda"):
        pass  # checked before it is set
    assert os.environ[ENV] == "auto"


def test_config_checks_spelling_without_probing():
    assert TrainConfig(steps=1, device="cuda:3").device == "cuda:3"  # checked at run time
    with pytest.raises(PeftportError, match="device must be one of .*got 'gpu'"):
        TrainConfig(steps=1, device="gpu")
    with pytest.raises(PeftportError, match="precision must be one of auto, fp32, bf16, fp16"):
        TrainConfig(steps=1, precision="fp8")


# --- refusals: one line, exit 2, nothing written, before any host loads --------------------


@pytest.fixture
def no_loading(monkeypatch):
    """Any host load, study preparation or store creation fails the test."""

    def boom(*a, **k):
        raise AssertionError("a host loaded before the device was checked")

    monkeypatch.setattr("peftport.runs.host_for", boom)
    monkeypatch.setattr("peftport.runs.load_into", boom)
    monkeypatch.setattr("peftport.study.driver.prepare", boom)


GPU_NO_BF16 = {"name": "Tesla T4", "bf16": False}
ONE_GPU = {"name": "NVIDIA A100", "bf16": True, "count": 1}
TRAIN = [
    "train",
    "--host",
    "tiny-bert",
    "--technique",
    "lora",
    "--data",
    "toy.csv",
    "--steps",
    "2",
    "--out",
    "OUT",
]
ADAPT = [
    "adapt",
    "MODULE",
    "--host",
    "tiny-bert",
    "--data",
    "toy.csv",
    "--steps",
    "2",
    "--out",
    "OUT",
]
EVALUATE = ["evaluate", "MODULE", "--host", "tiny-bert", "--data", "toy.csv"]
STUDY_RUN = ["study", "run", "--preset", "quick", "--store", "OUT/s.sqlite"]
STUDY_FP16 = (
    "name: s\ntechniques: [lora]\npairs: [[tiny-bert, tiny-bert]]\ndata: [toy.csv]\n"
    "pre_steps: [2]\npost_steps: [1]\nseeds: [0]\ntrain: {precision: fp16}\n"
)

REFUSALS = [
    # (arguments, fake GPU or None, study file text or None, message fragment)
    (TRAIN + ["--device", "cuda"], None, None, "'cuda' asked for, but there is no CUDA GPU"),
    (TRAIN + ["--precision", "fp16"], None, None, "fp16 needs a CUDA GPU"),
    (TRAIN + ["--device", "mps"], None, None, "MPS backend is not available"),
    (TRAIN + ["--device", "gpu"], None, None, "device must be one of auto, cpu, cuda"),
    (TRAIN + ["--precision", "fp8"], None, None, "precision must be one of auto, fp32"),
    (TRAIN + ["--bf16", "--precision", "fp32"], None, None, "contradicts precision fp32"),
    (
        TRAIN + ["--device", "cuda", "--precision", "bf16"],
        GPU_NO_BF16,
        None,
        "the GPU Tesla T4 has no native bfloat16",
    ),
    (TRAIN + ["--device", "cuda:1"], ONE_GPU, None, "only 1 CUDA GPU(s) are visible"),
    (ADAPT + ["--device", "cuda"], None, None, "no CUDA GPU"),
    (ADAPT + ["--precision", "fp16"], None, None, "fp16 needs a CUDA GPU"),
    (EVALUATE + ["--device", "mps"], None, None, "MPS backend is not available"),
    (
        EVALUATE + ["--precision", "bf16", "--device", "cuda"],
        GPU_NO_BF16,
        None,
        "no native bfloat16",
    ),
    (STUDY_RUN + ["--device", "cuda"], None, None, "no CUDA GPU"),
    (
        STUDY_RUN + ["--device", "cpu", "--executor", "ray"],
        None,
        None,
        "--device is for the local executor",
    ),
    (
        ["study", "run", "STUDY", "--store", "OUT/s.sqlite", "--device", "cpu"],
        None,
        STUDY_FP16,
        "fp16 needs a CUDA GPU",
    ),
]


def _args(args: list[str], tmp: Path, study: str | None) -> list[str]:
    if study is not None:
        write_toy(tmp / "toy.csv")
        (tmp / "study.yaml").write_text(study)
    return [
        a.replace("OUT", str(tmp / "out"))
        .replace("MODULE", str(tmp / "module"))
        .replace("STUDY", str(tmp / "study.yaml"))
        for a in args
    ]


@pytest.mark.parametrize(
    "args, gpu, study, fragment", REFUSALS, ids=[" ".join(r[0][:1] + r[0][-2:]) for r in REFUSALS]
)
def test_refusals(args, gpu, study, fragment, tmp_path, monkeypatch, capsys, no_loading):
    if gpu:
        fake_gpu(monkeypatch, **gpu)
    monkeypatch.chdir(tmp_path)
    argv = _args(args, tmp_path, study)
    res = runner.invoke(app, argv)  # the command raises PeftportError ...
    assert isinstance(res.exception, PeftportError), res.output
    assert fragment in str(res.exception)
    monkeypatch.setattr(sys, "argv", ["peftport", *argv])  # ... which `peftport` turns into
    with pytest.raises(SystemExit) as e:  # exit 2 and one line
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("no study file given")]
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "out").exists()  # nothing written
    assert ENV not in os.environ


def test_a_study_file_may_not_set_the_device():
    from peftport.study.spec import parse_study

    text = STUDY_FP16.replace("precision: fp16", "device: cuda")
    with pytest.raises(PeftportError, match="study run --device"):
        parse_study(text, "s.yaml")


def test_options_appear_on_the_commands():
    for cmd in ("train", "adapt", "evaluate"):
        out = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "200"}).output
        for flag in ("--device", "--precision", "--deterministic"):
            assert flag in out, (cmd, flag)
    assert "--device" in runner.invoke(app, ["study", "run", "--help"]).output


# --- on CPU the numbers do not move; provenance records the placement ----------------------


def write_toy(path: Path, n: int = 80) -> Path:
    pos, neg, fill = ["great", "good"], ["terrible", "bad"], ["the", "movie", "a"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            words = [(pos if i % 2 else neg)[i % 2]] + [fill[(i + k) % 3] for k in range(2)]
            w.writerow([" ".join(words) + f" {i}", i % 2])
    return path


def _cfg(**kw) -> TrainConfig:
    base = dict(
        steps=5,
        eval_at=(0, 3, 5),
        lr=1e-2,
        batch_size=8,
        max_length=32,
        max_eval_examples=16,
        seed=2,
        threads=1,
    )
    return TrainConfig(**{**base, **kw})


def _run(data: Path, cfg: TrainConfig):
    from peftport.runs import train_run

    return train_run("tiny-bert", "lora", str(data), cfg, technique_config={"r": 2}, progress=False)


def test_cpu_fp32_spellings_give_identical_numbers_and_record_the_placement(tmp_path, monkeypatch):
    data = write_toy(tmp_path / "toy.csv")
    native_bf16(monkeypatch, False)  # auto is fp32 on a CPU without native bf16
    a = _run(data, _cfg())
    b = _run(data, _cfg(device="cpu", precision="fp32", deterministic=True))
    assert a.result.losses == b.result.losses and a.result.metrics == b.result.metrics
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    want = {"device": "cpu", "precision": "fp32", "gpu": None, "tf32": False}
    assert a.result.placement == want
    assert a.meta["extra"]["placement"] == want
    # the older bf16 switch is precision bf16: the same autocast, the same numbers
    c = _run(data, _cfg(bf16=True))
    d = _run(data, _cfg(precision="bf16"))
    assert c.result.losses == d.result.losses and c.result.placement["precision"] == "bf16"
    assert c.result.losses != a.result.losses  # and bf16 really is on
    # with native bf16, auto is bf16: the same numbers as asking for it, and recorded
    native_bf16(monkeypatch, True)
    e = _run(data, _cfg())
    assert e.result.losses == d.result.losses and e.result.metrics == d.result.metrics
    assert e.meta["extra"]["placement"]["precision"] == "bf16"


def test_study_plan_and_run_say_what_auto_chose(tmp_path, monkeypatch, no_loading):
    study = tmp_path / "s.yaml"
    data = write_toy(tmp_path / "toy.csv")
    study.write_text(
        STUDY_FP16.replace("train: {precision: fp16}\n", "").replace("toy.csv", str(data))
    )
    for on, want in ((True, "precision auto -> bf16"), (False, "precision auto -> fp32")):
        native_bf16(monkeypatch, on)
        out = runner.invoke(app, ["study", "plan", str(study), "--no-units"])
        assert out.exit_code == 0, out.output
        assert f"on this machine: device cpu, {want}" in out.output
    assert "no native bfloat16" in out.output
    native_bf16(monkeypatch, True)
    line = devmod.precision_line("auto", {"auto", "fp32"})
    assert line.startswith(
        "device cpu, precision auto -> bf16, fp32 (this CPU has native "
        "bfloat16: avx512_bf16; a rerun on a CPU without it runs fp32"
    )
    assert "`precision: fp32` in the study's train section" in line
    assert devmod.precision_line("cpu", {"fp32"}) == "device cpu, precision fp32"
    # the run's start line (the run itself stops at the first load: no_loading)
    out = runner.invoke(app, ["study", "run", str(study), "--store", str(tmp_path / "x.sqlite")])
    assert "device cpu, precision auto -> bf16" in out.output


def test_losses_gathered_every_k_steps_are_the_losses_of_every_step(tmp_path, monkeypatch):
    """A GPU brings the loss back every LOSS_EVERY steps: nothing lost, nothing reordered."""
    data = write_toy(tmp_path / "toy.csv")
    every = _run(data, _cfg(steps=7, eval_at=(0, 4, 7)))
    monkeypatch.setattr(Placement, "loss_every", property(lambda self: 3))
    batched = _run(data, _cfg(steps=7, eval_at=(0, 4, 7)))
    assert batched.result.losses == every.result.losses and len(every.result.losses) == 7
    assert batched.result.metrics == every.result.metrics


def test_study_ids_leave_out_the_device_and_unset_new_settings():
    from peftport.study.plan import train_dict

    d = train_dict({}, 5, (5,), 0)
    # the fields unit configs held before devices (and later settings) existed: a setting added
    # since enters a unit's config only when set, so the ids of existing studies do not move
    before = {
        "batch_size",
        "bf16",
        "eval_at",
        "eval_batch_size",
        "eval_split",
        "horizon",
        "lr",
        "max_eval_examples",
        "max_grad_norm",
        "max_length",
        "seed",
        "steps",
        "warmup_ratio",
        "weight_decay",
    }
    assert set(d) == before
    assert "device" not in train_dict({"device": "cpu"}, 5, (5,), 0)
    assert train_dict({"precision": "bf16"}, 5, (5,), 0)["precision"] == "bf16"
    assert train_dict({"deterministic": True}, 5, (5,), 0)["deterministic"] is True


def test_study_run_device_reaches_the_units(tmp_path, monkeypatch):
    write_toy(tmp_path / "toy.csv")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(
        "name: s\ntechniques: {lora: {config: {r: 2}}}\npairs: [[tiny-bert, tiny-bert]]\n"
        "data: [toy.csv]\npre_steps: [2]\npost_steps: [1]\nseeds: [0]\n"
        "train: {batch_size: 8, max_length: 32, max_eval_examples: 16}\n"
        "compare: {texts: 8, max_length: 16}\n"
    )
    seen = []
    real = devmod.resolve

    def spy(device="auto", *a, **k):
        seen.append((device, os.environ.get(ENV)))
        return real(device, *a, **k)

    monkeypatch.setattr(devmod, "resolve", spy)
    res = runner.invoke(
        app,
        [
            "study",
            "run",
            "s.yaml",
            "--store",
            "s.sqlite",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    runs = [s for s in seen if s[0] == "auto"]  # each unit's run resolves its auto device ...
    assert runs and all(env == "cpu" for _, env in runs)  # ... to the command's --device
    assert ENV not in os.environ


# --- bench/gpu_check.py ---------------------------------------------------------------------


def test_gpu_check_says_skipped_without_a_gpu():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("CPU: ") and lines[1].startswith("torch ")
    assert lines[-1] == "no GPU: skipped"


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_with_cpu_in_the_gpus_place(tmp_path):
    data = write_toy(tmp_path / "toy.csv", n=120)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # a pin a CPU build of torch ignores: the study's workers record it as their GPU, and
        # the check reads it back from the store
        "CUDA_VISIBLE_DEVICES": "3",
    }
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_check.py"),
            "--device",
            "cpu",
            "--host",
            "tiny-bert",
            "--data",
            str(data),
            "--steps",
            "4",
            "--max-eval",
            "24",
            "--study-steps",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=tmp_path,
    )
    assert "verdict:" in res.stdout, res.stdout + res.stderr
    assert "4/4 units done, 0 failed" in res.stdout, res.stdout + res.stderr
    assert "(units ran on GPU(s) 3)" in res.stdout, res.stdout
