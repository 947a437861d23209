"""The head's lexical half (hashed n-gram logistic models) and the bagged MLP head."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from classifiers.base import Category, Severity, Subtype
from classifiers.datasets import Example
from classifiers.head import Head
from classifiers.lexical import Lexical, fit_lexical, hash_texts
from classifiers.train import Settings, _fit_one_head, build_targets, fit_head

TEXTS = [
    "gonna kms tonight", "we absolutely killed it at the concert 😂", "the head is a liar",
    "still no reply to my complaint", "i took the tablets", "great result for the under 12s",
    "kms i cant do this", "lovely concert tonight", "useless liar of a head",
    "complaint ignored again", "tablets saved up for after the mocks", "lovely sports day",
]
# safeguarding, disparaging, reputational per text (by position modulo 6)
PATTERN = [(1, 0, 0), (0, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0), (0, 0, 0)]
TARGETS = np.array([PATTERN[i % 6] for i in range(len(TEXTS))], dtype=np.float32)


def _fit(alpha: float = 0.5) -> Lexical:
    return fit_lexical(TEXTS, TARGETS, 4096, 1e-4, 50, 0, alpha)


def test_hashing_is_stable_and_sublinear() -> None:
    a, b = hash_texts(["kms kms kms", "hi"], 1024), hash_texts(["kms kms kms", "hi"], 1024)
    assert np.array_equal(a.idx, b.idx) and np.array_equal(a.val, b.val)
    assert a.ptr[0] == 0 and a.ptr[-1] == len(a.idx)
    # "w:kms" three times: 1 + log 3, not 3.
    assert a.val.max() == pytest.approx(1 + np.log(3), rel=1e-5)


def test_lexical_fit_is_deterministic_and_learns_the_words() -> None:
    a, b = _fit(), _fit()
    assert np.array_equal(a.w, b.w) and np.array_equal(a.b, b.b)
    p = a.predict(["honestly gonna kms", "the concert was lovely"])
    assert p[0, 0] > p[1, 0]


def test_head_blends_the_lexical_model_and_needs_the_texts(tmp_path) -> None:
    rng = np.random.default_rng(0)
    dim = 8
    w = {"mu": np.zeros(dim), "sd": np.ones(dim), "w1": rng.normal(size=(dim, 4)),
         "b1": np.zeros(4), "wc": rng.normal(size=(4, 3)), "bc": np.zeros(3),
         "ws": rng.normal(size=(4, 8)), "bs": np.zeros(8), "wv": rng.normal(size=(4, 3)),
         "bv": np.zeros(3)}
    plain = Head(weights={k: v.astype(np.float32) for k, v in w.items()})
    lex = _fit(alpha=0.25)
    head = replace(plain, lexical=lex)
    x = rng.normal(size=(2, dim)).astype(np.float32)
    texts = ["gonna kms", "lovely concert"]
    expected = 0.75 * plain.predict(x).categories + 0.25 * lex.predict(texts)
    np.testing.assert_allclose(head.predict(x, texts).categories, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="texts"):
        head.predict(x)
    head.save(tmp_path / "head.npz")
    back = Head.load(tmp_path / "head.npz")
    assert back.lexical.alpha == pytest.approx(0.25)
    np.testing.assert_allclose(back.predict(x, texts).categories, expected, rtol=1e-5)
    # Without a lexical model the texts are not needed, and a plain head has none stored.
    plain.save(tmp_path / "plain.npz")
    assert not Head.load(tmp_path / "plain.npz").lexical


def test_bagged_head_averages_the_heads_logits() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 16)).astype(np.float32)
    labels = [Category.SAFEGUARDING, Category.DISPARAGING, Category.REPUTATIONAL, Category.NONE]
    examples = [Example(text=str(i), label=labels[i % 4],
                        subtype=Subtype.SELF_HARM if i % 4 == 0 else None,
                        severity=None if i % 4 == 3 else Severity.LOW) for i in range(60)]
    y = build_targets(examples, 0.5)
    s = Settings(hidden=8, epochs=2, batch_size=16, bag=3)
    merged = fit_head(x, y, s)
    singles = [_fit_one_head(x, y, replace(s, seed=i)) for i in range(3)]
    assert merged.weights["w1"].shape == (16, 24)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    mean = np.mean([logit(h.predict(x).categories) for h in singles], axis=0)
    np.testing.assert_allclose(logit(merged.predict(x).categories), mean, atol=1e-3)
