"""LoRA adapters: stored with the head, merged into a private copy of the encoder at load."""
from __future__ import annotations

import numpy as np
import pytest

from classifiers.adapter import Adapter, module_name
from classifiers.encoder import ModelLoadError, load_encoder
from classifiers.head import Head
from classifiers.train import Settings


def _adapter(seed: int = 0, scale: float = 2.0) -> Adapter:
    rng = np.random.default_rng(seed)
    factors = {}
    for target in ("query", "value"):
        a = rng.normal(0, 0.05, (4, 384)).astype(np.float32)
        b = rng.normal(0, 0.05, (384, 4)).astype(np.float32)
        factors[module_name(6, target)] = (a, b)
    return Adapter(factors, scale)


def test_head_round_trips_its_adapter(tmp_path) -> None:
    head = Head.load()
    head.adapter = _adapter()
    sha = head.save(tmp_path / "h.npz")
    again = Head.load(tmp_path / "h.npz")
    assert again.adapter.fingerprint() == head.adapter.fingerprint()
    assert again.adapter.rank == 4 and again.adapter.scale == 2.0
    assert again.save(tmp_path / "h2.npz") == sha


def test_a_head_without_adapter_has_none(tmp_path) -> None:
    head = Head.load()
    head.adapter = Adapter()
    head.save(tmp_path / "plain.npz")
    plain = Head.load(tmp_path / "plain.npz")
    assert not plain.adapter and "adapter" not in plain.meta


def test_merged_encoder_is_a_separate_copy_and_matches_the_training_path() -> None:
    from classifiers.finetune import frozen_pass, tuned_features

    adapter = _adapter()
    plain = load_encoder()
    before = plain.encode(["year 9 trip to the museum"], layers=(2, 4, 6))
    merged = load_encoder(adapter=adapter)
    assert merged is not plain and merged is load_encoder(adapter=_adapter())
    np.testing.assert_array_equal(plain.encode(["year 9 trip to the museum"], layers=(2, 4, 6)),
                                  before)
    texts = ["year 9 trip to the museum", "someone said they're bringing a knife tomorrow"]
    got = merged.encode(texts, layers=(2, 4, 6))
    assert not np.allclose(got, plain.encode(texts, layers=(2, 4, 6)), atol=1e-3)
    s = Settings(lora_rank=4, lora_layers=(6,))
    cache = frozen_pass(texts, 128, 5)
    np.testing.assert_allclose(tuned_features(cache, adapter, np.arange(2), s), got, atol=1e-4)


def test_an_adapter_that_does_not_fit_is_a_load_error() -> None:
    bad = Adapter({"encoder.layer.9.attention.self.query": (np.zeros((2, 384), np.float32),
                                                            np.zeros((384, 2), np.float32))})
    with pytest.raises(ModelLoadError, match="does not have"):
        load_encoder(adapter=bad)
