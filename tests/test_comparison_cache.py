"""One host comparison per unordered pair, one cache for `hosts compare` and every study."""

import json

import pytest
from typer.testing import CliRunner

import peftport.hostcompare as hc
from peftport.configs import CompareSettings
from peftport.hostcompare import HostComparison, compare_cached, compare_hosts
from test_hostcompare import cli, hosts  # noqa: F401 - the module's hosts fixture
from test_study_run import run_inline, study_text, write_toy

SETTINGS = {"texts": 16, "max_length": 24, "seed": 2}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """The cache in a fresh folder (the rest of $PEFTPORT_HOME, its hosts and corpora, stays)."""
    monkeypatch.setattr(hc, "cache_dir", lambda: tmp_path / "home" / "comparisons")
    return tmp_path / "home"


def flat(m):
    return [v for row in m for v in row]


@pytest.fixture
def forward_passes(monkeypatch):
    calls = []
    real = hc._Hidden.__call__

    def counted(self, ids, mask):
        calls.append(1)
        return real(self, ids, mask)

    monkeypatch.setattr(hc._Hidden, "__call__", counted)
    return calls


def test_the_reverse_of_a_pair_is_derived_and_both_are_cached(hosts, home, forward_passes):  # noqa: F811
    deep, shallow = hosts["deep"], hosts["shallow"]
    ab, how = compare_cached(deep, shallow, CompareSettings(**SETTINGS))
    assert how == "computed" and forward_passes
    n = len(forward_passes)
    ba, how = compare_cached(shallow, deep, CompareSettings(**SETTINGS))
    assert how == "reversed" and len(forward_passes) == n  # no hidden states computed again
    direct = compare_hosts(shallow, deep, **SETTINGS)
    assert (ba.origin, ba.receiver, ba.origin_layers, ba.receiver_layers) == (shallow, deep, 3, 6)
    assert ba.weight_distance == direct.weight_distance  # computed, not derived
    assert (ba.stack, ba.features, ba.weight_compared, ba.weight_skipped) == (
        direct.stack,
        direct.features,
        direct.weight_compared,
        direct.weight_skipped,
    )
    assert flat(ba.cka) == pytest.approx(flat(direct.cka), abs=1e-9)
    assert flat(ba.cka_full) == pytest.approx(flat(direct.cka_full), abs=1e-9)
    assert ba.layer_map("cka") == direct.layer_map("cka")
    assert ba.distance() == pytest.approx(direct.distance(), abs=1e-12)
    n = len(forward_passes)
    again, how = compare_cached(deep, shallow, CompareSettings(**SETTINGS))
    assert how == "cached" and again == ab and len(forward_passes) == n
    assert len(list((home / "comparisons").glob("*.json"))) == 2
    # other settings are another comparison; a damaged cache file is computed again
    _, how = compare_cached(deep, shallow, CompareSettings(**{**SETTINGS, "seed": 3}))
    assert how == "computed"
    for f in (home / "comparisons").glob("*.json"):
        f.write_text("{not json")
    _, how = compare_cached(deep, shallow, CompareSettings(**SETTINGS))
    assert how == "computed"


def test_hosts_compare_and_a_study_share_the_cache(home, tmp_path, forward_passes):
    res = CliRunner().invoke(
        cli(),
        [
            "hosts",
            "compare",
            "tiny-bert",
            "tiny-bert",
            "--texts",
            "16",
            "--max-length",
            "16",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    from_cli = HostComparison.from_dict(json.loads(res.stdout))
    n = len(forward_passes)
    assert n > 0
    toy = write_toy(tmp_path / "toy.csv")
    lines = []
    _, out = run_inline(
        tmp_path / "s.sqlite",
        study_text(toy, techniques="{lora: {}}", pre="[2]", post="[2]"),
        echo=lines.append,
    )
    assert len(forward_passes) == n, lines  # the study computed no hidden states
    assert any("from the comparison cache" in s for s in lines), lines
    from test_study_run import db

    stored = json.loads(
        db(tmp_path / "s.sqlite").execute("SELECT comparison FROM comparisons").fetchone()[0]
    )
    assert HostComparison.from_dict(stored) == from_cli
