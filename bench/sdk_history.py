"""Client history at scale: keyset pages and FTS5 search over N stored messages.

Run: ``python -m bench.sdk_history [--messages 1000000] [--conversations 100]
[--vocabulary 20000] [--pages 1000] [--queries 100] [--dir PATH] [--keep]``

Builds a profile (``client_sdk.store.Profile``) holding N text messages spread over
the conversations, bodies of 4..20 words drawn from a vocabulary with a Zipf (s = 1)
distribution, inserted with ``import_messages`` in batches of 100,000 (one transaction
each). Then, on the reopened profile:

* **page**: ``store.page(conversation, before=cursor, limit=50)`` at random positions
  (a random stored message as the cursor). Baseline, same positions: the same page by
  ``LIMIT 50 OFFSET k``.
* **search**: ``store.search(word, limit=50)`` for words sampled uniformly from the
  stored vocabulary (the target) and, as a harder case, sampled by frequency (common
  words dominate), each in NEWEST order (newest stored first; the SDK default) and in
  RANK order (BM25 over every match); and the first three letters of the uniform words
  (a search box while the word is typed: the last term is a prefix from three letters
  on). Baseline: ``body LIKE '%word%'`` on a few words.

Prints p50/p99 in milliseconds, the targets (page p99 <= 5 ms, search p99 <= 50 ms),
whether they are met, the build time and the file size. Figures: docs/client-store.md.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import string
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from client_sdk.history import ConversationKind, NewMessage, PageCursor, SearchOrder
from client_sdk.store import Durability, Profile, SqliteStore
from pigeon_crypto.sealing import Argon2Params

PAGE_TARGET_MS = 5.0
SEARCH_TARGET_MS = 50.0
T0 = 1_700_000_000_000
BATCH = 100_000
FAST = Argon2Params(time_cost=1, memory_kib=8, parallelism=1)  # not what is measured
OURS_EVERY = 3  # one message in three is ours


def vocabulary(n: int, rnd: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(3, 10))))
    return sorted(words, key=lambda w: rnd.random())


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


def timed(fn: Callable[[], object], runs: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) * 1000 / runs


class Corpus:
    """The generated messages' coordinates, for cursors and baselines."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.rnd = random.Random(20240601)
        self.words = vocabulary(args.vocabulary, self.rnd)
        weights = [1.0 / (rank + 1) for rank in range(len(self.words))]
        self.cum = [0.0] * len(weights)
        total = 0.0
        for i, w in enumerate(weights):
            total += w
            self.cum[i] = total
        self.n = args.messages
        self.conversations = args.conversations
        self.conv_of: list[int] = []  # index -> conversation number (0-based)
        self.sent_at: list[int] = []
        self.position: list[int] = []  # index -> position within its conversation

    def messages(self, conv_ids: list[int]) -> Iterator[NewMessage]:
        rnd, words, cum = self.rnd, self.words, self.cum
        counts = [0] * self.conversations
        for start in range(0, self.n, 10_000):
            size = min(10_000, self.n - start)
            lengths = [rnd.randint(4, 20) for _ in range(size)]
            drawn = rnd.choices(words, cum_weights=cum, k=sum(lengths))
            offset = 0
            for j, length in enumerate(lengths):
                i = start + j
                conv = rnd.randrange(self.conversations)
                sent = T0 + i * 10_000 + rnd.randrange(5_000)
                self.conv_of.append(conv)
                self.sent_at.append(sent)
                self.position.append(counts[conv])
                counts[conv] += 1
                ours = i % OURS_EVERY == 0
                yield NewMessage(
                    conversation_id=conv_ids[conv], message_id=i.to_bytes(16, "big"),
                    sender=None if ours else (conv + 1).to_bytes(16, "big"),
                    sent_at_ms=sent, received_at_ms=None if ours else sent + 50,
                    body=" ".join(drawn[offset:offset + length]),
                )
                offset += length


def build(path: Path, corpus: Corpus) -> tuple[float, list[int]]:
    start = time.perf_counter()
    with Profile.create(path, "bench", params=FAST, durability=Durability.NORMAL) as profile:
        store = profile.store
        conv_ids = [store.ensure_conversation(ConversationKind.DIRECT, (c + 1).to_bytes(16, "big"),
                                              now_ms=T0).id for c in range(corpus.conversations)]
        stream = corpus.messages(conv_ids)
        done = 0
        while done < corpus.n:
            chunk = [next(stream) for _ in range(min(BATCH, corpus.n - done))]
            done += store.import_messages(chunk)
            print(f"  {done:>9,} messages, {time.perf_counter() - start:6.1f} s", flush=True)
    return time.perf_counter() - start, conv_ids


def bench_pages(store: SqliteStore, profile: Profile, corpus: Corpus, conv_ids: list[int],
                pages: int) -> tuple[list[float], list[float], list[float]]:
    rnd = random.Random(7)
    picks = [rnd.randrange(corpus.n) for _ in range(pages)]
    keyset = []
    for i in picks:
        cid = conv_ids[corpus.conv_of[i]]
        cursor = PageCursor(corpus.sent_at[i], i + 1)  # rowids follow insertion order
        keyset.append(timed(lambda cid=cid, cursor=cursor: store.page(  # type: ignore[misc]
            cid, before=cursor, limit=50)))
    per_conv = [0] * corpus.conversations
    for c in corpus.conv_of:
        per_conv[c] += 1
    raw_keyset, offset = [], []
    for i in picks[: max(10, pages // 10)]:
        c = corpus.conv_of[i]
        skip = per_conv[c] - corpus.position[i]  # messages at or after the cursor
        with profile._db.read("baseline") as tx:
            raw_keyset.append(timed(lambda tx=tx, c=c, i=i: tx.conn.execute(  # type: ignore[misc]
                "SELECT * FROM messages WHERE conversation_id = ? AND (sent_at_ms, id) < (?, ?) "
                "ORDER BY sent_at_ms DESC, id DESC LIMIT 50",
                (conv_ids[c], corpus.sent_at[i], i + 1)).fetchall()))
            offset.append(timed(lambda tx=tx, c=c, skip=skip: tx.conn.execute(  # type: ignore[misc]
                "SELECT * FROM messages WHERE conversation_id = ? "
                "ORDER BY sent_at_ms DESC, id DESC LIMIT 50 OFFSET ?",
                (conv_ids[c], skip)).fetchall()))
    return keyset, raw_keyset, offset


def bench_search(store: SqliteStore, words: list[str], order: SearchOrder) -> tuple[
        list[float], float]:
    times, hits = [], 0
    for w in words:
        start = time.perf_counter()
        found = store.search(w, order=order, limit=50)
        times.append((time.perf_counter() - start) * 1000)
        hits += len(found.hits)
    return times, hits / len(words)


def line(name: str, samples: list[float], target: float | None, extra: str = "") -> str:
    p50, p99 = percentiles(samples)
    verdict = "" if target is None else ("  met" if p99 <= target else "  NOT MET")
    goal = "" if target is None else f"  (target p99 <= {target:g} ms)"
    return f"{name:<44}{p50:>9.2f}{p99:>9.2f}{extra}{goal}{verdict}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--conversations", type=int, default=100)
    ap.add_argument("--vocabulary", type=int, default=20_000)
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--dir", type=Path, default=None, help="where to build (default: temp)")
    ap.add_argument("--keep", action="store_true", help="keep the profile file")
    args = ap.parse_args()

    workdir = args.dir or Path(tempfile.mkdtemp(prefix="bench-sdk-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "history.db"
    path.unlink(missing_ok=True)
    corpus = Corpus(args)
    print(f"bench.sdk_history: {args.messages:,} messages, {args.conversations} conversations, "
          f"{args.vocabulary:,}-word Zipf vocabulary")
    try:
        build_s, conv_ids = build(path, corpus)
        size = path.stat().st_size
        start = time.perf_counter()
        profile = Profile.open(path, "bench", durability=Durability.NORMAL)
        open_ms = (time.perf_counter() - start) * 1000
        with profile:
            store = profile.store
            rnd = random.Random(11)
            uniform = rnd.sample(corpus.words, min(args.queries, len(corpus.words)))
            weighted = rnd.choices(corpus.words, cum_weights=corpus.cum, k=args.queries)
            for w in uniform[:10] + weighted[:10]:  # warm the page cache a little
                store.search(w)
            keyset, raw_keyset, offset = bench_pages(store, profile, corpus, conv_ids,
                                                     args.pages)
            results = {
                (sample, order): bench_search(store, words, order)
                for sample, words in (("uniform", uniform), ("by frequency", weighted))
                for order in SearchOrder
            }
            # What a search box sends while the word is being typed: its first letters.
            typed = [w[:3] for w in uniform]
            as_you_type = bench_search(store, typed, SearchOrder.NEWEST)
            like = []
            with profile._db.read("baseline") as tx:
                for w in uniform[:3]:
                    like.append(timed(lambda tx=tx, w=w: tx.conn.execute(  # type: ignore[misc]
                        "SELECT id FROM messages WHERE body LIKE ? ORDER BY id DESC LIMIT 50",
                        (f"%{w}%",)).fetchall()))

        print(f"\nbuild {build_s:.1f} s ({args.messages / build_s:,.0f} messages/s), "
              f"file {size / 2**20:.0f} MiB ({size / args.messages:.0f} B/message), "
              f"reopen {open_ms:.0f} ms\n")
        print(f"{'':<44}{'p50 ms':>9}{'p99 ms':>9}")
        print(line("page of 50, keyset (random positions)", keyset, PAGE_TARGET_MS))
        print(line("  the keyset SELECT alone (no records built)", raw_keyset, None))
        print(line("  baseline: the same page by LIMIT 50 OFFSET k", offset, None,
                   f"   x{percentiles(offset)[0] / percentiles(raw_keyset)[0]:.1f} keyset (p50)"))
        for (sample, order), (times, mean_hits) in results.items():
            target = SEARCH_TARGET_MS if sample == "uniform" and order is SearchOrder.NEWEST \
                else None
            print(line(f"search top 50, {order.value}, {sample} words", times, target,
                       f"   {mean_hits:4.1f} hits"))
        print(line("search top 50, newest, first 3 letters", as_you_type[0], None,
                   f"   {as_you_type[1]:4.1f} hits"))
        newest = percentiles(results[("uniform", SearchOrder.NEWEST)][0])[0]
        print(line("  baseline: body LIKE '%word%' (3 words)", like, None,
                   f"   x{percentiles(like)[0] / newest:.0f} FTS newest (p50)"))
    finally:
        if args.keep:
            print(f"\nkept {path}")
        else:
            shutil.rmtree(workdir, ignore_errors=True) if args.dir is None else path.unlink(
                missing_ok=True)


if __name__ == "__main__":
    main()
