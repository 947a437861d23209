"""The trained head: sentence vector -> category, subtype and severity probabilities (numpy)."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.adapter import Adapter
from classifiers.base import SCORED_CATEGORIES, SEVERITY_ORDER, Category, Severity, Subtype
from classifiers.lexical import Lexical

HEAD_PATH = Path(__file__).resolve().parent / "model" / "head.npz"
CARD_PATH = HEAD_PATH.with_name("MODEL_CARD.md")
# 2: may carry a LoRA adapter for the encoder (``lora/...`` arrays); 3: may carry a lexical
# model (``lex/...`` arrays, see classifiers/lexical.py) blended into the category scores.
# 1 and 2 files still load (they have no lexical model).
FORMAT = 3
READABLE_FORMATS = (1, 2, 3)
CATEGORIES: tuple[str, ...] = tuple(c.value for c in SCORED_CATEGORIES)
SUBTYPES: tuple[str, ...] = tuple(s.value for s in Subtype)
SEVERITIES: tuple[str, ...] = tuple(s.value for s in SEVERITY_ORDER)
WEIGHT_NAMES = ("mu", "sd", "w1", "b1", "wc", "bc", "ws", "bs", "wv", "bv")


@dataclass(frozen=True)
class HeadScores:
    """Probabilities for a batch: independent per category, one distribution per task."""

    categories: np.ndarray  # (n, 3) sigmoid, columns in CATEGORIES order
    subtypes: np.ndarray  # (n, 8) softmax over SUBTYPES
    severities: np.ndarray  # (n, 3) softmax over SEVERITIES

    def subtype(self, i: int) -> Subtype:
        """Most likely safeguarding subtype for row ``i``."""
        return Subtype(SUBTYPES[int(self.subtypes[i].argmax())])

    def severity(self, i: int) -> Severity:
        """Most likely severity for row ``i``."""
        return Severity(SEVERITIES[int(self.severities[i].argmax())])

    def category_scores(self, i: int) -> dict[str, float]:
        """Row ``i`` as {category: probability}."""
        return {c: float(self.categories[i, j]) for j, c in enumerate(CATEGORIES)}


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class Head:
    """Standardise, one ReLU hidden layer, three output groups; weights as float32 arrays."""

    weights: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    # Low-rank updates to the encoder the head was trained with (merged at load); or none.
    adapter: Adapter = field(default_factory=Adapter)
    # Hashed n-gram logistic models blended into the category probabilities; or none.
    lexical: Lexical = field(default_factory=Lexical.empty)

    @property
    def input_dim(self) -> int:
        """Size of the feature vector the head expects."""
        return int(self.weights["w1"].shape[0])

    @property
    def layers(self) -> tuple[int, ...]:
        """Encoder hidden layers whose mean-pooled vectors the head reads, in order."""
        return tuple(self.meta.get("layers", (-1,)))

    def predict(self, x: np.ndarray, texts: Sequence[str] | None = None) -> HeadScores:
        """Scores for a batch of sentence vectors, shape (n, input_dim), and their texts
        (which a head with a lexical model needs too)."""
        w = self.weights
        z = (x.astype(np.float32, copy=False) - w["mu"]) / w["sd"]
        h = np.maximum(z @ w["w1"] + w["b1"], 0.0)
        categories = _sigmoid(h @ w["wc"] + w["bc"])
        if self.lexical:
            if texts is None:
                raise ValueError("this head blends in a lexical model: pass the texts")
            categories = self.lexical.blend(categories, texts)
        return HeadScores(
            categories=categories,
            subtypes=_softmax(h @ w["ws"] + w["bs"]),
            severities=_softmax(h @ w["wv"] + w["bv"]),
        )

    def thresholds(self, kind: str = "model",
                   fallback: Mapping[Category, float] | None = None) -> dict[Category, float]:
        """The calibrated per-category thresholds stored with the head (fallback, or 0.5, if none)."""
        stored = self.meta.get("thresholds", {}).get(kind, {})
        return {c: float(stored.get(c.value, fallback[c] if fallback else 0.5))
                for c in SCORED_CATEGORIES}

    def to_bytes(self) -> bytes:
        """The .npz file content; deterministic for the same weights and meta."""
        arrays = {k: np.ascontiguousarray(self.weights[k], dtype=np.float32) for k in WEIGHT_NAMES}
        arrays.update(self.adapter.arrays())
        arrays.update(self.lexical.arrays())
        meta = {**self.meta, "format": FORMAT}
        if self.adapter:
            meta["adapter"] = {**meta.get("adapter", {}), "scale": self.adapter.scale}
        else:
            meta.pop("adapter", None)
        arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
        buf = io.BytesIO()
        # np.savez stamps the current time into the zip, which would change the hash.
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(arrays):
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                member = io.BytesIO()
                np.lib.format.write_array(member, arrays[name], allow_pickle=False)
                zf.writestr(info, member.getvalue())
        return buf.getvalue()

    def save(self, path: Path) -> str:
        """Write the head to ``path``; returns the file's sha256."""
        data = self.to_bytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: Path | str | None = None) -> Head:
        """Read a head written by ``save``; the packaged head by default."""
        path = Path(path) if path is not None else HEAD_PATH
        if not path.is_file():
            raise FileNotFoundError(
                f"no classifier head at {path}; run `schoolwatch train` to build one"
            )
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") not in READABLE_FORMATS:
                raise ValueError(
                    f"{path}: head format {meta.get('format')!r}, expected one of "
                    f"{READABLE_FORMATS}"
                )
            weights = {k: data[k].astype(np.float32) for k in WEIGHT_NAMES}
            lora = {k: data[k] for k in data.files if k.startswith("lora/")}
            lexical = Lexical.from_arrays({k: data[k] for k in data.files if k.startswith("lex/")})
        adapter = Adapter.from_arrays(lora, meta.get("adapter", {}).get("scale", 1.0))
        return cls(weights=weights, meta=meta, adapter=adapter, lexical=lexical)


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
