"""Relay load benchmark: ``python -m bench.relay`` (``--quick`` for a short run).

The relay under test runs as a real subprocess (``pigeon-relay --host 127.0.0.1 --port 0
--data-dir <tmp>``, ``synchronous=FULL``, send credits raised out of the way), and so
does the ceiling measured in the same run, a bare aiohttp WebSocket forwarder
(:mod:`bench.relay.forwarder`: each binary frame of a sender socket goes to its paired
receiver socket; no storage, no auth, no parsing). Both are driven by the same load
generator: worker processes (multiprocessing, spawn) running a lean asyncio WebSocket
client (:mod:`bench.relay.wsclient`) with pre-encoded frames (:mod:`bench.relay.flows`).
Every run starts a fresh server; every figure is printed with the forwarder's figure
from the same run, the ratio, and the CPU used by the server and by the generator.

A *pair* is a sender connection and a receiver connection. Relay: the receiver registers
a fresh account (Connect, Challenge, Register signed with ``Purpose.RELAY_CHALLENGE``),
creates a mailbox (capability hash), subscribes, and acks deliveries cumulatively; the
sender is anonymous (Connect, Challenge) and sends durable 200-byte ``Send`` frames with
the capability, each answered ``Sent`` after the group commit. "Delivered" = received by
the receiver. Each blob carries its pair, a per-pair counter and its send time
(``time.monotonic_ns()``: CLOCK_MONOTONIC is system-wide on Linux, so it compares across
processes), so each receiver counts losses and duplicates per pair and measures
end-to-end latency (send to receipt).

Phases (``--only``):

* ``throughput``: closed loop, N = 1, 100, 1,000 pairs (``--pairs``), each pair keeping
  ``window`` messages in flight (sent, not yet delivered): peak delivered messages/s.
* ``pingpong``: one pair, one message in flight: end-to-end p50/p99 and round trips/s.
* ``openloop``: messages leave at a fixed offered rate (``--rates``, default 10,000 and
  1,000 msgs/s) round-robin over 1,000 pairs (``--open-pairs``) whatever the answers:
  p50/p99 end-to-end latency, delivered rate, errors (``Error`` answers, losses,
  duplicates, unanswered sends, dropped connections).
* ``memory``: RSS of the server before and after opening 5,000 idle connections
  (``--conns``; relay: registered, authenticated, with a mailbox, subscribed), divided by
  the connections opened; 50 connections are opened first so that lazy imports and
  first-use caches are not charged to the connections.
* ``forwarder``: every phase, forwarder only (develops the harness without a relay).

Method and figures: docs/benchmarks.md ("Relay under load").
"""
