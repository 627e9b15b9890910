"""The study executors on GPUs and clusters, tested on a machine without a GPU.

- `gpu_slots`, the rule that pins local workers to GPUs, and `gpu_request`, the GPUs a Ray task
  asks for: pure functions, every case;
- a real study through the real local executor with the GPU list given by
  $PEFTPORT_VISIBLE_GPUS: each worker process really runs with its CUDA_VISIBLE_DEVICES (the
  store records it per unit), and the numbers equal the in-process run's;
- a worker on another node: the environment it gets from the driver holds none of the
  driver's folders, and a result computed on other host weights is refused.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess

import pytest

from peftport.errors import PeftportError
from peftport.study.driver import _check_inputs
from peftport.study.executors import _env, make_executor, node_info
from peftport.study.gpus import GPUS_ENV, Slot, gpu_slots, visible_gpus
from peftport.study.ray_executor import gpu_request
from test_study_run import cli_args, run_inline, study_text, write_toy


def pinned(slots: list[Slot]) -> list[str | None]:
    return [s.gpu for s in slots]


# --- gpu_slots: which worker runs on which GPU --------------------------------------------


def test_without_a_gpu_workers_are_as_before():
    assert gpu_slots([], cpu_workers=3) == [Slot()] * 3
    assert gpu_slots([], workers=2, cpu_workers=8) == [Slot()] * 2
    assert all(s.env == () for s in gpu_slots([], workers=2))


def test_one_worker_per_gpu_by_default_each_pinned_alone():
    slots = gpu_slots(["0", "1", "2"], cpu_workers=64)
    assert pinned(slots) == ["0", "1", "2"]
    assert [dict(s.env) for s in slots] == [{"CUDA_VISIBLE_DEVICES": g} for g in "012"]


def test_units_per_gpu_packs_k_workers_on_each_gpu_round_robin():
    assert pinned(gpu_slots(["0", "1"], units_per_gpu=3)) == ["0", "1"] * 3
    # fewer workers than K x G still spread over the GPUs
    assert pinned(gpu_slots(["0", "1"], units_per_gpu=3, workers=3)) == ["0", "1", "0"]
    # workers alone: as many per GPU as they need
    assert pinned(gpu_slots(["4", "6"], workers=5)) == ["4", "6", "4", "6", "4"]
    # the ids are passed through as given (CUDA_VISIBLE_DEVICES may hold UUIDs)
    assert pinned(gpu_slots(["GPU-a1", "GPU-b2"])) == ["GPU-a1", "GPU-b2"]


def test_device_cpu_or_mps_uses_no_gpu_and_cuda_n_only_gpu_n():
    assert gpu_slots(["0", "1"], device="cpu", cpu_workers=2) == [Slot(), Slot()]
    assert gpu_slots(["0", "1"], device="mps", workers=1) == [Slot()]
    slots = gpu_slots(["3", "5"], device="cuda:1", units_per_gpu=2)
    assert pinned(slots) == ["5", "5"]
    # the worker sees GPU 5 alone, as cuda:0: the device it is told is that one
    assert dict(slots[0].env) == {"CUDA_VISIBLE_DEVICES": "5", "PEFTPORT_DEVICE": "cuda:0"}
    assert dict(gpu_slots(["3"], device="cuda")[0].env)["PEFTPORT_DEVICE"] == "cuda:0"
    assert "PEFTPORT_DEVICE" not in dict(gpu_slots(["3"], device="auto")[0].env)


@pytest.mark.parametrize(
    "gpus, kw, fragment",
    [
        (["0"], {"units_per_gpu": 0}, "--units-per-gpu must be >= 1, got 0"),
        ([], {"units_per_gpu": 2}, "--units-per-gpu 2 needs a GPU"),
        (
            ["0", "1"],
            {"units_per_gpu": 2, "device": "cpu"},
            "needs a GPU, and none is used here (--device cpu)",
        ),
        (
            ["0", "1"],
            {"units_per_gpu": 2, "workers": 5},
            "--workers 5 is more than --units-per-gpu 2 x 2 GPU(s)",
        ),
        (["0", "1"], {"device": "cuda:2"}, "--device cuda:2: only 2 GPU(s) are visible"),
        (["0"], {"workers": -1}, "--workers must be >= 1"),
    ],
)
def test_options_that_cannot_work_are_refused(gpus, kw, fragment):
    with pytest.raises(PeftportError) as e:
        gpu_slots(gpus, **kw)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_visible_gpus_reads_the_override(monkeypatch):
    monkeypatch.setenv(GPUS_ENV, "3, 5")
    assert visible_gpus() == ["3", "5"]
    monkeypatch.setenv(GPUS_ENV, "")
    assert visible_gpus() == []
    monkeypatch.delenv(GPUS_ENV)
    import torch

    if not torch.cuda.is_available():
        assert visible_gpus() == []


def test_the_other_executors_gpu_option_is_refused():
    with pytest.raises(PeftportError, match="--gpus-per-unit is for --executor ray"):
        make_executor("local", 1, gpus_per_unit=0.5)
    with pytest.raises(PeftportError, match="--units-per-gpu is for the local executor"):
        make_executor("ray", 1, units_per_gpu=2)
    with pytest.raises(PeftportError, match=r"not --workers 0"):
        make_executor("local", 0, units_per_gpu=2)


# --- gpu_request: what a Ray task asks for -------------------------------------------------


def test_ray_tasks_ask_for_gpus_only_when_the_cluster_has_them():
    assert gpu_request(None, 0) == 0.0  # CPUs only
    assert gpu_request(None, 4) == 1.0
    assert gpu_request(0.5, 4) == 0.5
    assert gpu_request(2, 4) == 2.0


@pytest.mark.parametrize(
    "asked, cluster, fragment",
    [
        (0.5, 0, "needs GPUs, and the Ray cluster has none"),
        (0, 4, "must be > 0"),
        (1.5, 4, "above 1 it must be a whole number"),
        (8, 4, "more than the cluster's 4 GPU(s)"),
    ],
)
def test_ray_gpu_requests_that_cannot_work_are_refused(asked, cluster, fragment):
    with pytest.raises(PeftportError) as e:
        gpu_request(asked, cluster)
    assert fragment in str(e.value)


# --- nothing assumes the driver's filesystem ----------------------------------------------


def test_a_cluster_worker_gets_none_of_the_drivers_folders(monkeypatch):
    monkeypatch.setenv("PEFTPORT_HOME", "/driver/home")
    monkeypatch.setenv("HF_HOME", "/driver/hf")
    monkeypatch.setenv("PEFTPORT_HOST_MINILM_L6", "/driver/minilm")
    monkeypatch.setenv("PEFTPORT_DATA_TOY", "/driver/toy.csv")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    local, remote = _env(), _env(paths=False)
    assert local["PEFTPORT_HOME"] == "/driver/home" and "PEFTPORT_HOST_MINILM_L6" in local
    assert remote["HF_HUB_OFFLINE"] == "1" and remote["TOKENIZERS_PARALLELISM"] == "false"
    assert not [k for k, v in remote.items() if v.startswith("/driver")], remote


def test_node_info_names_the_home_the_hosts_came_from(isolated_home, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    info = node_info()
    assert info["peftport_home"] == str(isolated_home)
    assert info["cuda_visible_devices"] == "2" and info["hostname"]


def test_a_result_on_other_host_weights_or_data_is_refused():
    result = {
        "host_fingerprints": {"tiny-bert": "b" * 64},
        "worker": "node2:12",
        "data_fingerprints": {"toy.csv": "d" * 64},
        "environment": {"peftport_home": "/node2"},
    }
    _check_inputs(result, {"tiny-bert": "b" * 64}, {"toy.csv": "d" * 64})  # the same: fine
    _check_inputs(result, {}, {})  # what the driver could not fingerprint: not checked
    with pytest.raises(
        PeftportError,
        match=r"host tiny-bert on worker node2:12 \(PEFTPORT_HOME "
        r"/node2\) has weights bbbbbbbbbbbb, the driver's are aaaaaaaaaaaa",
    ):
        _check_inputs(result, {"tiny-bert": "a" * 64}, {})
    with pytest.raises(
        PeftportError,
        match=r"data set toy.csv on worker node2:12 .* has "
        r"examples dddddddddddd, the driver's are eeeeeeeeeeee",
    ):
        _check_inputs(result, {}, {"toy.csv": "e" * 64})


# --- the real path: worker processes pinned to their GPUs ----------------------------------


def stored(path):
    con = sqlite3.connect(path)
    try:
        env = {
            uid: json.loads(r)["environment"]
            for uid, r in con.execute("SELECT id, result FROM units WHERE status = 'done'")
        }
        metrics = sorted(con.execute("SELECT unit_id, step, name, value FROM metrics"))
    finally:
        con.close()
    return env, metrics


def test_each_local_worker_runs_with_its_cuda_visible_devices(tmp_path):
    """Two 'GPUs' given by $PEFTPORT_VISIBLE_GPUS on a CPU machine: the study's units run in
    two worker processes, one with CUDA_VISIBLE_DEVICES=7 and one with 9 (torch finds no CUDA
    there, so they compute on the CPU), with the numbers of the in-process run."""
    toy = write_toy(tmp_path / "toy.csv")
    text = study_text(
        toy, techniques="{lora: {config: {r: 2}}}", pre="[4]", post="[2]", seeds="[0, 1]"
    )
    (tmp_path / "s.yaml").write_text(text)
    env = {**os.environ, GPUS_ENV: "7,9", "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    res = subprocess.run(
        cli_args(
            "study",
            "run",
            str(tmp_path / "s.yaml"),
            "--store",
            str(tmp_path / "gpu.sqlite"),
            "--units-per-gpu",
            "1",
            "--threads",
            "1",
            "--no-progress",
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(2 at a time, 1 thread(s) each on GPU(s) 7, 9, pinned one each" in res.stderr
    envs, metrics = stored(tmp_path / "gpu.sqlite")
    seen = {e["cuda_visible_devices"] for e in envs.values()}
    assert seen == {"7", "9"}, envs  # two workers, each its own GPU id
    workers = {e["cuda_visible_devices"]: set() for e in envs.values()}
    con = sqlite3.connect(tmp_path / "gpu.sqlite")
    for uid, worker in con.execute("SELECT id, worker FROM units"):
        workers[envs[uid]["cuda_visible_devices"]].add(worker.rsplit(":", 1)[1])
    con.close()
    assert len(workers["7"] | workers["9"]) == 2 and not workers["7"] & workers["9"], workers

    # the driver's checks of a node's hosts and data see every unit's: the names agree
    from peftport.study.spec import parse_study

    spec = parse_study(text, "s.yaml")
    con = sqlite3.connect(tmp_path / "gpu.sqlite")
    for hosts, data in con.execute("SELECT host_fingerprints, data_fingerprints FROM units"):
        assert set(json.loads(hosts)) <= set(spec.hosts) and json.loads(hosts)
        assert set(json.loads(data)) <= set(spec.datasets) and json.loads(data)
    con.close()

    plan, out = run_inline(tmp_path / "inline.sqlite", text)
    assert out["done"] == len(envs)
    assert stored(tmp_path / "inline.sqlite")[1] == metrics


# --- the command line: one line, exit 2, nothing written -----------------------------------


@pytest.mark.parametrize(
    "extra, gpus, fragment",
    [
        (["--units-per-gpu", "0"], "0", "--units-per-gpu must be >= 1, got 0"),
        (["--units-per-gpu", "2"], "", "--units-per-gpu 2 needs a GPU, and none is used here"),
        (["--units-per-gpu", "2", "--workers", "3"], "0", "--workers 3 is more than"),
        (["--gpus-per-unit", "0.5"], "", "--gpus-per-unit is for --executor ray"),
        (["--units-per-gpu", "1", "--executor", "ray"], "0", "on Ray use --gpus-per-unit"),
        (["--device", "cuda"], "0,1", "'cuda' asked for, but there is no CUDA GPU"),
    ],
)
def test_gpu_options_that_cannot_work_exit_2_with_one_line(
    extra, gpus, fragment, tmp_path, monkeypatch, capsys
):
    import sys

    import torch

    from peftport.cli import main

    if torch.cuda.is_available():
        pytest.skip("the refusals of a machine without CUDA")

    def boom(*a, **k):
        raise AssertionError("the study was prepared before its options were checked")

    monkeypatch.setattr("peftport.study.driver.prepare", boom)
    monkeypatch.setenv(GPUS_ENV, gpus)
    store = tmp_path / "out" / "s.sqlite"
    monkeypatch.setattr(
        sys,
        "argv",
        ["peftport", "study", "run", "--preset", "quick", "--store", str(store), *extra],
    )
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "out").exists()


def test_the_options_are_on_study_run():
    from typer.testing import CliRunner

    from peftport.cli import app

    out = CliRunner().invoke(app, ["study", "run", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--units-per-gpu", "--gpus-per-unit", "--ray-address"):
        assert flag in out, flag
