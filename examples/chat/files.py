"""The SDK's file transfer API, as pigeon-chat uses it.

``AsyncClient.send_file(peer, path, *, caption=None, media_type=None, progress=None)``
→ ``MessageRef`` and ``AsyncClient.download_file(peer, message_id, dest_path, *,
progress=None)`` → ``Path``, with ``progress(bytes_done, total)``. :func:`api` returns
the client when it has both, else None: an SDK without them makes ``/send`` and
``/get`` say so instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol, cast

from client_sdk import AsyncClient, MessageRef

__all__ = ["NOT_AVAILABLE", "FileApi", "api"]

NOT_AVAILABLE: Final = ("file transfer is not available yet: this version of the SDK has "
                        "no send_file/download_file")


class FileApi(Protocol):
    async def send_file(self, peer: bytes, path: Path, *, caption: str | None = None,
                        media_type: str | None = None,
                        progress: Callable[[int, int], None] | None = None) -> MessageRef: ...

    async def download_file(self, peer: bytes, message_id: bytes, dest_path: Path, *,
                            progress: Callable[[int, int], None] | None = None) -> Path: ...


def api(client: AsyncClient) -> FileApi | None:
    if callable(getattr(client, "send_file", None)) and callable(
            getattr(client, "download_file", None)):
        return cast(FileApi, client)
    return None
