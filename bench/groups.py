"""Groups: the sender's cost and the relay's fan-out, against pairwise fan-out in the
same run. Run: ``python -m bench.groups`` (``--quick``: fewer messages).

For groups of 10, 100 and 1,000 members:

* **Sender** (in process, no I/O). A group message is what ``client_sdk._groups.send``
  computes per message: one padded ``Text`` encrypted and signed with the sender's chain
  (``OutboundSenderKey.encrypt``) and one ``Send`` frame carrying that blob and the
  members' ``(mailbox, capability)`` list (``Send.encode``). Pairwise fan-out (the
  baseline) is one Double Ratchet ``encrypt`` of the same padded plaintext per member and
  one single-recipient ``Send`` frame each. Figures: microseconds per group message (the
  encrypt part and the whole), best of several rounds.
* **The SDK's send path** (``client_sdk._groups`` on a profile with the SDK's default
  durability, ``synchronous=FULL``, and n - 1 accepted contacts): creating the group (a
  control message per member), the first message (which carries each member's
  distribution), then steady messages (one transaction: chain state, history, one outbox
  row with the recipient list); baseline: one pairwise text per member as one group
  commit (``ClientCore.submit``). Milliseconds. Then a rename written pairwise (one
  ``GroupControl`` per member: the baseline, sealing turned off) and one sealed (one
  blob and a ``GroupControlKey`` per member, when ``_groups.sealing_pays``), back to
  back: milliseconds and outbox kilobytes (each blob once, 48 bytes per recipient).
* **Channels with subscriptions** (``client_sdk._channels`` on the same kind of profile,
  ``synchronous=FULL``, n accepted contacts as subscribers; ``--only channels``,
  ``--channel-sizes``): creating the channel (one control message per subscriber), the
  first post (a distribution to each subscriber, then ceil(n / 2,000) sends of one
  blob), a steady post, removing one subscriber, a rename (the small state to every
  reader). Milliseconds and outbox bytes.
* **Relay fan-out** (a real ``pigeon-relay`` subprocess, ``synchronous=FULL``, credits
  raised out of the way, as ``bench.relay`` starts it). Receivers are raw WebSocket
  clients (``bench.relay.wsclient``: registered accounts, one mailbox each, subscribed,
  cumulative acks every 64 deliveries and every ``--ack-interval-ms``, 100 ms by
  default, as a client that acks per receive batch); one anonymous sender connection
  keeps a window of sends in flight (``--group-window`` deliveries' worth in group mode,
  4,096 and 32,768 by default: the peak needs the larger; 512 sends in pairwise mode).
  Group mode: each message is ONE ``Send`` of a 300-byte blob to the n mailboxes.
  Pairwise mode: each message is n single-recipient ``Send`` s. Figure of a run:
  mailbox deliveries per second, from the first send to the last ``Delivery`` received
  (n x messages deliveries; every one is counted, none may be missing).

  Method, in one relay process: first one untimed group send to every receiver (as many
  deliveries as the smallest size's run; it warms the fresh relay's caches, its
  database file and its code paths). Then, per size, ``--repeats`` R rounds (3 by
  default, 2 with ``--quick``) of one group run at each window, the order of the two
  alternated from round to round and from size to size (10 members: A B, B A, A B;
  100 members: B A, A B, B A; ...; A the first ``--group-window``), so that neither
  window is always the one that runs second on a warmer relay. The pairwise baseline
  runs once per size (it takes several times as long as a group run), in the middle of
  that size's group runs (with R = 3: after the third of six). ``--messages`` sets the
  messages per run (default 5,000, 1,000 and 100 for 10, 100 and 1,000 members, as
  when each window ran once: the group runs are short next to the pairwise ones, so
  three of each window add about a minute, and a full ``--only relay`` takes 103-114 s
  on the shared 2-core machine of docs/benchmarks.md). Reported: each timed run's row
  (name and figures as before, plus its size, mode, window and round), then per size
  and window the MEDIAN deliveries/s of its R runs with their min and max, and the
  median relay CPU per delivery; then the size's peak: the larger of the two windows'
  medians (not the best single run), the pairwise run's rate and peak / pairwise. The
  header gives the commit and UTC time at the start and the 1-minute load average
  before and after the relay runs.

The load generator (one process) and the relay share the machine's cores. Method and
figures: docs/benchmarks.md ("Groups").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._report import Rows, print_rows
from bench.ratchet import _pair
from bench.relay.flows import open_relay_receiver, open_relay_sender, unpack_frame
from bench.relay.profiling import PySpy, summarize
from bench.relay.servers import ServerProcess, proc_cpu_s, relay_command
from bench.relay.wsclient import WsClient
from pigeon_crypto.padding import pad_message
from pigeon_crypto.rng import system_rng
from pigeon_crypto.sender_keys import OutboundSenderKey
from protocol.frames import Ack, Send
from protocol.inner import Text

SIZES = (10, 100, 1000)
T_SENT, T_ERROR, T_DELIVERY = 41, 9, 43
TEXT = "a group message of about a hundred characters, like most chat messages are, more or less."
BLOB_SIZE = 300


def _plaintext() -> bytes:
    return pad_message(Text(message_id=os.urandom(16), sent_at_ms=1, text=TEXT).encode())


def _recipients(n: int) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((os.urandom(16), os.urandom(32)) for _ in range(n))


def _best(fn: Callable[[int], float], reps: int, rounds: int = 5) -> float:
    """Best seconds per call over *rounds* chunks of *reps* calls."""
    return min(fn(reps) / reps for _ in range(rounds))


def sender_rows(quick: bool) -> Rows:
    return [_sender_row(n, quick) for n in SIZES]


def _sender_row(n: int, quick: bool) -> dict[str, Any]:
    plaintext = _plaintext()
    recipients = _recipients(n)
    chain = OutboundSenderKey.create(system_rng)

    def group_encrypt(reps: int) -> float:
        nonlocal chain
        t0 = time.perf_counter()
        for _ in range(reps):
            chain, _ = chain.encrypt(plaintext)
        return time.perf_counter() - t0

    def group_total(reps: int) -> float:
        nonlocal chain
        t0 = time.perf_counter()
        for i in range(reps):
            chain, message = chain.encrypt(plaintext)
            Send(request_id=i + 1, client_msg_id=os.urandom(16), blob=b"\x81" + message,
                 recipients=recipients).encode()
        return time.perf_counter() - t0

    sessions = [_pair()[0] for _ in range(n)]

    def pairwise_encrypt(reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            for j, state in enumerate(sessions):
                sessions[j] = state.encrypt(plaintext, rng=system_rng).state
        return time.perf_counter() - t0

    def pairwise_total(reps: int) -> float:
        t0 = time.perf_counter()
        for i in range(reps):
            for j, state in enumerate(sessions):
                out = state.encrypt(plaintext, rng=system_rng)
                sessions[j] = out.state
                Send(request_id=i + 1, client_msg_id=os.urandom(16), blob=out.message,
                     recipients=(recipients[j],)).encode()
        return time.perf_counter() - t0

    g_reps = 50 if quick else 200
    p_reps = max(1, (2000 if quick else 5000) // n)
    g_enc, g_all = _best(group_encrypt, g_reps), _best(group_total, g_reps)
    p_enc, p_all = _best(pairwise_encrypt, p_reps, 3), _best(pairwise_total, p_reps, 3)
    return {"name": f"sender, {n} members", "group_encrypt_us": g_enc * 1e6,
            "group_total_us": g_all * 1e6, "pairwise_encrypt_us": p_enc * 1e6,
            "pairwise_total_us": p_all * 1e6, "pairwise/group": p_all / g_all}


# --- the SDK's send path ----------------------------------------------------------------------


def _sdk_core(folder: Path, n: int) -> tuple[Any, Any, list[bytes]]:
    """A profile with *n* accepted contacts (a session and an outbound mailbox each),
    reopened with the SDK's default durability (FULL)."""
    from client_sdk.core import ClientCore
    from client_sdk.store import Durability, Profile
    from client_sdk.store.records import (
        Contact,
        ContactState,
        MailboxDirection,
        PairwiseMailbox,
    )
    from client_sdk.testing import FAST_PARAMS

    path = folder / f"sdk-{n}.pigeon"
    profile = Profile.create(path, "bench", params=FAST_PARAMS, durability=Durability.OFF)
    ClientCore(profile.store, rng=system_rng).create_identity()
    peers = sorted(os.urandom(16) for _ in range(n))
    for peer in peers:
        boxes = tuple(PairwiseMailbox(mailbox_id=os.urandom(16), direction=d,
                                      capability=os.urandom(32), created_at_ms=1)
                      for d in (MailboxDirection.INBOUND, MailboxDirection.OUTBOUND))
        profile.store.save_contact(Contact(account_id=peer, state=ContactState.ACCEPTED,
                                           mailboxes=boxes, created_at_ms=1, updated_at_ms=1))
        profile.store.store_session(peer, _pair()[0])
    profile.close()
    profile = Profile.open(path, "bench", durability=Durability.FULL)
    return profile, ClientCore(profile.store, rng=system_rng), peers


_NOW = 1_000


def _text(mid: bytes, now_ms: int) -> Text:
    return Text(message_id=mid, sent_at_ms=now_ms, text=TEXT)


def _history(cid: int, mid: bytes) -> Any:
    from client_sdk.history import NewMessage
    return NewMessage(conversation_id=cid, message_id=mid, sender=None, sent_at_ms=_NOW,
                      body=TEXT)


def sdk_rows(quick: bool) -> Rows:
    """``client_sdk._groups`` as the SDK runs it (store, transaction, outbox rows): the
    group's creation, its first message (which carries every member's distribution), then
    steady messages; against one pairwise text per member, queued as one group commit
    (``ClientCore.submit``), in the same run."""
    from client_sdk import _groups
    from client_sdk._sending import SendText

    rows: Rows = []
    with tempfile.TemporaryDirectory(prefix="pigeon-bench-groups-sdk-") as tmp:
        for n in SIZES:
            profile, core, peers = _sdk_core(Path(tmp), n - 1)  # n members with us
            t0 = time.perf_counter()
            group_id, _, _ = _groups.create(core, name="bench", members=peers, admins=(),
                                            avatar=None, channel=False, now_ms=_NOW)
            t_create = time.perf_counter() - t0
            t0 = time.perf_counter()
            _groups.send(core, group_id, _text, _history, now_ms=_NOW)
            t_first = time.perf_counter() - t0
            m = 20 if quick else 100
            t0 = time.perf_counter()
            for _ in range(m):
                _groups.send(core, group_id, _text, _history, now_ms=_NOW)
            t_group = (time.perf_counter() - t0) / m
            k = max(1, (20 if quick else 100) // n)
            t0 = time.perf_counter()
            for _ in range(k):
                core.submit([SendText(peer=p, text=TEXT) for p in peers], now_ms=_NOW)
            t_pairwise = (time.perf_counter() - t0) / k
            renames = _renames(core, group_id)
            profile.close()
            rows.append({"name": f"SDK send path, {n} members", "create_ms": t_create * 1e3,
                         "first_message_ms": t_first * 1e3,
                         "group_message_ms": t_group * 1e3,
                         "pairwise_to_all_ms": t_pairwise * 1e3,
                         "pairwise/group": t_pairwise / t_group, **renames})
    return rows


def _outbox_kb(items: list[Any]) -> float:
    """What outbox rows store: each blob once and 48 bytes per recipient."""
    return sum(len(i.entry.blob) + 48 * len(i.entry.recipients) for i in items) / 1e3


def _renames(core: Any, group_id: bytes) -> dict[str, float]:
    """A rename written pairwise (the baseline: sealing turned off for it) and one sealed
    (the SDK's choice, ``_groups.sealing_pays``), back to back on the same group."""
    from client_sdk import _groups

    def never(size: int, peers: int) -> bool:
        return False

    out: dict[str, float] = {}
    pays = _groups.sealing_pays
    for mode in ("pairwise", "sealed"):
        _groups.sealing_pays = never if mode == "pairwise" else pays  # type: ignore[assignment]
        try:
            t0 = time.perf_counter()
            items, _ = _groups.change(core, group_id, lambda s, m=mode: {"name": m},  # type: ignore[misc]
                                      now_ms=_NOW)
            out[f"rename_{mode}_ms"] = (time.perf_counter() - t0) * 1e3
            out[f"rename_{mode}_kb"] = _outbox_kb(items)
        finally:
            _groups.sealing_pays = pays
    out["rename_pairwise/sealed_kb"] = out["rename_pairwise_kb"] / out["rename_sealed_kb"]
    return out


CHANNEL_SIZES = (1000, 10_000)


def channel_rows(quick: bool, sizes: tuple[int, ...] = CHANNEL_SIZES) -> Rows:
    """``client_sdk._channels`` as the SDK runs it: the cost of each change and post
    of a channel with *n* subscribers (time, outbox rows and bytes)."""
    from client_sdk import _channels, _groups

    def size(items: list[Any]) -> int:
        return sum(len(i.entry.blob) * len(i.entry.recipients) for i in items)

    rows: Rows = []
    with tempfile.TemporaryDirectory(prefix="pigeon-bench-channels-") as tmp:
        for n in sizes:
            profile, core, peers = _sdk_core(Path(tmp), n)
            t0 = time.perf_counter()
            gid, made, _ = _channels.create(core, name="bench", subscribers=peers, admins=(),
                                            avatar=None, now_ms=_NOW)
            t_create = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, _, first = _groups.send(core, gid, _text, _history, now_ms=_NOW)
            t_first = time.perf_counter() - t0
            m = 5 if quick else 20
            t0 = time.perf_counter()
            for _ in range(m):
                _, _, steady = _groups.send(core, gid, _text, _history, now_ms=_NOW)
            t_post = (time.perf_counter() - t0) / m
            t0 = time.perf_counter()
            removed, _ = _channels.set_subscribed(core, gid, peers[:1], False, now_ms=_NOW)
            t_remove = time.perf_counter() - t0
            t0 = time.perf_counter()
            renamed, _ = _groups.change(core, gid, lambda s: {"name": "bench 2"}, now_ms=_NOW)
            t_rename = time.perf_counter() - t0
            profile.close()
            rows.append({"name": f"channel, {n} subscribers", "create_ms": t_create * 1e3,
                         "create_kb": size(made) / 1e3, "first_post_ms": t_first * 1e3,
                         "first_post_kb": size(first) / 1e3, "post_ms": t_post * 1e3,
                         "post_sends": len(steady), "remove_one_ms": t_remove * 1e3,
                         "remove_one_kb": size(removed) / 1e3, "rename_ms": t_rename * 1e3,
                         "rename_kb": size(renamed) / 1e3})
    return rows


# --- relay fan-out ----------------------------------------------------------------------------


class _Receivers:
    """Counts deliveries per receiver and acks cumulatively."""

    def __init__(self, sockets: list[tuple[WsClient, bytes]], ack_interval_s: float) -> None:
        self.sockets = sockets
        self.ack_interval_s = ack_interval_s
        self.counts = [0] * len(sockets)
        self.last_seq = [0] * len(sockets)
        self.acked = [0] * len(sockets)
        self.rids = [10] * len(sockets)
        self.active = 0
        self.expected = 0
        self.remaining = 0
        self.done: asyncio.Event = asyncio.Event()
        self.last_ns = 0
        self.errors = 0
        for i, (ws, _) in enumerate(sockets):
            ws.on_message = self._callback(i)

    def start(self, active: int, expected: int) -> None:
        self.active, self.expected = active, expected
        self.counts = [0] * len(self.sockets)
        self.remaining = active
        self.done = asyncio.Event()

    def _callback(self, i: int) -> Callable[[bytes], None]:
        def on_message(data: bytes) -> None:
            f = unpack_frame(data)
            if f[1] != T_DELIVERY:
                if f[1] == T_ERROR:
                    self.errors += 1
                return
            seq = f[3][2]
            if seq > self.last_seq[i]:
                self.last_seq[i] = seq
                self.counts[i] += 1
                if seq - self.acked[i] >= 64:
                    self.ack(i)
                if i < self.active and self.counts[i] == self.expected:
                    self.remaining -= 1
                    if self.remaining == 0:
                        self.last_ns = time.perf_counter_ns()
                        self.done.set()
        return on_message

    def ack(self, i: int) -> None:
        ws, mailbox = self.sockets[i]
        self.rids[i] += 1
        self.acked[i] = self.last_seq[i]
        ws.send(Ack(request_id=self.rids[i], mailbox_id=mailbox,
                    up_to_seq=self.last_seq[i]).encode())

    async def ticker(self) -> None:
        while True:
            await asyncio.sleep(self.ack_interval_s)
            for i in range(len(self.sockets)):
                if self.last_seq[i] > self.acked[i]:
                    self.ack(i)


class _Sender:
    """Keeps *window* sends in flight; counts ``Sent`` answers."""

    def __init__(self, ws: WsClient) -> None:
        self.ws = ws
        self.frames: list[bytes] = []
        self.next = 0
        self.inflight = 0
        self.window = 1
        self.answered = 0
        self.errors = 0
        ws.on_message = self._on_message

    def run(self, frames: list[bytes], window: int) -> None:
        self.frames, self.next, self.inflight, self.window = frames, 0, 0, window
        self._fill()

    def _fill(self) -> None:
        while self.inflight < self.window and self.next < len(self.frames):
            self.ws.send(self.frames[self.next])
            self.next += 1
            self.inflight += 1

    def _on_message(self, data: bytes) -> None:
        f = unpack_frame(data)
        if f[1] == T_ERROR:
            self.errors += 1
        elif f[1] != T_SENT:
            return
        self.inflight -= 1
        self.answered += 1
        self._fill()


def _plan(sizes: tuple[int, ...], messages: dict[int, int], group_windows: tuple[int, ...],
          modes: tuple[str, ...], repeats: int) -> list[tuple[int, int, str, int, int]]:
    """The timed runs in order: ``(members, messages, mode, deliveries' worth in flight
    (0 for pairwise), round)``. Per size, *repeats* rounds of one group run per window,
    the windows' order reversed from one round to the next and from one size to the
    next; the one pairwise run in the middle of the size's group runs."""
    plan: list[tuple[int, int, str, int, int]] = []
    for k, n in enumerate(sizes):
        group: list[tuple[int, int, str, int, int]] = []
        if "group" in modes:
            for r in range(repeats):
                order = group_windows if (r + k) % 2 == 0 else group_windows[::-1]
                group += [(n, messages[n], "group", w, r + 1) for w in order]
        pairwise = [(n, messages[n], "pairwise", 0, 1)] if "pairwise" in modes else []
        mid = len(group) // 2
        plan += group[:mid] + pairwise + group[mid:]
    return plan


def _summary(runs: Rows, sizes: tuple[int, ...], group_windows: tuple[int, ...]) -> Rows:
    """Per size and window the median of the group runs (min and max beside it), then
    the size's peak: the larger of the windows' medians, against the pairwise run."""
    out: Rows = []
    for n in sizes:
        mine = [r for r in runs if r["members"] == n]
        pairwise = [r["deliveries_per_s"] for r in mine if r["mode"] == "pairwise"]
        best: dict[str, Any] | None = None
        for w in group_windows:
            rs = [r for r in mine if r["mode"] == "group" and r["window_deliveries"] == w]
            if not rs:
                continue
            rates = [r["deliveries_per_s"] for r in rs]
            row: dict[str, Any] = {
                "name": f"relay fan-out, {n} members, group, {rs[0]['window']} sends in "
                        f"flight, median of {len(rs)}",
                "deliveries_per_s": statistics.median(rates), "min_per_s": min(rates),
                "max_per_s": max(rates),
                "relay_cpu_us_per_delivery": statistics.median(
                    r["relay_cpu_s"] / r["deliveries"] for r in rs) * 1e6,
                "window": rs[0]["window"], "runs": len(rs)}
            out.append(row)
            if best is None or row["deliveries_per_s"] > best["deliveries_per_s"]:
                best = row
        if best is None:
            continue
        peak: dict[str, Any] = {
            "name": f"relay fan-out, {n} members, peak (larger median)",
            "deliveries_per_s": best["deliveries_per_s"], "window": best["window"],
            "relay_cpu_us_per_delivery": best["relay_cpu_us_per_delivery"]}
        if pairwise:
            peak["pairwise_per_s"] = statistics.median(pairwise)
            peak["peak/pairwise"] = best["deliveries_per_s"] / peak["pairwise_per_s"]
        out.append(peak)
    return out


async def _fanout(port: int, pid: int, sizes: tuple[int, ...], messages: dict[int, int],
                  group_windows: tuple[int, ...], ack_interval_ms: float,
                  profile: Path | None = None,
                  modes: tuple[str, ...] = ("group", "pairwise"),
                  repeats: int = 3) -> Rows:
    most = max(sizes)
    sockets: list[tuple[WsClient, bytes]] = []
    caps: list[bytes] = []
    t0 = time.perf_counter()
    for start in range(0, most, 50):
        opened = await asyncio.gather(*(open_relay_receiver(port)
                                        for _ in range(min(50, most - start))))
        for ws, info in opened:
            sockets.append((ws, info.mailbox_id))
            caps.append(info.capability)
    setup_s = time.perf_counter() - t0
    receivers = _Receivers(sockets, ack_interval_ms / 1000)
    ticker = asyncio.create_task(receivers.ticker())
    sender = _Sender(await open_relay_sender(port))
    rows: Rows = []
    rid = 10
    # Untimed first: a group send to everyone, as many deliveries as the smallest
    # size's run (the fresh relay's caches, its database file and the code paths warm
    # up; the first timed run was otherwise up to 1.7x slower than the same run later).
    plan = [(most, max(1, min(messages[n] * n for n in sizes) // most), "group",
             max(group_windows), 0)]
    plan += _plan(sizes, messages, group_windows, modes, repeats)
    try:
        for n, m, mode, in_flight, rnd in plan:
            warm_up = rnd == 0
            window = max(2, in_flight // n) if mode == "group" else 512
            recipients = tuple((sockets[i][1], caps[i]) for i in range(n))
            frames: list[bytes] = []
            for _ in range(m):
                if mode == "group":
                    rid += 1
                    frames.append(Send(request_id=rid, client_msg_id=os.urandom(16),
                                       blob=os.urandom(BLOB_SIZE),
                                       recipients=recipients).encode())
                else:
                    for r in recipients:
                        rid += 1
                        frames.append(Send(request_id=rid, client_msg_id=os.urandom(16),
                                           blob=os.urandom(BLOB_SIZE),
                                           recipients=(r,)).encode())
            receivers.start(n, m)
            cpu0 = os.times()
            relay0 = proc_cpu_s(pid)
            start_ns = time.perf_counter_ns()
            spy = (PySpy(pid, 3, profile / f"relay-{n}-{mode}-w{window}-r{rnd}.txt")
                   if profile is not None and not warm_up else contextlib.nullcontext())
            with spy:
                sender.run(frames, window)
                async with asyncio.timeout(300):
                    await receivers.done.wait()
            elapsed = (receivers.last_ns - start_ns) / 1e9
            cpu1 = os.times()
            relay_cpu = proc_cpu_s(pid) - relay0
            deliveries = n * m
            if warm_up:
                await asyncio.sleep(0.3)
                continue
            rows.append({
                "name": f"relay fan-out, {n} members, {mode}, {window} sends in flight",
                "messages": m, "sends": len(frames), "deliveries": deliveries,
                "seconds": elapsed, "deliveries_per_s": deliveries / elapsed,
                "relay_cpu_s": relay_cpu,
                "generator_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
                "errors": sender.errors + receivers.errors,
                "members": n, "mode": mode, "window": window, "window_deliveries": in_flight,
                "round": rnd,
            })
            await asyncio.sleep(0.3)  # let acks land before the next run
    finally:
        ticker.cancel()
        for ws, _ in sockets:
            ws.abort()
        sender.ws.abort()
    rows.insert(0, {"name": "relay set-up", "receivers": most, "seconds": setup_s})
    return rows + _summary(rows[1:], sizes, group_windows)


GROUP_WINDOWS = (4096, 32768)
"""Deliveries' worth of group sends in flight, ``repeats`` runs each: the peak of a
closed loop needs enough in flight to keep the relay busy (4 sends to 1,000 members
leave its writer and its loop idle about half the time), as ``bench.relay`` runs two
windows per size."""
REPEATS = 3
"""Group runs per size and window (the order of the windows alternated per round)."""


def relay_rows(quick: bool, sizes: tuple[int, ...] = SIZES,
               group_windows: tuple[int, ...] = GROUP_WINDOWS,
               ack_interval_ms: float = 100.0, profile: Path | None = None,
               modes: tuple[str, ...] = ("group", "pairwise"),
               count: int | None = None, repeats: int | None = None,
               relay_extra: tuple[str, ...] = ()) -> Rows:
    """Every timed run's row (as before: one per run, now with its size, mode, window
    and round), then per size and window the median row and the size's peak row."""
    if repeats is None:
        repeats = 2 if quick else REPEATS
    messages = ({10: 1000, 100: 200, 1000: 30} if quick
                else {10: 5000, 100: 1000, 1000: 100})
    if count is not None:
        messages = dict.fromkeys(sizes, count)
    with tempfile.TemporaryDirectory(prefix="pigeon-bench-groups-") as tmp:
        relay = ServerProcess("relay", relay_command(Path(tmp) / "data", extra=relay_extra),
                              Path(tmp) / "relay.log")
        with relay:
            return asyncio.run(_fanout(relay.port, relay.pid, sizes, messages, group_windows,
                                       ack_interval_ms, profile, modes, repeats))


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages")
    parser.add_argument("--only", choices=("sender", "sdk", "channels", "relay"), default=None)
    parser.add_argument("--channel-sizes", type=int, nargs="+", default=list(CHANNEL_SIZES))
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--group-window", type=int, nargs="+", default=list(GROUP_WINDOWS),
                        help="deliveries in flight in group mode (sends = this / members); "
                             "--repeats runs per value (default 4096 32768)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="relay fan-out: group runs per size and window, the windows' "
                             "order alternated per round; medians reported (default 3, "
                             "2 with --quick)")
    parser.add_argument("--messages", type=int, default=None,
                        help="relay fan-out: messages per run (default 5,000, 1,000 "
                             "and 100 for 10, 100 and 1,000 members)")
    parser.add_argument("--ack-interval-ms", type=float, default=100.0,
                        help="receivers ack what they got every N ms (and every 64 deliveries)")
    parser.add_argument("--modes", nargs="+", choices=("group", "pairwise"),
                        default=["group", "pairwise"],
                        help="relay fan-out: which of the two to run (repeated A/B runs of "
                             "the group figure alone; figures keep the pairwise baseline)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="sample the relay with py-spy during each run (a separate run: "
                             "the sampler costs CPU); prints where its time goes")
    parser.add_argument("--relay-arg", action="append", default=[], metavar="ARG",
                        help="relay fan-out: extra pigeon-relay argument (repeat), e.g. "
                             "--relay-arg=--store-writer --relay-arg=process")
    args = parser.parse_args()
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    rows: list[dict[str, Any]] = []
    extra = ""
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    commit = _commit()  # at the start: the checkout may move during a long run
    if args.only in (None, "sender"):
        rows += sender_rows(args.quick)
    if args.only in (None, "sdk"):
        rows += sdk_rows(args.quick)
    if args.only in (None, "channels"):
        rows += channel_rows(args.quick, tuple(args.channel_sizes))
    if args.only in (None, "relay"):
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
        load0 = os.getloadavg()[0]
        rows += relay_rows(args.quick, tuple(args.sizes), tuple(args.group_window),
                           args.ack_interval_ms, args.profile, tuple(args.modes),
                           args.messages, args.repeats, tuple(args.relay_arg))
        extra = f", load average (1 min) {load0:.2f} before the relay runs, " \
                f"{os.getloadavg()[0]:.2f} after"
        if args.relay_arg:
            extra += f", relay arguments {' '.join(args.relay_arg)}"
    print_rows(rows, f"commit {commit}, started {started} UTC{extra}")
    if args.profile is not None:
        for path in sorted(args.profile.glob("relay-*.txt")):
            print(f"\n## {path.name}\n{summarize(path, 15)}")


if __name__ == "__main__":
    main()
