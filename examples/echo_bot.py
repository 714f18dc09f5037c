"""An echo bot: accepts every invitation, marks each direct text read and answers it
with the same text (texts posted in groups are left alone).
Run: python -m examples.echo_bot PROFILE RELAY_URL (passphrase: $PIGEON_PASSPHRASE or asked)"""

import asyncio
import contextlib
import getpass
import os
import sys

from client_sdk import AsyncClient, InvitationReceived, MessageReceived


async def echo_bot(profile: str, relay_url: str, passphrase: str) -> None:
    async with AsyncClient.open(profile, passphrase, relay_url=relay_url) as bot:
        await bot.register()                        # idempotent
        await bot.set_profile("Echo bot")
        print("echo bot ready, add it with:", bot.contact_link(), flush=True)
        async for event in bot.events():
            match event:
                case InvitationReceived(peer=peer):
                    await bot.accept(peer)
                case MessageReceived(peer=peer, text=str(text), message_id=message_id,
                                     group_id=None):
                    await bot.mark_read(peer, [message_id])  # the sender sees "read"
                    await bot.send_text(peer, text)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):    # Ctrl-C: stop quietly
        asyncio.run(echo_bot(sys.argv[1], sys.argv[2], os.environ.get("PIGEON_PASSPHRASE")
                             or getpass.getpass("passphrase: ")))
