"""The AsyncClient's account, contact and message methods that talk to the relay
(split from ``client.py``, which keeps the connection loop). Mixed into
:class:`~client_sdk.client.AsyncClient`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pigeon_crypto.signing import Purpose
from protocol.frames import (
    Bundle,
    ClaimUsername,
    CreateMailbox,
    DeleteAccount,
    FetchBundle,
    Frame,
    LookupUsername,
    MailboxCreated,
    PrekeysLow,
    RotateIdentity,
    RotateMailbox,
    SendEphemeral,
    UsernameFound,
)
from protocol.inner import PresenceState, ReceiptKind
from protocol.payloads import challenge_payload, normalize_username, username_binding_payload

from . import _sending
from .errors import ConnectionLost
from .events import Event, MessageRef
from .frames import verify_username
from .payloads import ContactLink
from .store.records import ContactState

if TYPE_CHECKING:
    from protocol.frames import Challenge

    from ._connection import RelayConnection
    from ._pump import OutboxPump
    from .core import ClientCore

__all__ = ["RelayApiMixin"]

T = TypeVar("T")


class RelayApiMixin:
    """Mixed into AsyncClient (which provides the attributes declared here)."""

    if TYPE_CHECKING:
        _conn: RelayConnection | None
        _send_conn: RelayConnection | None
        _pump: OutboxPump
        _challenge: Challenge | None
        _loop_task: asyncio.Task[None] | None
        _relay_url: str | None

        @property
        def core(self) -> ClientCore: ...

        async def _run(self, fn: Callable[[ClientCore], T]) -> T: ...

        async def _submit(self, intent: _sending.Intent) -> MessageRef | None: ...

        async def _connection(self, timeout_s: float = 30.0) -> RelayConnection: ...

        async def _request(self, build: Callable[[int], Any], timeout_s: float = 30.0, *,
                           anonymous: bool = False) -> Frame: ...

        async def _subscribe(self, conn: RelayConnection,
                             mailbox_ids: Sequence[bytes]) -> None: ...

        async def _after_login(self, conn: RelayConnection,
                               notice: PrekeysLow | None = None) -> None: ...

        def _emit(self, events: Sequence[Event]) -> None: ...

        @staticmethod
        def _now_ms() -> int: ...

    async def delete_account(self) -> None:
        """Delete the account on the relay (its mailboxes, prekeys and username go with
        it). History stays in the profile; the connection stops."""
        await self._request(lambda rid: DeleteAccount(request_id=rid))
        await self._run(lambda c: c.forget_registration())
        if self._loop_task is not None:
            self._loop_task.cancel()

    async def rotate_identity(self) -> None:
        """Replace our identity key, signed by the old one; contacts see a signed
        rotation (no acknowledgement needed): every accepted contact is told at once, over
        its session (``IdentityRotated``). New prekeys are uploaded."""
        identity, rotation = await self._run(lambda c: c.rotate_identity())
        conn = await self._connection()
        challenge = self._challenge
        assert challenge is not None
        payload = challenge_payload(challenge.relay_id, challenge.nonce,
                                    challenge.server_time_ms, identity.account_id)
        signature = identity.key_pair.sign(Purpose.RELAY_CHALLENGE, payload)
        await conn.request(lambda rid: RotateIdentity(request_id=rid,
                                                      rotation=rotation.to_bytes(),
                                                      signature=signature))
        await self._run(lambda c: c.commit_identity(identity, now_ms=self._now_ms()))
        try:
            await self._after_login(conn, PrekeysLow(one_time_prekeys=10**6,
                                                     one_time_kem_prekeys=10**6))
        finally:
            # After the upload, so a contact that answers at once finds the new prekeys;
            # announced even if the upload failed (the next login uploads again).
            self._pump.add(await self._run(
                lambda c: c.announce_identity(now_ms=self._now_ms())))

    async def claim_username(self, username: str) -> str:
        """Make the account discoverable by *username* (normalized; returned)."""
        name = normalize_username(username)
        core = self.core
        signature = core.identity.key_pair.sign(
            Purpose.USERNAME_BINDING, username_binding_payload(name, core.account_id))
        await self._request(lambda rid: ClaimUsername(request_id=rid, username=name,
                                                      account_id=core.account_id,
                                                      signature=signature))
        return name

    # --- contacts --------------------------------------------------------------------------

    async def _fetch_bundle(self, account_id: bytes, fingerprint: bytes | None = None) -> Any:
        frame = await self._request(lambda rid: FetchBundle(request_id=rid,
                                                            account_id=account_id),
                                    anonymous=True)
        assert isinstance(frame, Bundle)
        return await self._run(lambda c: c.verify_bundle(frame,
                                                         expected_fingerprint=fingerprint))

    async def _new_mailbox(self) -> tuple[MailboxCreated, bytes]:
        capability, digest = await self._run(lambda c: c.new_capability())
        created = await self._request(lambda rid: CreateMailbox(request_id=rid,
                                                                capability_hash=digest))
        assert isinstance(created, MailboxCreated)
        return created, capability

    async def _invite_verified(self, verified: Any) -> None:
        created, capability = await self._new_mailbox()
        now = self._now_ms()
        items, events = await self._run(lambda c: c.start_contact(
            verified, created, capability, relay_url=self._public_relay_url(), now_ms=now))
        await self._subscribe(await self._connection(), [created.mailbox_id])
        self._pump.add(items)
        self._emit(events)

    def _public_relay_url(self) -> str | None:
        return self._relay_url

    async def add_contact(self, account_id: bytes, *,
                          fingerprint: bytes | None = None) -> None:
        """Invite an account (the contact is INVITED until it accepts; then
        ``ContactAccepted``). Adding someone who invited us accepts them.

        Raises:
            InvalidBundle / IdentityMismatch: the relay's bundle does not verify (or
                is not the identity *fingerprint* names); RelayError(UNKNOWN_ACCOUNT).
        """
        if await self._already_known(account_id):
            return
        verified = await self._fetch_bundle(account_id, fingerprint)
        await self._invite_verified(verified)

    async def _already_known(self, account_id: bytes) -> bool:
        """Settle adding someone we know: accept their invitation, or nothing for a
        contact already accepted (a new invitation would set it back to INVITED, and
        neither side could write until the other accepted again). False: invite."""
        contact = self.core.contact(account_id)
        if contact is not None and contact.state is ContactState.PENDING:
            await self.accept(account_id)
            return True
        return contact is not None and contact.state is ContactState.ACCEPTED

    async def add_contact_by_username(self, username: str) -> bytes:
        """Look a username up (exact match), verify its binding, invite the account (as
        :meth:`add_contact`: someone who invited us is accepted, a contact stays one)."""
        name = normalize_username(username)
        found = await self._request(lambda rid: LookupUsername(request_id=rid, username=name),
                                    anonymous=True)
        assert isinstance(found, UsernameFound)
        verified = await self._fetch_bundle(found.account_id)
        verify_username(found, verified)
        if not await self._already_known(found.account_id):
            await self._invite_verified(verified)
        return found.account_id

    async def add_contact_by_link(self, link: str) -> bytes:
        """Add the account a contact link (or scanned QR payload) names, checking the
        identity fingerprint it carries. The link's relay must be this client's."""
        parsed = ContactLink.parse(link)
        await self.add_contact(parsed.account_id, fingerprint=parsed.fingerprint)
        return parsed.account_id

    async def accept(self, peer: bytes) -> None:
        """Accept a PENDING invitation: create our pairwise mailbox for the contact and
        announce it (with our profile) inside the session."""
        created, capability = await self._new_mailbox()
        items, events = await self._run(lambda c: c.accept(peer, created, capability,
                                                           now_ms=self._now_ms()))
        await self._subscribe(await self._connection(), [created.mailbox_id])
        self._pump.add(items)
        self._emit(events)

    async def rotate_mailbox(self, peer: bytes) -> None:
        """Move the contact to a new pairwise mailbox of ours (new id and capability),
        announced inside the session; the old one keeps working for the relay's grace
        period so messages in flight arrive."""
        contact = self.core.require_sendable(peer)
        assert contact.inbound is not None
        old = contact.inbound.mailbox_id
        capability, digest = await self._run(lambda c: c.new_capability())
        created = await self._request(lambda rid: RotateMailbox(
            request_id=rid, mailbox_id=old, capability_hash=digest))
        assert isinstance(created, MailboxCreated)
        items = await self._run(lambda c: c.rotate_mailbox(peer, created, capability,
                                                           now_ms=self._now_ms()))
        self._pump.add(items)

    async def refresh_contact(self, peer: bytes) -> None:
        """Fetch the contact's bundle and compare its identity (see ``IdentityChanged``)."""
        verified = await self._fetch_bundle(peer)
        events = await self._run(lambda c: c.refresh_identity(verified,
                                                              now_ms=self._now_ms()))
        self._emit(events)

    # --- ephemeral ---------------------------------------------------------------------------

    async def _ephemeral(self, peer: bytes, **what: Any) -> bool:
        signal = await self._run(lambda c: c.ephemeral(peer, now_ms=self._now_ms(), **what))
        conn = self._send_conn
        if signal is None or conn is None:
            return False
        cmid, blob, recipient = signal
        with contextlib.suppress(ConnectionLost):
            conn.send(lambda rid: SendEphemeral(request_id=rid, client_msg_id=cmid, blob=blob,
                                                recipients=(recipient,)))
            return True
        return False

    async def send_typing(self, peer: bytes, active: bool = True) -> bool:
        """Tell *peer* we are (not) typing: ephemeral, end to end, dropped if they are
        offline. Returns whether it was sent."""
        return await self._ephemeral(peer, typing=active)

    async def set_presence(self, state: PresenceState) -> int:
        """Share our presence with every accepted contact, if presence is enabled
        (``enable_presence``; off by default). Returns how many were sent."""
        if await self._run(lambda c: c.store.get_setting("presence_enabled")) is None:
            return 0
        sent = 0
        for contact in self.core.contacts(ContactState.ACCEPTED):
            sent += await self._ephemeral(contact.account_id, presence=state)
        return sent

    async def enable_presence(self, enabled: bool = True) -> None:
        """Opt in (or out) of sharing presence with contacts."""
        if enabled:
            await self._run(lambda c: c.store.put_setting("presence_enabled", b"1"))
        else:
            await self._run(lambda c: c.store.delete_setting("presence_enabled"))

    # --- messages ---------------------------------------------------------------------------

    async def send_text(self, peer: bytes, text: str, *,
                        reply_to: bytes | None = None) -> MessageRef:
        """Encrypt, store (PENDING) and queue a text message; returns once it is stored
        (the status then moves by ``MessageStatusChanged`` events).

        Raises:
            UnknownContact: *peer* is no contact of ours (nor is anyone before
                ``register``).
            ContactNotReady, ContactBlocked, IdentityChangeUnacknowledged: the contact
                cannot be written to now.
            protocol.errors.InvalidValue: *text* is empty or over
                ``protocol.limits.MAX_TEXT_SIZE`` bytes of UTF-8.
        """
        ref = await self._submit(_sending.SendText(peer=peer, text=text, reply_to=reply_to))
        assert ref is not None
        return ref

    async def mark_read(self, peer: bytes, message_ids: Sequence[bytes]) -> None:
        """Mark incoming messages READ and send the peer a read receipt."""
        await self._submit(_sending.SendReceipt(peer=peer, kind=ReceiptKind.READ,
                                                message_ids=tuple(message_ids)))


