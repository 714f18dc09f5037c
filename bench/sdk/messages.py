"""SDK end-to-end message throughput: ``python -m bench.sdk.messages`` (``--quick``).

What it measures (docs/benchmarks.md "Client SDK end to end")
    One relay process (``pigeon-relay`` on 127.0.0.1, ``--synchronous FULL``, send credits
    raised out of the way: :func:`bench.relay.servers.relay_command`) and, in two more
    processes, a **sender** and a **receiver** :class:`~client_sdk.AsyncClient`, each on
    a fresh profile with the SDK's default durability (``synchronous=FULL``) and default
    configuration (automatic delivery receipts flow back to the sender). After they
    became contacts, the sender sends N texts of 100 bytes (``send_many`` in chunks of
    500, two chunks pending at a time): each is encrypted, persisted in the outbox with
    its ratchet state and history row, sent, stored by the relay, delivered, decrypted,
    written to the receiver's history (with its search index) and acked. The figure is
    messages counted from the sender's first send to the receiver's N-th
    ``MessageReceived`` (emitted only after its history write committed), both clocks
    ``time.monotonic_ns`` (system-wide on Linux, so they compare across processes).
    Afterwards the receiver's history must hold exactly N messages and every message
    must have reached SENT on the sender.

    The **ceiling**, measured in the same run through the same relay process (its own
    accounts and mailbox): the leanest client that does the same durable protocol work
    for one pair: a raw WebSocket sender process (:mod:`bench.relay.wsclient`, frames
    pre-encoded, up to 1,024 sends awaiting ``Sent``, as the SDK's outbox pump) and a
    raw receiver process that acks what it received once per burst, with blobs of the
    size the SDK produces. No crypto, no storage, no events on the client side: what is
    left is the relay's cost and the loopback.

    CPU seconds of every process over the measured window come from ``/proc``. The run is
    bounded (``--timeout`` per phase) and loopback only; the machine's load average is
    printed since the figures depend on it.

``--profile DIR`` records the SDK phase's sender and receiver with py-spy (collapsed
stacks, ``DIR/sender.txt`` and ``DIR/receiver.txt``; the sampler costs CPU, so such a
run's figures are not for the record).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench._report import print_rows
from bench.relay.servers import ServerProcess, proc_cpu_s, relay_command

TARGET_MSGS_S = 5_000
TEXT_SIZE = 100
DEFAULT_MESSAGES = 20_000
QUICK_MESSAGES = 3_000
SEND_CHUNK = 500
CHUNKS_PENDING = 2
RAW_WINDOW = 1024
"""Raw sends awaiting ``Sent``: the SDK outbox pump's window (``client_sdk._pump``)."""
T_SENT, T_ERROR, T_DELIVERY = 41, 9, 43


# --- helpers ----------------------------------------------------------------------------


def make_texts(n: int, size: int, seed: int = 7) -> list[str]:
    """*n* texts of exactly *size* characters: words from a 5,000-word vocabulary
    (so the receiver's search index sees real tokens), each text different."""
    rnd = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rnd.choice(letters) for _ in range(rnd.randint(2, 9)))
             for _ in range(5000)]
    out = []
    for i in range(n):
        words = [str(i)]
        length = len(words[0])
        while length < size:
            w = rnd.choice(vocab)
            words.append(w)
            length += len(w) + 1
        out.append(" ".join(words)[:size])
    return out


def sdk_blob_size(text: str) -> int:
    """The ciphertext size of one SDK text message (padded inner message, ratchet)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from pigeon_crypto.padding import pad_message
    from pigeon_crypto.ratchet import init_initiator
    from pigeon_crypto.rng import system_rng
    from protocol.inner import Text

    public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    state = init_initiator(shared_secret=os.urandom(32), peer_ratchet_public=public,
                           associated_data=os.urandom(64), rng=system_rng)
    inner = Text(message_id=os.urandom(16), sent_at_ms=int(time.time() * 1000), text=text)
    return len(state.encrypt(pad_message(inner.encode()), rng=system_rng).message)


async def _recv(conn: Connection) -> Any:
    return await asyncio.to_thread(conn.recv)


def _ms(ns: int) -> float:
    return ns / 1e6


# --- the SDK clients (child processes) ---------------------------------------------------


def _prelude() -> None:
    """Experiments only (``PIGEON_BENCH_PRELUDE``, never for figures): Python run in the
    SDK client processes before the client starts, e.g. GC settings."""
    code = os.environ.get("PIGEON_BENCH_PRELUDE")
    if code:
        exec(code, {})  # the bench operator's own experiment


def sdk_receiver(conn: Connection, url: str, folder: str, n: int, timeout_s: float) -> None:
    _prelude()
    asyncio.run(_sdk_receiver(conn, url, Path(folder), n, timeout_s))


async def _sdk_receiver(conn: Connection, url: str, folder: Path, n: int,
                        timeout_s: float) -> None:
    from client_sdk import AsyncClient, ContactAccepted, InvitationReceived, MessageReceived
    from client_sdk.testing import FAST_PARAMS

    async with AsyncClient.open(folder / "receiver.pigeon", "receiver passphrase",
                                relay_url=url, params=FAST_PARAMS,
                                tune_interpreter=True) as me:
        drain = asyncio.ensure_future(_drain(me))
        await me.register()
        await me.set_profile("Receiver")
        accepted = asyncio.get_running_loop().create_future()

        def on_invite(event: InvitationReceived) -> Any:
            return me.accept(event.peer)

        def on_accepted(event: ContactAccepted) -> None:
            if not accepted.done():
                accepted.set_result(event.peer)

        me.on(InvitationReceived, on_invite)
        me.on(ContactAccepted, on_accepted)
        conn.send(("link", me.contact_link()))
        await asyncio.wait_for(accepted, 60)
        got = {"count": 0, "t_last": 0}
        done = asyncio.Event()

        def on_message(event: MessageReceived) -> None:
            got["count"] += 1
            if got["count"] == n:
                got["t_last"] = time.monotonic_ns()
                done.set()

        me.on(MessageReceived, on_message)
        conn.send(("ready", None))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout_s)
        stored = await me._run(lambda c: c.store.message_count())
        conn.send(("done", {"count": got["count"], "t_last": got["t_last"],
                            "history": stored, "dropped": me.dropped_envelopes}))
        await _recv(conn)  # "stop"
        drain.cancel()


async def _drain(client: Any) -> None:
    """Consume events as an application would (else they pile up in the backlog)."""
    async for _ in client.events():
        pass


def sdk_sender(conn: Connection, url: str, folder: str, n: int, text_size: int,
               timeout_s: float) -> None:
    _prelude()
    asyncio.run(_sdk_sender(conn, url, Path(folder), n, text_size, timeout_s))


async def _sdk_sender(conn: Connection, url: str, folder: Path, n: int, text_size: int,
                      timeout_s: float) -> None:
    from client_sdk import AsyncClient, ContactAccepted, MessageStatus, MessageStatusChanged
    from client_sdk.testing import FAST_PARAMS

    texts = make_texts(n, text_size)
    async with AsyncClient.open(folder / "sender.pigeon", "sender passphrase",
                                relay_url=url, params=FAST_PARAMS,
                                tune_interpreter=True) as me:
        drain = asyncio.ensure_future(_drain(me))
        await me.register()
        await me.set_profile("Sender")
        _, link = await _recv(conn)
        accepted = asyncio.get_running_loop().create_future()

        def on_accepted(event: ContactAccepted) -> None:
            if not accepted.done():
                accepted.set_result(event.peer)

        me.on(ContactAccepted, on_accepted)
        peer = await me.add_contact_by_link(link)
        await asyncio.wait_for(accepted, 60)
        status = {"sent": 0, "delivered": 0, "failed": 0, "t_sent": 0}
        all_sent = asyncio.Event()

        def on_status(event: MessageStatusChanged) -> None:
            if event.status is MessageStatus.SENT:
                status["sent"] += 1
                if status["sent"] == n:
                    status["t_sent"] = time.monotonic_ns()
                    all_sent.set()
            elif event.status is MessageStatus.DELIVERED:
                status["delivered"] += 1
            elif event.status is MessageStatus.FAILED:
                status["failed"] += 1

        me.on(MessageStatusChanged, on_status)
        conn.send(("ready", None))
        await _recv(conn)  # "go"
        t0 = time.monotonic_ns()
        pending = asyncio.Semaphore(CHUNKS_PENDING)
        tasks = []
        for i in range(0, n, SEND_CHUNK):
            await pending.acquire()
            task = asyncio.ensure_future(me.send_many(peer, texts[i:i + SEND_CHUNK]))
            task.add_done_callback(lambda _t: pending.release())
            tasks.append(task)
        await asyncio.gather(*tasks)
        t_stored = time.monotonic_ns()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_sent.wait(), timeout_s)
        conn.send(("sent", {"t0": t0, "t_stored": t_stored, **status}))
        await _recv(conn)  # "stop"
        conn.send(("final", dict(status)))
        drain.cancel()


# --- the raw ceiling (child processes) ---------------------------------------------------


def raw_receiver(conn: Connection, port: int, n: int, timeout_s: float) -> None:
    asyncio.run(_raw_receiver(conn, port, n, timeout_s))


async def _raw_receiver(conn: Connection, port: int, n: int, timeout_s: float) -> None:
    from bench.relay.flows import AckTemplate, open_relay_receiver, unpack_frame

    ws, info = await open_relay_receiver(port)
    conn.send(("info", (info.mailbox_id, info.capability)))
    ack = AckTemplate(info.mailbox_id)
    loop = asyncio.get_running_loop()
    st = {"count": 0, "dups": 0, "last_seq": 0, "acked": 0, "rid": 10, "t_last": 0,
          "errors": 0, "scheduled": False}
    done = asyncio.Event()

    def flush_ack() -> None:
        st["scheduled"] = False
        if st["last_seq"] > st["acked"]:
            st["rid"] += 1
            ws.send(ack.frame(st["rid"], st["last_seq"]))
            st["acked"] = st["last_seq"]

    def on_message(data: bytes) -> None:
        f = unpack_frame(data)
        if f[1] != T_DELIVERY:
            st["errors"] += 1
            return
        seq = f[3][2]
        if seq <= st["last_seq"]:
            st["dups"] += 1
            return
        st["last_seq"] = seq
        st["count"] += 1
        if st["count"] == n:
            st["t_last"] = time.monotonic_ns()
            done.set()
        if not st["scheduled"]:  # one cumulative ack per burst read from the socket
            st["scheduled"] = True
            loop.call_soon(flush_ack)

    ws.on_message = on_message
    conn.send(("ready", None))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout_s)
    flush_ack()
    conn.send(("done", {k: v for k, v in st.items() if k != "scheduled"}))
    await _recv(conn)
    ws.close()


def raw_sender(conn: Connection, port: int, n: int, blob_size: int,
               recipient: tuple[bytes, bytes], timeout_s: float) -> None:
    asyncio.run(_raw_sender(conn, port, n, blob_size, recipient, timeout_s))


async def _raw_sender(conn: Connection, port: int, n: int, blob_size: int,
                      recipient: tuple[bytes, bytes], timeout_s: float) -> None:
    import msgpack

    from bench.relay.flows import open_relay_sender, unpack_frame
    from protocol.frames import Direction, Send, decode_frame

    ws = await open_relay_sender(port)
    mailbox_id, capability = recipient
    rcpt = [[mailbox_id, capability]]
    prefix = os.urandom(8)
    blobs = [os.urandom(blob_size) for _ in range(64)]

    def frame(i: int) -> bytes:
        # Send: [version, type, request id, {1: client_msg_id, 2: blob, 3: recipients}].
        packed: bytes = msgpack.packb([1, 40, i + 1, {1: prefix + i.to_bytes(8, "big"),
                                                      2: blobs[i % 64], 3: rcpt}])
        return packed

    check = Send(request_id=1, client_msg_id=prefix + bytes(8), blob=blobs[0],
                 recipients=((mailbox_id, capability),))
    if decode_frame(frame(0), direction=Direction.TO_RELAY) != check:
        raise AssertionError("raw Send differs from protocol's Send")
    st = {"next": 0, "inflight": 0, "sent_ok": 0, "errors": 0, "t_sent": 0}
    all_sent = asyncio.Event()

    def pump() -> None:
        while st["inflight"] < RAW_WINDOW and st["next"] < n:
            ws.send(frame(st["next"]))
            st["next"] += 1
            st["inflight"] += 1

    def on_message(data: bytes) -> None:
        f = unpack_frame(data)
        st["inflight"] -= 1
        if f[1] == T_SENT and not f[3].get(1):
            st["sent_ok"] += 1
            if st["sent_ok"] == n:
                st["t_sent"] = time.monotonic_ns()
                all_sent.set()
        else:
            st["errors"] += 1
        pump()

    ws.on_message = on_message
    conn.send(("ready", None))
    await _recv(conn)  # "go"
    st["t0"] = time.monotonic_ns()
    pump()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_sent.wait(), timeout_s)
    conn.send(("sent", dict(st)))
    await _recv(conn)
    ws.close()


# --- orchestration ------------------------------------------------------------------------


class Child:
    """A spawned child process with a pipe."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, child_end = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child_end, *args), name=name, daemon=True)
        self.proc.start()
        child_end.close()

    def expect(self, tag: str, timeout_s: float) -> Any:
        if not self.conn.poll(timeout_s):
            raise TimeoutError(f"{self.name}: no {tag!r} within {timeout_s:.0f} s")
        got_tag, payload = self.conn.recv()
        if got_tag != tag:
            raise RuntimeError(f"{self.name}: expected {tag!r}, got {got_tag!r}")
        return payload

    def send(self, msg: object) -> None:
        self.conn.send(msg)

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def stop(self) -> None:
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {k: proc_cpu_s(p) for k, p in pids.items()}


def _spent(before: dict[str, float], pids: dict[str, int]) -> dict[str, float]:
    after = _cpu(pids)
    return {k: after[k] - before[k] for k in pids}


def run_raw(relay: ServerProcess, n: int, blob_size: int, timeout_s: float) -> dict[str, Any]:
    rx = Child("raw-receiver", raw_receiver, relay.port, n, timeout_s)
    tx: Child | None = None
    try:
        recipient = rx.expect("info", 60)
        rx.expect("ready", 60)
        tx = Child("raw-sender", raw_sender, relay.port, n, blob_size, recipient, timeout_s)
        tx.expect("ready", 60)
        pids = {"relay": relay.pid, "sender": tx.pid, "receiver": rx.pid}
        cpu0 = _cpu(pids)
        tx.send("go")
        got = rx.expect("done", timeout_s + 30)
        cpu = _spent(cpu0, pids)
        sent = tx.expect("sent", timeout_s + 30)
        tx.send("stop")
        rx.send("stop")
    finally:
        for child in (tx, rx):
            if child is not None:
                child.stop()
    elapsed_ns = got["t_last"] - sent["t0"] if got["count"] == n else 0
    return {"count": got["count"], "dups": got["dups"], "errors": got["errors"] + sent["errors"],
            "elapsed_ms": _ms(elapsed_ns), "rate": n / (elapsed_ns / 1e9) if elapsed_ns else 0.0,
            "cpu": cpu}


def _py_spy(pid: int, out: Path, gil: bool) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe is None:
        print("py-spy not found: --profile ignored", file=sys.stderr)
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
                             "--threads", *(["--gil"] if gil else []), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_sdk(relay: ServerProcess, folder: Path, n: int, text_size: int, timeout_s: float,
            profile: Path | None, gil: bool = False) -> dict[str, Any]:
    url = f"http://127.0.0.1:{relay.port}"
    rx = Child("sdk-receiver", sdk_receiver, url, str(folder), n, timeout_s)
    tx = Child("sdk-sender", sdk_sender, url, str(folder), n, text_size, timeout_s)
    spies: list[subprocess.Popen[bytes]] = []
    try:
        tx.send(("link", rx.expect("link", 120)))
        rx.expect("ready", 120)
        tx.expect("ready", 120)
        time.sleep(0.5)  # profile messages and receipts of the setup settle
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            for child, name in ((tx, "sender"), (rx, "receiver")):
                spy = _py_spy(child.pid, profile / f"{name}.txt", gil)
                if spy is not None:
                    spies.append(spy)
            time.sleep(1.0)
        pids = {"relay": relay.pid, "sender": tx.pid, "receiver": rx.pid}
        cpu0 = _cpu(pids)
        tx.send("go")
        got = rx.expect("done", timeout_s + 60)
        cpu = _spent(cpu0, pids)
        sent = tx.expect("sent", timeout_s + 60)
        time.sleep(0.5)  # the last receipts
        tx.send("stop")
        final = tx.expect("final", 30)
        rx.send("stop")
    finally:
        for spy in spies:
            with contextlib.suppress(ProcessLookupError):
                spy.send_signal(2)  # SIGINT: py-spy writes its file
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
        for child in (tx, rx):
            child.stop()
    elapsed_ns = got["t_last"] - sent["t0"] if got["count"] == n else 0
    return {"count": got["count"], "history": got["history"], "dropped": got["dropped"],
            "sent": sent["sent"], "failed": final["failed"], "delivered": final["delivered"],
            "stored_ms": _ms(sent["t_stored"] - sent["t0"]),
            "elapsed_ms": _ms(elapsed_ns), "rate": n / (elapsed_ns / 1e9) if elapsed_ns else 0.0,
            "cpu": cpu}


def _row(name: str, r: dict[str, Any], n: int) -> dict[str, Any]:
    cpu = r["cpu"]
    return {"name": name, "msgs_per_s": r["rate"], "elapsed_ms": r["elapsed_ms"],
            "delivered": r["count"],
            "cpu_s_relay": cpu["relay"], "cpu_s_sender": cpu["sender"],
            "cpu_s_receiver": cpu["receiver"],
            "cpu_us_per_msg": sum(cpu.values()) / n * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sdk.messages",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MESSAGES:,} messages")
    parser.add_argument("--messages", type=int, help=f"default {DEFAULT_MESSAGES:,}")
    parser.add_argument("--text-size", type=int, default=TEXT_SIZE)
    parser.add_argument("--rounds", type=int, default=1,
                        help="ceiling and SDK phases alternate this many times")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per phase")
    parser.add_argument("--relay-sync", default="FULL", help="the relay's --synchronous")
    parser.add_argument("--only", choices=("sdk", "raw"), help="one phase")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy the SDK sender and receiver into DIR (not for figures)")
    parser.add_argument("--profile-gil", action="store_true",
                        help="with --profile: only samples holding the GIL (Python CPU)")
    parser.add_argument("--workdir", type=Path, help="where data goes (default: a tmp dir)")
    args = parser.parse_args()
    n = args.messages or (QUICK_MESSAGES if args.quick else DEFAULT_MESSAGES)
    text = make_texts(1, args.text_size)[0]
    blob_size = sdk_blob_size(text)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pigeon-bench-sdk-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    load0 = os.getloadavg()
    relay = ServerProcess("relay", relay_command(work / "relay", synchronous=args.relay_sync),
                          work / "relay.log")
    (work / "relay").mkdir(exist_ok=True)
    relay.start()
    try:
        for rnd in range(args.rounds):
            if args.only != "sdk":
                raw = run_raw(relay, n, blob_size, args.timeout)
                rows.append(_row(f"raw ceiling, round {rnd + 1}", raw, n))
            if args.only != "raw":
                folder = work / f"sdk-{rnd}"
                folder.mkdir()
                sdk = run_sdk(relay, folder, n, args.text_size, args.timeout,
                              args.profile if rnd == 0 else None, args.profile_gil)
                row = _row(f"sdk, round {rnd + 1}", sdk, n)
                if args.only != "sdk" and raw["rate"]:
                    row["ratio_to_ceiling"] = sdk["rate"] / raw["rate"]
                row.update(history=sdk["history"], sent=sdk["sent"], failed=sdk["failed"],
                           delivered_receipts=sdk["delivered"], stored_ms=sdk["stored_ms"])
                if sdk["history"] != n or sdk["count"] != n:
                    row["ERROR"] = "receiver history does not hold every message once"
                rows.append(row)
    finally:
        relay.stop()
    load1 = os.getloadavg()
    print(f"{n:,} messages of {args.text_size} bytes (blob {blob_size} bytes), one pair, "
          f"relay --synchronous {args.relay_sync}, client profiles synchronous=FULL; "
          f"load average {load0[0]:.2f} before, {load1[0]:.2f} after")
    print_rows(rows)
    raws = [r["msgs_per_s"] for r in rows if r["name"].startswith("raw")]
    sdks = [r["msgs_per_s"] for r in rows if r["name"].startswith("sdk")]
    if raws and sdks:
        best_raw, best_sdk = max(raws), max(sdks)
        print(f"best: sdk {best_sdk:,.0f} msg/s, raw ceiling {best_raw:,.0f} msg/s, "
              f"ratio {best_sdk / best_raw:.2f}; target >= {TARGET_MSGS_S:,} msg/s: "
              f"{'met' if best_sdk >= TARGET_MSGS_S else 'missed'}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
