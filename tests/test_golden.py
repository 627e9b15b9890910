"""Golden results: refactors change structure, not numbers.

Two small studies on tiny hosts (every technique on tiny-bert; LoRA, adapter, prefix, Compacter
and IA3 on tiny-t5, tiny-gpt2 and tiny-llama; ported, sampled and random), and one train -> adapt
-> evaluate chain through the run functions the CLI uses, are run, and every stored metric, every
logged loss and every unit's label is compared with values recorded in `tests/golden/golden.json`
before the refactor of issue 11.

Floating point on CPU is bit-identical only for the same kernels: on a machine whose torch CPU
capability and processor match the recorded ones the comparison is exact (==); on another machine
it falls back to a tolerance (losses to 1e-3 relative, metrics to 0.05 absolute), and the test
says so. To record a machine's values (only from a commit whose numbers are trusted):
`PEFTPORT_GOLDEN_RECORD=1 pytest tests/test_golden.py`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sqlite3
from pathlib import Path

import pytest
import torch

from peftport.study import make_plan
from peftport.study.driver import run_plan
from peftport.study.executors import InlineExecutor
from peftport.study.spec import parse_study
from peftport.study.store import Store
from test_study_run import write_toy

GOLDEN = Path(__file__).parent / "golden" / "golden.json"
RECORD = os.environ.get("PEFTPORT_GOLDEN_RECORD") == "1"

# precision pinned: auto is bf16 on a CPU with native bf16, and these numbers are fp32's
TRAIN = (
    "train: {lr: 1.0e-2, batch_size: 8, max_length: 32, max_eval_examples: 24, precision: fp32}\n"
)
STUDIES = {
    "bert": (
        "name: golden-bert\n"
        "techniques: {lora: {config: {r: 2}}, adapter: {config: {reduction_factor: 4}},"
        " prefix: {config: {flat: true, prefix_length: 4}}, compacter: {config: {reduction_factor: 4}},"
        " prompt: {config: {prompt_length: 4}}, ia3: {}}\n"
        "pairs: [[tiny-bert, tiny-bert]]\n"
        "data: [[{data}, {data}]]\npre_steps: [3, 5]\npost_steps: [2, 4]\nseeds: [0, 1]\n"
        + TRAIN
        + "compare: {texts: 8, max_length: 16}\n"
    ),
    "generative": (
        "name: golden-generative\n"
        "techniques: {lora: {config: {r: 2}}, adapter: {config: {reduction_factor: 4}},"
        " prefix: {config: {prefix_length: 4}}, compacter: {config: {reduction_factor: 4}}, ia3: {}}\n"
        "pairs: [[tiny-t5, tiny-t5], [tiny-gpt2, tiny-gpt2], [tiny-llama, tiny-llama]]\n"
        "data: [[{data}, {data}]]\npre_steps: [4]\npost_steps: [3]\nseeds: [0]\n"
        + TRAIN
        + "compare: {texts: 8, max_length: 16}\n"
    ),
}


def machine() -> dict[str, str]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": model,
        "torch": torch.__version__,
    }


def study_values(tmp: Path, name: str, data: Path) -> dict:
    text = STUDIES[name].replace("{data}", str(data))
    plan = make_plan(parse_study(text, f"{name}.yaml"))
    store = Store(tmp / f"{name}.sqlite")
    try:
        run_plan(store, plan, InlineExecutor(), progress=False, echo=lambda s: None, threads=1)
    finally:
        store.close()
    con = sqlite3.connect(tmp / f"{name}.sqlite")
    try:
        units, ids = {}, {}
        for uid, label, status, result in con.execute(
            "SELECT id, label, status, result FROM units ORDER BY id"
        ):
            assert status == "done", f"{label}: {status}"
            # Unit ids hash the data set's resolved (absolute) path, which differs between
            # clones: key by the label, with that path taken out (unique within a study).
            key = label.replace(str(data.resolve()), "DATA")
            assert key not in units, f"two units labelled {key!r}"
            ids[uid] = key
            stored = json.loads(result)
            # every unit keeps where it was computed (not compared: it is the machine's)
            assert stored["placement"]["device"] == "cpu", stored.get("placement")
            assert stored["placement"]["precision"] == "fp32", stored["placement"]
            units[key] = {"losses": stored["losses"], "metrics": {}}
        for uid, step, metric, value in con.execute(
            "SELECT unit_id, step, name, value FROM metrics ORDER BY unit_id, step, name"
        ):
            units[ids[uid]]["metrics"].setdefault(str(step), {})[metric] = value
    finally:
        con.close()
    return units


def chain_values(tmp: Path, data: Path) -> dict:
    """train -> adapt -> evaluate through runs.py, as `peftport train/adapt/evaluate` do."""
    from peftport.device import resolve
    from peftport.engine import TrainConfig
    from peftport.runs import adapt_run, evaluate_run, train_run

    cfg = TrainConfig(
        steps=5,
        eval_at=(0, 5),
        lr=1e-2,
        batch_size=8,
        max_length=32,
        max_eval_examples=24,
        seed=3,
        threads=1,
        precision="fp32",
    )
    trained = train_run(
        "tiny-bert",
        "lora",
        str(data),
        cfg,
        technique_config={"r": 2},
        progress=False,
        save_at=(3, 5),
    )
    adapted = adapt_run(
        (trained.tensors, trained.meta),
        "tiny-bert",
        str(data),
        TrainConfig(
            steps=3,
            eval_at=(0, 3),
            lr=1e-2,
            batch_size=8,
            max_length=32,
            max_eval_examples=24,
            seed=4,
            threads=1,
            precision="fp32",
        ),
        progress=False,
    )
    evaluated = evaluate_run(
        (adapted.tensors, adapted.meta),
        "tiny-bert",
        str(data),
        max_examples=24,
        max_length=32,
        placement=resolve("cpu", "fp32"),
    )

    def tensor_sums(tensors: dict) -> dict:
        return {k: float(v.double().sum()) for k, v in sorted(tensors.items())}

    return {
        "train": {
            "metrics": {str(k): v for k, v in sorted(trained.result.metrics.items())},
            "losses": [float(x) for x in trained.result.losses],
            "tensors": tensor_sums(trained.tensors),
            "snapshots": {str(s): tensor_sums(t) for s, t in sorted(trained.snapshots.items())},
        },
        "adapt": {
            "metrics": {str(k): v for k, v in sorted(adapted.result.metrics.items())},
            "losses": [float(x) for x in adapted.result.losses],
            "tensors": tensor_sums(adapted.tensors),
        },
        "evaluate": dict(sorted(evaluated.items())),
    }


def compare(got, want, path: str, exact: bool, problems: list[str]) -> None:
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            problems.append(
                f"{path}: keys {sorted(got) if isinstance(got, dict) else got!r} != {sorted(want)}"
            )
            return
        for k in want:
            compare(got[k], want[k], f"{path}/{k}", exact, problems)
    elif isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            problems.append(f"{path}: {got!r} != {want!r}")
            return
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            compare(g, w, f"{path}[{i}]", exact, problems)
    elif isinstance(want, float) and isinstance(got, (int, float)):
        if exact:
            same = got == want or (math.isnan(got) and math.isnan(want))
        elif "losses" in path or "tensors" in path or "snapshots" in path:
            same = math.isclose(got, want, rel_tol=1e-3, abs_tol=1e-5)
        else:
            same = abs(got - want) <= 0.05 or (math.isnan(got) and math.isnan(want))
        if not same:
            problems.append(f"{path}: {got!r} != {want!r}")
    elif got != want:
        problems.append(f"{path}: {got!r} != {want!r}")


@pytest.fixture(scope="module")
def golden_now(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("golden")
    write_toy(tmp / "toy.csv", n=200)
    # Unit ids hash the config, data path included: a relative path keeps them stable.
    data = Path("toy.csv")
    here = Path.cwd()
    os.chdir(tmp)
    try:
        return {
            "studies": {name: study_values(tmp, name, data) for name in STUDIES},
            "chain": chain_values(tmp, data),
        }
    finally:
        os.chdir(here)


def test_results_equal_recorded_values(golden_now):
    here = machine()
    if RECORD:
        recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {"machines": []}
        recorded["machines"] = [m for m in recorded["machines"] if m["machine"] != here]
        recorded["machines"].append({"machine": here, "values": golden_now})
        GOLDEN.parent.mkdir(exist_ok=True)
        tmp = GOLDEN.with_suffix(".tmp")
        tmp.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        tmp.replace(GOLDEN)
        pytest.skip(f"recorded golden values for {here}")
    recorded = json.loads(GOLDEN.read_text())["machines"]
    same_machine = [m for m in recorded if m["machine"] == here]
    reference = (same_machine or recorded)[0]
    exact = bool(same_machine)
    problems: list[str] = []
    compare(golden_now, reference["values"], "", exact, problems)
    how = "exactly" if exact else f"within tolerance (recorded on {reference['machine']})"
    assert not problems, f"{len(problems)} value(s) differ from the golden ones ({how}):\n" + (
        "\n".join(problems[:40])
    )
