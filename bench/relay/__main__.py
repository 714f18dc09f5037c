"""``python -m bench.relay``: relay load benchmark against a bare aiohttp forwarder.

See :mod:`bench.relay` for what each phase measures. Options::

    python -m bench.relay [--quick] [--only PHASE] [--pairs 1,100,1000] [--duration S]
                          [--procs P] [--window W] [--ack-every K] [--ack-interval-ms MS]
                          [--rates 10000,1000] [--open-pairs N] [--conns N]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Required, TypedDict, Unpack

from . import harness
from .flows import check_templates
from .harness import LoadResult, MemoryResult, run_load, run_memory
from .profiling import summarize
from .worker import raise_fd_limit

PHASES = ("forwarder", "throughput", "pingpong", "openloop", "memory")
TARGET_THROUGHPUT = 20_000
STRETCH_RATIO = 0.35
TARGET_PINGPONG_P50_MS = 1.0
TARGET_OPEN_P99_MS = 25.0
TARGET_MEMORY_BYTES = 24_000


class _LoadKw(TypedDict, total=False):
    """The keyword arguments of :func:`harness.run_load` that vary from run to run."""

    mode: Required[str]
    pairs: Required[int]
    duration_s: Required[float]
    warmup_s: Required[float]
    window: int
    rate: float
    ack_every: int
    ack_interval_ms: float
    flush_each: bool


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="short phases (3 s), memory at 1,000 connections")
    p.add_argument("--only", choices=PHASES,
                   help="one phase (both servers); 'forwarder': every phase, forwarder only")
    p.add_argument("--pairs", default="1,100,1000", help="closed-loop pair counts")
    p.add_argument("--duration", type=float, help="measured seconds per run (default 10)")
    p.add_argument("--warmup", type=float, help="seconds before measuring (default 2)")
    p.add_argument("--procs", type=int,
                   help="load-generator processes (default: CPU count - 1, at least 1)")
    p.add_argument("--window",
                   help="closed loop: messages in flight per pair, or a comma list (the best "
                        "of each server is reported) (default: 1600/N and 6400/N, 1..1024)")
    p.add_argument("--ack-every", type=int, default=32,
                   help="receiver acks once this many deliveries are unacked (default 32)")
    p.add_argument("--ack-interval-ms", type=float, default=5.0,
                   help="...and every this many ms anything unacked (default 5)")
    p.add_argument("--rates", default="10000,1000", help="open-loop offered rates, msgs/s")
    p.add_argument("--open-pairs", type=int, default=1000, help="open-loop pairs")
    p.add_argument("--quiet-wait", type=float, default=20.0,
                   help="before each run, wait up to this long (s) for the machine's other "
                        "load to fall under 0.3 cores (shared machines)")
    p.add_argument("--drain", type=float, default=30.0,
                   help="after sending stops, wait at most this long for stragglers (s)")
    p.add_argument("--stall", type=float, default=5.0,
                   help="...and stop waiting after this long without progress (s)")
    p.add_argument("--conns", type=int, help="memory: idle connections (default 5000)")
    p.add_argument("--pingpong-duration", type=float, help="default: --duration")
    p.add_argument("--relay-arg", action="append", default=[], metavar="ARG",
                   help="extra pigeon-relay argument (repeat), e.g. --relay-arg=--synchronous"
                        " --relay-arg=NORMAL")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="record each relay run with py-spy into DIR and print the hot calls "
                        "(separate from figure runs: the sampler costs CPU)")
    p.add_argument("--relay-prelude", metavar="CODE",
                   help="experiment, never for figures: Python run in the relay's process "
                        "before it starts, e.g. 'import gc; gc.disable()'")
    p.add_argument("--fake-relay", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help="where servers keep data (default: a tmp dir)")
    return p


def _windows(n: int) -> list[int]:
    """Default closed-loop windows for N pairs: ~1,600 and ~6,400 messages in flight in
    all (clamped to 1..1024 per pair); the best of the two is the peak."""
    return sorted({max(1, min(1024, math.ceil(total / n))) for total in (1600, 6400)})


def _fmt_rate(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:,.0f}/s"


def _fmt_ms(x: float) -> str:
    return "n/a" if math.isnan(x) else (f"{x:.2f} ms" if x < 10 else f"{x:.1f} ms")


def _fmt_cpu(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 100:.0f}%"


def _ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


class Report:
    def __init__(self) -> None:
        self.rows: list[list[str]] = []
        self.notes: list[str] = []
        self.verdicts: list[str] = []

    def add(self, figure: str, relay: str, r_cpu: str, fwd: str, f_cpu: str, ratio: str,
            target: str, met: str) -> None:
        self.rows.append([figure, relay, r_cpu, fwd, f_cpu, ratio, target, met])
        print("  " + " | ".join(self.rows[-1]), flush=True)

    def table(self) -> str:
        head = ["Figure", "Relay", "CPU relay / gen", "Bare forwarder (same run)",
                "CPU fwd / gen", "Ratio relay/fwd", "Target", "Met"]
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


def _cpu_pair(r: LoadResult | None) -> str:
    if r is None:
        return "—"
    return f"{_fmt_cpu(r.server_cpu)} / {_fmt_cpu(r.gen_cpu)}"


def _problems(r: LoadResult | None) -> str:
    if r is None:
        return ""
    bits = []
    if r.failure:
        bits.append(f"FAILED: {r.failure}")
    if r.lost:
        bits.append(f"{r.lost} accepted but undelivered after the drain")
    if r.dups:
        bits.append(f"{r.dups} duplicated")
    if r.unanswered:
        bits.append(f"{r.unanswered} unanswered")
    other = {k: v for k, v in r.errors.items()}
    if other:
        bits.append("errors " + ", ".join(f"{k}: {v}" for k, v in sorted(other.items())[:4]))
    return "; ".join(bits)


def _describe(r: LoadResult) -> str:
    extra = (f"sent {r.sent:,}, received {r.received:,}, undelivered {r.lost}, dup {r.dups}, "
             f"unanswered {r.unanswered} (after a {r.drain_s:.1f}s drain, longest pause "
             f"{r.max_stall_s:.1f}s), "
             f"send errors {r.send_errors}, machine CPU "
             f"{_fmt_cpu(r.machine_cpu)} (other processes "
             f"{_fmt_cpu(r.machine_cpu - r.server_cpu - r.gen_cpu)}, {_fmt_cpu(r.load_before)} "
             f"just before), setup {r.setup_s:.1f}s")
    if r.mode == "open":
        extra += f", schedule lag p99 {_fmt_ms(r.lag_p99_ms)}"
    if r.mode == "closed":
        extra += f", latency p50 {_fmt_ms(r.p50_ms)} p99 {_fmt_ms(r.p99_ms)}"
    if r.server_view:
        extra += f"; relay /metrics: {r.server_view}"
    prob = _problems(r)
    return f"{r.target} {r.mode} N={r.pairs} W={r.window}: {extra}" + (
        f" — {prob}" if prob else "")


def _revision() -> str:
    """The commit measured (and whether relay/ or protocol/ differ from it)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "relay", "protocol"],
                               cwd=root, check=True, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return f"commit {head}" + (" (relay/ or protocol/ modified)" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quick = args.quick
    duration = args.duration or (3.0 if quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    ncpu = os.cpu_count() or 1
    procs = args.procs or max(1, ncpu - 1)
    conns = args.conns or (1000 if quick else 5000)
    pairs_list = _ints(args.pairs)
    rates = _ints(args.rates)
    fd = raise_fd_limit()
    only = args.only
    targets = ["forwarder"] if only == "forwarder" else ["forwarder", "relay"]
    phases = [p for p in PHASES[1:] if only in (None, "forwarder", p)]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-relay-"))
    workdir.mkdir(parents=True, exist_ok=True)
    check_templates()
    if args.fake_relay:
        harness.FAKE_RELAY = True
    harness.RELAY_PRELUDE = args.relay_prelude
    harness.QUIET_WAIT_S = args.quiet_wait

    cmd = "python -m bench.relay " + " ".join(shlex.quote(a) for a in
                                              (argv if argv is not None else sys.argv[1:]))
    machine = (f"{platform.machine()}, {ncpu} CPUs, {platform.system()} {platform.release()}, "
               f"Python {platform.python_version()}; relay at {_revision()}")
    if args.relay_prelude:
        print(f"# EXPERIMENT: relay started after: {args.relay_prelude}")
    print(f"# bench.relay: {cmd.strip()}\n# machine: {machine}\n# generator: {procs} "
          f"process(es), lean asyncio WebSocket client; fd limit {fd[0]}; workdir {workdir}",
          flush=True)
    t_start = time.monotonic()
    rep = Report()
    profiles: list[tuple[Path, str]] = []

    def both(**kw: Unpack[_LoadKw]) -> dict[str, LoadResult]:
        out: dict[str, LoadResult] = {}
        for t in targets:
            prof = None
            if args.profile is not None and t == "relay":
                args.profile.mkdir(parents=True, exist_ok=True)
                prof = args.profile / (f"relay-{kw['mode']}-{kw['pairs']}-w{kw.get('window', 1)}"
                                       f"-r{int(float(kw.get('rate', 0)))}.txt")
            r = run_load(target=t, procs=procs, workdir=workdir,
                         relay_extra=args.relay_arg, profile_out=prof, drain_s=args.drain,
                         stall_s=args.stall, **kw)
            if prof is not None:
                profiles.append((prof, _describe(r)))
            print("   · " + _describe(r), flush=True)
            rep.notes.append(_describe(r))
            out[t] = r
        return out

    if "throughput" in phases:
        print("## closed loop: peak delivered messages/s", flush=True)
        for n in pairs_list:
            f_best: LoadResult | None = None
            r_best: LoadResult | None = None
            for w in (_ints(args.window) if args.window else _windows(n)):
                res = both(mode="closed", pairs=n, duration_s=duration, warmup_s=warmup,
                           window=w, ack_every=args.ack_every,
                           ack_interval_ms=args.ack_interval_ms)
                if f_best is None or res["forwarder"].rate > f_best.rate:
                    f_best = res["forwarder"]
                rr = res.get("relay")
                if rr is not None and (r_best is None or rr.rate > r_best.rate
                                       or math.isnan(r_best.rate)):
                    r_best = rr
            assert f_best is not None
            f, r = f_best, r_best
            wtxt = f"window {r.window if r else f.window}" + (
                f" (fwd {f.window})" if r is not None and r.window != f.window else "")
            met = ""
            target = ""
            if n == 100:
                target = f"≥ {TARGET_THROUGHPUT:,}/s; stretch ≥ {STRETCH_RATIO}x fwd"
                if r is not None and not r.failure:
                    ok = r.rate >= TARGET_THROUGHPUT and r.error_count == 0
                    stretch = r.rate >= STRETCH_RATIO * f.rate
                    met = ("yes" if ok else "NO") + ("; stretch yes" if stretch
                                                     else "; stretch no")
            rep.add(f"closed loop, {n} pair(s), {wtxt}: delivered msgs/s",
                    _fmt_rate(r.rate) if r else "—", _cpu_pair(r), _fmt_rate(f.rate),
                    _cpu_pair(f), _ratio(r.rate, f.rate) if r else "—", target, met)

    if "pingpong" in phases:
        print("## ping-pong: one pair, one message in flight", flush=True)
        res = both(mode="closed", pairs=1, window=1, flush_each=True,
                   duration_s=args.pingpong_duration or duration, warmup_s=warmup,
                   ack_every=args.ack_every, ack_interval_ms=args.ack_interval_ms)
        f, r = res["forwarder"], res.get("relay")
        ok = r is not None and not r.failure and r.p50_ms <= TARGET_PINGPONG_P50_MS
        rep.add("ping-pong, 1 pair: end-to-end p50", _fmt_ms(r.p50_ms) if r else "—",
                _cpu_pair(r), _fmt_ms(f.p50_ms), _cpu_pair(f),
                _ratio(r.p50_ms, f.p50_ms) if r else "—",
                f"≤ {TARGET_PINGPONG_P50_MS:g} ms (synchronous=FULL)",
                ("yes" if ok else "NO") if r else "")
        rep.add("ping-pong, 1 pair: end-to-end p99", _fmt_ms(r.p99_ms) if r else "—",
                _cpu_pair(r), _fmt_ms(f.p99_ms), _cpu_pair(f),
                _ratio(r.p99_ms, f.p99_ms) if r else "—", "", "")
        rep.add("ping-pong, 1 pair: round trips/s", _fmt_rate(r.rate) if r else "—",
                _cpu_pair(r), _fmt_rate(f.rate), _cpu_pair(f),
                _ratio(r.rate, f.rate) if r else "—", "", "")

    if "openloop" in phases:
        print(f"## open loop over {args.open_pairs} pairs: latency at a fixed offered rate",
              flush=True)
        for rate in rates:
            res = both(mode="open", pairs=args.open_pairs, rate=float(rate), duration_s=duration,
                       warmup_s=warmup, ack_every=args.ack_every,
                       ack_interval_ms=args.ack_interval_ms)
            f, r = res["forwarder"], res.get("relay")
            target, met = "", ""
            if rate == 10_000 and args.open_pairs >= 1000:
                target = f"p99 ≤ {TARGET_OPEN_P99_MS:g} ms, no errors"
                if r is not None:
                    ok = (not r.failure and r.p99_ms <= TARGET_OPEN_P99_MS
                          and r.error_count == 0 and r.rate >= 0.95 * rate)
                    met = "yes" if ok else "NO"
            for q, rv, fv in (("p50", r.p50_ms if r else 0, f.p50_ms),
                              ("p99", r.p99_ms if r else 0, f.p99_ms)):
                rep.add(f"open loop {rate:,}/s offered, {args.open_pairs} pairs: {q}",
                        _fmt_ms(rv) if r else "—", _cpu_pair(r), _fmt_ms(fv), _cpu_pair(f),
                        _ratio(rv, fv) if r else "—", target if q == "p99" else "",
                        met if q == "p99" else "")
            rep.add(f"open loop {rate:,}/s offered: delivered, errors",
                    (f"{_fmt_rate(r.rate)}, {r.error_count} err") if r else "—", _cpu_pair(r),
                    f"{_fmt_rate(f.rate)}, {f.error_count} err", _cpu_pair(f),
                    _ratio(r.rate, f.rate) if r else "—", "", "")

    if "memory" in phases:
        print(f"## memory: RSS per idle connection at {conns:,} connections", flush=True)
        mres: dict[str, MemoryResult] = {}
        for t in targets:
            m = run_memory(target=t, conns=conns, procs=procs, workdir=workdir)
            note = (f"{t} memory: {m.conns} conns, RSS {m.rss_before / 2**20:.1f} -> "
                    f"{m.rss_after / 2**20:.1f} MiB, {m.per_conn:,.0f} B/conn, setup "
                    f"{m.setup_s:.1f}s, fd limit {m.fd_limit[0]}")
            if m.failure or m.errors:
                note += f" — {m.failure or ''} {m.errors}"
            print("   · " + note, flush=True)
            rep.notes.append(note)
            mres[t] = m
        f_m, r_m = mres["forwarder"], mres.get("relay")

        def kib(m: MemoryResult) -> str:
            return "n/a" if math.isnan(m.per_conn) else f"{m.per_conn / 1000:.1f} KB"

        ok = (r_m is not None and not r_m.failure and not r_m.errors
              and r_m.per_conn <= TARGET_MEMORY_BYTES)
        rep.add(f"RSS per idle subscribed connection at {conns:,}",
                kib(r_m) if r_m else "—", "—", kib(f_m), "—",
                _ratio(r_m.per_conn, f_m.per_conn) if r_m else "—",
                f"≤ {TARGET_MEMORY_BYTES // 1000} KB", ("yes" if ok else "NO") if r_m else "")

    elapsed = time.monotonic() - t_start
    print("\n## Results (markdown for docs/benchmarks.md)\n")
    print(f"Command: `{cmd.strip()}` ({elapsed:.0f} s). Machine: {machine}. Generator: "
          f"{procs} process(es). CPU columns: share of one core used by the server / by "
          "all generator processes during the measured window. Latency ratios are "
          "relay/forwarder (lower is better), rates and memory the same way.\n")
    print(rep.table())
    print("\nRuns:")
    for note_line in rep.notes:
        print(f"- {note_line}")
    for path, what in profiles:
        print(f"\n## Profile: {what}\n({path})\n")
        print(summarize(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
