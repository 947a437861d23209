"""Training-time encoder passes: frozen features, cached states, and LoRA fine-tuning.

The encoder below the lowest adapted layer never changes, so its output is computed once
per text and cached; each fine-tuning epoch only runs (forwards and backwards) the adapted
top layers. This is what keeps a leave-one-school-out cross-validation of a fine-tuned
encoder affordable on two CPU cores.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from classifiers.adapter import Adapter, attach_lora, detach_lora
from classifiers.encoder import mean_pool
from classifiers.head import CATEGORIES, SUBTYPES, Head

if TYPE_CHECKING:  # pragma: no cover
    from classifiers.train import Settings, Targets

log = logging.getLogger(__name__)


@dataclass
class Cache:
    """Per text: frozen pooled features of every hidden layer and the state entering the top."""

    pooled: np.ndarray  # (n, num_layers + 1, dim): mean-pooled, L2-normalised, base encoder
    states: list[Any]  # per text, (length, dim) float32 tensor: hidden state ``first``
    first: int  # hidden-state index fed to the first adapted layer (None -> no states)

    def features(self, layers: Sequence[int]) -> np.ndarray:
        """The frozen head input: the chosen layers' pooled vectors, concatenated."""
        return np.concatenate([self.pooled[:, i] for i in layers], axis=1)


def frozen_pass(
    texts: Sequence[str], max_length: int, first: int | None, batch_size: int = 64
) -> Cache:
    """Run the packaged encoder once over ``texts``; keep pooled layers and state ``first``."""
    import torch

    from classifiers.encoder import load_encoder

    enc = load_encoder()
    n_states = enc.num_layers + 1
    pooled = np.empty((len(texts), n_states, enc.dim), dtype=np.float32)
    states: list[Any] = [None] * len(texts)
    tokenized = enc.tokenize(texts, batch_size, max_length)
    pos = 0
    with torch.inference_mode():
        for batch in tokenized.batches:
            out = enc.model(**batch, output_hidden_states=True)
            mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
            rows = tokenized.order[pos : pos + mask.shape[0]]
            pooled[rows] = torch.stack(
                [mean_pool(out.hidden_states[i], mask) for i in range(n_states)], dim=1
            ).numpy()
            if first is not None:
                lengths = batch["attention_mask"].sum(1).tolist()
                for j, row in enumerate(rows):
                    states[row] = out.hidden_states[first][j, : lengths[j]].clone()
            pos += mask.shape[0]
    return Cache(pooled, states, first if first is not None else -1)


def _mask_for(model: Any, hidden: Any, mask: Any) -> Any:
    """The attention mask in the form the model's layers take (as BertModel builds it)."""
    try:
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(
            config=model.config, inputs_embeds=hidden, attention_mask=mask
        )
    except ImportError:  # pragma: no cover - older transformers
        return model.get_extended_attention_mask(mask, mask.shape)


class TopRunner:
    """The encoder's layers above the cache point, with LoRA, pooling the head's layers."""

    def __init__(self, s: Settings, first: int, seed: int, lora: bool = True) -> None:
        import torch

        from classifiers.encoder import load_encoder

        # A private copy: the process-wide encoder must stay untouched.
        self.model = copy.deepcopy(load_encoder().model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        torch.manual_seed(seed)
        self.wrapped = (
            attach_lora(self.model, s.lora_layers, s.lora_targets, s.lora_rank, s.lora_alpha,
                        s.lora_dropout, seed) if lora else {}
        )
        self.first = first
        self.layers = list(s.layers)
        layers = self.model.encoder.layer
        self.top = [layers[i] for i in range(first, self.model.config.num_hidden_layers)]

    def parameters(self) -> list[Any]:
        """The trainable LoRA factors."""
        return [p for w in self.wrapped.values() for p in (w.A, w.B)]

    def train(self, mode: bool = True) -> None:
        """Dropout on (training) or off."""
        for layer in self.top:
            layer.train(mode)

    def pooled(self, states: Sequence[Any]) -> dict[int, Any]:
        """{hidden index: pooled (b, dim)} for the head's layers at or above the cache point."""
        import torch

        lengths = [s.shape[0] for s in states]
        width = max(lengths)
        dim = states[0].shape[1]
        hidden = torch.zeros(len(states), width, dim)
        mask = torch.zeros(len(states), width, dtype=torch.long)
        for j, s in enumerate(states):
            hidden[j, : s.shape[0]] = s
            mask[j, : s.shape[0]] = 1
        attn = _mask_for(self.model, hidden, mask)
        m = mask.unsqueeze(-1).to(torch.float32)
        out = {}
        h = hidden
        for offset, layer in enumerate(self.top):
            h = layer(h, attn)
            if isinstance(h, tuple):  # pragma: no cover - older transformers
                h = h[0]
            index = self.first + offset + 1
            if index in self.layers:
                out[index] = mean_pool(h, m)
        return out

    def adapter(self) -> Adapter:
        """The trained factors (and the model restored to its base linears)."""
        return detach_lora(self.model, self.wrapped)


class HeadNet:
    """The head as torch modules, starting from a fitted numpy Head."""

    def __init__(self, head: Head, dropout: float) -> None:
        import torch
        from torch import nn

        w = head.weights
        self.mu = torch.from_numpy(w["mu"].copy())
        self.sd = torch.from_numpy(w["sd"].copy())
        hidden = w["w1"].shape[1]
        self.body = nn.Sequential(nn.Dropout(dropout), nn.Linear(w["w1"].shape[0], hidden),
                                  nn.ReLU(), nn.Dropout(dropout))
        self.heads = nn.ModuleDict({
            "c": nn.Linear(hidden, len(CATEGORIES)),
            "s": nn.Linear(hidden, len(SUBTYPES)),
            "v": nn.Linear(hidden, w["wv"].shape[1]),
        })
        with torch.no_grad():
            self.body[1].weight.copy_(torch.from_numpy(w["w1"].T.copy()))
            self.body[1].bias.copy_(torch.from_numpy(w["b1"].copy()))
            for key in ("c", "s", "v"):
                self.heads[key].weight.copy_(torch.from_numpy(w[f"w{key}"].T.copy()))
                self.heads[key].bias.copy_(torch.from_numpy(w[f"b{key}"].copy()))

    def parameters(self) -> list[Any]:
        """Every head parameter."""
        return list(self.body.parameters()) + list(self.heads.parameters())

    def train(self, mode: bool = True) -> None:
        """Dropout on (training) or off."""
        self.body.train(mode)
        self.heads.train(mode)

    def logits(self, x: Any) -> dict[str, Any]:
        """Category, subtype and severity logits for raw (unstandardised) features."""
        h = self.body((x - self.mu) / self.sd)
        return {key: self.heads[key](h) for key in ("c", "s", "v")}

    def to_head(self) -> Head:
        """Back to a numpy Head (same standardisation)."""
        weights = {"mu": self.mu.numpy().copy(), "sd": self.sd.numpy().copy(),
                   "w1": self.body[1].weight.detach().numpy().T.copy(),
                   "b1": self.body[1].bias.detach().numpy().copy()}
        for key in ("c", "s", "v"):
            weights[f"w{key}"] = self.heads[key].weight.detach().numpy().T.copy()
            weights[f"b{key}"] = self.heads[key].bias.detach().numpy().copy()
        return Head(weights=weights)


def _features(runner: TopRunner, cache: Cache, idx: Sequence[int], layers: Sequence[int]) -> Any:
    import torch

    tuned = runner.pooled([cache.states[i] for i in idx])
    parts = []
    for layer in layers:
        if layer in tuned:
            parts.append(tuned[layer])
        else:
            parts.append(torch.from_numpy(cache.pooled[np.asarray(idx), layer]))
    return torch.cat(parts, dim=1)


def _batches(idx: np.ndarray, lengths: np.ndarray, size: int) -> list[np.ndarray]:
    """Batches of similar length (little padding), in a fixed order."""
    order = idx[np.argsort(-lengths[idx], kind="stable")]
    return [order[i : i + size] for i in range(0, len(order), size)]


def finetune(
    cache: Cache, y: Targets, train_idx: np.ndarray, head: Head, s: Settings
) -> tuple[Adapter, Head]:
    """Train LoRA factors and the (warm-started) head together; deterministic per seed."""
    import torch
    from torch import nn

    runner = TopRunner(s, cache.first, s.seed)
    net = HeadNet(head, s.dropout)
    opt = torch.optim.AdamW([
        {"params": runner.parameters(), "lr": s.ft_lr, "weight_decay": 0.0},
        {"params": net.parameters(), "lr": s.ft_head_lr, "weight_decay": s.weight_decay},
    ])
    lengths = np.array([st.shape[0] for st in cache.states])
    batches = _batches(np.asarray(train_idx), lengths, s.ft_batch_size)
    steps = max(1, s.ft_epochs * len(batches))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: max(0.0, 1.0 - k / steps))
    gen = torch.Generator().manual_seed(s.seed)
    yc, ys = torch.from_numpy(y.categories), torch.from_numpy(y.subtype)
    yv, w = torch.from_numpy(y.severity), torch.from_numpy(y.weight)
    bce = nn.BCEWithLogitsLoss(reduction="none")
    ce = nn.CrossEntropyLoss(reduction="none")
    runner.train(True)
    net.train(True)
    for _ in range(s.ft_epochs):
        for b in torch.randperm(len(batches), generator=gen).tolist():
            idx = batches[b]
            out = net.logits(_features(runner, cache, idx, s.layers))
            t = torch.from_numpy(idx)
            wb = w[t]
            loss = (bce(out["c"], yc[t]).mean(1) * wb).sum() / wb.sum().clamp(min=1e-12)
            for key, target in (("s", ys[t]), ("v", yv[t])):
                mask = target >= 0
                if mask.any():
                    part = ce(out[key][mask], target[mask]) * wb[mask]
                    loss = loss + part.sum() / wb[mask].sum().clamp(min=1e-12)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    runner.train(False)
    net.train(False)
    return runner.adapter(), net.to_head()


def tuned_features(cache: Cache, adapter: Adapter, idx: np.ndarray, s: Settings,
                   batch_size: int = 64) -> np.ndarray:
    """Head inputs for ``idx`` through the adapted top layers (eval mode), from the cache."""
    import torch

    runner = TopRunner(s, cache.first, s.seed, lora=False)
    adapter.merge_into(runner.model)
    runner.train(False)
    lengths = np.array([st.shape[0] for st in cache.states])
    out = np.empty((len(idx), len(s.layers) * cache.pooled.shape[2]), np.float32)
    position = {int(i): k for k, i in enumerate(idx)}
    with torch.inference_mode():
        for batch in _batches(np.asarray(idx), lengths, batch_size):
            feats = _features(runner, cache, batch, s.layers).numpy()
            out[[position[int(i)] for i in batch]] = feats
    return out
