"""Benchmark: near-duplicate clustering at 10k and 100k indexed mentions, rebuild time, memory.

Run: python bench/dedup.py [--total 100000] [--small 10000] [--probe 2000] [--schools 50]

A deterministic synthetic stream mixes one-off posts with families of near-duplicates
(truncated retweets, quote posts, reworded syndicated copies, tagged copies). Every mention
is clustered as the pipeline would: find, then add to the incident found or a new one.
Costs are reported against baselines measured in the same run (one MinHash signature, one
rapidfuzz comparison), never as absolute pass/fail numbers.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import peak_rss_mb  # noqa: E402

TOPIC = ["pupils", "parents", "teacher", "headteacher", "ofsted", "uniform", "exam", "bullying",
         "detention", "year", "trip", "complaint", "staff", "lesson", "gcse", "governors"]
STOP = ["the", "a", "of", "to", "and", "in", "at", "is", "was", "for", "on", "with", "has", "after"]
SYLLABLES = ["ka", "lo", "mi", "ren", "to", "sha", "vel", "dor", "pi", "ne", "qua", "bri", "sol",
             "tam", "ek", "ru", "fin", "go", "zel", "har", "mo", "lin", "tes", "ur"]


@dataclass
class Post:
    """One synthetic mention and the story it truly belongs to."""

    id: int
    school: str
    text: str
    family: int
    head: bool


class Corpus:
    """A deterministic stream of posts: one-offs plus families of near-duplicates."""

    def __init__(self, seed: int, schools: int, vocab: int = 30_000) -> None:
        self.rng = random.Random(seed)
        words = set()
        while len(words) < vocab:
            words.add("".join(self.rng.choices(SYLLABLES, k=self.rng.randint(2, 4))))
        self.words = sorted(words)
        self.rng.shuffle(self.words)
        # Zipf-like over content words; the ranks above 150 are what is left once stop
        # words are gone, and a small topic list recurs the way "pupils" and "parents" do.
        weights = [1.0 / (rank + 150) for rank in range(vocab)]
        self.cum = list(itertools.accumulate(weights))
        self.schools = [f"s{n:03d}" for n in range(schools)]
        self.names = {s: f"{self.words[n].title()} High School" for n, s in enumerate(self.schools)}
        self.families: list[tuple[int, str, str, str | None]] = []  # id, school, body, title

    def _phrase(self, n: int) -> list[str]:
        content = self.rng.choices(self.words, cum_weights=self.cum, k=n)
        rng = self.rng.random
        return [self.rng.choice(STOP) if (r := rng()) < 0.35 else
                self.rng.choice(TOPIC) if r < 0.40 else w for w in content]

    def _story(self, school: str) -> tuple[str, str | None]:
        name = self.names[school]
        if self.rng.random() < 0.3:  # a news item: headline and lede
            title = " ".join([name, *self._phrase(self.rng.randint(5, 10))])
            return " ".join(self._phrase(self.rng.randint(30, 60))), title
        words = self._phrase(self.rng.randint(10, 40))
        words.insert(self.rng.randint(0, len(words)), name)
        return " ".join(words), None

    def _variant(self, body: str, title: str | None) -> str:
        kind = self.rng.random()
        full = f"{title}\n{body}" if title else body
        if kind < 0.4:  # retweet, cut at 140 characters as X does
            return (f"RT @user{self.rng.randint(1, 99999)}: {full}")[:139] + "\u2026"
        if kind < 0.6:  # quote post with a short comment
            comment = " ".join(self._phrase(self.rng.randint(2, 8)))
            return f"{comment} QT @user{self.rng.randint(1, 9999)}: {full}"
        if kind < 0.85:  # another outlet: new headline, a quarter of the lede reworded
            words = body.split()
            out = [self.rng.choice(self.words) if self.rng.random() < 0.25 else w
                   for w in words if self.rng.random() > 0.08]
            head = " ".join(self._phrase(self.rng.randint(5, 9)) + (title or body).split()[:3])
            return f"{head}\n{' '.join(out)}"
        tags = " ".join(f"#{self.rng.choice(self.words)}" for _ in range(self.rng.randint(1, 4)))
        link = f"https://t.co/{self.rng.randint(10**9, 10**10)}"
        return f"@someone{self.rng.randint(1, 999)} {full} {link} {tags}"

    def stream(self, n: int) -> Iterator[Post]:
        """``n`` posts in arrival order; ~45% repeat a recent story."""
        for post_id in range(1, n + 1):
            if self.families and self.rng.random() < 0.45:
                # Recent stories are repeated most; a few become storms.
                pick = len(self.families) - 1 - min(int(self.rng.expovariate(1 / 40)),
                                                    len(self.families) - 1)
                family, school, body, title = self.families[pick]
                yield Post(post_id, school, self._variant(body, title), family, head=False)
                continue
            school = self.rng.choice(self.schools)
            body, title = self._story(school)
            self.families.append((post_id, school, body, title))
            yield Post(post_id, school, f"{title}\n{body}" if title else body, post_id, head=True)


def rss_mb() -> float:
    """The process's resident memory now, in MB (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """Median over five rounds of the cost of one call, in microseconds."""
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(rounds)


class Run:
    """Clusters posts as the pipeline does and keeps score against the true families."""

    def __init__(self, index) -> None:
        self.index = index
        self.now = datetime.now(UTC)
        self.next_incident = 0
        self.incident_of: dict[int, int] = {}  # post id -> incident
        self.incident_family: dict[int, int] = {}
        self.joined_right = self.joined_wrong = self.repeats = self.missed = 0

    def cluster(self, post: Post) -> None:
        """Find the post's story, else open an incident; then index it."""
        incident = self.index.find(post.school, post.text)
        if incident is None:
            self.next_incident += 1
            incident = self.next_incident
            self.incident_family[incident] = post.family
            if not post.head:
                self.missed += 1
        elif self.incident_family[incident] == post.family:
            self.joined_right += 1
        else:
            self.joined_wrong += 1
        self.repeats += not post.head
        self.incident_of[post.id] = incident
        self.index.add(post.id, incident, post.school, post.text, self.now)

    def timed(self, posts: list[Post]) -> float:
        """Microseconds per post for clustering ``posts``."""
        started = time.perf_counter()
        for post in posts:
            self.cluster(post)
        return (time.perf_counter() - started) / len(posts) * 1e6


def interleaved(small: Run, small_posts: list[Post], large: Run, large_posts: list[Post],
                chunks: int = 8) -> tuple[float, float]:
    """Median cost per post of each run, timed in alternating slices so machine load hits both."""
    size = max(1, len(small_posts) // chunks)
    costs: tuple[list[float], list[float]] = ([], [])
    for n, start in enumerate(range(0, len(small_posts), size)):
        order = [(0, small, small_posts), (1, large, large_posts)]
        for slot, run, posts in order if n % 2 == 0 else reversed(order):
            costs[slot].append(run.timed(posts[start:start + size]))
    return statistics.median(costs[0]), statistics.median(costs[1])


def write_store(url: str, posts: list[Post], incident_of: dict[int, int], now: datetime) -> None:
    """A SQLite store holding every post as a mention of its incident."""
    from sqlalchemy import insert

    from monitor.store import Incident, MentionRow, init_db, make_engine

    engine = make_engine(url)
    init_db(engine)
    with engine.begin() as conn:
        incidents = sorted(set(incident_of.values()))
        for start in range(0, len(incidents), 5000):
            conn.execute(insert(Incident.__table__), [
                {"id": i, "school_id": "x", "category": "reputational", "status": "open",
                 "title": f"incident {i}", "first_seen": now, "last_seen": now,
                 "mention_count": 1, "platforms": ["x"], "revision": 0}
                for i in incidents[start:start + 5000]])
        for start in range(0, len(posts), 5000):
            conn.execute(insert(MentionRow.__table__), [
                {"id": p.id, "platform": "x", "external_id": str(p.id), "source_id": "bench",
                 "school_id": p.school, "url": f"https://x.com/i/web/status/{p.id}",
                 "canonical_url": f"https://x.com/i/web/status/{p.id}", "author": None,
                 "title": None, "text": p.text, "text_hash": "", "published_at": now,
                 "fetched_at": now, "raw": None, "incident_id": incident_of[p.id]}
                for p in posts[start:start + 5000]])
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--total", type=int, default=100_000, help="mentions indexed at the large point")
    p.add_argument("--small", type=int, default=10_000, help="mentions indexed at the small point")
    p.add_argument("--probe", type=int, default=2000, help="mentions timed at each point")
    p.add_argument("--schools", type=int, default=50)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)

    from rapidfuzz import fuzz

    from monitor.clustering import ClusteringSettings, StoryIndex, _signature, content_words

    settings = ClusteringSettings()
    started = time.perf_counter()
    corpus = Corpus(args.seed, args.schools)
    posts = list(corpus.stream(args.total + args.probe))
    gen_s = time.perf_counter() - started

    # Baselines, same run, same texts.
    sample = posts[:2000]
    contents = [" ".join(content_words(q.text, settings.max_words)) for q in sample]
    k = iter(range(10**9))
    words_us = per_call_us(lambda: content_words(sample[next(k) % 2000].text), 2000)
    k = iter(range(10**9))
    minhash_us = per_call_us(
        lambda: _signature.__wrapped__(contents[next(k) % 2000], settings.shingle_size,
                                       settings.num_perm), 2000)
    k = iter(range(10**9))
    pairs = [(contents[i], contents[(i + 1) % 2000]) for i in range(2000)]
    fuzz_us = per_call_us(lambda: fuzz.token_set_ratio(*pairs[next(k) % 2000]), 5000)

    gc.collect()
    rss_before = rss_mb()
    names = {school: [name] for school, name in corpus.names.items()}
    run = Run(StoryIndex(settings, school_names=names))
    started = time.perf_counter()
    for post in posts[:args.total]:
        run.cluster(post)
    cluster_s = time.perf_counter() - started
    rss_index = rss_mb() - rss_before
    small = Run(StoryIndex(settings, school_names=names))
    for post in posts[:args.small]:
        small.cluster(post)
    small_entries, large_entries = len(small.index), len(run.index)
    # Each index is probed with the posts that follow its own stream, in alternating slices.
    small_us, large_us = interleaved(small, posts[args.small:args.small + args.probe],
                                     run, posts[args.total:args.total + args.probe])
    entries = large_entries
    del small

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        stored = posts[:args.total]
        write_store(url, stored, run.incident_of, run.now)
        live_entries = large_entries
        del run.index
        gc.collect()
        from monitor.store import make_engine

        engine = make_engine(url)
        started = time.perf_counter()
        rebuilt = StoryIndex.rebuild(engine, settings, school_names=names)
        rebuild_s = time.perf_counter() - started
        engine.dispose()
    peak_mb = peak_rss_mb()

    print(f"corpus: {len(posts)} mentions, {args.schools} schools, {len(corpus.families)} stories "
          f"(seed {args.seed}, generated in {gen_s:.1f}s); clustering total {cluster_s:.1f}s")
    print(f"settings: num_perm={settings.num_perm} shingle_size={settings.shingle_size} "
          f"lsh_threshold={settings.lsh_threshold} confirm_ratio={settings.confirm_ratio} "
          f"max_words={settings.max_words}\n")
    print(f"{'baseline (same run)':<40}{'us/call':>10}")
    print(f"{'content_words(text)':<40}{words_us:>10.1f}")
    print(f"{'one MinHash signature':<40}{minhash_us:>10.1f}")
    print(f"{'one rapidfuzz token_set_ratio':<40}{fuzz_us:>10.1f}\n")
    print(f"{'find+add with N indexed':<26}{'entries':>9}{'mentions/s':>12}{'us/mention':>12}"
          f"{'x MinHash':>11}")
    for label, n, ent, us in (("N = %d" % args.small, args.small, small_entries, small_us),
                              ("N = %d" % args.total, args.total, large_entries, large_us)):
        print(f"{label:<26}{ent:>9}{1e6 / us:>12.0f}{us:>12.1f}{us / minhash_us:>11.1f}")
    print(f"\nper-mention cost ratio {args.total // 1000}k/{args.small // 1000}k: "
          f"{large_us / small_us:.2f}  (1.00 = flat)")
    rebuild_us = rebuild_s * 1e6 / len(stored)
    print(f"rebuild from SQLite, {len(stored)} mentions: {rebuild_s:.1f}s "
          f"({1e6 / rebuild_us:.0f} mentions/s, {rebuild_us / minhash_us:.1f} x MinHash each); "
          f"entries {len(rebuilt)} (live index had {live_entries})")
    per_entry_kb = rss_index * 1024 / max(entries, 1)
    print(f"memory: index ~{rss_index:.0f} MB RSS for {entries} entries "
          f"(~{per_entry_kb:.1f} KB/entry); peak RSS {peak_mb:.0f} MB")
    repeats = max(run.repeats, 1)
    print(f"quality on {run.repeats} repeats: joined own story {run.joined_right / repeats:.1%}, "
          f"missed {run.missed / repeats:.1%}; wrong-story joins {run.joined_wrong} "
          f"(of {len(posts)} mentions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
