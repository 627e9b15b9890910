"""One evaluation's per-example record: which examples, their gold labels, what was predicted,
and the scores, kept compactly (numpy arrays; bytes in the study store).

The evaluated examples are the first `n` of the split in its seeded order (indices 0 .. n-1 of
the split after the seeded sample, `data.load_dataset`), so `n` and the split name them;
`examples_sha256` is `datarows.fingerprint_examples` of exactly those examples in that order,
so two evaluations can be checked to be on the same examples (in the same order) before they
are compared example by example.

Scores: for two classes one float32 per example, the margin score[1] - score[0] (the quantity
the AUC is computed on: logits of an encoder classifier's head, label-word log-probabilities of
a language model); for more classes the (n, C) float32 scores themselves.

Pure numpy (no torch): the store writes it, the report reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LABEL_DTYPE = np.int16  # a class index (data sets have far fewer than 32,768 classes)
SCORE_DTYPE = np.float32


@dataclass(frozen=True, eq=False)
class Predictions:
    labels: np.ndarray  # (n,) gold class per example
    predicted: np.ndarray  # (n,) predicted class per example
    scores: np.ndarray  # (n,) margin for two classes, else (n, C); float32
    examples_sha256: str = ""  # fingerprint of the evaluated examples in order ("" unknown)
    n_classes: int = 2

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    def correct(self) -> np.ndarray:
        """Per example: 1.0 where the prediction is the gold label, else 0.0."""
        return (self.predicted == self.labels).astype(np.float64)

    def accuracy(self) -> float:
        return float(np.mean(self.predicted == self.labels)) if self.n else float("nan")

    @classmethod
    def from_scores(
        cls, labels: Any, predicted: Any, scores: Any, examples_sha256: str = ""
    ) -> Predictions:
        """From an evaluation's (n, C) scores: binary scores kept as one margin per example."""
        s = np.asarray(scores, dtype=SCORE_DTYPE)
        c = int(s.shape[1]) if s.ndim == 2 else 2
        kept = s[:, 1] - s[:, 0] if s.ndim == 2 and c == 2 else s
        return cls(
            np.asarray(labels, dtype=LABEL_DTYPE),
            np.asarray(predicted, dtype=LABEL_DTYPE),
            np.ascontiguousarray(kept, dtype=SCORE_DTYPE),
            examples_sha256,
            c,
        )

    def with_examples(self, examples_sha256: str) -> Predictions:
        return Predictions(
            self.labels, self.predicted, self.scores, examples_sha256, self.n_classes
        )

    # --- bytes: the study store's `predictions` rows, and what a unit sends back ---------------
    def to_record(self) -> dict[str, Any]:
        """Plain values (bytes, ints, str): picklable, no numpy object needed to read them."""
        return {
            "n": self.n,
            "n_classes": self.n_classes,
            "labels": self.labels.tobytes(),
            "predicted": self.predicted.tobytes(),
            "scores": self.scores.tobytes(),
            "examples_sha256": self.examples_sha256,
            "dtype": f"{np.dtype(LABEL_DTYPE).str},{np.dtype(SCORE_DTYPE).str}",
        }

    @classmethod
    def from_record(cls, r: Any) -> Predictions:
        """From `to_record`'s dict or a store row with those columns."""
        label_t, score_t = (np.dtype(t) for t in str(r["dtype"]).split(","))
        n, c = int(r["n"]), int(r["n_classes"])
        scores = np.frombuffer(r["scores"], dtype=score_t)
        if c > 2:
            scores = scores.reshape(n, c)
        labels = np.frombuffer(r["labels"], dtype=label_t)
        predicted = np.frombuffer(r["predicted"], dtype=label_t)
        if labels.shape != (n,) or predicted.shape != (n,) or scores.shape[0] != n:
            raise ValueError(
                f"a predictions record of {n} examples holds {labels.shape[0]} "
                f"labels, {predicted.shape[0]} predictions, {scores.shape[0]} "
                "scores"
            )
        return cls(labels, predicted, scores, str(r["examples_sha256"] or ""), c)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per example (for `peftport evaluate --predictions`): index into the
        evaluated split, label, prediction, score(s)."""
        out = []
        for i in range(self.n):
            row: dict[str, Any] = {
                "index": i,
                "label": int(self.labels[i]),
                "predicted": int(self.predicted[i]),
            }
            if self.scores.ndim == 1:
                row["margin"] = float(self.scores[i])
            else:
                row.update({f"score_{c}": float(v) for c, v in enumerate(self.scores[i])})
            out.append(row)
        return out

    def as_text(self, fmt: str) -> str:
        """The per-example rows as CSV (a header line) or JSONL (one object a line)."""
        import csv
        import io
        import json

        rows = self.rows()
        if fmt == "jsonl":
            return "".join(json.dumps(r) + "\n" for r in rows)
        buf = io.StringIO()
        w = csv.DictWriter(
            buf, fieldnames=list(rows[0]) if rows else ["index"], lineterminator="\n"
        )
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()


FILE_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


__all__ = ["FILE_FORMATS", "Predictions"]
