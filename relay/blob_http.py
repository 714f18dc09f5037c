"""HTTP transfer of file blobs: token issuing for the frame pipeline, and the handlers.

Theory of operation (DESIGN.md "Relay pipeline", blob chunk: upload token -> size limits ->
write -> ack; protocol ``RequestBlobUpload``/``RequestBlobDownload`` -> ``BlobToken``):

* The frame pipeline calls :func:`reserve_upload` (reserve a new blob, return an upload
  :class:`BlobTransfer`) or :func:`grant_download` and copies the result into a
  ``BlobToken`` frame. A transfer is ``(blob_id, token, url_path, expires_at_ms)``:

  - ``url_path`` is ``/v1/blobs/<blob id hex>/<expires_at_ms>``: the token's expiry
    travels in the URL so that the relay verifies statelessly;
  - ``token`` is :func:`relay.blobs.blob_token`: 32 bytes of
    HMAC-SHA-256(relay secret, op | blob id | expires_at_ms), sent by the client in
    ``Authorization: Bearer <64 hex digits>`` and checked in constant time.

* Endpoints (relative to ``url_path``; chunk *i* of a blob is ``{url_path}/{i}``):

  ====== ================== =========== =================================================
  method path               token       answer
  ====== ================== =========== =================================================
  PUT    ``{url_path}/{i}`` upload      200 + status JSON; the body is streamed to disk
  GET    ``{url_path}/{i}`` download    200/206, streamed; ``Range: bytes=a-b`` resumes
  HEAD   ``{url_path}/{i}`` either      200 + ``Content-Length`` if stored, else 404
  GET    ``{url_path}``     either      200 + status JSON (chunks and bytes received)
  ====== ================== =========== =================================================

* Resume: a chunk is stored whole or not at all (the store writes a temp file and renames
  it), so an interrupted upload is resumed by re-sending the chunks that are missing
  (``HEAD`` tells, or the status counts). Re-sending a stored chunk with identical bytes
  is idempotent (200); different bytes are a 409. Downloads resume inside a chunk with a
  ``Range`` header.
* Limits are enforced while streaming, never by buffering: a declared ``Content-Length``
  over the chunk limit is refused at once, and the store stops reading past the chunk limit
  or the blob's reserved size (413). At most one read buffer of a transfer is in memory.
* Errors: 401 missing, malformed, forged or expired token (``WWW-Authenticate: Bearer``);
  404 no such blob or chunk (also once expired); 409 conflicting re-upload; 413 too large;
  416 unsatisfiable range; 503 storage failure. Bodies are ``{"error": "..."}``.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

import aiohttp
from aiohttp import web

from pigeon_crypto.errors import StoreError

from .blobs import (
    BLOB_ID_LEN,
    MAX_CHUNKS,
    BlobOp,
    BlobTokenError,
    EmptyChunk,
    blob_token,
    verify_blob_token,
)
from .ports import BlobConflict, BlobNotFound, BlobStatus, BlobTooLarge
from .typedefs import BLOB_STORE, CLOCK_MS, CONFIG, IDENTITY, METRICS

__all__ = [
    "BLOB_PATH_PREFIX",
    "BlobTransfer",
    "add_blob_routes",
    "blob_url_path",
    "grant_download",
    "issue_transfer",
    "reserve_upload",
]

_log = logging.getLogger("pigeon.relay.blobs")

BLOB_PATH_PREFIX: Final = "/v1/blobs"
_PIECE: Final = 64 * 1024
"""Bytes read from the request body per iteration."""
_MAX_TIME_MS: Final = 2**63 - 1
_BEARER = re.compile(r"^\s*Bearer\s+([0-9A-Fa-f]{64})\s*$", re.IGNORECASE)
_ROUTE_BLOB = r"{blob_id:[0-9a-f]{32}}/{expires_at_ms:[0-9]{1,19}}"
_EMPTY_SUFFIX = re.compile(r"\s*bytes\s*=\s*-0+\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobTransfer:
    """What a ``BlobToken`` frame carries."""

    blob_id: bytes
    token: bytes = field(repr=False)
    url_path: str
    expires_at_ms: int


def blob_url_path(blob_id: bytes, expires_at_ms: int) -> str:
    return f"{BLOB_PATH_PREFIX}/{blob_id.hex()}/{expires_at_ms}"


def issue_transfer(
    secret: bytes, *, op: BlobOp, blob_id: bytes, expires_at_ms: int
) -> BlobTransfer:
    """Mint the token and URL for one blob transfer (pure)."""
    return BlobTransfer(
        blob_id=blob_id,
        token=blob_token(secret, op=op, blob_id=blob_id, expires_at_ms=expires_at_ms),
        url_path=blob_url_path(blob_id, expires_at_ms),
        expires_at_ms=expires_at_ms,
    )


async def reserve_upload(app: web.Application, *, size: int, chunk_count: int) -> BlobTransfer:
    """Reserve a new blob of *size* bytes in *chunk_count* chunks; return its upload grant.

    Raises:
        BlobTooLarge: *size* exceeds the relay's limit (wire: ``TOO_LARGE``).
        ValueError: *chunk_count* out of range.
        StoreError: the blob folder failed.
    """
    config, now = app[CONFIG], app[CLOCK_MS]()
    if size > config.blob_max_size:
        raise BlobTooLarge(config.blob_max_size)
    blob_id = secrets.token_bytes(BLOB_ID_LEN)
    expires = now + config.blob_ttl_ms
    await app[BLOB_STORE].reserve(blob_id, size=size, chunk_count=chunk_count,
                                  expires_at_ms=expires)
    token_expires = min(expires, now + config.blob_token_ttl_ms)
    return issue_transfer(app[IDENTITY].token_secret, op=BlobOp.UPLOAD, blob_id=blob_id,
                          expires_at_ms=token_expires)


async def grant_download(app: web.Application, blob_id: bytes) -> BlobTransfer | None:
    """A download grant for an existing, unexpired blob; None if there is none (wire:
    ``NOT_FOUND``). Incomplete blobs get a grant too: their stored chunks are readable."""
    config, now = app[CONFIG], app[CLOCK_MS]()
    status = await app[BLOB_STORE].status(blob_id)
    if status is None or status.expires_at_ms <= now:
        return None
    expires = min(status.expires_at_ms, now + config.blob_token_ttl_ms)
    return issue_transfer(app[IDENTITY].token_secret, op=BlobOp.DOWNLOAD, blob_id=blob_id,
                          expires_at_ms=expires)


# --------------------------------------------------------------------------- handlers


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _unauthorized(reason: str) -> web.Response:
    return _error(
        401, f"blob token rejected: {reason}",
        **{"WWW-Authenticate": f'Bearer realm="pigeon-relay", error="invalid_token", '
                               f'error_description="{reason}"'},
    )


@dataclass(frozen=True, slots=True)
class _Target:
    blob_id: bytes
    expires_at_ms: int


def _authorize(request: web.Request, *ops: BlobOp) -> _Target | web.Response:
    """Check the URL and bearer token for one of *ops*; a Response is the refusal."""
    blob_id = bytes.fromhex(request.match_info["blob_id"])
    expires = int(request.match_info["expires_at_ms"])
    if expires > _MAX_TIME_MS:
        return _error(404, "no such blob")
    m = _BEARER.match(request.headers.get(aiohttp.hdrs.AUTHORIZATION, ""))
    if m is None:
        return _unauthorized("missing or malformed bearer token")
    token = bytes.fromhex(m.group(1))
    app = request.app
    now = app[CLOCK_MS]()
    reason = "bad token"
    for op in ops:
        try:
            verify_blob_token(app[IDENTITY].token_secret, token, op=op, blob_id=blob_id,
                              expires_at_ms=expires, now_ms=now)
        except BlobTokenError as exc:
            if exc.reason != "bad token":
                reason = exc.reason
            continue
        return _Target(blob_id, expires)
    return _unauthorized(reason)


def _index(request: web.Request) -> int | None:
    index = int(request.match_info["index"])
    return index if index < MAX_CHUNKS else None


async def _live_status(request: web.Request, blob_id: bytes) -> BlobStatus | None:
    status = await request.app[BLOB_STORE].status(blob_id)
    if status is None or status.expires_at_ms <= request.app[CLOCK_MS]():
        return None
    return status


def _status_json(status: BlobStatus) -> dict[str, object]:
    return {
        "blob_id": status.blob_id.hex(),
        "size": status.size,
        "chunk_count": status.chunk_count,
        "chunks_received": status.chunks_received,
        "bytes_received": status.bytes_received,
        "complete": status.complete,
        "expires_at_ms": status.expires_at_ms,
    }


def _counted(request: web.Request, op: str, status: int) -> None:
    request.app[METRICS].blob_request(op, status)


async def put_chunk(request: web.Request) -> web.Response:
    """``PUT {url_path}/{index}``: stream one chunk to the blob store."""
    resp = await _put_chunk(request)
    _counted(request, "upload", resp.status)
    return resp


async def _put_chunk(request: web.Request) -> web.Response:
    target = _authorize(request, BlobOp.UPLOAD)
    if isinstance(target, web.Response):
        return target
    index = _index(request)
    if index is None:
        return _error(404, "no such chunk index")
    limit = request.app[CONFIG].blob_max_chunk_size
    if request.content_length is not None and request.content_length > limit:
        return _error(413, f"chunk exceeds {limit} bytes")
    try:
        status = await _live_status(request, target.blob_id)
        if status is None:
            return _error(404, "no such blob")
        if index >= status.chunk_count:
            return _error(404, "no such chunk index")
        metrics = request.app[METRICS]

        async def pieces() -> AsyncIterator[bytes]:
            async for piece in request.content.iter_chunked(_PIECE):
                metrics.blob_bytes("in", len(piece))
                yield piece

        status = await request.app[BLOB_STORE].write_chunk(target.blob_id, index, pieces())
    except BlobTooLarge as exc:
        return _error(413, f"upload exceeds {exc.limit} bytes")
    except BlobConflict:
        return _error(409, "chunk differs from the stored one")
    except EmptyChunk:
        return _error(400, "an empty chunk: only an empty file has one")
    except (BlobNotFound, ValueError):
        return _error(404, "no such blob or chunk")
    except (aiohttp.ClientPayloadError, ConnectionResetError):
        return _error(400, "upload interrupted; re-send the chunk")
    except StoreError as exc:
        _log.error("blob upload failed: %s", type(exc.__cause__ or exc).__name__)
        return _error(503, "blob storage unavailable")
    return web.json_response({"index": index, **_status_json(status)})


async def head_chunk(request: web.Request) -> web.Response:
    """``HEAD {url_path}/{index}``: is chunk *index* stored, and how big is it."""
    target = _authorize(request, BlobOp.UPLOAD, BlobOp.DOWNLOAD)
    if isinstance(target, web.Response):
        return web.Response(status=target.status, headers=target.headers)
    index = _index(request)
    try:
        if index is None or await _live_status(request, target.blob_id) is None:
            return web.Response(status=404)
        size = await request.app[BLOB_STORE].chunk_size(target.blob_id, index)
    except StoreError:
        return web.Response(status=503)
    if size is None:
        return web.Response(status=404)
    return web.Response(status=200, headers={
        aiohttp.hdrs.CONTENT_LENGTH: str(size), aiohttp.hdrs.ACCEPT_RANGES: "bytes",
    })


async def blob_status(request: web.Request) -> web.Response:
    """``GET {url_path}``: the blob's reservation and progress."""
    target = _authorize(request, BlobOp.UPLOAD, BlobOp.DOWNLOAD)
    if isinstance(target, web.Response):
        return target
    try:
        status = await _live_status(request, target.blob_id)
    except StoreError:
        return _error(503, "blob storage unavailable")
    if status is None:
        return _error(404, "no such blob")
    return web.json_response(_status_json(status))


def _byte_range(request: web.Request, size: int) -> tuple[int, int] | web.Response | None:
    """``(start, stop)`` of a ``Range`` request, None without one, or a 416 response."""
    header = request.headers.get(aiohttp.hdrs.RANGE)
    if header is None or not header.lstrip().lower().startswith("bytes="):
        return None  # no range, or a unit other than bytes: ignored (RFC 9110 §14.2)
    unsatisfiable = _error(416, "range not satisfiable",
                           **{aiohttp.hdrs.CONTENT_RANGE: f"bytes */{size}"})
    if _EMPTY_SUFFIX.match(header):
        return unsatisfiable  # "bytes=-0": the last zero bytes
    try:
        rng = request.http_range
    except ValueError:
        return unsatisfiable
    start, stop = rng.start, rng.stop
    if start is None and stop is None:
        return None
    if start is None:  # unreachable with aiohttp's parser; kept for clarity
        return unsatisfiable
    if start < 0:  # suffix range "bytes=-N": the last N bytes
        start, stop = max(0, size + start), size
    stop = size if stop is None else min(stop, size)
    if start >= size or start >= stop:
        return unsatisfiable
    return start, stop


async def get_chunk(request: web.Request) -> web.StreamResponse:
    """``GET {url_path}/{index}``: stream chunk *index* (or a byte range of it)."""
    resp = await _get_chunk(request)
    _counted(request, "download", resp.status)
    return resp


async def _get_chunk(request: web.Request) -> web.StreamResponse:
    target = _authorize(request, BlobOp.DOWNLOAD)
    if isinstance(target, web.Response):
        return target
    index = _index(request)
    store = request.app[BLOB_STORE]
    try:
        if index is None or await _live_status(request, target.blob_id) is None:
            return _error(404, "no such blob")
        reader = await store.open_chunk(target.blob_id, index)
    except BlobNotFound:
        return _error(404, "no such chunk")
    except StoreError:
        return _error(503, "blob storage unavailable")
    try:
        size = reader.size
        rng = _byte_range(request, size)
        if isinstance(rng, web.Response):
            return rng
        start, stop = rng if rng is not None else (0, size)
        resp = web.StreamResponse(status=206 if rng is not None else 200)
        resp.content_type = "application/octet-stream"
        resp.content_length = stop - start
        resp.headers[aiohttp.hdrs.ACCEPT_RANGES] = "bytes"
        resp.headers[aiohttp.hdrs.CACHE_CONTROL] = "no-store"
        if rng is not None:
            resp.headers[aiohttp.hdrs.CONTENT_RANGE] = f"bytes {start}-{stop - 1}/{size}"
        await resp.prepare(request)
        if start:
            await reader.skip(start)  # no byte before the range is read
        pos = start
        metrics = request.app[METRICS]
        async for piece in reader:
            end = pos + len(piece)
            if end > start and pos < stop:
                out = piece[max(0, start - pos) : min(len(piece), stop - pos)]
                await resp.write(out)
                metrics.blob_bytes("out", len(out))
            pos = end
            if pos >= stop:
                break
        await resp.write_eof()
        return resp
    finally:
        await reader.aclose()


def add_blob_routes(app: web.Application) -> None:
    """Register the blob endpoints under :data:`BLOB_PATH_PREFIX`."""
    chunk = f"{BLOB_PATH_PREFIX}/{_ROUTE_BLOB}/{{index:[0-9]{{1,6}}}}"
    app.router.add_put(chunk, put_chunk, name="blob_put")
    app.router.add_get(chunk, get_chunk, name="blob_get", allow_head=False)
    app.router.add_route("HEAD", chunk, head_chunk, name="blob_head")
    app.router.add_get(f"{BLOB_PATH_PREFIX}/{_ROUTE_BLOB}", blob_status, name="blob_status",
                       allow_head=False)
