"""A small test client for the relay's WebSocket: real aiohttp client, typed frames.

``RelayClient.open(url)`` connects to ``{url}/v1/ws`` and starts a reader task that
decodes every frame (``protocol.decode_frame(direction=TO_CLIENT)``, so the relay's
bytes are checked as strictly as the SDK would) and dispatches it: answers by request
id to the waiting :meth:`RelayClient.request`, deliveries to :attr:`deliveries`,
ephemeral deliveries to :attr:`ephemeral`, notices and connection-level errors to
:attr:`notices`. Helpers cover the session (register/auth with a fresh
:class:`~pigeon_crypto.identity.IdentityKeyPair`), mailboxes (a random 32-byte
capability whose SHA-256 goes to the relay), sends and acks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from pigeon_crypto.identity import IdentityKeyPair, account_id_for
from pigeon_crypto.prekeys import KemKind, KemPreKeyPair, OneTimePreKeyPair, SignedPreKeyPair
from pigeon_crypto.rng import system_rng
from pigeon_crypto.signing import Purpose
from protocol import (
    Ack,
    Auth,
    Challenge,
    Connect,
    CreateMailbox,
    Delivery,
    Direction,
    EphemeralDelivery,
    Error,
    Frame,
    MailboxCreated,
    Register,
    Send,
    SendEphemeral,
    Subscribe,
    Subscribed,
    UploadPrekeys,
    Welcome,
    challenge_payload,
    decode_frame,
)

TIMEOUT_S = 10.0
F = TypeVar("F", bound=Frame)


def now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


def new_id() -> bytes:
    """A fresh client_msg_id."""
    return os.urandom(16)


@dataclass(frozen=True)
class Mailbox:
    """A mailbox as its owner knows it: id and send capability."""

    mailbox_id: bytes
    capability: bytes

    @property
    def recipient(self) -> tuple[bytes, bytes]:
        return (self.mailbox_id, self.capability)


@dataclass
class Identity:
    keys: IdentityKeyPair = field(default_factory=lambda: IdentityKeyPair.generate(system_rng))

    @property
    def account_id(self) -> bytes:
        return account_id_for(self.keys.public)

    @property
    def public(self) -> bytes:
        return self.keys.public.to_bytes()


class RelayError(AssertionError):
    def __init__(self, error: Error) -> None:
        super().__init__(f"relay answered Error({error.code}, {error.message!r})")
        self.error = error


class RelayClient:
    """One WebSocket connection to the relay (see the module docstring)."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse,
                 *, own_session: bool) -> None:
        self.session = session
        self.ws = ws
        self._own_session = own_session
        self._next_rid = 0
        self._waiting: dict[int, asyncio.Future[Frame]] = {}
        self.deliveries: asyncio.Queue[Delivery] = asyncio.Queue()
        self.ephemeral: asyncio.Queue[EphemeralDelivery] = asyncio.Queue()
        self.notices: asyncio.Queue[Frame] = asyncio.Queue()
        self.unsolicited: list[Frame] = []
        """Every frame that answered no request (deliveries and notices), in arrival order."""
        self.challenge: Challenge | None = None
        self.identity: Identity | None = None
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_message: str = ""
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, url: str, *, session: aiohttp.ClientSession | None = None,
                   ssl_context: ssl.SSLContext | None = None,
                   max_msg_size: int = 4 * 1024 * 1024) -> RelayClient:
        own = session is None
        sess = session or aiohttp.ClientSession()
        try:
            ws = await sess.ws_connect(url.rstrip("/") + "/v1/ws", ssl=ssl_context or True,
                                       max_msg_size=max_msg_size, autoping=True)
        except BaseException:
            if own:
                await sess.close()
            raise
        return cls(sess, ws, own_session=own)

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    continue
                frame = decode_frame(msg.data, direction=Direction.TO_CLIENT)
                rid = getattr(frame, "request_id", 0)
                if rid and rid in self._waiting:
                    fut = self._waiting.pop(rid)
                    if not fut.done():
                        fut.set_result(frame)
                    continue
                self.unsolicited.append(frame)
                if isinstance(frame, Delivery):
                    self.deliveries.put_nowait(frame)
                elif isinstance(frame, EphemeralDelivery):
                    self.ephemeral.put_nowait(frame)
                else:
                    self.notices.put_nowait(frame)
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"closed ({self.close_code})"))

    def rid(self) -> int:
        self._next_rid += 1
        return self._next_rid

    async def send_raw(self, data: bytes | str) -> None:
        if isinstance(data, str):
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data)

    async def request(self, make: Callable[[int], Frame], *, wait_s: float = TIMEOUT_S
                      ) -> Frame:
        """Send ``make(request_id)`` and return the frame answering it."""
        rid = self.rid()
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        await self.ws.send_bytes(make(rid).encode())
        return await asyncio.wait_for(fut, wait_s)

    async def expect(self, kind: type[F], make: Callable[[int], Frame]) -> F:
        """Like :meth:`request`, raising :class:`RelayError` unless the answer is *kind*."""
        frame = await self.request(make)
        if isinstance(frame, Error):
            raise RelayError(frame)
        assert isinstance(frame, kind), frame
        return frame

    async def error(self, make: Callable[[int], Frame]) -> Error:
        """Send a request that must fail; return the ``Error``."""
        frame = await self.request(make)
        assert isinstance(frame, Error), frame
        return frame

    async def post(self, frame: Frame) -> None:
        """Send a frame that has no success answer (Ack, SendEphemeral)."""
        await self.ws.send_bytes(frame.encode())

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        if self._own_session:
            await self.session.close()

    # ------------------------------------------------------------------ session

    async def hello(self) -> Challenge:
        self.challenge = await self.expect(Challenge, lambda rid: Connect(request_id=rid))
        return self.challenge

    def sign_challenge(self, identity: Identity, *, account_id: bytes | None = None,
                       purpose: Purpose = Purpose.RELAY_CHALLENGE) -> bytes:
        ch = self.challenge
        assert ch is not None
        payload = challenge_payload(ch.relay_id, ch.nonce, ch.server_time_ms,
                                    account_id or identity.account_id)
        return identity.keys.sign(purpose, payload)

    async def register(self, identity: Identity | None = None, *, invite: str | None = None
                       ) -> Welcome:
        identity = identity or Identity()
        if self.challenge is None:
            await self.hello()
        sig = self.sign_challenge(identity)
        welcome = await self.expect(Welcome, lambda rid: Register(
            request_id=rid, account_id=identity.account_id, identity_key=identity.public,
            signature=sig, invite_code=invite))
        self.identity = identity
        return welcome

    async def auth(self, identity: Identity) -> Welcome:
        if self.challenge is None:
            await self.hello()
        sig = self.sign_challenge(identity)
        welcome = await self.expect(Welcome, lambda rid: Auth(
            request_id=rid, account_id=identity.account_id, signature=sig))
        self.identity = identity
        return welcome

    # ------------------------------------------------------------------ mailboxes and messages

    async def create_mailbox(self) -> Mailbox:
        capability = os.urandom(32)
        created = await self.expect(MailboxCreated, lambda rid: CreateMailbox(
            request_id=rid, capability_hash=hashlib.sha256(capability).digest()))
        return Mailbox(created.mailbox_id, capability)

    async def subscribe(self, *mailboxes: Mailbox | bytes) -> Subscribed:
        ids = tuple(m.mailbox_id if isinstance(m, Mailbox) else m for m in mailboxes)
        return await self.expect(Subscribed, lambda rid: Subscribe(request_id=rid,
                                                                    mailbox_ids=ids))

    async def send(self, recipients: Sequence[Mailbox | tuple[bytes, bytes]], blob: bytes, *,
                   client_msg_id: bytes | None = None, ttl_ms: int | None = None) -> Frame:
        """Send durably; returns ``Sent`` or ``Error``."""
        pairs = tuple(r.recipient if isinstance(r, Mailbox) else r for r in recipients)
        cmid = client_msg_id or new_id()
        return await self.request(lambda rid: Send(request_id=rid, client_msg_id=cmid,
                                                   blob=blob, recipients=pairs, ttl_ms=ttl_ms))

    async def send_ephemeral(self, recipients: Sequence[Mailbox], blob: bytes, *,
                             client_msg_id: bytes | None = None) -> None:
        await self.post(SendEphemeral(request_id=self.rid(), client_msg_id=client_msg_id
                                      or new_id(), blob=blob,
                                      recipients=tuple(r.recipient for r in recipients)))

    async def ack(self, mailbox: Mailbox | bytes, up_to_seq: int = 0,
                  seqs: Sequence[int] = ()) -> None:
        mid = mailbox.mailbox_id if isinstance(mailbox, Mailbox) else mailbox
        await self.post(Ack(request_id=self.rid(), mailbox_id=mid, up_to_seq=up_to_seq,
                            seqs=tuple(seqs)))

    async def next_delivery(self, wait_s: float = TIMEOUT_S) -> Delivery:
        return await asyncio.wait_for(self.deliveries.get(), wait_s)

    async def deliveries_of(self, n: int, wait_s: float = TIMEOUT_S) -> list[Delivery]:
        return [await self.next_delivery(wait_s) for _ in range(n)]

    async def next_notice(self, kind: type[F], wait_s: float = TIMEOUT_S) -> F:
        """The next notice of *kind* (others seen meanwhile are discarded)."""
        async def wait() -> F:
            while True:
                frame = await self.notices.get()
                if isinstance(frame, kind):
                    return frame

        return await asyncio.wait_for(wait(), wait_s)

    async def no_delivery(self, within: float = 0.3) -> None:
        """Assert that nothing is delivered within *within* seconds."""
        try:
            got = await asyncio.wait_for(self.deliveries.get(), within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected delivery seq={got.seq}")

    async def upload_prekeys(self, *, one_time: int = 0, one_time_kem: int = 0,
                             first_id: int = 1) -> Any:
        """Publish a signed prekey, a last-resort KEM prekey and one-time keys."""
        assert self.identity is not None
        keys = self.identity.keys
        now = now_ms()
        spk = SignedPreKeyPair.generate(keys, key_id=first_id, now_ms=now, rng=system_rng)
        last = KemPreKeyPair.generate(keys, key_id=first_id, kind=KemKind.LAST_RESORT,
                                      now_ms=now, rng=system_rng)
        otks = [OneTimePreKeyPair.generate(key_id=first_id + i, rng=system_rng)
                for i in range(one_time)]
        kems = [KemPreKeyPair.generate(keys, key_id=first_id + 1 + i, kind=KemKind.ONE_TIME,
                                       now_ms=now, rng=system_rng) for i in range(one_time_kem)]
        return await self.request(lambda rid: UploadPrekeys(
            request_id=rid, signed_prekey=spk.public.to_bytes(),
            kem_prekey=last.public.to_bytes(),
            one_time_prekeys=tuple(k.public.to_bytes() for k in otks),
            one_time_kem_prekeys=tuple(k.public.to_bytes() for k in kems)))


async def connect_user(url: str, *, session: aiohttp.ClientSession | None = None,
                       ssl_context: ssl.SSLContext | None = None,
                       identity: Identity | None = None) -> RelayClient:
    """Open a connection and register (or log in, if *identity* exists) an account."""
    client = await RelayClient.open(url, session=session, ssl_context=ssl_context)
    await client.register(identity)
    return client


async def logged_in(url: str, identity: Identity) -> RelayClient:
    """Another session of an existing account: a connection that logged in (``Auth``)."""
    client = await RelayClient.open(url)
    await client.auth(identity)
    return client


async def anonymous(url: str, *, session: aiohttp.ClientSession | None = None,
                    ssl_context: ssl.SSLContext | None = None) -> RelayClient:
    """An open connection that said Connect and nothing else."""
    client = await RelayClient.open(url, session=session, ssl_context=ssl_context)
    await client.hello()
    return client


async def raw_login(session: aiohttp.ClientSession, url: str, identity: Identity, *,
                    register: bool) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket driven by hand (no reader task: a test can stop reading it), logged in
    as *identity* (registered first if *register*); frames 1 and 2 are used."""
    ws = await session.ws_connect(url + "/v1/ws", max_msg_size=1 << 22)
    await ws.send_bytes(Connect(request_id=1).encode())
    challenge = decode_frame((await ws.receive()).data, direction=Direction.TO_CLIENT)
    assert isinstance(challenge, Challenge)
    sig = identity.keys.sign(Purpose.RELAY_CHALLENGE, challenge_payload(
        challenge.relay_id, challenge.nonce, challenge.server_time_ms, identity.account_id))
    await ws.send_bytes((Register(request_id=2, account_id=identity.account_id,
                                  identity_key=identity.public, signature=sig) if register
                         else Auth(request_id=2, account_id=identity.account_id,
                                   signature=sig)).encode())
    welcome = decode_frame((await ws.receive()).data, direction=Direction.TO_CLIENT)
    assert isinstance(welcome, Welcome)
    return ws
