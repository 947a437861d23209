"""Benchmark: classifier throughput against the raw encoder forward pass, load time, peak RSS.

Run: python bench/classify.py [--n 512] [--repeat 3] [--classifier ensemble]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import load_line, peak_rss_mb, print_rows  # noqa: E402

SAMPLES = [
    "Absolutely killed it at the {s} concert tonight, so proud of Year 7!",
    "Anyone know if {s} has an inset day on Friday? Can't find the term dates anywhere.",
    "The head at {s} is a useless clown and everyone knows it.",
    "Disappointed with how {s} handled my son's complaint; three weeks and no reply.",
    "someone in 10B at {s} said they're bringing a knife tomorrow, not even joking",
    "Staff at {s} completed their annual safeguarding and Prevent training today.",
    "ngl i can't do this anymore, nobody at {s} would even notice if i was gone",
    "Reading Lord of the Flies with Year 8 at {s}, the ending got them talking for an hour.",
]
SCHOOLS = ["Millbrook Academy", "Ashdown School", "Ferncliff High", "Northgate College"]


def posts(n: int, seed: int = 0) -> list[str]:
    """``n`` posts: train.jsonl texts when present, else varied templates."""
    rng = random.Random(seed)
    data = Path(__file__).resolve().parents[1] / "classifiers" / "data" / "train.jsonl"
    if data.is_file():
        import json

        texts = [json.loads(line)["text"] for line in data.read_text().splitlines() if line.strip()]
        return [rng.choice(texts) for _ in range(n)]
    out = []
    for _ in range(n):
        text = rng.choice(SAMPLES).format(s=rng.choice(SCHOOLS))
        out.append(" ".join([text] * rng.randint(1, 4)))
    return out


def best_rates(fns: dict, n: int, repeat: int) -> dict[str, float]:
    """Posts per second per function: runs interleaved, best of ``repeat``.

    Interleaving and taking the best keeps a burst of load from other processes on a
    shared machine from landing on one side of the ratio only.
    """
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            rates[name].append(n / (time.perf_counter() - started))
    return {name: max(values) for name, values in rates.items()}


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512, help="posts per run")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--classifier", default="ensemble", choices=["transformer", "ensemble"])
    p.add_argument("--chunk", type=int, default=64, help="posts per classify() call")
    p.add_argument("--head", help="a head.npz other than the packaged one")
    args = p.parse_args(argv)

    started = time.perf_counter()
    import torch

    from classifiers.base import ClassifierInput
    from classifiers.evaluate import load_classifier

    import_s = time.perf_counter() - started
    started = time.perf_counter()
    clf = load_classifier(args.classifier, {"head": args.head} if args.head else {})
    load_s = time.perf_counter() - started
    model = clf.model if args.classifier == "ensemble" else clf
    encoder = model._model.encoder
    cfg = model.config
    texts = posts(args.n)
    items = [ClassifierInput(text=t) for t in texts]
    chunks = [items[i : i + args.chunk] for i in range(0, len(items), args.chunk)]
    clf.classify(items[:8])  # warm-up

    def full() -> None:
        for chunk in chunks:
            clf.classify(chunk)

    def raw_batches() -> list[list[str]]:
        # The same posts in the same batches the classifier's encoder would get.
        return [texts[i : i + cfg.batch_size] for i in range(0, len(texts), cfg.batch_size)]

    tok = encoder.tokenizer

    def raw() -> None:
        with torch.inference_mode():
            for batch in raw_batches():
                enc = tok(batch, padding=True, truncation=True, max_length=cfg.max_length,
                          return_tensors="pt")
                encoder.model(**enc)

    pretokenized = [
        tok(b, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt")
        for b in raw_batches()
    ]

    def forward_only() -> None:
        with torch.inference_mode():
            for enc in pretokenized:
                encoder.model(**enc)

    rates = best_rates({"full": full, "raw": raw, "fwd": forward_only}, len(texts), args.repeat)
    rate_full, rate_raw, rate_fwd = rates["full"], rates["raw"], rates["fwd"]
    rss_mb = peak_rss_mb()

    rows = [
        ("classifier", args.classifier),
        ("posts per run", f"{len(texts)} (classify() calls of {args.chunk}, "
                          f"encoder batch {cfg.batch_size}, max_length {cfg.max_length})"),
        ("torch threads", str(torch.get_num_threads())),
        ("import time", f"{import_s:.2f} s"),
        ("model load time",
         f"{load_s:.2f} s (encoder from_pretrained {encoder.load_seconds:.2f} s)"),
        (f"{args.classifier} classify", f"{rate_full:8.1f} posts/s"),
        ("raw encoder (tokenize + forward)", f"{rate_raw:8.1f} posts/s"),
        ("raw encoder forward only", f"{rate_fwd:8.1f} posts/s"),
        ("ratio vs tokenize + forward", f"{rate_full / rate_raw:.2f}  (target >= 0.9)"),
        ("ratio vs forward only", f"{rate_full / rate_fwd:.2f}"),
        ("peak RSS", f"{rss_mb:.0f} MB  (target <= 1024 MB)"),
        ("load average (1 min)", load_line()),
    ]
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
