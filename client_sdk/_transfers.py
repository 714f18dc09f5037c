"""The HTTP side of file transfers: chunks to and from the relay's blob store.

Theory of operation (docs/sdk.md §15.13; docs/relay.md "Blob HTTP API")
    A transfer moves the chunks of one blob that its bitmap does not mark done.
    ``parallel`` workers share a queue of chunk indexes; each moves one chunk at a time
    (upload: ``os.pread`` of the chunk's file bytes and :meth:`ChunkCipher.seal` in a
    worker thread, then ``PUT {url_path}/{i}``; download: ``GET {url_path}/{i}`` read
    whole (bounded by the chunk's expected length), :meth:`ChunkCipher.open` and
    ``os.pwrite`` at the chunk's offset in a worker thread). Memory is therefore about
    ``parallel`` x 2 chunks for any file size.

    Transient failures (connection errors, timeouts, 5xx, 429) are retried per chunk
    with exponential backoff and jitter (tenacity); any other answer is permanent
    (:class:`~client_sdk.files.TransferFailed`), except an expired download token,
    which the caller renews (:class:`TokenExpired`). Pausing stops workers from taking
    new chunks; those in flight finish. Done chunks are reported to ``on_chunk`` (the
    caller batches them into the store).
"""

from __future__ import annotations

import asyncio
import functools
import os
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import aiohttp
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from pigeon_crypto.files import ChunkCipher

from ._connection import WS_PATH, websocket_url

__all__ = [
    "BlobGrant", "TokenExpired", "TransferError", "http_base_url", "is_transient", "run_chunks",
]

REQUEST_TIMEOUT_S: Final = 60.0
"""One chunk request (connect to last byte); a 1 MiB chunk takes milliseconds locally."""
_RETRY_INITIAL_S: Final = 0.25
_RETRY_MAX_S: Final = 10.0

T = TypeVar("T")


async def to_end(fn: Callable[..., T], *args: Any,
                 undo: Callable[[T], object] | None = None) -> T:
    """``asyncio.to_thread(fn, *args)``, except that a cancelled caller returns only once
    *fn* has ended (and, if it returned, after ``undo(result)``): the callers close the
    file descriptor *fn* works on right after, and a call still running on it then could
    reach another file that took the same number."""
    future = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait({future})
        if undo is not None and not future.cancelled() and future.exception() is None:
            undo(future.result())
        raise


def http_base_url(relay_url: str) -> str:
    """``scheme://host:port`` of the relay's HTTP API, from its base or WebSocket URL."""
    ws = urllib.parse.urlsplit(websocket_url(relay_url))
    scheme = "https" if ws.scheme == "wss" else "http"
    path = ws.path[: -len(WS_PATH)] if ws.path.endswith(WS_PATH) else ws.path
    return urllib.parse.urlunsplit((scheme, ws.netloc, path.rstrip("/"), "", ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobGrant:
    """A blob token from the relay, ready for HTTP (``url`` = base + ``url_path``)."""

    url: str
    token: bytes = field(repr=False)
    expires_at_ms: int

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token.hex()}"}


class TransferError(Exception):
    """A permanent failure of one chunk (turned into ``TransferFailed`` by the caller)."""


class TokenExpired(Exception):
    """The relay refused the token as expired: renew it and continue."""


class _Transient(Exception):
    """A retryable HTTP answer (5xx, 429)."""


def is_transient(exc: BaseException) -> bool:
    """Whether *exc* is worth retrying (connection errors, timeouts, 5xx, 429)."""
    return isinstance(exc, (_Transient, aiohttp.ClientConnectionError,
                            aiohttp.ClientPayloadError, TimeoutError))


async def _check(resp: aiohttp.ClientResponse, what: str) -> None:
    status = resp.status
    if status < 300:
        return
    if status >= 500 or status == 429:
        raise _Transient(f"{what}: HTTP {status}")
    text = (await resp.text(errors="replace"))[:200]
    if status == 401 and "expired" in text:
        raise TokenExpired()
    raise TransferError(f"{what}: HTTP {status} {text}")


def _read_and_seal(fd: int, cipher: ChunkCipher, index: int) -> bytes:
    layout = cipher.layout
    want = layout.data_length(index)
    data = os.pread(fd, want, index * layout.chunk_size) if want else b""
    if len(data) != want:
        raise TransferError(f"the source file is shorter than when the upload began "
                            f"(chunk {index})")
    return cipher.seal(index, data)


def _open_and_write(fd: int, cipher: ChunkCipher, index: int, body: bytes) -> int:
    data = cipher.open(index, body)
    if data:
        os.pwrite(fd, data, index * cipher.layout.chunk_size)
    return len(data)


async def _put(http: aiohttp.ClientSession, grant: BlobGrant, index: int,
               body: bytes) -> None:
    async with http.put(f"{grant.url}/{index}", data=body, headers=grant.headers) as resp:
        await _check(resp, f"PUT chunk {index}")
        await resp.read()


async def _get(http: aiohttp.ClientSession, grant: BlobGrant, index: int,
               expected: int) -> bytes:
    async with http.get(f"{grant.url}/{index}", headers=grant.headers) as resp:
        await _check(resp, f"GET chunk {index}")
        if resp.content_length is not None and resp.content_length != expected:
            raise TransferError(f"chunk {index} has {resp.content_length} bytes, "
                                f"expected {expected}")
        body = bytearray()
        async for piece in resp.content.iter_chunked(256 * 1024):
            body += piece
            if len(body) > expected:
                raise TransferError(f"chunk {index} is longer than {expected} bytes")
        return bytes(body)


async def run_chunks(
    *, upload: bool, http: aiohttp.ClientSession, grant: Callable[[], BlobGrant],
    cipher: ChunkCipher, fd: int, indexes: Sequence[int], parallel: int, retries: int,
    paused: Callable[[], bool], on_chunk: Callable[[int, int], Awaitable[None]],
) -> None:
    """Move chunks *indexes* until all are done or *paused()* turns true.

    Args:
        upload: PUT (read and seal from *fd*) or GET (open and write to *fd*).
        grant: the current blob grant (the caller may renew it between calls).
        on_chunk: awaited with ``(index, file_bytes)`` after each chunk is done.

    Raises:
        TransferError: a permanent failure (the first one; other workers stop).
        TokenExpired: the relay refused the token as expired.
        FileIntegrityError: a downloaded chunk does not authenticate or decode.
    """
    queue = list(reversed(indexes))
    layout = cipher.layout
    async def one(index: int) -> None:
        async for attempt in AsyncRetrying(
                stop=stop_after_attempt(retries),
                wait=wait_random_exponential(multiplier=_RETRY_INITIAL_S, max=_RETRY_MAX_S),
                retry=retry_if_exception(is_transient), reraise=True):
            with attempt:
                if upload:
                    body = await to_end(_read_and_seal, fd, cipher, index)
                    await _put(http, grant(), index, body)
                    del body
                    size = layout.data_length(index)
                else:
                    body = await _get(http, grant(), index, layout.ciphertext_length(index))
                    size = await to_end(_open_and_write, fd, cipher, index, body)
                    del body
        await on_chunk(index, size)

    async def worker() -> None:
        while queue and not paused():
            await one(queue.pop())

    workers = [asyncio.ensure_future(worker()) for _ in range(max(1, parallel))]
    try:
        done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc
    finally:
        for task in workers:
            task.cancel()
        # Each worker ends only once its chunk read or write has (to_end): the caller
        # closes fd next.
        await asyncio.gather(*workers, return_exceptions=True)

