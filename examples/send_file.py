"""Send a file to a contact, or receive one, with a progress bar (docs/sdk.md §15.13).

Usage::

    python -m examples.send_file --profile alice.pigeon --relay URL send PEER FILE [--caption TEXT]
    python -m examples.send_file --profile bob.pigeon --relay URL receive [--from PEER]
        [--dir DIR] [--count N] [--timeout SECONDS]
    python -m examples.send_file --profile alice.pigeon resume

``PEER`` is a contact's account id (32 hex digits); the profiles must already be
registered and be contacts (e.g. with ``pigeon-chat`` or the SDK). The passphrase comes
from ``$PIGEON_PASSPHRASE``, else it is asked for. ``receive`` saves the next ``N`` files
(sent before or while it runs) into ``DIR`` under their sender's base name, cleaned, never
overwriting. ``resume`` finishes the transfers an interrupted run left (uploads also
continue by themselves whenever the profile is opened). Exit status: 0 done, 1 failed,
130 interrupted (the transfer resumes on the next run).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from client_sdk import (
    AsyncClient,
    MessageKind,
    MessageReceived,
    TransferState,
)
from pigeon_crypto.errors import PigeonError

__all__ = ["main", "safe_name"]

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_name(name: str, folder: Path) -> Path:
    """A path in *folder* for a sender-chosen *name*: no directories, no hidden files,
    no control characters, and never an existing file (``name (1).ext`` ...)."""
    base = _UNSAFE.sub("_", Path(name.replace("\\", "/")).name).strip(" .") or "file"
    stem, dot, ext = base.partition(".")
    candidate = folder / base
    n = 1
    while candidate.exists() or candidate.with_name(candidate.name + ".part").exists():
        candidate = folder / f"{stem} ({n}){dot}{ext}"
        n += 1
    return candidate


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(),
                    console=None, transient=False)


def _updater(progress: Progress, description: str, total: int) -> Callable[[int, int], None]:
    task = progress.add_task(description, total=total)
    return lambda done, size: progress.update(task, completed=done, total=size)


async def _send(client: AsyncClient, peer: bytes, path: Path, caption: str | None) -> None:
    size = (await asyncio.to_thread(path.stat)).st_size
    with _bar() as progress:
        ref = await client.send_file(peer, path, caption=caption,
                                     progress=_updater(progress, f"send {path.name}", size))
    print(f"sent {path.name} ({size} bytes), message {ref.message_id.hex()}", flush=True)


async def _receive(client: AsyncClient, peer: bytes | None, folder: Path, count: int,
                   timeout_s: float) -> None:
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    got = 0
    async with asyncio.timeout(timeout_s):
        async for event in client.events():
            if not (isinstance(event, MessageReceived) and event.kind is MessageKind.FILE
                    and event.file is not None and peer in (None, event.peer)):
                continue
            dest = await asyncio.to_thread(safe_name, event.file.name, folder)
            with _bar() as progress:
                update = _updater(progress, f"receive {dest.name}", event.file.size)
                if event.group_id is not None:  # posted in a group (peer: its author)
                    path = await client.download_group_file(
                        event.group_id, event.message_id, dest, progress=update)
                else:
                    path = await client.download_file(event.peer, event.message_id, dest,
                                                      progress=update)
            print(f"received {path.name} ({event.file.size} bytes) from "
                  f"{event.peer.hex()}", flush=True)
            got += 1
            if got >= count:
                return


async def _resume(client: AsyncClient) -> None:
    await client.wait_connected(30)
    waiting = [t for t in await client.transfers()
               if t.state in (TransferState.RUNNING, TransferState.PAUSED)]
    if not waiting:
        print("nothing to resume", flush=True)
    for t in waiting:
        await client.resume_transfer(t.transfer_id)
        done = await client.wait_transfer(t.transfer_id)
        print(f"finished {done.direction.name.lower()} of {done.name}", flush=True)


async def _run(args: argparse.Namespace, passphrase: str) -> None:
    async with AsyncClient.open(args.profile, passphrase, relay_url=args.relay,
                                create=False) as client:
        await client.wait_connected(30)
        if args.command == "send":
            await _send(client, bytes.fromhex(args.peer), Path(args.file), args.caption)
        elif args.command == "receive":
            peer = bytes.fromhex(args.sender) if args.sender else None
            await _receive(client, peer, Path(args.dir), args.count, args.timeout)
        else:
            await _resume(client)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m examples.send_file",
                                     description="Send or receive a file over Pigeon.")
    parser.add_argument("--profile", required=True, help="the profile file")
    parser.add_argument("--relay", metavar="URL",
                        help="relay URL (default: the one the profile registered with)")
    sub = parser.add_subparsers(dest="command", required=True)
    send = sub.add_parser("send", help="send FILE to the contact PEER")
    send.add_argument("peer", help="the contact's account id (32 hex digits)")
    send.add_argument("file", help="the file to send")
    send.add_argument("--caption")
    receive = sub.add_parser("receive", help="save the next files received")
    receive.add_argument("--from", dest="sender", metavar="PEER",
                         help="only files from this contact")
    receive.add_argument("--dir", default=".", help="where to save (default: here)")
    receive.add_argument("--count", type=int, default=1, help="files to wait for")
    receive.add_argument("--timeout", type=float, default=3600.0,
                         help="give up after this many seconds")
    sub.add_parser("resume", help="finish the transfers an interrupted run left")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    passphrase = os.environ.get("PIGEON_PASSPHRASE") or getpass.getpass("passphrase: ")
    try:
        asyncio.run(_run(args, passphrase))
    except (PigeonError, OSError, TimeoutError) as exc:
        print(f"failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: run again (or `resume`) to continue", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
