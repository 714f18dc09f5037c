"""Runs one measurement: a fresh server subprocess, worker processes, CPU and RSS sampling.

Every run starts its own server (a fresh ``--data-dir`` for the relay) so that runs do not
inherit each other's database, caches or heap, and stops it in a ``finally`` block along
with every worker. Each step has a time cap (server start, worker setup, measured window,
drain, result collection); a cap that expires aborts the run with an error in its row.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from .profiling import PySpy
from .relay_metrics import scrape, summarize_delta
from .servers import (
    ServerProcess,
    forwarder_command,
    machine_busy,
    proc_cpu_s,
    proc_rss_bytes,
    relay_command,
)
from .worker import WorkerArgs, worker_main

__all__ = ["LoadResult", "MemoryResult", "run_load", "run_memory", "split"]

_ctx = mp.get_context("spawn")

RELAY_PRELUDE: str | None = None
"""Experiment: Python statements run in the relay's process before it starts."""
FAKE_RELAY = False
"""Self-check only: run the relay phases against :mod:`.fake_relay` instead."""


@dataclass(slots=True, kw_only=True)
class LoadResult:
    target: str
    mode: str
    pairs: int
    window: int = 0
    offered: float = 0.0
    duration_s: float = 0.0
    rate: float = 0.0
    """Delivered messages per second in the measured window."""
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    server_cpu: float = float("nan")
    """Server CPU in cores (1.0 = one core busy the whole window)."""
    gen_cpu: float = float("nan")
    machine_cpu: float = float("nan")
    lag_p99_ms: float = float("nan")
    sent: int = 0
    received: int = 0
    lost: int = 0
    dups: int = 0
    unanswered: int = 0
    send_errors: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    setup_s: float = 0.0
    drain_s: float = 0.0
    load_before: float = float("nan")
    """Other processes' load (cores) just before the run (see :func:`wait_for_quiet`)."""
    max_stall_s: float = 0.0
    """Longest time without any receipt or answer during the drain."""
    server_view: str = ""
    """The relay's /metrics over the window (commits, batch sizes, store latencies)."""
    failure: str | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values()) + self.lost + self.dups + self.unanswered


@dataclass(slots=True, kw_only=True)
class MemoryResult:
    target: str
    conns: int = 0
    rss_before: int = 0
    rss_after: int = 0
    per_conn: float = float("nan")
    setup_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    failure: str | None = None
    fd_limit: tuple[int, int] = (0, 0)


def split(items: list[int], parts: int) -> list[list[int]]:
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]


def _percentile(sorted_vals: list[int], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[i] / 1e6


class _Server:
    """Context manager: a fresh relay (own data dir) or forwarder subprocess."""

    def __init__(self, target: str, workdir: Path, extra: list[str] | None = None) -> None:
        self.target = target
        self.dir = Path(tempfile.mkdtemp(prefix=f"{target}-", dir=workdir))
        if target == "relay" and FAKE_RELAY:
            cmd = [sys.executable, "-m", "bench.relay.fake_relay", "--port", "0"]
        elif target == "relay":
            cmd = relay_command(self.dir / "data", extra=extra or [],
                                prelude=RELAY_PRELUDE)
            (self.dir / "data").mkdir()
        else:
            cmd = forwarder_command()
        self.proc = ServerProcess(target, cmd, self.dir / "server.log",
                                  cwd=Path(__file__).resolve().parents[2])

    def __enter__(self) -> ServerProcess:
        return self.proc.start()

    def __exit__(self, *exc: object) -> None:
        self.proc.stop()
        if exc[0] is None:
            shutil.rmtree(self.dir, ignore_errors=True)


class _Workers:
    """Worker processes with their pipes; always terminated on exit."""

    def __init__(self, args_list: list[WorkerArgs]) -> None:
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        for args in args_list:
            parent, child = _ctx.Pipe()
            p = _ctx.Process(target=worker_main, args=(args, child), daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)

    def gather(self, kind: str, timeout_s: float) -> list[Any]:
        """One ``(kind, payload)`` message from every worker, within *timeout_s*."""
        out: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        pending = dict(enumerate(self.conns))
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(pending)} worker(s) sent no {kind!r} within "
                                   f"{timeout_s:.0f}s")
            for c in wait(list(pending.values()), left):
                i = next(k for k, v in pending.items() if v is c)
                try:
                    msg = pending[i].recv()  # c itself, typed as a Connection
                except EOFError:
                    raise RuntimeError(f"worker {i} died (exit {self.procs[i].exitcode})"
                                       ) from None
                if msg[0] == "failed":
                    raise RuntimeError(f"worker {i} failed: {msg[1]}")
                if msg[0] != kind:
                    raise RuntimeError(f"worker {i} sent {msg[0]!r}, expected {kind!r}")
                out[i] = msg[1]
                del pending[i]
        return [out[i] for i in range(len(self.conns))]

    def send(self, msg: Any) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.send(msg)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self) -> None:
        for p in self.procs:
            p.join(timeout=3)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=3)
            if p.is_alive():
                p.kill()
                p.join(timeout=3)
        for c in self.conns:
            c.close()


QUIET_WAIT_S = 20.0
"""Before each run, wait up to this long for other processes to use < 0.3 cores."""


def wait_for_quiet(max_wait_s: float | None = None, threshold: float = 0.3) -> float:
    """Wait (bounded) until the machine's other load is low; return the load last seen
    (cores busy over one second, measured while this harness runs nothing)."""
    ncpu = os.cpu_count() or 1
    deadline = time.monotonic() + (QUIET_WAIT_S if max_wait_s is None else max_wait_s)
    while True:
        b0 = machine_busy()
        time.sleep(1.0)
        b1 = machine_busy()
        load = (b1[0] - b0[0]) / max(1.0, b1[1] - b0[1]) * ncpu
        if load < threshold or time.monotonic() >= deadline:
            return load


def _sleep_until(t_ns: int) -> None:
    delay = (t_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += proc_cpu_s(pid)
    return total


def run_load(*, target: str, mode: str, pairs: int, procs: int, duration_s: float,
             warmup_s: float, workdir: Path, window: int = 1, rate: float = 0.0,
             ack_every: int = 32, ack_interval_ms: float = 5.0, flush_each: bool = False,
             setup_cap_s: float = 300.0, drain_s: float = 30.0, stall_s: float = 5.0,
             relay_extra: list[str] | None = None,
             profile_out: Path | None = None) -> LoadResult:
    res = LoadResult(target=target, mode=mode, pairs=pairs, window=window, offered=rate,
                     duration_s=duration_s)
    res.load_before = wait_for_quiet()
    try:
        with _Server(target, workdir, relay_extra) as server:
            parts = split(list(range(pairs)), procs)
            args = [WorkerArgs(target=target, port=server.port, pairs=part, mode=mode,
                               window=window, rate=rate * len(part) / pairs,
                               ack_every=ack_every, ack_interval_ms=ack_interval_ms,
                               flush_each=flush_each, setup_timeout_s=setup_cap_s,
                               drain_s=drain_s, stall_s=stall_s) for part in parts]
            workers = _Workers(args)
            try:
                t0 = time.monotonic()
                ready = workers.gather("ready", setup_cap_s)
                res.setup_s = time.monotonic() - t0
                opened = sum(r["pairs"] for r in ready)
                for r in ready:
                    for k, v in r["setup_failures"].items():
                        res.errors[f"setup: {k}"] = res.errors.get(f"setup: {k}", 0) + v
                if opened < pairs:
                    res.failure = f"only {opened} of {pairs} pairs opened"
                start = time.monotonic_ns() + 200_000_000
                m_from = start + int(warmup_s * 1e9)
                m_to = m_from + int(duration_s * 1e9)
                workers.send(("go", {"start_ns": start, "measure_from_ns": m_from,
                                     "measure_to_ns": m_to}))
                wpids = workers.pids()
                _sleep_until(m_from - 30_000_000)
                scrape0 = scrape(server.port) if target == "relay" else {}
                _sleep_until(m_from)
                s0, g0, b0 = _cpu([server.pid]), _cpu(wpids), machine_busy()
                w0 = time.monotonic_ns()
                with (PySpy(server.pid, duration_s, profile_out) if profile_out is not None
                      else contextlib.nullcontext()):
                    _sleep_until(m_to)
                s1, g1, b1 = _cpu([server.pid]), _cpu(wpids), machine_busy()
                wall = (time.monotonic_ns() - w0) / 1e9
                if target == "relay":
                    res.server_view = summarize_delta(scrape0, scrape(server.port), wall)
                ncpu = os.cpu_count() or 1
                res.server_cpu = (s1 - s0) / wall
                res.gen_cpu = (g1 - g0) / wall
                res.machine_cpu = ((b1[0] - b0[0]) / max(1.0, b1[1] - b0[1])) * ncpu
                results = workers.gather("result", drain_s + 60)
                if not server.alive():
                    res.failure = f"{target} exited during the run"
            finally:
                workers.close()
    except Exception as exc:  # one failed run must not lose the others
        res.failure = f"{type(exc).__name__}: {exc}"
        return res
    import array

    lat: list[int] = []
    lag: list[int] = []
    for r in results:
        res.sent += r["sent"]
        res.received += r["received"]
        res.lost += r["lost"]
        res.dups += r["dups"]
        res.unanswered += r["unanswered"]
        res.send_errors += r["send_errors"]
        res.drain_s = max(res.drain_s, r["drain_s"])
        res.max_stall_s = max(res.max_stall_s, r["max_stall_s"])
        for k, v in r["errors"].items():
            res.errors[k] = res.errors.get(k, 0) + v
        a = array.array("q")
        a.frombytes(r["lat"])
        lat.extend(a)
        b = array.array("q")
        b.frombytes(r["lag"])
        lag.extend(b)
    res.rate = sum(r["in_window"] for r in results) / duration_s
    lat.sort()
    lag.sort()
    res.p50_ms = _percentile(lat, 0.50)
    res.p99_ms = _percentile(lat, 0.99)
    res.max_ms = lat[-1] / 1e6 if lat else float("nan")
    res.lag_p99_ms = _percentile(lag, 0.99)
    return res


def run_memory(*, target: str, conns: int, procs: int, workdir: Path, warm_conns: int = 50,
               settle_s: float = 2.0, setup_cap_s: float = 600.0) -> MemoryResult:
    """RSS of the server before and after *conns* idle (relay: authenticated, subscribed)
    connections, after *warm_conns* already opened so that lazy imports and first-use
    caches are not charged to the connections."""
    from .worker import raise_fd_limit

    res = MemoryResult(target=target, conns=conns, fd_limit=raise_fd_limit())
    wait_for_quiet()
    try:
        with _Server(target, workdir) as server:
            warm = _Workers([WorkerArgs(target=target, port=server.port,
                                        pairs=list(range(conns, conns + warm_conns)),
                                        mode="idle", setup_timeout_s=setup_cap_s)])
            main: _Workers | None = None
            try:
                warm.gather("ready", setup_cap_s)
                time.sleep(settle_s)
                res.rss_before = proc_rss_bytes(server.pid)
                t0 = time.monotonic()
                main = _Workers([WorkerArgs(target=target, port=server.port, pairs=part,
                                            mode="idle", setup_timeout_s=setup_cap_s,
                                            setup_concurrency=32)
                                 for part in split(list(range(conns)), procs)])
                ready = main.gather("ready", setup_cap_s)
                res.setup_s = time.monotonic() - t0
                opened = sum(r["pairs"] for r in ready)
                for r in ready:
                    for k, v in r["setup_failures"].items():
                        res.errors[f"setup: {k}"] = res.errors.get(f"setup: {k}", 0) + v
                time.sleep(settle_s)
                res.rss_after = proc_rss_bytes(server.pid)
                res.per_conn = (res.rss_after - res.rss_before) / max(1, opened)
                if opened < conns:
                    res.failure = f"only {opened} of {conns} connections opened"
                res.conns = opened
                for w in (warm, main):
                    w.send(("go", {}))
                    w.send(("stop",))
                for w in (warm, main):
                    for r in w.gather("result", 60):
                        for k, v in r["errors"].items():
                            if not k.startswith("setup: "):
                                res.errors[k] = res.errors.get(k, 0) + v
            finally:
                warm.close()
                if main is not None:
                    main.close()
    except Exception as exc:
        res.failure = f"{type(exc).__name__}: {exc}"
    return res
