"""A two-node Ray cluster on one machine: nothing assumes a filesystem shared with the driver.

A head and a second node started with `ray start`, each with its own $PEFTPORT_HOME (and the
driver a third), run a small study on tiny hosts, one the study derives, through
`study run --executor ray --ray-address`. Units run on both nodes; each node builds the tiny
host and derives the study's host in its own folder (the recipe travels in the payload, the
snapshots a post unit starts from through Ray's object store), and every stored metric equals
the local executor's. Real processes throughout; the nodes are ended by their process groups
(never `ray stop`, which would end every Ray on the machine).

65 s on 2 shared cores (the cluster up in 8 s, the study on it 45 s, the local run 10 s),
86 s with other work on them: marked slow, as the Ray lifecycle test is; CI runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_study_run import cli_args, write_toy

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY = str(Path(sys.executable).with_name("ray"))

STUDY = """\
name: multinode
hosts:
  tiny-drift:
    derive: {{from: tiny-bert, steps: 3, lr: 1.0e-3, max_length: 32, batch_size: 4}}
techniques: {{lora: {{config: {{r: 2}}}}}}
pairs: [[tiny-bert, tiny-drift]]
data: [[{data}, {data}]]
pre_steps: [4]
post_steps: [2]
seeds: [0, 1]
train: {{lr: 1.0e-2, batch_size: 8, max_length: 32, max_eval_examples: 40}}
compare: {{texts: 16, max_length: 16}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One `ray start --block` in its own process group (so its processes end with it)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [RAY, "start", "--block", *args],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_started(self, timeout: float = 180) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.log.read_text()
            if "Ray runtime started" in text:
                return text
            assert self.proc.poll() is None, text[-3000:]
            time.sleep(0.5)
        raise AssertionError(f"ray start did not start in time: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        import psutil

        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)  # the group start_new_session made
            except ProcessLookupError:
                break
            _, alive = psutil.wait_procs(procs, timeout=5)
            if not alive:
                break
        for p in procs:  # one that left the group: by its pid
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait(timeout=30)
        self._out.close()


def units_of(store: Path) -> tuple[dict, list]:
    con = sqlite3.connect(store)
    try:
        rows = {
            uid: (status, json.loads(r) if r else None, worker)
            for uid, status, r, worker in con.execute(
                "SELECT id, status, result, worker FROM units"
            )
        }
        metrics = sorted(con.execute("SELECT unit_id, step, name, value FROM metrics"))
    finally:
        con.close()
    return rows, metrics


def test_a_study_on_two_ray_nodes_with_their_own_homes_equals_the_local_run(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    toy = write_toy(tmp_path / "toy.csv")
    (tmp_path / "s.yaml").write_text(STUDY.format(data=toy))
    homes = {n: tmp_path / n for n in ("head", "node2", "driver")}
    base = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        # this cluster's own token (Ray's default token file is the user's, shared)
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    for k in [k for k in base if k.startswith(("PEFTPORT_HOST_", "PEFTPORT_DATA_"))]:
        del base[k]
    base.pop("OMP_WAIT_POLICY", None)
    env = {n: {**base, "PEFTPORT_HOME": str(h)} for n, h in homes.items()}
    for n in ("head", "node2"):  # what the nodes have: the driver's runtime env overrides it
        env[n]["OMP_NUM_THREADS"] = "2"
    temp = Path("/tmp") / f"pr{os.getpid()}"  # short: Ray's socket paths have a length limit
    nodes: list[Node] = []
    t0 = time.time()
    try:
        port = free_port()
        head = Node(
            [
                "--head",
                f"--port={port}",
                "--num-cpus=1",
                "--num-gpus=0",
                "--include-dashboard=false",
                f"--temp-dir={temp}",
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
            ],
            env["head"],
            tmp_path / "head.log",
        )
        nodes.append(head)
        address = re.search(r"ray start --address='([^']+)'", head.wait_started()).group(1)
        node2 = Node(
            [
                f"--address={address}",
                "--num-cpus=1",
                "--num-gpus=0",
                f"--dashboard-agent-listen-port={free_port()}",
            ],
            env["node2"],
            tmp_path / "node2.log",
        )
        nodes.append(node2)
        node2.wait_started()
        started = time.time() - t0

        # two units at a time, one CPU each: one on each node
        run = subprocess.run(
            cli_args(
                "study",
                "run",
                str(tmp_path / "s.yaml"),
                "--store",
                str(tmp_path / "ray.sqlite"),
                "--executor",
                "ray",
                "--ray-address",
                address,
                "--workers",
                "2",
                "--no-progress",
            ),
            env=env["driver"],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert run.returncode == 0, run.stderr[-4000:]
    finally:
        for n in reversed(nodes):
            n.stop()
        shutil.rmtree(temp, ignore_errors=True)
    took = time.time() - t0
    rows, ray_metrics = units_of(tmp_path / "ray.sqlite")
    assert {s for s, _, _ in rows.values()} == {"done"}, rows

    # both nodes ran units, each resolving hosts in its own $PEFTPORT_HOME (not the driver's)
    where = [r["environment"] for _, r, _ in rows.values()]
    assert {e["peftport_home"] for e in where} == {str(homes["head"]), str(homes["node2"])}
    assert len({e["ray_node"] for e in where}) == 2
    assert all(e["ray_gpus"] == [] for e in where)  # no GPU: the units ran on the CPU
    # the driver's runtime env: passive OpenMP waiting and the unit's thread count
    assert {(e["omp_wait_policy"], e["omp_num_threads"]) for e in where} == {("PASSIVE", "1")}
    assert all(r["placement"]["device"] == "cpu" for _, r, _ in rows.values())
    for n in ("head", "node2"):  # each node derived the study's host itself
        assert (homes[n] / "hosts" / "derived" / "tiny-drift" / "peftport-host.json").exists()
    assert not (homes["driver"] / "ray").exists() or not list((homes["driver"] / "ray").iterdir())

    # the same study with the local executor: the same numbers, metric for metric
    local = subprocess.run(
        cli_args(
            "study",
            "run",
            str(tmp_path / "s.yaml"),
            "--store",
            str(tmp_path / "local.sqlite"),
            "--workers",
            "1",
            "--no-progress",
        ),
        env=env["driver"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert local.returncode == 0, local.stderr[-4000:]
    local_rows, local_metrics = units_of(tmp_path / "local.sqlite")
    assert set(local_rows) == set(rows)
    assert ray_metrics == local_metrics and len(ray_metrics) > 0
    for uid, (_, r, _) in rows.items():
        assert r["losses"] == local_rows[uid][1]["losses"], uid
    print(
        f"two-node cluster up in {started:.0f} s; study on it and teardown {took:.0f} s; "
        f"{len(rows)} units"
    )
