"""The frame pipeline: stages, routes, the per-frame context, and the hot frames' bytes.

Theory of operation (DESIGN.md "Relay pipeline"; docs/relay.md):

* The reader (:mod:`relay.ws`) decodes each WebSocket message with
  :func:`protocol.decode_frame` and looks the frame's class up in the resolver
  (:data:`relay.resolver.RESOLVER`, a dict from frame class to :class:`Route`, built once
  at import). There is no chain of ifs: a frame type is one row of that table.
* A :class:`Route` is a tuple of **stages**. A stage is a plain callable ``stage(ctx)``
  that returns ``None`` (synchronous work: one call, no event-loop round trip) or an
  awaitable (I/O), so a cheap stage costs a function call. A stage stops the chain by
  raising :class:`Refuse` (answered ``Error(request_id, code, retry_after_ms)``) or
  :class:`Halt` (nothing is answered: a dropped ephemeral duplicate).
* :data:`FORK` splits a route in two. Stages before it run in the connection's reader
  loop, in arrival order: validation, capability, credits (cheap, and they decide whether
  the frame is accepted at all). Stages after it run outside the reader, in **batches**:
  the forked frames a connection reads in one event-loop iteration go to one task (not
  one task per frame), at most ``MAX_INFLIGHT`` frames in flight per connection (a
  bounded queue between the stages: the reader waits for a free slot). A
  :class:`Batched` stage takes the whole batch in one call (persist: one store call for
  every send of the batch); the other forked stages run frame by frame, in order (ack
  the sender, route). So a connection keeps many sends in flight, which the store's
  group commit turns into one transaction, while the reader goes on reading. A batch's
  task reaches the store's queue in its first step, before any later batch's task runs,
  so writes are queued in arrival order.
* :class:`FrameCtx` carries the frame, its connection and the scratch state that stages
  hand on (for a send: the recipients that passed the capability stage with their
  indices, the recipients refused so far, the append result).

The encoders at the end build the bytes of the frames on the hot path (``Sent``,
``Delivery``, ``EphemeralDelivery``) straight from their fields, skipping the dataclass
construction and validation of :mod:`protocol` (the values come from the store and from
frames that were validated on the way in). They produce exactly the canonical encoding
of :meth:`protocol.Frame.encode`; ``tests/unit/relay/test_pipeline.py`` checks that.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import msgpack

from protocol import PROTOCOL_VERSION, Delivery, EphemeralDelivery, Error, ErrorCode, Sent
from protocol.limits import MAX_ERROR_MESSAGE_SIZE

from .ports import Recipient

if TYPE_CHECKING:
    from .connection import Connection

__all__ = [
    "FORK",
    "MAX_INFLIGHT",
    "Batched",
    "DeliveryEncoder",
    "FrameCtx",
    "Halt",
    "Refuse",
    "Route",
    "Stage",
    "delivery_bytes",
    "ephemeral_delivery_bytes",
    "error_bytes",
    "sent_bytes",
]

MAX_INFLIGHT: Final = 128
"""Forked frames (durable sends) in flight per connection. Enough to keep the group commit
busy from one connection; beyond it the reader waits, which is TCP backpressure on that
connection only."""

F = TypeVar("F")


class Refuse(Exception):
    """Raised by a stage to stop the chain and answer ``Error(request_id, code)``.

    Attributes:
        code: the wire error code.
        retry_after_ms: with ``RATE_LIMITED``, ``OVERLOADED``, ``UNAVAILABLE``.
        message: a short diagnostic for the ``Error`` frame (never ids, keys or content).
    """

    __slots__ = ("code", "message", "retry_after_ms")

    def __init__(
        self, code: ErrorCode, *, retry_after_ms: int | None = None, message: str | None = None
    ) -> None:
        super().__init__(code.name)
        self.code = code
        self.retry_after_ms = retry_after_ms
        self.message = message


class Halt(Exception):
    """Raised by a stage to stop the chain without answering (e.g. an ephemeral duplicate)."""


class FrameCtx(Generic[F]):
    """One inbound frame on its way through the stages.

    Attributes:
        conn: the connection it arrived on.
        frame: the decoded frame.
        request_id: its request id (0 for frames without one).
        recipients: (sends) recipients that passed the capability stage, in request order.
        indices: (sends) the index in ``frame.recipients`` of each of ``recipients``.
        rejected: (sends) ``(index, code)`` of recipients refused so far.
        ttl_ms: (durable sends) the retention applied.
        result: (durable sends) what the store's append returned.
    """

    __slots__ = ("conn", "frame", "indices", "recipients", "rejected", "request_id", "result",
                 "ttl_ms")

    def __init__(self, conn: Connection, frame: F, request_id: int) -> None:
        self.conn = conn
        self.frame = frame
        self.request_id = request_id
        self.recipients: list[Recipient] = []
        self.indices: list[int] = []
        self.rejected: list[tuple[int, int]] = []
        self.ttl_ms = 0
        self.result: Any = None


Stage = Callable[[FrameCtx[Any]], Awaitable[None] | None]
"""A pipeline stage: returns None when done synchronously, or an awaitable to await."""


class Batched:
    """A forked stage that handles a whole batch in one call: ``await fn(ctxs)``.

    The forked frames of one connection that were read in the same event-loop iteration
    run their forked stages together (:meth:`relay.connection.Connection.fork`). A plain
    stage is still called frame by frame; a ``Batched`` one once per batch, e.g. one
    store call that persists every send of the batch. It either completes for every
    frame (setting each ``ctx.result``) or raises, which fails every frame of the batch.
    With *after_reply*, the stage runs once every frame was answered: a failure is
    logged, never answered (a request gets one answer).
    """

    __slots__ = ("after_reply", "fn", "name")

    def __init__(self, fn: Callable[[list[FrameCtx[Any]]], Awaitable[None]], *,
                 after_reply: bool = False) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", "batched")
        self.after_reply = after_reply

    def __repr__(self) -> str:
        return f"Batched({self.name})"


class _Fork:
    __slots__ = ()

    def __repr__(self) -> str:
        return "FORK"


FORK: Final = _Fork()
"""Marks where a route leaves the reader loop for a task of its own (see the module doc)."""


@dataclass(frozen=True, slots=True)
class Route:
    """The stages of one frame type.

    Attributes:
        name: the frame type's name (metrics label).
        inline: stages run in the reader loop.
        forked: stages run in a per-connection bounded task (empty: none).
    """

    name: str
    inline: tuple[Stage, ...]
    forked: tuple[Stage | Batched, ...] = ()

    @classmethod
    def of(cls, name: str, *stages: Stage | Batched | _Fork) -> Route:
        """Build a route from stages with at most one :data:`FORK` among them;
        :class:`Batched` stages only after it."""
        forks = [i for i, s in enumerate(stages) if s is FORK]
        if len(forks) > 1:
            raise ValueError(f"route {name} has more than one FORK")
        split = forks[0] if forks else len(stages)
        inline: list[Stage] = []
        for s in stages[:split]:
            if isinstance(s, Batched):
                raise ValueError(f"route {name}: a Batched stage must follow FORK")
            if not isinstance(s, _Fork):
                inline.append(s)
        forked = tuple(s for s in stages[split + 1:] if not isinstance(s, _Fork))
        if not inline and not forked:
            raise ValueError(f"route {name} has no stages")
        return cls(name, tuple(inline), forked)

    @property
    def stages(self) -> tuple[Stage | Batched | _Fork, ...]:
        """All stages in order, with FORK where the route forks (for docs and tests)."""
        return (*self.inline, FORK, *self.forked) if self.forked else self.inline


# --------------------------------------------------------------------------- hot-path bytes

_pack: Final = msgpack.Packer(use_bin_type=True, autoreset=True).pack
"""One packer for the event loop's thread (these encoders are only called there)."""
_V: Final = PROTOCOL_VERSION
_SENT: Final = Sent.TYPE
_DELIVERY: Final = Delivery.TYPE
_EPHEMERAL: Final = EphemeralDelivery.TYPE
_NO_REJECTIONS: Final[dict[int, object]] = {}


def sent_bytes(request_id: int) -> bytes:
    """``Sent(request_id)`` without rejections: the answer to almost every ``Send``."""
    out: bytes = _pack((_V, _SENT, request_id, _NO_REJECTIONS))
    return out


def delivery_bytes(mailbox_id: bytes, seq: int, received_at_ms: int, blob: bytes) -> bytes:
    """``Delivery(mailbox_id, seq, received_at_ms, blob)``: every field is required."""
    out: bytes = _pack((_V, _DELIVERY, 0, {1: mailbox_id, 2: seq, 3: received_at_ms, 4: blob}))
    return out


class DeliveryEncoder:
    """The ``Delivery`` frames of one send's copies: :func:`delivery_bytes` for each
    recipient, with everything but the mailbox id and the seq encoded once (a
    1,000-member group message packed its blob 1,000 times). ``frame(m, seq)`` equals
    ``delivery_bytes(m, seq, received_at_ms, blob)`` byte for byte."""

    __slots__ = ("_tail",)

    _HEAD: Final = (b"\x94" + _pack(_V) + _pack(_DELIVERY) + _pack(0)
                    + b"\x84\x01")  # array(4): v, type, request id 0; map(4), key 1

    def __init__(self, received_at_ms: int, blob: bytes) -> None:
        self._tail = b"\x03" + _pack(received_at_ms) + b"\x04" + _pack(blob)

    def frame(self, mailbox_id: bytes, seq: int) -> bytes:
        return b"".join((self._HEAD, _pack(mailbox_id), b"\x02", _pack(seq), self._tail))


def ephemeral_delivery_bytes(mailbox_id: bytes, received_at_ms: int, blob: bytes) -> bytes:
    """``EphemeralDelivery(mailbox_id, received_at_ms, blob)``."""
    out: bytes = _pack((_V, _EPHEMERAL, 0, {1: mailbox_id, 2: received_at_ms, 3: blob}))
    return out


def error_bytes(
    request_id: int, code: int, *, retry_after_ms: int | None = None, message: str | None = None
) -> bytes:
    """An ``Error`` frame (through :mod:`protocol`: not on the hot path). *message* is cut
    to the protocol's limit."""
    if message is not None:
        message = message.encode("utf-8")[:MAX_ERROR_MESSAGE_SIZE].decode("utf-8", "ignore")
    return Error(request_id=request_id, code=code, message=message,
                 retry_after_ms=retry_after_ms).encode()
