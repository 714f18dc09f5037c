"""Any sequence of well-formed frames against the real relay gets typed answers.

Hypothesis draws short scripts of client frames of every type (from the field specs,
``tests/unit/protocol/strategies.py``), on an anonymous or a logged-in connection, with
mailbox ids, capabilities and account ids often swapped for the connection's real ones
so that the frames reach the relay's state, not only its "no such mailbox" answers.
Every frame is sent at once, pipelined, then:

* every request that has an answer gets exactly one (its success frame or ``Error``),
  and an ``Ack``, a ``SendEphemeral``, a ``Pong`` or a client's ``Error`` at most an
  ``Error``;
* no answer is ``INTERNAL`` or ``UNAVAILABLE`` (the store is healthy: a refusal must
  name its reason), and the relay's log has no error;
* the relay goes on serving a fresh pair afterwards.

Push URLs are replaced by a loopback one: nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from protocol import (
    FRAME_TYPES,
    Ack,
    Connect,
    DeleteAccount,
    Error,
    ErrorCode,
    Frame,
    Pong,
    RegisterPush,
    SendEphemeral,
)
from protocol.frames import Direction
from tests.unit.protocol.strategies import record_strategy

from .conftest import RelayProcess, launch_relay
from .test_relay_ws_robustness import still_serving
from .wsclient import Mailbox, RelayClient, anonymous, connect_user

ANSWER_WAIT_S = 3.0
NO_ANSWER = (Ack, SendEphemeral, Pong, Error)
"""Client frames that are answered only when refused (protocol §9.3)."""
BROKEN = {ErrorCode.INTERNAL, ErrorCode.UNAVAILABLE}
PUSH_URL = "https://127.0.0.1:9/push"

CLIENT_FRAMES = [c for c in FRAME_TYPES.values() if c.DIRECTION is not Direction.TO_CLIENT]


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    rp = launch_relay(tmp_path_factory.mktemp("ws-fuzz"), [
        "--conn-credit-capacity", "100000", "--conn-credit-refill", "100000",
        "--mailbox-credit-capacity", "100000", "--mailbox-credit-refill", "100000",
        "--lookup-credit-capacity", "100000", "--lookup-credit-refill", "100000",
        "--misbehaviour-threshold", "1000"])
    yield rp
    rp.kill()


@dataclass(frozen=True)
class Step:
    """One frame of a script, and which of its values to swap for real ones."""

    frame: Frame
    real: int
    """0: as drawn; otherwise the index (mod count) of the real mailbox to use."""


steps = st.builds(Step, st.one_of([record_strategy(c) for c in CLIENT_FRAMES]),
                  st.integers(0, 3))


@dataclass
class Session:
    client: RelayClient
    account_id: bytes | None
    boxes: list[Mailbox]


def _realize(step: Step, s: Session, rid: int) -> Frame:
    """The step's frame with request id *rid* and, if asked, the session's real values."""
    frame = step.frame
    kw: dict[str, Any] = {spec.name: getattr(frame, spec.name) for spec in frame.SPECS}
    kw["request_id"] = rid
    if isinstance(frame, RegisterPush) and frame.url is not None:
        kw["url"] = PUSH_URL
    if step.real and s.boxes:
        box = s.boxes[step.real % len(s.boxes)]
        if "mailbox_id" in kw:
            kw["mailbox_id"] = box.mailbox_id
        if "mailbox_ids" in kw:
            kw["mailbox_ids"] = (box.mailbox_id, *kw["mailbox_ids"][1:])
        if "recipients" in kw:
            kw["recipients"] = (box.recipient, *kw["recipients"][1:])
        if "capability" in kw:
            kw["capability"] = box.capability
        if "capability_hash" in kw and step.real == 1:  # a hash already in use
            kw["capability_hash"] = hashlib.sha256(box.capability).digest()
    if step.real and s.account_id is not None and "account_id" in kw:
        kw["account_id"] = s.account_id
    return type(frame)(**kw)


async def _session(url: str, logged_in: bool) -> Session:
    if not logged_in:
        return Session(await anonymous(url), None, [])
    client = await connect_user(url)
    assert client.identity is not None
    return Session(client, client.identity.account_id,
                   [await client.create_mailbox() for _ in range(2)])


async def _play(url: str, script: list[Step], logged_in: bool) -> None:
    s = await _session(url, logged_in)
    c = s.client
    loop = asyncio.get_running_loop()
    answered: dict[int, asyncio.Future[Frame]] = {}
    sent: dict[int, Frame] = {}
    try:
        for step in script:
            rid = c.rid()
            frame = _realize(step, s, rid)
            sent[rid] = frame
            if not isinstance(frame, NO_ANSWER):
                answered[rid] = c._waiting[rid] = loop.create_future()
            await c.send_raw(frame.encode())
            if isinstance(frame, DeleteAccount | Connect):
                break  # ends (or restarts) the session: what follows may go unanswered
        done: set[asyncio.Future[Frame]] = set()
        pending: set[asyncio.Future[Frame]] = set()
        if answered:
            done, pending = await asyncio.wait(answered.values(), timeout=ANSWER_WAIT_S)
        unanswered = [sent[r] for r, f in answered.items() if f in pending]
        if unanswered and not c.closed.is_set():
            pytest.fail(f"no answer to {unanswered!r}")
        answers = [f.result() for f in done if f.exception() is None]
        await asyncio.sleep(0.05)  # a late second answer would land in the notices
        extra = []
        while not c.notices.empty():
            extra.append(c.notices.get_nowait())
        for frame in answers + extra:
            if isinstance(frame, Error):
                assert frame.code not in BROKEN, (frame, sent.get(frame.request_id))
        twice = [f for f in extra if getattr(f, "request_id", 0) in answered]
        assert not twice, f"answered twice: {twice!r}"
        for f in extra:
            rid = getattr(f, "request_id", 0)
            if rid in sent:  # an answer to a frame that answers only when refused
                assert isinstance(sent[rid], NO_ANSWER) and isinstance(f, Error), f
    finally:
        await c.close()


# Fixed examples (derandomize) for CI; no shrinking, where every step could wait
# ANSWER_WAIT_S: the failing script is printed as drawn. 1,500 random examples passed
# when this was written (max_examples=1500, derandomize=False: 97 s).
@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          phases=[Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(script=st.lists(steps, min_size=1, max_size=10), logged_in=st.booleans())
def test_any_frame_sequence_gets_typed_answers(relay: RelayProcess, script: list[Step],
                                               logged_in: bool) -> None:
    asyncio.run(_play(relay.url, script, logged_in))


async def test_the_relay_still_serves_after_the_fuzz(relay: RelayProcess) -> None:
    await still_serving(relay.url)
    log = relay.log_path.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log and " ERROR " not in log and '"ERROR"' not in log, log[-3000:]
    assert relay.proc is not None and relay.proc.poll() is None
