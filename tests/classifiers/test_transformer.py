"""The encoder, the packaged head and the transformer classifier, with the real model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from classifiers.base import SCORED_CATEGORIES, Category, ClassifierInput, Severity, Subtype
from classifiers.encoder import ModelLoadError, load_encoder
from classifiers.head import HEAD_PATH, Head
from classifiers.transformer import TransformerClassifier, TransformerConfig


@pytest.fixture(scope="module")
def clf() -> TransformerClassifier:
    return TransformerClassifier()


def test_encoder_loads_once_per_process() -> None:
    assert load_encoder() is load_encoder()
    assert load_encoder("default") is load_encoder()


def test_encoder_vectors_are_unit_length_and_independent_of_batching() -> None:
    enc = load_encoder()
    texts = ["short one", "a much longer post about the school's open evening next week " * 3,
             "the bake sale was the bomb"]
    together = enc.encode(texts, batch_size=2)
    alone = np.stack([enc.encode([t])[0] for t in texts])
    assert together.shape == (3, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # Padding and length-sorting must not change a text's vector.
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_encoder_mean_pools_the_last_layer() -> None:
    import torch

    enc = load_encoder()
    text = "Harrowgate High Street roadworks"
    batch = enc.tokenizer([text], return_tensors="pt")
    with torch.inference_mode():
        hidden = enc.model(**batch).last_hidden_state[0]
    expected = hidden.mean(0).numpy()
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(enc.encode([text])[0], expected, atol=1e-5)


def test_multi_layer_features_concatenate_normalised_layers() -> None:
    enc = load_encoder()
    out = enc.encode(["year 9 trip to the museum"], layers=(2, 4, 6))
    assert out.shape == (1, enc.dim * 3)
    parts = out.reshape(3, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(parts, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(parts[2], enc.encode(["year 9 trip to the museum"])[0], atol=1e-5)


def test_packaged_head_loads_with_calibrated_thresholds() -> None:
    head = Head.load()
    assert head.input_dim == 384 * len(head.layers)
    for kind in ("model", "ensemble"):
        thresholds = head.thresholds(kind)
        assert set(thresholds) == set(SCORED_CATEGORIES)
        assert all(0 < t < 1 for t in thresholds.values())


def test_head_bytes_are_deterministic(tmp_path) -> None:
    head = Head.load()
    sha_a = head.save(tmp_path / "a.npz")
    sha_b = Head.load(tmp_path / "a.npz").save(tmp_path / "b.npz")
    assert sha_a == sha_b
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_head_gives_the_outputs_recorded_at_training(clf) -> None:
    probe = clf.head.meta["probe"]
    scores = clf.score([ClassifierInput(text=t) for t in probe["texts"]])
    got = np.array([[s.probs[c] for c in SCORED_CATEGORIES] for s in scores])
    np.testing.assert_allclose(got, np.array(probe["categories"]), atol=1e-4)


def test_outputs_are_stable_across_calls_and_batches(clf) -> None:
    items = [ClassifierInput(text=t) for t in (
        "we'll destroy them on saturday, come support the u15s",
        "someone said they're bringing a knife to school tomorrow",
        "the head is a liar and a fraud",
    )]
    first = clf.classify(items)
    again = clf.classify(items)
    one_by_one = [clf.classify([item])[0] for item in items]
    assert first == again
    for a, b in zip(first, one_by_one):
        assert a.category == b.category
        for key in a.scores:
            assert a.scores[key] == pytest.approx(b.scores[key], abs=1e-3)


def test_assessment_shape_and_reasons(clf) -> None:
    out = clf.classify([
        ClassifierInput(text="i cant do this anymore, nobody at school would notice if i was gone"),
        ClassifierInput(text="Lovely harvest festival assembly this morning, thank you Year 3"),
    ])
    sg, calm = out
    assert sg.category is Category.SAFEGUARDING
    assert isinstance(sg.subtype, Subtype) and isinstance(sg.severity, Severity)
    assert sg.reasons[0].startswith("model: safeguarding 0.")
    assert f"({sg.subtype.value})" in sg.reasons[0]
    assert calm.category is Category.NONE and calm.severity is None and calm.subtype is None
    assert calm.reasons[0].startswith("model: none (highest ")
    assert set(sg.scores) == {c.value for c in SCORED_CATEGORIES}
    assert all(a.classifier == "transformer" for a in out)


def test_config_thresholds_override_the_head(clf) -> None:
    strict = TransformerClassifier(TransformerConfig(thresholds={"safeguarding": 0.999,
                                                                 "disparaging": 0.999,
                                                                 "reputational": 0.999}))
    text = "i cant do this anymore, nobody at school would notice if i was gone"
    assert strict.classify([ClassifierInput(text=text)])[0].category is Category.NONE
    assert strict.thresholds[Category.SAFEGUARDING] == 0.999
    assert clf.thresholds == clf.head.thresholds("model")


def test_empty_batch(clf) -> None:
    assert clf.classify([]) == []


@pytest.mark.parametrize("options", [
    {"thresholds": {"safeguarding": 1.5}},
    {"thresholds": {"none": 0.5}},
    {"batch_size": 0},
    {"modle": "default"},
])
def test_config_rejects_bad_options(options) -> None:
    with pytest.raises(ValidationError):
        TransformerConfig.model_validate(options)


def test_missing_hub_model_is_one_clear_error_without_download() -> None:
    with pytest.raises(ModelLoadError, match="allow_download"):
        TransformerClassifier(TransformerConfig(model="schoolwatch-tests/no-such-model"))


def test_missing_local_model_path(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        TransformerClassifier(TransformerConfig(model=str(tmp_path / "nowhere")))


def test_missing_head_file(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="schoolwatch train"):
        TransformerClassifier(TransformerConfig(head=str(tmp_path / "head.npz")))


def _tiny_sequence_model(path, labels, multi_label=False) -> None:
    """A small random BERT classifier saved like a fine-tuned hub model."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(load_encoder().name)).save_pretrained(path)


def test_sequence_classification_model_with_label_map(tmp_path) -> None:
    model_dir = tmp_path / "seqcls"
    _tiny_sequence_model(model_dir, ["none", "self_harm", "insult", "complaint"])
    cfg = TransformerConfig(
        model=str(model_dir),
        label_map={"insult": "disparaging", "complaint": "reputational"},
        thresholds={"safeguarding": 0.01},
    )
    clf = TransformerClassifier(cfg)
    assert clf.kind == "sequence-classification"
    out = clf.classify([ClassifierInput(text="anything at all"), ClassifierInput(text="more")])
    assert len(out) == 2
    # Every post clears a 0.01 safeguarding threshold; its subtype comes from the label.
    assert all(a.category is Category.SAFEGUARDING for a in out)
    assert all(a.subtype is Subtype.SELF_HARM for a in out)
    assert out[0].reasons[0].startswith("model: safeguarding ")
    probs = [out[0].scores[c.value] for c in SCORED_CATEGORIES]
    assert sum(probs) <= 1.0 + 1e-6  # softmax labels add up within a category


def test_sequence_classification_model_needs_a_label_map(tmp_path) -> None:
    model_dir = tmp_path / "seqcls"
    _tiny_sequence_model(model_dir, ["LABEL_0", "LABEL_1"], multi_label=True)
    with pytest.raises(ModelLoadError, match="label_map"):
        TransformerClassifier(TransformerConfig(model=str(model_dir)))
    clf = TransformerClassifier(TransformerConfig(
        model=str(model_dir), label_map={"LABEL_0": "ignore", "LABEL_1": "disparaging"}
    ))
    assert clf.classify([ClassifierInput(text="x")])[0].category in {Category.DISPARAGING,
                                                                       Category.NONE}


def test_registered_as_a_plugin() -> None:
    from monitor import registry

    assert registry.load(registry.CLASSIFIERS, "transformer") is TransformerClassifier


def test_head_file_is_small() -> None:
    assert HEAD_PATH.stat().st_size < 5_000_000
    meta = Head.load().meta
    json.dumps(meta)  # the metadata stays plain JSON
