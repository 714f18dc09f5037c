"""``pigeon-demo``: a relay and two clients on this machine, scripted end to end.

It starts ``pigeon-relay`` in a temporary folder (a free port on 127.0.0.1), then two
SDK clients, Alice and Bob, each with its own sealed profile in that folder: both
register, Bob shares his contact link, Alice adds him (his bundle is verified and PQXDH
starts a session), Bob accepts, both compute the same safety number, they exchange
messages while Alice's message goes PENDING → SENT → DELIVERED → READ, and Alice
searches her history. Then the clients close, the relay stops and the folder is removed.
Every step waits on the SDK's events (bounded); a step that fails ends the demo with
status 1 and says which.

Run ``pigeon-demo`` (``./scripts/demo`` installs it first), ``python -m examples.demo``,
or ``pigeon-demo --relay URL`` to use a relay that is already running.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final, TypeVar

from client_sdk import (
    AsyncClient,
    ContactAccepted,
    Event,
    InvitationReceived,
    MessageReceived,
    MessageStatus,
    MessageStatusChanged,
)
from pigeon_crypto.errors import PigeonError

from .local_relay import RelayStartError, local_relay

__all__ = ["main", "run_demo"]

STEP_TIMEOUT_S: Final = 20.0
"""Each step takes milliseconds on a quiet machine; a busy one gets ample margin."""

E = TypeVar("E", bound=Event)


class DemoFailed(Exception):
    """A step did not happen in time (the message says which)."""


class Party:
    """One demo user: a client plus every event it emitted so far (waits read them
    without consuming, so an event that comes before its wait is not missed)."""

    def __init__(self, name: str, client: AsyncClient) -> None:
        self.name = name
        self.client = client
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        client.on(Event, self._record)

    def _record(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait(self, kind: type[E], what: str, *, where: Callable[[E], bool] = lambda _: True,
                   ) -> E:
        """The first event of *kind* matching *where* (already seen or still to come)."""
        try:
            async with asyncio.timeout(STEP_TIMEOUT_S):
                while True:
                    for event in self.events:
                        if isinstance(event, kind) and where(event):
                            return event
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise DemoFailed(f"{self.name}: {what} did not happen within "
                             f"{STEP_TIMEOUT_S:.0f} s") from None

    def say(self, text: str) -> None:
        say(self.name, text)


def say(who: str, text: str) -> None:
    print(f"  {who:<6} {text}", flush=True)


async def _open(stack: AsyncExitStack, folder: Path, name: str, relay_url: str) -> Party:
    client = AsyncClient.open(folder / f"{name}.pigeon", f"{name}'s passphrase",
                              relay_url=relay_url, tune_interpreter=True)
    party = Party(name, client)  # the handler first: no event is missed
    await stack.enter_async_context(client)
    return party


async def run_demo(relay_url: str, folder: Path) -> None:
    """The scripted conversation between Alice and Bob on the relay at *relay_url*;
    their profiles go to *folder*.

    Raises:
        DemoFailed: a step did not happen in time. PigeonError: the SDK refused one.
    """
    async with AsyncExitStack() as stack:
        alice = await _open(stack, folder, "alice", relay_url)
        bob = await _open(stack, folder, "bob", relay_url)

        print("\n1. Accounts", flush=True)
        for party, display in ((alice, "Alice"), (bob, "Bob")):
            account = await party.client.register()
            await party.client.set_profile(display)
            party.say(f"new profile (keys sealed under Argon2id), registered as account "
                      f"{account.hex()}")

        print("\n2. Becoming contacts", flush=True)
        link = bob.client.contact_link()
        bob.say(f"shares his contact link: {link}")
        await alice.client.add_contact_by_link(link)
        alice.say("adds Bob by the link: his prekey bundle is verified against the link, "
                  "PQXDH (X25519 + ML-KEM-768) starts a session, the invitation goes to "
                  "his contact mailbox")
        invitation = await bob.wait(InvitationReceived, "the invitation")
        bob.say(f"receives an invitation from {invitation.profile_name!r} and accepts it")
        await bob.client.accept(invitation.peer)
        await alice.wait(ContactAccepted, "Bob's acceptance")
        alice.say("sees Bob accept: each side now writes to a private mailbox of the other")

        print("\n3. Safety numbers (compare them in person or on a call)", flush=True)
        ours = alice.client.safety_number(bob.client.account_id)
        theirs = bob.client.safety_number(alice.client.account_id)
        alice.say(f"safety number with Bob:   {ours}")
        bob.say(f"safety number with Alice: {theirs}")
        if ours != theirs:
            raise DemoFailed("the safety numbers differ")
        say("", "they match (compared out of band, this rules out anyone in the middle)")
        for a, b in ((alice, bob), (bob, alice)):
            await a.client.mark_verified(b.client.account_id)

        print("\n4. Messages and their status", flush=True)
        await _exchange(alice, bob)

        print("\n5. Local history", flush=True)
        found = await alice.client.search("quantum")
        for hit in found.hits:
            author = "Alice" if hit.message.outgoing else "Bob"
            alice.say(f"searches her history for 'quantum': {author}: {hit.message.body!r}")
        if not found.hits:
            raise DemoFailed("the search found nothing")


async def _exchange(alice: Party, bob: Party) -> None:
    peer = bob.client.account_id
    started = time.monotonic()
    text = "Hi Bob! Only you can read this."
    ref = await alice.client.send_text(peer, text)
    alice.say(f"-> Bob   {text!r}")

    def status(target: MessageStatus, what: str) -> Any:
        return alice.wait(MessageStatusChanged, what, where=lambda e: (
            e.message_id == ref.message_id and e.status is target))

    def moved(name: str) -> None:
        alice.say(f"         status {name:<9} (+{(time.monotonic() - started) * 1000:.0f} ms)")

    moved("pending")  # stored with its ratchet state before any frame carries it
    await status(MessageStatus.SENT, "SENT (the relay stored the envelope)")
    moved("sent")
    got = await bob.wait(MessageReceived, "Alice's message",
                         where=lambda e: e.message_id == ref.message_id)
    bob.say(f"<- Alice {got.text!r}")
    await status(MessageStatus.DELIVERED, "DELIVERED (Bob's delivery receipt)")
    moved("delivered")
    await bob.client.mark_read(alice.client.account_id, [got.message_id])
    bob.say("reads it (a read receipt goes back, end-to-end encrypted)")
    await status(MessageStatus.READ, "READ (Bob's read receipt)")
    moved("read")

    reply = "Hello Alice, post-quantum hello!"
    answer = await bob.client.send_text(alice.client.account_id, reply)
    bob.say(f"-> Alice {reply!r}")
    got = await alice.wait(MessageReceived, "Bob's reply",
                           where=lambda e: e.message_id == answer.message_id)
    alice.say(f"<- Bob   {got.text!r}")


async def _main(relay_url: str | None) -> None:
    print("Pigeon demo: a blind relay and two end-to-end encrypted clients on this machine",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="pigeon-demo-") as tmp:
        folder = Path(tmp)
        if relay_url is not None:
            say("relay", f"using {relay_url}")
            await run_demo(relay_url, folder)
            return
        async with local_relay(folder / "relay", ["--log-level", "WARNING"]) as url:
            say("relay", f"pigeon-relay listening on {url} (data in {folder / 'relay'})")
            await run_demo(url, folder)
        print(flush=True)
        say("relay", "stopped. It held public keys and encrypted envelopes only: never a "
                     "message text or a display name")


def main(argv: Sequence[str] | None = None) -> None:
    """``pigeon-demo [--relay URL]``: exit status 0 when every step happened."""
    parser = argparse.ArgumentParser(
        prog="pigeon-demo",
        description="Start a relay and run a scripted conversation between two clients.")
    parser.add_argument("--relay", metavar="URL",
                        help="use this running relay instead of starting one")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_main(args.relay))
    except (DemoFailed, RelayStartError, PigeonError) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    print("\nDone: two registrations, one contact, matching safety numbers, messages both "
          "ways with receipts.", flush=True)


if __name__ == "__main__":
    main()
