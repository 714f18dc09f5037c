"""Randomness is passed in, never drawn from a global.

An :data:`Rng` is any callable ``rng(n) -> bytes`` returning *n* bytes.
Production code passes :func:`system_rng` (the OS CSPRNG); tests and the
published vectors pass :class:`SeededRng`, a deterministic stream so that
every byte of a vector can be regenerated.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

__all__ = ["Rng", "SeededRng", "system_rng"]

Rng = Callable[[int], bytes]


def system_rng(n: int) -> bytes:
    """The operating system's CSPRNG (``os.urandom``)."""
    return os.urandom(n)


class SeededRng:
    """Deterministic byte stream for tests and vectors. NOT for production.

    Output block *i* is ``SHA-256(seed || u64be(i))``; bytes are handed out in
    order, so the same seed and the same sequence of requests always give the
    same bytes. Documented in docs/protocol.md ("Test vectors").
    """

    __slots__ = ("_buf", "_counter", "_seed")

    def __init__(self, seed: bytes) -> None:
        self._seed = bytes(seed)
        self._counter = 0
        self._buf = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buf) < n:
            block = hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
            self._buf += block
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def __repr__(self) -> str:
        return "SeededRng(<seed>)"
