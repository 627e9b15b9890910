"""The report's zero-shot retention against host distance, on hand-built study stores.

The stores are real SQLite files made by `Store` (the schema the study runner writes), with
units, cells and metrics inserted by hand and the `host_pairs` / `comparisons` tables filled by
hand: 3 host pairs at increasing distance, 2 techniques, 2 seeds. Every number is checked against
arithmetic written out here, not against the report's own helpers.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from peftport.errors import PeftportError
from peftport.report import build_report
from peftport.report.distance import (
    cka_distance,
    layer_weight_distance,
    pair_distance,
    spearman,
)
from peftport.report.load import HostPairRecord

T975_1 = 12.706204736174707  # t(0.975, 1): two seeds
SEEDS = (0, 1)
PRE = 50
ORIGIN_HOST = "h0"
DATA = "toy"

# the host comparisons: origin h0 has 2 layers; h1 and h2 have 2, h3 has 3 (another depth)
COMPARISONS = {
    "h1": {
        "strategy": "identity",
        "layer_map": [0, 1],
        "cka": [[0.95, 0.30], [0.20, 0.85]],
        "weight_distance": {"embeddings": 0.01, "layer.0": 0.02, "layer.1": 0.04},
    },
    "h2": {
        "strategy": "cka",
        "layer_map": [0, 1],
        "cka": [[0.70, 0.40], [0.35, 0.60]],
        "weight_distance": {"embeddings": 0.5, "layer.0": 0.10, "layer.1": 0.30},
    },
    "h3": {
        "strategy": "stride",
        "layer_map": [0, 0, 1],
        "cka": [[0.50, 0.30, 0.20], [0.20, 0.40, 0.30]],
        "weight_distance": {},  # no shape matches
    },
}
# by hand: 1 - mean_j cka[map[j]][j]
CKA_DISTANCE = {
    "h1": 1 - (0.95 + 0.85) / 2,  # 0.10
    "h2": 1 - (0.70 + 0.60) / 2,  # 0.35
    "h3": 1 - (0.50 + 0.30 + 0.30) / 3,  # 0.6333...
}
WEIGHT_DISTANCE = {"h1": (0.02 + 0.04) / 2, "h2": (0.10 + 0.30) / 2, "h3": None}

# accuracies at zero-shot, per seed (0, 1)
ORIGIN_ACC = {"lora": (0.90, 0.88), "adapter": (0.80, 0.82)}
RANDOM_ACC = (0.50, 0.51)  # every technique and receiver
SAMPLED_ACC = (0.52, 0.53)
PORTED_ACC = {
    ("lora", "h1"): (0.80, 0.77),
    ("lora", "h2"): (0.70, 0.66),
    ("lora", "h3"): (0.58, 0.55),
    ("adapter", "h1"): (0.75, 0.78),
    ("adapter", "h2"): (0.79, 0.81),  # keeps more than at h1: the adapter's curve is not monotone
    ("adapter", "h3"): (0.60, 0.64),
}
AFTER = 0.05  # every accuracy after 10 post-porting steps is this much higher (not zero-shot)


def _comparison(recv: str, /, **change) -> dict:
    c = COMPARISONS[recv]
    return {
        "origin": ORIGIN_HOST,
        "receiver": recv,
        "origin_layers": len(c["cka"]),
        "receiver_layers": len(c["cka"][0]),
        "stack": "encoder",
        "cka": c["cka"],
        "embedding_cka": 0.9,
        "weight_distance": c["weight_distance"],
        "features": "block outputs, mean over tokens",
        "corpus": "toy corpus",
        "texts": 64,
        "max_length": 32,
        "seed": 0,
    } | change


HOST_PAIR_SQL = """
CREATE TABLE IF NOT EXISTS comparisons (
    key TEXT PRIMARY KEY, origin TEXT NOT NULL, receiver TEXT NOT NULL,
    comparison TEXT NOT NULL, seconds REAL, versions TEXT, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS host_pairs (
    study_id TEXT NOT NULL, origin TEXT NOT NULL, receiver TEXT NOT NULL,
    strategy TEXT NOT NULL, layer_map TEXT NOT NULL, comparison_key TEXT,
    PRIMARY KEY (study_id, origin, receiver));
"""


def build_store(
    path: Path,
    receivers: tuple[str, ...] = ("h1", "h2", "h3"),
    *,
    tables: bool = True,
    record_pairs: bool = True,
    study_id: str = "study-1",
    name: str = "drift-test",
) -> Path:
    """A store as the runner would leave it for a finished study, made by hand."""
    from peftport.study.store import Store

    Store(path).close()  # the schema the study runner writes
    con = sqlite3.connect(path)
    con.execute(
        "INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?, ?)",
        (study_id, name, f"{name}.yaml", "{}", 0, 0, 1.0),
    )
    units, cells, metrics = [], [], []

    def unit(uid: str, kind: str, t: str, seed: int, recv: str | None, cond: str | None) -> None:
        units.append(
            (uid, kind, uid, "{}", t, ORIGIN_HOST, recv, DATA, DATA, seed, cond, PRE, 10, 10,
             "done", 1.0)
        )  # fmt: skip

    def cell(t, recv, seed, cond, pre, post, uid, step, value) -> None:
        cells.append((study_id, t, ORIGIN_HOST, recv, DATA, DATA, seed, cond, pre, post, uid, step))
        metrics.append((uid, step, "accuracy", value))

    for t in ("lora", "adapter"):
        for s in SEEDS:
            uid = f"pre-{t}-{s}"
            unit(uid, "pretrain", t, s, None, None)
            cell(t, ORIGIN_HOST, s, "origin", PRE, 0, uid, PRE, ORIGIN_ACC[t][s])
            for recv in receivers:
                for cond, pre, acc in (
                    ("ported", PRE, PORTED_ACC[(t, recv)][s]),
                    ("sampled", PRE, SAMPLED_ACC[s]),
                    ("random", 0, RANDOM_ACC[s]),
                ):
                    uid = f"{cond}-{t}-{recv}-{s}"
                    unit(uid, "random" if cond == "random" else "post", t, s, recv, cond)
                    cell(t, recv, s, cond, pre, 0, uid, 0, acc)
                    cell(t, recv, s, cond, pre, 10, uid, 10, acc + AFTER)
    con.executemany(
        "INSERT INTO units (id, kind, label, config, technique, origin, receiver, pre_data, "
        "post_data, seed, condition, pre_steps, steps, horizon, status, created_at) VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        units,
    )
    con.executemany("INSERT INTO study_units VALUES (?, ?)", [(study_id, u[0]) for u in units])
    con.executemany(
        "INSERT INTO cells (study_id, technique, origin, receiver, pre_data, "
        "post_data, seed, condition, pre_steps, post_steps, unit_id, step) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        cells,
    )  # method: copy
    con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?)", metrics)
    if tables:
        con.executescript(HOST_PAIR_SQL)
        if record_pairs:
            for recv in receivers:
                key = f"cmp-{ORIGIN_HOST}-{recv}"
                con.execute(
                    "INSERT OR IGNORE INTO comparisons VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, ORIGIN_HOST, recv, json.dumps(_comparison(recv)), 1.5, "{}", 1.0),
                )
                con.execute(
                    "INSERT INTO host_pairs VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        study_id,
                        ORIGIN_HOST,
                        recv,
                        COMPARISONS[recv]["strategy"],
                        json.dumps(COMPARISONS[recv]["layer_map"]),
                        key,
                    ),
                )
    con.commit()
    con.close()
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def close(a: str, b: float | None) -> bool:
    if b is None:
        return a == ""
    return a != "" and math.isclose(float(a), b, rel_tol=1e-9, abs_tol=1e-12)


def retention_by_hand(t: str, recv: str, seed: int) -> float:
    p, r, o = PORTED_ACC[(t, recv)][seed], RANDOM_ACC[seed], ORIGIN_ACC[t][seed]
    return (p - r) / (o - r)


def mean_ci2(a: float, b: float) -> tuple[float, float, float]:
    m = (a + b) / 2
    half = T975_1 * abs(a - b) / math.sqrt(2) / math.sqrt(2)  # sd of two values: |a - b| / sqrt 2
    return m, m - half, m + half


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("distance") / "study.sqlite")


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    return build_report(store, tmp_path_factory.mktemp("distance-report") / "out")


# --- the pure pieces ------------------------------------------------------------------------------


def test_cka_distance_equals_a_hand_computation():
    for recv, c in COMPARISONS.items():
        assert cka_distance(c["cka"], c["layer_map"]) == pytest.approx(CKA_DISTANCE[recv])
    # another depth and a map that repeats an origin layer: 1 - (0.2 + 0.2 + 0.3) / 3
    assert cka_distance([[0.2, 0.2, 0.9], [0.1, 0.1, 0.3]], [0, 0, 1]) == pytest.approx(1 - 0.7 / 3)
    with pytest.raises(PeftportError, match="layer map has 2 entries but cka has 3 receiver"):
        cka_distance(COMPARISONS["h3"]["cka"], [0, 1])
    with pytest.raises(PeftportError, match=r"entry 1 is 2: not an origin layer in \[0, 2\)"):
        cka_distance(COMPARISONS["h1"]["cka"], [0, 2])
    with pytest.raises(PeftportError, match="receiver layer 1 with origin layer 1 is nan"):
        cka_distance([[0.9, 0.1], [0.2, float("nan")]], [0, 1])
    with pytest.raises(PeftportError, match="rows have lengths"):
        cka_distance([[0.9, 0.1], [0.2]], [0, 1])


def test_layer_weight_distance():
    assert layer_weight_distance({"embeddings": 9.0, "layer.0": 0.1, "layer.1": 0.3}) == (
        pytest.approx(0.2),
        2,
        "",
    )
    assert layer_weight_distance({}) == (None, 0, "shapes differ")
    # embeddings alone, "other" and another stack's blocks are not layers of the compared stack
    assert layer_weight_distance({"embeddings": 0.1, "other": 0.2, "decoder.block.0": 0.3}) == (
        None,
        0,
        "shapes differ",
    )
    # hostcompare writes non-finite values as strings: left out of the mean
    assert layer_weight_distance({"layer.0": 0.4, "layer.1": "inf", "layer.2": float("nan")}) == (
        pytest.approx(0.4),
        1,
        "",
    )
    assert layer_weight_distance({"layer.0": "nan"})[0] is None


def t_two_sided_p(t: float, df: int) -> float:
    """2 P(T > |t|) by the trapezoid rule on Student's density (independent of peftport.stats)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    a, b, n = abs(t), abs(t) + 200.0, 400_000
    h = (b - a) / n
    f = [c * (1 + (a + i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
    return 2 * h * (sum(f) - (f[0] + f[-1]) / 2)


def test_spearman_against_hand_computations():
    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    rho, p, method = spearman([1, 2, 3, 4], [1, 3, 2, 4])
    assert rho == pytest.approx(0.8) and method == "exact"
    # exact p: the share of the 24 orderings with |rho| >= 0.8, counted here
    ranks = [1, 2, 3, 4]
    count = sum(
        1
        for perm in itertools.permutations(ranks)
        if abs(1 - 6 * sum((a - b) ** 2 for a, b in zip(ranks, perm, strict=True)) / 60)
        >= 0.8 - 1e-12
    )
    assert p == pytest.approx(count / 24)
    # ties get midranks: x ranks (1, 2.5, 2.5, 4); Pearson of ranks = 4.5 / sqrt(4.5 * 5)
    assert spearman([0.1, 0.2, 0.2, 0.3], [1, 2, 3, 4])[0] == pytest.approx(4.5 / math.sqrt(22.5))
    # three pairs, perfectly decreasing: rho -1, and 2 of the 6 orderings are that extreme
    assert spearman([0.1, 0.35, 0.63], [0.9, 0.5, 0.1])[:2] == (pytest.approx(-1.0), 1 / 3)
    # undefined: constant retention, or one point
    assert spearman([0.1, 0.2, 0.3], [0.5, 0.5, 0.5]) == (None, None, "undefined")
    assert spearman([0.1], [0.5]) == (None, None, "undefined")
    # above 8 points: the t approximation, df = n - 2
    x = list(range(10))
    y = [0, 2, 1, 4, 3, 6, 5, 9, 8, 7]
    d2 = sum((a - b) ** 2 for a, b in zip(x, y, strict=True))
    rho_hand = 1 - 6 * d2 / (10 * 99)
    rho, p, method = spearman(x, y)
    assert method == "t approximation" and rho == pytest.approx(rho_hand)
    t = rho_hand * math.sqrt(8 / (1 - rho_hand**2))
    assert p == pytest.approx(t_two_sided_p(t, 8), rel=1e-6)
    with pytest.raises(PeftportError, match="paired values"):
        spearman([1, 2], [1])


def record(recv: str, **change) -> HostPairRecord:
    c = COMPARISONS[recv]
    fields = {
        "study_id": "s",
        "origin": ORIGIN_HOST,
        "receiver": recv,
        "strategy": c["strategy"],
        "layer_map": json.dumps(c["layer_map"]),
        "comparison_key": f"cmp-{recv}",
        "comparison": json.dumps(_comparison(recv)),
    }
    return HostPairRecord(**(fields | change))


def test_pair_distance_reads_a_comparison_and_says_what_it_cannot_use():
    d = pair_distance(record("h3"))
    assert d.cka_distance == pytest.approx(CKA_DISTANCE["h3"]) and d.cka_note == ""
    assert d.weight_distance is None and d.weight_note == "shapes differ"
    assert d.about == "encoder stack, 64 texts of toy corpus, max_length 32, seed 0"
    # a comparison stored for the reverse direction: CKA is symmetric, its transpose is used
    c = COMPARISONS["h3"]
    reverse = _comparison(
        "h3",
        origin="h3",
        receiver=ORIGIN_HOST,
        origin_layers=3,
        receiver_layers=2,
        cka=[list(r) for r in zip(*c["cka"], strict=True)],
    )
    d = pair_distance(record("h3", comparison=json.dumps(reverse)))
    assert d.cka_distance == pytest.approx(CKA_DISTANCE["h3"])
    # what cannot be used is n/a with the reason
    off = pair_distance(record("h1", comparison_key=None))
    assert "comparisons off" in off.cka_note and off.weight_note == "no usable host comparison"
    gone = pair_distance(record("h1", comparison=None))
    assert gone.cka_distance is None and "cmp-h1 is not in the store" in gone.cka_note
    bad = pair_distance(record("h3", layer_map="[0, 1]"))
    assert bad.cka_distance is None and "2 entries but cka has 3" in bad.cka_note
    assert bad.weight_note == "shapes differ"  # the weight distance does not need the map
    other = pair_distance(record("h1", comparison=json.dumps(_comparison("h2"))))
    assert other.cka_distance is None and "compares h0 -> h2, not this pair" in other.cka_note
    shape = pair_distance(record("h1", comparison=json.dumps(_comparison("h1", origin_layers=3))))
    assert "cka is 2 x 2 but it has 3 origin and 2 receiver layers" in shape.cka_note
    assert "not JSON" in pair_distance(record("h1", layer_map="[0,")).cka_note


# --- the report ---------------------------------------------------------------------------------


def test_table_equals_a_hand_computation(report):
    rows = read_csv(report.csv["retention_vs_distance"])
    assert len(rows) == 2 * 3  # techniques x pairs (one data combination, one pre-step count)
    # technique by technique, pairs in increasing distance
    assert [(r["technique"], r["receiver"]) for r in rows] == [
        (t, h) for t in ("adapter", "lora") for h in ("h1", "h2", "h3")
    ]
    for r in rows:
        t, recv = r["technique"], r["receiver"]
        assert r["study"] == "drift-test" and r["pre_steps"] == str(PRE)
        assert r["strategy"] == COMPARISONS[recv]["strategy"]
        assert close(r["cka_distance"], CKA_DISTANCE[recv])
        assert close(r["weight_distance"], WEIGHT_DISTANCE[recv])
        assert r["weight_note"] == ("shapes differ" if recv == "h3" else "")
        m, _, _ = mean_ci2(*(retention_by_hand(t, recv, s) for s in SEEDS))
        assert close(r["retention_mean"], m), r
        # 2 seeds: no interval (a t interval would multiply the spread by 12.7)
        assert r["retention_ci_low"] == "" and r["retention_ci_high"] == "", r
        assert r["retention_n"] == "2" and r["retention_expected"] == "2"
        assert close(r["ported_mean"], sum(PORTED_ACC[(t, recv)]) / 2)
        assert close(r["random_mean"], sum(RANDOM_ACC) / 2)
        assert close(r["sampled_mean"], sum(SAMPLED_ACC) / 2)
        assert close(r["origin_mean"], sum(ORIGIN_ACC[t]) / 2)
    # one value written out: LoRA into h1, seeds 0 and 1
    lora_h1 = next(r for r in rows if r["technique"] == "lora" and r["receiver"] == "h1")
    assert float(lora_h1["retention_mean"]) == pytest.approx(
        ((0.80 - 0.50) / (0.90 - 0.50) + (0.77 - 0.51) / (0.88 - 0.51)) / 2
    )


def test_rank_correlation_in_the_report(report):
    rows = read_csv(report.csv["retention_distance_correlation"])
    # only CKA: two pairs have a weight distance, fewer than the 3 a correlation needs
    assert {r["distance"] for r in rows} == {"cka"}
    by_t = {r["technique"]: r for r in rows}
    assert by_t["lora"]["pairs"] == "3"
    assert close(by_t["lora"]["spearman_rho"], -1.0) and close(by_t["lora"]["p_value"], 1 / 3)
    # adapter retention ranks (2, 3, 1) against distance ranks (1, 2, 3): 1 - 6 * 6 / 24
    assert close(by_t["adapter"]["spearman_rho"], -0.5)
    assert close(by_t["adapter"]["p_value"], 1.0)  # every ordering is at least that extreme


def test_figure_and_table_appear_in_the_built_report(report):
    html = report.html.read_text()
    md = report.markdown.read_text()
    stem = "fig-distance-drift-test-pre50"
    png, svg = (
        report.out_dir / "figures" / f"{stem}.png",
        report.out_dir / "figures" / f"{stem}.svg",
    )
    assert (png, svg) in report.figures and png.stat().st_size > 10_000
    assert svg.read_text().lstrip().startswith("<?xml")
    assert '<h2 id="distance">Zero-shot retention against host distance</h2>' in html
    assert f'<figure id="{stem}">' in html and "![" in md and f"figures/{stem}.png" in md
    for text in (
        "retention, zero-shot [95% CI]",
        "sampled is shown for reference",
        "retention = (ported - random) / (origin - random)",
        "n/a: shapes differ",
        "h0 -&gt; h3",
        'href="tables/retention_vs_distance.csv"',
    ):
        assert text in html, text
    assert "## Zero-shot retention against host distance" in md and "n/a: shapes differ" in md
    # the table's numbers as the page shows them: LoRA into h1, a share; 2 seeds: no interval
    m, _, _ = mean_ci2(*(retention_by_hand("lora", "h1", s) for s in SEEDS))
    text = f"{100 * m:.1f}% (2 runs: no interval)"
    assert text in html and text in md
    assert "one host pair only" not in html  # three pairs here
    meta = json.loads(report.json.read_text())
    pairs = meta["host_distance"]["studies"][0]["pairs"]
    assert [p["receiver"] for p in pairs] == ["h1", "h2", "h3"]
    assert [p["cka_distance"] for p in pairs] == pytest.approx(
        [CKA_DISTANCE[h] for h in ("h1", "h2", "h3")]
    )
    assert f"figures/{stem}.png" in meta["files"]
    assert "tables/retention_vs_distance.csv" in meta["files"]


def test_missing_cells_and_a_zero_denominator(store, tmp_path):
    path = tmp_path / "partial.sqlite"
    a, b = sqlite3.connect(store), sqlite3.connect(path)
    a.backup(b)
    a.close()
    con = b
    # LoRA ported into h1, seed 1: failed; adapter random on h2, seed 0: still pending; the
    # adapter's seed-0 random on h3 as good as its origin (0.80): no denominator
    con.execute("UPDATE units SET status = 'failed', error = 'x' WHERE id = 'ported-lora-h1-1'")
    con.execute("UPDATE units SET status = 'pending' WHERE id = 'random-adapter-h2-0'")
    con.execute(
        "UPDATE metrics SET value = 0.80 WHERE unit_id = 'random-adapter-h3-0' AND step = 0"
    )
    # LoRA into h2: both seeds failed, nothing left
    con.execute("UPDATE units SET status = 'failed' WHERE id LIKE 'ported-lora-h2-%'")
    # adapter into h1: fresh modules as good as the origin on both seeds: undefined, not missing
    con.execute(
        "UPDATE metrics SET value = 0.85 WHERE unit_id LIKE 'random-adapter-h1-%' AND step = 0"
    )
    con.commit()
    con.close()
    paths = build_report(path, tmp_path / "out")
    rows = {
        (r["technique"], r["receiver"]): r for r in read_csv(paths.csv["retention_vs_distance"])
    }
    r = rows[("lora", "h1")]
    assert r["retention_n"] == "1" and r["retention_expected"] == "2"
    assert r["retention_missing"] == "1 failed" and r["retention_ci_low"] == ""
    assert close(r["retention_mean"], retention_by_hand("lora", "h1", 0))  # the seed that is there
    r = rows[("adapter", "h2")]
    assert r["retention_missing"] == "1 pending" and close(
        r["retention_mean"], retention_by_hand("adapter", "h2", 1)
    )
    assert r["random_n"] == "1" and r["random_missing"] == "1 pending"
    r = rows[("adapter", "h3")]
    assert r["retention_missing"] == "1 origin not above random"
    assert close(r["retention_mean"], retention_by_hand("adapter", "h3", 1))
    r = rows[("lora", "h2")]
    assert r["retention_mean"] == "" and r["retention_n"] == "0"
    assert r["retention_missing"] == "2 failed" and r["ported_mean"] == ""
    r = rows[("adapter", "h1")]
    assert r["retention_mean"] == "" and r["retention_missing"] == "2 origin not above random"
    html = paths.html.read_text()
    assert "missing (2 failed)" in html and "(1 of 2; 1 origin not above random)" in html
    assert "undefined (2 origin not above random)" in html
    assert "missing (2 origin" not in html
    # LoRA at h2: its results are missing; the adapter at h1: undefined, nothing missing
    assert "1 point(s) not drawn: no seed has a retention (missing results)" in html
    assert "1 point(s) not drawn: the ratio is undefined" in html
    # a point with fewer ratios but no missing result is not called missing
    assert "average the seeds that have a ratio" in html
    # each technique has two pairs with a retention left: no rank correlation
    assert read_csv(paths.csv["retention_distance_correlation"]) == []


def test_a_store_without_the_tables_leaves_the_section_out(tmp_path):
    path = build_store(tmp_path / "old.sqlite", tables=False)
    # a store written before the two tables existed (today's Store creates them on open)
    con = sqlite3.connect(path)
    con.executescript("DROP TABLE IF EXISTS host_pairs; DROP TABLE IF EXISTS comparisons;")
    con.close()
    paths = build_report(path, tmp_path / "out")
    why = (
        "Left out: the store has no host_pairs table (it was written before peftport recorded "
        "host pairs and their comparisons)."
    )
    html, md = paths.html.read_text(), paths.markdown.read_text()
    assert (
        f'<h2 id="distance">Zero-shot retention against host distance</h2>\n<p class="note">{why}</p>'
        in html
    )
    assert why in md
    assert "retention_vs_distance" not in paths.csv and not list(
        (paths.out_dir / "figures").glob("fig-distance*")
    )
    assert json.loads(paths.json.read_text())["host_distance"] == {"omitted": why}
    assert read_csv(paths.csv["zero_shot"])  # the rest of the report is there
    # a host_pairs table of another shape: left out with the reason, the rest is reported
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE host_pairs (study_id TEXT, pair TEXT)")
    con.commit()
    con.close()
    paths = build_report(path, tmp_path / "out2")
    assert (
        "Left out: its host_pairs/comparisons tables cannot be read (no such column: "
        in paths.html.read_text()
    )
    assert read_csv(paths.csv["zero_shot"])


def test_tables_without_pairs_and_pairs_without_comparisons(tmp_path):
    path = build_store(tmp_path / "empty.sqlite", record_pairs=False)
    paths = build_report(path, tmp_path / "out")
    assert "Left out: no host pair is recorded for this study" in paths.html.read_text()
    # pairs recorded with comparisons off: the table is there, distances are not, no figure
    path = build_store(tmp_path / "off.sqlite")
    con = sqlite3.connect(path)
    con.execute("UPDATE host_pairs SET comparison_key = NULL")
    con.commit()
    con.close()
    paths = build_report(path, tmp_path / "out2")
    rows = read_csv(paths.csv["retention_vs_distance"])
    assert len(rows) == 6 and all(r["cka_distance"] == "" for r in rows)
    assert all("comparisons off" in r["cka_note"] for r in rows)
    assert all(r["weight_distance"] == "" and r["weight_layers"] == "0" for r in rows)
    assert read_csv(paths.csv["retention_distance_correlation"]) == []
    html = paths.html.read_text()
    assert "no figure: no pair of the study has a CKA distance" in html
    assert "n/a (see notes)" in html


def test_one_pair_is_drawn_with_a_note(tmp_path):
    path = build_store(tmp_path / "one.sqlite", receivers=("h2",))
    paths = build_report(path, tmp_path / "out")
    html = paths.html.read_text()
    assert '<figure id="fig-distance-drift-test-pre50">' in html
    assert "one host pair only: a curve of retention against distance needs several pairs" in html
    assert "drift preset" in html
    assert read_csv(paths.csv["retention_distance_correlation"]) == []


def test_each_study_gets_its_own_pairs_and_results(tmp_path):
    """Two studies in one store: a study reports its own host pairs on its own cells."""
    path = build_store(tmp_path / "two.sqlite")
    con = sqlite3.connect(path)
    # study 2: the same units, seed 0 only, and only the pair into h1 recorded
    con.execute("INSERT INTO studies VALUES ('study-2', 'drift-more', 'b.yaml', '{}', 0, 0, 2.0)")
    con.execute(
        "INSERT INTO cells SELECT 'study-2', technique, origin, receiver, pre_data, post_data, "
        "seed, condition, pre_steps, post_steps, unit_id, step, method FROM cells WHERE seed = 0"
    )
    con.execute(
        "INSERT INTO study_units SELECT 'study-2', unit_id FROM study_units WHERE unit_id LIKE "
        "'%-0'"
    )
    con.execute(
        "INSERT INTO host_pairs SELECT 'study-2', origin, receiver, strategy, layer_map, "
        "comparison_key FROM host_pairs WHERE receiver = 'h1'"
    )
    con.commit()
    con.close()
    paths = build_report(path, tmp_path / "out")
    rows = read_csv(paths.csv["retention_vs_distance"])
    second = [r for r in rows if r["study"] == "drift-more"]
    assert [(r["technique"], r["receiver"]) for r in second] == [("adapter", "h1"), ("lora", "h1")]
    for r in second:  # one seed: seed 0's ratio, no interval
        assert r["retention_n"] == "1" and r["retention_expected"] == "1"
        assert close(r["retention_mean"], retention_by_hand(r["technique"], "h1", 0))
    assert len([r for r in rows if r["study"] == "drift-test"]) == 6
    html = paths.html.read_text()
    assert "<h3>Study drift-test</h3>" in html and "<h3>Study drift-more</h3>" in html
    assert (paths.out_dir / "figures" / "fig-distance-drift-more-pre50.png").is_file()


def test_distance_agrees_with_hostcompare_on_its_own_json():
    """The report reads hostcompare's JSON without importing it: the same number both ways."""
    from peftport.hostcompare import HostComparison

    c = COMPARISONS["h3"]
    comp = HostComparison(
        origin=ORIGIN_HOST,
        receiver="h3",
        origin_layers=2,
        receiver_layers=3,
        stack="bert.encoder.layer",
        cka=c["cka"],
        embedding_cka=0.9,
        weight_distance={"embeddings": 0.3, "layer.0": float("inf"), "other": 0.1},
        features="tokens",
        corpus="toy",
        texts=16,
        max_length=16,
        seed=0,
    )
    d = pair_distance(record("h3", comparison=json.dumps(comp.to_dict())))
    assert d.cka_distance == pytest.approx(comp.distance(c["layer_map"]))
    assert d.weight_distance is None and d.weight_note.startswith("undefined")  # inf


def test_a_study_without_random_has_no_retention(tmp_path):
    path = build_store(tmp_path / "norandom.sqlite", receivers=("h1",))
    con = sqlite3.connect(path)
    con.execute("DELETE FROM cells WHERE condition = 'random'")
    con.commit()
    con.close()
    paths = build_report(path, tmp_path / "out")
    rows = read_csv(paths.csv["retention_vs_distance"])
    assert rows and all(
        r["retention_mean"] == "" and r["retention_missing"] == "2 not planned" for r in rows
    )
    assert all(close(r["ported_mean"], sum(PORTED_ACC[(r["technique"], "h1")]) / 2) for r in rows)
    html = paths.html.read_text()
    assert "undefined (2 not planned)" in html
    assert "the study has no random condition: retention needs random zero-shot" in html


def test_lines_join_only_a_series_never_the_two_directions_of_a_pair():
    """Two directions of one pair are two points; a line joins only receivers of one origin."""
    from matplotlib.figure import Figure

    from peftport.report.figures import SERIES_COLORS, _draw_distance_panel
    from peftport.report.model import DistancePanel, DistancePoint, Stat

    def pt(x: float, y: float, label: str, origin: str) -> DistancePoint:
        return DistancePoint(x, Stat(y, None, None, 2, 2), label, origin)

    def lines(points: list[DistancePoint]) -> int:
        ax = Figure().subplots()
        panel = DistancePanel("data", {"lora": points}, sorted({(p.x, p.label) for p in points}))
        _draw_distance_panel(ax, panel, ["lora"], True, Counter())
        # the technique's lines (its colour, no marker), not the reference lines at 0 and 1
        return sum(
            1
            for ln in ax.get_lines()
            if ln.get_color() == SERIES_COLORS[0] and ln.get_marker() in ("None", "", None)
        )

    both = [pt(0.2, 0.8, "a -> b", "a"), pt(0.2, 0.6, "b -> a", "b")]
    assert lines(both) == 0
    drift = [pt(0.1, 0.9, "a -> b", "a"), pt(0.3, 0.7, "a -> c", "a"), pt(0.5, 0.5, "a -> d", "a")]
    assert lines(drift) == 1
