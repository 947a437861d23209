"""The head's lexical half: hashed word and character n-grams, one logistic model per category.

The frozen encoder smooths wording away ("my mum will murder me" sits close to a threat);
exact words and spellings ("kms", "tablets saved", "parental controls") are what a bag of
n-grams keeps. Its category probabilities are averaged with the MLP's (weight ``alpha``):
in leave-one-school-out CV the blend ranks safeguarding posts above harmless ones better
than either alone. Inference is a few hundred hashes and a sparse dot product per post,
cheap next to the encoder's forward pass; numpy only (training uses torch).
"""
from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
# Character n-grams of each word padded with a space (as "char_wb" analysers do).
CHAR_NGRAMS = (2, 5)
WORD_NGRAMS = (1, 2)


def _grams(text: str) -> list[str]:
    """The n-grams of one text: word uni/bigrams (tokens, emoji and punctuation count),
    and character 2-5-grams inside space-padded words."""
    tokens = _WORD.findall(text.lower())
    out = [f"w:{t}" for t in tokens]
    out += [f"b:{a} {b}" for a, b in zip(tokens, tokens[1:])]
    lo, hi = CHAR_NGRAMS
    for word in text.lower().split():
        padded = f" {word} "
        for n in range(lo, min(hi, len(padded)) + 1):
            out += [padded[i : i + n] for i in range(len(padded) - n + 1)]
    return out


@dataclass
class Bags:
    """Sparse rows: for text i, buckets ``idx[ptr[i]:ptr[i+1]]`` with sublinear counts."""

    idx: np.ndarray  # int64
    val: np.ndarray  # float32
    ptr: np.ndarray  # int64, len n + 1


def hash_texts(texts: Sequence[str], buckets: int) -> Bags:
    """Hashed n-gram counts per text (crc32, so the same on every machine and run)."""
    idx: list[np.ndarray] = []
    val: list[np.ndarray] = []
    ptr = [0]
    for text in texts:
        codes = np.fromiter((zlib.crc32(g.encode("utf-8")) % buckets for g in _grams(text)),
                            dtype=np.int64)
        uniq, counts = np.unique(codes, return_counts=True)
        idx.append(uniq)
        val.append((1.0 + np.log(counts)).astype(np.float32))
        ptr.append(ptr[-1] + len(uniq))
    return Bags(
        np.concatenate(idx) if idx else np.zeros(0, np.int64),
        np.concatenate(val) if val else np.zeros(0, np.float32),
        np.asarray(ptr, dtype=np.int64),
    )


def _weighted(bags: Bags, idf: np.ndarray) -> np.ndarray:
    """tf x idf per entry, each row scaled to unit length."""
    v = bags.val * idf[bags.idx]
    rows = np.repeat(np.arange(len(bags.ptr) - 1), np.diff(bags.ptr))
    norms = np.sqrt(np.bincount(rows, weights=v.astype(np.float64) ** 2,
                                minlength=len(bags.ptr) - 1))
    return (v / np.maximum(norms[rows], 1e-12)).astype(np.float32)


@dataclass
class Lexical:
    """idf per bucket, a (buckets, 3) weight matrix and 3 biases, and its share ``alpha``
    of the blended category probabilities; empty: no lexical model."""

    idf: np.ndarray
    w: np.ndarray
    b: np.ndarray
    alpha: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.alpha) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"lexical weight {self.alpha} must be in [0, 1]")

    def __bool__(self) -> bool:
        return self.w.size > 0

    @property
    def buckets(self) -> int:
        """Size of the hashed feature space."""
        return int(self.w.shape[0])

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 3) category probabilities."""
        bags = hash_texts(texts, self.buckets)
        v = _weighted(bags, self.idf)
        contrib = self.w[bags.idx] * v[:, None]
        rows = np.repeat(np.arange(len(texts)), np.diff(bags.ptr))
        z = np.zeros((len(texts), self.w.shape[1]), dtype=np.float64)
        np.add.at(z, rows, contrib)
        return (1.0 / (1.0 + np.exp(-(z + self.b)))).astype(np.float32)

    def blend(self, model: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """``alpha`` x this model's category probabilities + the rest x ``model``'s."""
        if not self or not self.alpha:
            return model
        if len(texts) != len(model):
            raise ValueError("the lexical model needs the text of every row")
        mixed = (1.0 - self.alpha) * model + self.alpha * self.predict(texts)
        return mixed.astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays stored in head.npz (none when empty)."""
        if not self:
            return {}
        return {"lex/idf": self.idf, "lex/w": self.w, "lex/b": self.b,
                "lex/alpha": np.asarray(self.alpha, dtype=np.float32)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> Lexical:
        """Read back what ``arrays`` wrote; empty when the head has no lexical model."""
        if "lex/w" not in arrays:
            return cls.empty()
        idf, w, b = (np.asarray(arrays[f"lex/{k}"], dtype=np.float32) for k in ("idf", "w", "b"))
        return cls(idf, w, b, float(arrays["lex/alpha"]))

    @classmethod
    def empty(cls) -> Lexical:
        """No lexical model."""
        z = np.zeros(0, dtype=np.float32)
        return cls(z, np.zeros((0, 0), dtype=np.float32), z)


def fit_lexical(
    texts: Sequence[str], targets: np.ndarray, buckets: int, l2: float, epochs: int, seed: int,
    alpha: float,
) -> Lexical:
    """Logistic regression per category on hashed n-grams, full batch, deterministic."""
    import torch

    bags = hash_texts(texts, buckets)
    n = len(texts)
    df = np.bincount(bags.idx, minlength=buckets)
    # Smoothed idf; buckets no training text uses get 0 (and weight 0), so they stay inert.
    idf = np.where(df > 0, np.log((1.0 + n) / (1.0 + df)) + 1.0, 0.0).astype(np.float32)
    v = _weighted(bags, idf)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        rows = np.repeat(np.arange(n), np.diff(bags.ptr))
        x = torch.sparse_coo_tensor(torch.from_numpy(np.vstack([rows, bags.idx])),
                                    torch.from_numpy(v), (n, buckets),
                                    check_invariants=True).coalesce()
        y = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
        w = torch.zeros((buckets, y.shape[1]), requires_grad=True)
        prior = y.mean(0).clamp(1e-3, 1 - 1e-3)
        b = torch.log(prior / (1 - prior)).clone().requires_grad_(True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=epochs, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6,
                                tolerance_change=1e-9)
        bce = torch.nn.BCEWithLogitsLoss(reduction="sum")

        def closure() -> Any:
            opt.zero_grad()
            loss = bce(torch.sparse.mm(x, w) + b, y) / n + l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return Lexical(idf, w.detach().numpy().astype(np.float32).copy(),
                       b.detach().numpy().astype(np.float32).copy(), alpha)
    finally:
        torch.set_num_threads(threads)
