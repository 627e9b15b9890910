"""The README's commands run as written (on tiny hosts and a toy data set where a block allows it).

The first block is the newcomer's two commands (`make demo`, `make test`): CI runs both
(`.ci/run`); here we check they are exactly those two and what the Makefile makes of them. Every
other command line of every bash block is run through a shell, with the substitutions below
(real hosts -> tiny-bert, Rotten Tomatoes -> a toy CSV, step counts shrunk), or is listed in SKIP
with the reason it is not run here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_study_run import write_toy

ROOT = Path(__file__).resolve().parents[1]

SUBSTITUTIONS = [
    ("minilm-l6-tuned", "tiny-bert"),
    ("minilm-l6", "tiny-bert"),
    ("minilm-l3", "tiny-bert"),
    ("rotten_tomatoes", "toy.csv"),
    ("--steps 300", "--steps 4"),
    ("--steps 100", "--steps 4"),
    ("--eval-at 0,50,100", "--eval-at 0,2,4"),
    ("--workers 2", "--workers 0"),
    # the quick preset's real hosts would take minutes: the tiny study stands in for the user's
    # edited copy (the presets line itself runs as written, and its output is planned below)
    ("study run my-study.yaml", "study run tiny-study.yaml"),
]
# Lines not run here, and why (each is run elsewhere or needs what a test machine lacks).
SKIP = {
    "peftport study run --preset crossdepth": "real hosts for minutes: its plan is checked below",
    "peftport study run --preset drift": "derives three hosts for minutes: its plan is checked",
    "peftport study run --preset standard": "about 3 hours on real hosts: its plan is checked",
}
TINY_STUDY = (
    "name: tiny\ntechniques: {lora: {config: {r: 2}}}\npairs: [[tiny-bert, tiny-bert]]\n"
    "data: [[toy.csv, toy.csv]]\npre_steps: [2]\npost_steps: [2]\nseeds: [0]\n"
    "train: {batch_size: 8, max_length: 32, max_eval_examples: 16}\n"
    "compare: {texts: 8, max_length: 16}\n"
)


def bash_blocks() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [[ln for ln in b.splitlines() if ln.strip()] for b in blocks]


def command(line: str) -> str:
    """The line without its trailing comment (a '#' after two spaces)."""
    return re.split(r"\s{2,}#", line)[0].strip()


def test_first_block_is_the_two_newcomer_commands():
    first = [command(ln) for ln in bash_blocks()[0]]
    assert first == ["make demo", "make test"]
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: .*\n\t\$\(BIN\)/peftport demo", make, flags=re.M)
    assert re.search(r"^test: .*\n(\t.*\n)*\t.*-m pytest", make, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_other_readme_command_runs(tmp_path):
    write_toy(tmp_path / "toy.csv")
    (tmp_path / "tiny-study.yaml").write_text(TINY_STUDY)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT / "src"),
    }
    ran, skipped = [], []
    for block in bash_blocks()[1:]:
        for line in block:
            cmd = command(line)
            if not cmd.startswith("peftport "):
                continue
            if any(cmd.startswith(k) for k in SKIP):
                skipped.append(cmd)
                continue
            for old, new in SUBSTITUTIONS:
                cmd = cmd.replace(old, new)
            shell = cmd.replace("peftport ", f"{sys.executable} -m peftport ", 1)
            done = subprocess.run(
                ["bash", "-c", shell],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, (
                f"{line}\n-> {cmd}\n{done.stdout[-2000:]}\n" + (done.stderr[-3000:])
            )
            ran.append(cmd)
    assert len(skipped) == len(SKIP), f"a SKIP entry no longer matches the README: {skipped}"
    assert any(c.startswith("peftport train ") for c in ran)
    # what the skipped and substituted lines stand for still holds
    for what in (
        ["study", "plan", "my-study.yaml"],
        ["study", "plan", "--preset", "crossdepth"],
        ["study", "plan", "--preset", "drift"],
        ["study", "plan", "--preset", "standard"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "peftport", *what],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{what}: {done.stderr[-2000:]}"


@pytest.mark.parametrize("line", [ln for b in bash_blocks()[1:] for ln in b])
def test_readme_lines_are_commands_with_short_comments(line):
    assert command(line).startswith(("peftport ", "python ", "make ")), line
