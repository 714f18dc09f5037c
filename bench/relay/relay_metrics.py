"""The relay's own view of a run: its ``/metrics`` (Prometheus text) before and after.

The difference of two scrapes over the measured window gives the store's transactions
(count, mean batch size, mean duration, an upper bound of the p99 from the histogram
buckets) and the store call latency by operation. Best effort: an empty summary when
``/metrics`` is off or unreachable. Loopback only.
"""

from __future__ import annotations

import re
import urllib.request
from collections import defaultdict

__all__ = ["scrape", "summarize_delta"]

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)$")


def scrape(port: int, timeout_s: float = 3.0) -> dict[str, float]:
    """``{"name{labels}": value}``; empty on any failure."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                    timeout=timeout_s) as resp:
            text = resp.read().decode("utf-8", "replace")
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def _delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: v - a.get(k, 0.0) for k, v in b.items()}


def _hist(d: dict[str, float], name: str, labels: str = "") -> tuple[float, float, float]:
    """``(count, sum, p99 upper bound)`` of a histogram (optionally one label set)."""
    count = d.get(f"{name}_count{labels}", 0.0)
    total = d.get(f"{name}_sum{labels}", 0.0)
    buckets: list[tuple[float, float]] = []
    inner = labels[1:-1] if labels else ""
    for k, v in d.items():
        if not k.startswith(f"{name}_bucket{{"):
            continue
        lab = k[len(name) + 8:-1]
        parts = dict(p.split("=", 1) for p in lab.split(",") if "=" in p)
        le = parts.pop("le", '"+Inf"').strip('"')
        rest = ",".join(f"{x}={y}" for x, y in parts.items())
        if rest != inner:
            continue
        buckets.append((float("inf") if le == "+Inf" else float(le), v))
    buckets.sort()
    p99 = float("nan")
    for bound, c in buckets:
        if count and c >= 0.99 * count:
            p99 = bound
            break
    return count, total, p99


def summarize_delta(before: dict[str, float], after: dict[str, float], window_s: float) -> str:
    if not before or not after:
        return ""
    d = _delta(before, after)
    prefix = None
    for k in d:
        if k.endswith("_commit_seconds_count"):
            prefix = k[: -len("_commit_seconds_count")]
            break
    if prefix is None:
        return ""
    n, secs, p99 = _hist(d, f"{prefix}_commit_seconds")
    bn, bsum, _ = _hist(d, f"{prefix}_commit_batch_size")
    parts = []
    if n:
        parts.append(f"{n / window_s:,.0f} commits/s, mean batch {bsum / max(bn, 1):.1f} "
                     f"writes, mean commit {1000 * secs / n:.2f} ms (p99 ≤ "
                     f"{1000 * p99:g} ms), writer busy {100 * secs / window_s:.0f}%")
    ops: dict[str, tuple[float, float, float]] = {}
    labels = defaultdict(set)
    for k in d:
        if k.startswith(f"{prefix}_store_seconds_count{{"):
            labels["op"].add(k[len(f"{prefix}_store_seconds_count"):])
    for lab in sorted(labels["op"]):
        c, s, p = _hist(d, f"{prefix}_store_seconds", lab)
        if c:
            ops[lab] = (c, s, p)
    if ops:
        parts.append("store calls: " + ", ".join(
            f"{lab.split('=', 1)[1].strip(chr(34) + '}')} {c / window_s:,.0f}/s mean "
            f"{1000 * s / c:.2f} ms p99 ≤ {1000 * p:g} ms"
            for lab, (c, s, p) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:4]))
    return "; ".join(parts)
