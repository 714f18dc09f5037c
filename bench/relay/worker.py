"""Load-generator worker process: opens its share of the pairs, drives them, reports counts.

One worker = one process = one asyncio loop with the lean client of :mod:`.wsclient`; the
harness starts several (multiprocessing, spawn) and splits the pairs between them. The
harness and the workers talk over a ``multiprocessing`` pipe:

1. the worker opens its pairs (relay: receiver registers, creates a mailbox, subscribes;
   sender connects anonymously) and sends ``("ready", info)``;
2. the harness sends ``("go", plan)`` with absolute ``time.monotonic_ns()`` instants
   (CLOCK_MONOTONIC, system-wide on Linux): ``start_ns``, ``measure_from_ns``,
   ``measure_to_ns``. Sending starts at ``start_ns`` and stops at ``measure_to_ns``;
   only receipts inside ``[measure_from_ns, measure_to_ns)`` count for rates and
   latencies (the rest is warm-up);
3. the worker drains (waits until every accepted message has been received and every
   send answered; at most ``drain_s``, and no more than ``stall_s`` without progress), checks
   per pair that nothing was lost or duplicated, and sends
   ``("result", stats)``.

Modes:

* ``closed``: every pair keeps ``window`` messages in flight (sent, not yet received by
  its receiver); each receipt sends the next one. ``window=1`` is ping-pong.
* ``open``: messages leave at a fixed rate (this worker's share of the offered rate),
  round-robin over the pairs, whatever the answers; a 1 ms ticker sends what is due.
  Latencies are taken from the real send time; how late the ticker ran against the
  schedule is reported as ``lag`` (it must stay small for the figures to mean anything).
* ``idle``: open the connections, report ready, hold them until ``("stop",)``.

Receivers ack cumulatively (``Ack(up_to_seq)``) once ``ack_every`` deliveries are
unacked, and a worker-wide ticker acks every pair with anything unacked every
``ack_interval_ms``. The forwarder has no acks (nothing is stored).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import gc
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from protocol import FRAME_TYPES

from .flows import (
    AckTemplate,
    SendTemplate,
    make_blob,
    open_forwarder_pair,
    open_relay_receiver,
    open_relay_sender,
    parse_blob,
    unpack_frame,
)
from .wsclient import WsClient, WsClosed

__all__ = ["WorkerArgs", "raise_fd_limit", "worker_main"]

_monotonic_ns = time.monotonic_ns
T_SENT, T_ERROR, T_DELIVERY, T_SEND = 41, 9, 43, 40
MAX_RID = 2**32 - 1


@dataclass(slots=True, kw_only=True)
class WorkerArgs:
    target: str  # "relay" | "forwarder"
    port: int
    pairs: list[int]
    mode: str  # "closed" | "open" | "idle"
    window: int = 1
    rate: float = 0.0
    ack_every: int = 32
    ack_interval_ms: float = 5.0
    flush_each: bool = False
    setup_concurrency: int = 64
    setup_timeout_s: float = 300.0
    drain_s: float = 30.0
    """Cap on the drain; it also ends after ``stall_s`` without progress."""
    stall_s: float = 5.0
    keep_latencies: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _name(frame_type: int) -> str:
    cls = FRAME_TYPES.get(frame_type)
    return f"{cls.__name__} ({frame_type})" if cls is not None else f"frame type {frame_type}"


def raise_fd_limit() -> tuple[int, int]:
    """Soft fd limit up to the hard one; returns ``(soft, hard)`` now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Pair:
    """One sender/receiver pair and its counters."""

    __slots__ = (
        "ack_rid", "ack_tpl", "acked_seq", "closed", "counter", "dups", "errors", "expected",
        "idx", "inflight", "last_seq", "ooo", "received", "receiver", "rid", "send_errors",
        "sender", "sent", "sent_ok", "tpl", "unanswered_codes",
    )

    def __init__(self, idx: int, sender: WsClient, receiver: WsClient, tpl: SendTemplate,
                 ack_tpl: AckTemplate | None) -> None:
        self.idx = idx
        self.sender = sender
        self.receiver = receiver
        self.tpl = tpl
        self.ack_tpl = ack_tpl
        self.counter = 0  # next message counter == messages sent
        self.rid = 1  # Connect used 1
        self.ack_rid = 4  # Connect, Register, CreateMailbox, Subscribe used 1..4
        self.sent = 0
        self.sent_ok = 0
        self.send_errors = 0
        self.errors: dict[str, int] = {}
        self.received = 0
        self.dups = 0
        self.expected = 0
        self.ooo: set[int] = set()
        self.inflight = 0
        self.last_seq = 0
        self.acked_seq = 0
        self.closed = 0
        self.unanswered_codes = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class Driver:
    """Runs the pairs of one worker."""

    def __init__(self, args: WorkerArgs) -> None:
        self.args = args
        self.relay = args.target == "relay"
        self.pairs: list[Pair] = []
        self.sending = False
        self.measure_from = 0
        self.measure_to = 2**63
        self.in_window = 0
        self.lat = array.array("q")
        self.lag = array.array("q")
        self.dirty: set[Pair] = set()
        self.closed_conns = 0
        self.drain_s = 0.0
        self.max_stall_s = 0.0
        self.setup_failures: dict[str, int] = {}
        self.loop = asyncio.get_running_loop()
        self.done_event = asyncio.Event()

    # ------------------------------------------------------------------ setup

    async def open_pair(self, idx: int) -> Pair:
        a = self.args
        if self.relay:
            receiver, info = await open_relay_receiver(a.port, timeout_s=a.setup_timeout_s)
            if a.mode == "idle":
                return Pair(idx, receiver, receiver, SendTemplate(info.mailbox_id,
                                                                  info.capability,
                                                                  idx.to_bytes(8, "big")),
                            None)
            try:
                sender = await open_relay_sender(a.port, timeout_s=a.setup_timeout_s)
            except BaseException:
                receiver.abort()
                raise
            tpl = SendTemplate(info.mailbox_id, info.capability, os.urandom(4)
                               + idx.to_bytes(4, "big"))
            return Pair(idx, sender, receiver, tpl, AckTemplate(info.mailbox_id))
        if a.mode == "idle":
            from .wsclient import connect
            ws = await connect("127.0.0.1", a.port, f"/ws?pair={idx}&role=recv",
                               timeout_s=a.setup_timeout_s)
            return Pair(idx, ws, ws, SendTemplate(bytes(16), bytes(32), bytes(8)), None)
        sender, receiver = await open_forwarder_pair(a.port, idx, timeout_s=a.setup_timeout_s)
        return Pair(idx, sender, receiver, SendTemplate(bytes(16), bytes(32),
                                                        idx.to_bytes(8, "big")), None)

    async def setup(self) -> None:
        sem = asyncio.Semaphore(self.args.setup_concurrency)

        async def one(idx: int) -> Pair | None:
            async with sem:
                try:
                    return await self.open_pair(idx)
                except (OSError, WsClosed, TimeoutError, Exception) as exc:
                    key = f"{type(exc).__name__}: {exc}"[:160]
                    self.setup_failures[key] = self.setup_failures.get(key, 0) + 1
                    return None

        opened = await asyncio.gather(*(one(i) for i in self.args.pairs))
        self.pairs = [p for p in opened if p is not None]
        for p in self.pairs:
            self._wire(p)

    def _wire(self, p: Pair) -> None:
        def on_close(_ws: WsClient, p: Pair = p) -> None:
            p.closed += 1
            self.closed_conns += 1
            if self.sending or self.args.mode == "idle":
                p.error(f"connection closed (code {_ws.close_code})")

        p.receiver.on_close = on_close
        if p.sender is not p.receiver:
            p.sender.on_close = on_close
        if self.args.mode == "idle":
            p.receiver.on_message = self._idle_message(p)
            return
        p.receiver.on_message = self._receiver_callback(p)
        if self.relay:
            p.sender.on_message = self._sender_callback(p)
        else:
            p.sender.on_message = lambda _d: None

    def _idle_message(self, p: Pair) -> Callable[[bytes], None]:
        def on_message(data: bytes) -> None:
            p.error("unexpected frame on an idle connection")

        return on_message

    # ------------------------------------------------------------------ hot path

    def send_one(self, p: Pair) -> None:
        c = p.counter
        p.counter = c + 1
        rid = p.rid + 1
        if rid > MAX_RID:
            rid = 2
        p.rid = rid
        p.inflight += 1
        p.sent += 1
        p.sender.send(p.tpl.frame(rid, c, make_blob(p.idx, c, _monotonic_ns())),
                      flush=self.args.flush_each)

    def _sender_callback(self, p: Pair) -> Callable[[bytes], None]:
        def on_message(data: bytes) -> None:
            f = unpack_frame(data)
            t = f[1]
            if t == T_SENT:
                body = f[3]
                if body.get(1):
                    p.send_errors += 1
                    p.error(f"Sent.rejected {body[1]}")
                    self._lost_in_flight(p)
                else:
                    p.sent_ok += 1
            elif t == T_ERROR:
                p.send_errors += 1
                p.error(f"Send -> Error {f[3].get(1)}")
                self._lost_in_flight(p)
            else:
                p.error(f"sender got {_name(t)}")

        return on_message

    def _lost_in_flight(self, p: Pair) -> None:
        p.inflight -= 1
        if self.sending and self.args.mode == "closed":
            self.send_one(p)

    def _receiver_callback(self, p: Pair) -> Callable[[bytes], None]:
        relay = self.relay
        args = self.args
        closed_loop = args.mode == "closed"
        ack_every = args.ack_every
        keep = args.keep_latencies
        lat = self.lat
        dirty = self.dirty

        def on_message(data: bytes) -> None:
            now = _monotonic_ns()
            f = unpack_frame(data)
            t = f[1]
            if relay:
                if t != T_DELIVERY:
                    if t == T_ERROR:
                        p.error(f"Ack -> Error {f[3].get(1)}")
                    else:
                        p.error(f"receiver got {_name(t)}")
                    return
                body = f[3]
                blob = body[4]
                seq = body[2]
                if seq > p.last_seq:
                    p.last_seq = seq
                    if seq - p.acked_seq >= ack_every:
                        self.ack(p)
                        dirty.discard(p)
                    else:
                        dirty.add(p)
            else:
                if t != T_SEND:
                    p.error(f"receiver got {_name(t)}")
                    return
                blob = f[3][2]
            _pair, c, t_ns = parse_blob(blob)
            if c == p.expected:
                p.expected = c + 1
                ooo = p.ooo
                if ooo:
                    while p.expected in ooo:
                        ooo.remove(p.expected)
                        p.expected += 1
            elif c < p.expected or c in p.ooo:
                p.dups += 1
                return
            else:
                p.ooo.add(c)
            p.received += 1
            p.inflight -= 1
            if self.measure_from <= now < self.measure_to:
                self.in_window += 1
                if keep:
                    lat.append(now - t_ns)
            if closed_loop and self.sending:
                self.send_one(p)

        return on_message

    def ack(self, p: Pair) -> None:
        assert p.ack_tpl is not None
        rid = p.ack_rid + 1
        if rid > MAX_RID:
            rid = 5
        p.ack_rid = rid
        p.acked_seq = p.last_seq
        try:
            p.receiver.send(p.ack_tpl.frame(rid, p.last_seq))
        except WsClosed:
            p.error("ack on a closed connection")

    async def ack_ticker(self) -> None:
        interval = self.args.ack_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            if self.dirty:
                dirty = list(self.dirty)
                self.dirty.clear()
                for p in dirty:
                    if p.last_seq > p.acked_seq:
                        self.ack(p)

    # ------------------------------------------------------------------ phases

    async def sleep_until(self, t_ns: int) -> None:
        delay = (t_ns - _monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)

    async def run(self, plan: dict[str, int | float]) -> None:
        self.measure_from = int(plan["measure_from_ns"])
        self.measure_to = int(plan["measure_to_ns"])
        acker = asyncio.create_task(self.ack_ticker()) if self.relay else None
        try:
            await self.sleep_until(int(plan["start_ns"]))
            self.sending = True
            if self.args.mode == "closed":
                for p in self.pairs:
                    for _ in range(self.args.window):
                        if not p.sender.closed:
                            self.send_one(p)
                await self.sleep_until(self.measure_to)
            else:
                await self.open_loop(int(plan["start_ns"]))
            self.sending = False
            deadline = _monotonic_ns() + int(self.args.drain_s * 1e9)
            progress = (-1, -1)
            stalled_since = _monotonic_ns()
            while _monotonic_ns() < deadline:
                if all(self._settled(p) for p in self.pairs):
                    break
                now_progress = (sum(p.received for p in self.pairs),
                                sum(p.sent_ok + p.send_errors for p in self.pairs))
                if now_progress != progress:
                    self.max_stall_s = max(self.max_stall_s,
                                           (_monotonic_ns() - stalled_since) / 1e9)
                    progress, stalled_since = now_progress, _monotonic_ns()
                elif _monotonic_ns() - stalled_since > self.args.stall_s * 1e9:
                    break
                await asyncio.sleep(0.01)
            self.max_stall_s = max(self.max_stall_s, (_monotonic_ns() - stalled_since) / 1e9)
            self.drain_s = (_monotonic_ns() - self.measure_to) / 1e9
            if self.relay:  # final acks, so the relay can drop what was delivered
                for p in self.pairs:
                    if p.last_seq > p.acked_seq and not p.receiver.closed:
                        self.ack(p)
                await asyncio.sleep(0.05)
        finally:
            if acker is not None:
                acker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await acker

    def _settled(self, p: Pair) -> bool:
        if p.sender.closed or p.receiver.closed:
            return True
        if self.relay:
            answered = p.sent_ok + p.send_errors
            return answered == p.sent and p.received >= p.sent_ok
        return p.received >= p.sent

    async def open_loop(self, start_ns: int) -> None:
        rate = self.args.rate
        pairs = [p for p in self.pairs]
        n = len(pairs)
        if rate <= 0 or n == 0:
            await self.sleep_until(self.measure_to)
            return
        issued = 0
        per_ns = rate / 1e9
        tick = 0.001
        lag = self.lag
        end = self.measure_to
        while True:
            now = _monotonic_ns()
            if now >= end:
                break
            due = int((now - start_ns) * per_ns) + 1 - issued
            if due > 0:
                # how late the oldest message of this batch leaves against its schedule
                lag.append(now - (start_ns + int(issued / per_ns)))
                for _ in range(due):
                    p = pairs[issued % n]
                    issued += 1
                    if not p.sender.closed:
                        self.send_one(p)
            await asyncio.sleep(tick)

    # ------------------------------------------------------------------ results

    def stats(self) -> dict[str, Any]:
        errors: dict[str, int] = {}
        lost = dups = sent = sent_ok = send_errors = received = unanswered = 0
        pairs_with_loss = 0
        for p in self.pairs:
            for k, v in p.errors.items():
                errors[k] = errors.get(k, 0) + v
            accepted = p.sent_ok if self.relay else p.sent
            missing = max(0, accepted - p.received)
            if missing:
                pairs_with_loss += 1
            lost += missing
            dups += p.dups
            sent += p.sent
            sent_ok += p.sent_ok
            send_errors += p.send_errors
            received += p.received
            if self.relay:
                unanswered += p.sent - p.sent_ok - p.send_errors
        for k, v in self.setup_failures.items():
            errors[f"setup: {k}"] = errors.get(f"setup: {k}", 0) + v
        t = os.times()
        return {
            "pairs": len(self.pairs),
            "sent": sent,
            "sent_ok": sent_ok,
            "send_errors": send_errors,
            "received": received,
            "in_window": self.in_window,
            "lost": lost,
            "pairs_with_loss": pairs_with_loss,
            "dups": dups,
            "unanswered": unanswered,
            "errors": errors,
            "closed_conns": self.closed_conns,
            "lat": self.lat.tobytes(),
            "lag": self.lag.tobytes(),
            "cpu_s": t.user + t.system,
            "drain_s": self.drain_s,
            "max_stall_s": self.max_stall_s,
        }

    def close_all(self) -> None:
        for p in self.pairs:
            for ws in {p.sender, p.receiver}:
                ws.on_close = None
                with contextlib.suppress(Exception):
                    ws.close()


async def _main(args: WorkerArgs, conn: Connection) -> None:
    driver = Driver(args)
    t0 = time.monotonic()
    try:
        await driver.setup()
        # The generator's garbage is acyclic (bytes, msgpack lists and dicts): refcounting
        # frees it. Keep the cyclic collector from pausing the generator mid-run.
        gc.collect()
        gc.freeze()
        gc.disable()
        conn.send(("ready", {"pairs": len(driver.pairs), "setup_s": time.monotonic() - t0,
                             "setup_failures": driver.setup_failures, "pid": os.getpid()}))
        msg = await asyncio.to_thread(conn.recv)
        if msg[0] == "go" and args.mode != "idle":
            await driver.run(msg[1])
        elif msg[0] == "go":  # idle: hold until told to stop
            msg = await asyncio.to_thread(conn.recv)
        conn.send(("result", driver.stats()))
    finally:
        driver.close_all()
        await asyncio.sleep(0.05)


def worker_main(args: WorkerArgs, conn: Connection) -> None:
    """Process entry point (multiprocessing, spawn)."""
    raise_fd_limit()
    try:
        asyncio.run(_main(args, conn))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise
