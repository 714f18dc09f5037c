"""Blob token stages: ``RequestBlobUpload`` and ``RequestBlobDownload`` -> ``BlobToken``.

Theory of operation (protocol §9.4 "Blobs and notices"; :mod:`relay.blob_http`): file
chunks never travel in frames. An authenticated account reserves a blob
(``RequestBlobUpload(size, chunk_count)``) and gets a bearer token for ``PUT``; anyone who
learned a blob id from a file manifest (inside an end-to-end message) may ask for a
download token, **without an account**: the id is 16 random bytes (unguessable) and the
chunks are AEAD ciphertext, so an anonymous downloader learns sizes only, and requiring
an account would link the downloader's account to the file's recipients. The relay
refuses files above ``config.blob_max_size`` with ``TOO_LARGE``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from protocol import BlobToken, ErrorCode, RequestBlobDownload, RequestBlobUpload

from .blob_http import BlobTransfer, grant_download, reserve_upload
from .blobs import check_layout
from .pipeline import FrameCtx, Refuse
from .ports import BlobTooLarge

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["CHUNK_COST", "request_download", "request_upload", "take_request_credit"]


def _token(request_id: int, transfer: BlobTransfer) -> bytes:
    return BlobToken(request_id=request_id, blob_id=transfer.blob_id, token=transfer.token,
                     url_path=transfer.url_path, expires_at_ms=transfer.expires_at_ms).encode()


CHUNK_COST: Final = 4096
"""What each chunk counts against the account's blob quota on top of its bytes: the
least a file costs on disk (one block), so many tiny chunks are not free."""


def _take_quota(conn: Connection, frame: RequestBlobUpload) -> float:
    """Charge the account's daily blob quota (``--blob-quota``) or refuse; a request the
    store would refuse anyway is refused first, charging nothing. Returns the charge
    (given back if the reservation then fails)."""
    node = conn.node
    config = node.config
    with _refused_layout():
        check_layout(frame.size, frame.chunk_count, config.blob_max_size)
    assert conn.account_id is not None  # require_auth ran
    cost = min(frame.size + frame.chunk_count * CHUNK_COST, config.blob_quota_per_day)
    wait = node.blob_credits.try_take(conn.account_id, node.monotonic(), cost)
    if wait:
        node.metrics.credit_refused("blob")
        raise Refuse(ErrorCode.RATE_LIMITED, retry_after_ms=max(1, int(wait * 1000) + 1),
                     message="blob quota")
    return cost


async def request_upload(ctx: FrameCtx[RequestBlobUpload]) -> None:
    conn, frame = ctx.conn, ctx.frame
    node = conn.node
    cost = _take_quota(conn, frame)
    try:
        transfer = await _reserve(conn, frame)
    except BaseException:  # refused or failed: the quota is not spent on it
        assert conn.account_id is not None
        node.blob_credits.get(conn.account_id, node.monotonic()).give_back(cost)
        raise
    await conn.send(_token(ctx.request_id, transfer))


async def _reserve(conn: Connection, frame: RequestBlobUpload) -> BlobTransfer:
    with _refused_layout():
        return await reserve_upload(conn.node.app, size=frame.size,
                                    chunk_count=frame.chunk_count)
    raise AssertionError("unreachable")  # pragma: no cover - for mypy


@contextlib.contextmanager
def _refused_layout() -> Iterator[None]:
    """:func:`relay.blobs.check_layout`'s errors as the wire's refusals."""
    try:
        yield
    except BlobTooLarge:
        raise Refuse(ErrorCode.TOO_LARGE, message="file above this relay's limit") from None
    except ValueError:
        raise Refuse(ErrorCode.INVALID_FIELD, message="chunk_count") from None


def take_request_credit(ctx: FrameCtx[RequestBlobUpload] | FrameCtx[RequestBlobDownload]
                        ) -> None:
    """Stage: one credit of the connection's bucket (the one sends draw from): a blob
    grant costs a store look-up, and downloads need no account, so they are bounded
    per connection like sends."""
    conn = ctx.conn
    node = conn.node
    wait = conn.credits.try_take(node.monotonic())
    if wait:
        node.metrics.credit_refused("connection")
        raise Refuse(ErrorCode.RATE_LIMITED, retry_after_ms=max(1, int(wait * 1000) + 1),
                     message="connection credits")


async def request_download(ctx: FrameCtx[RequestBlobDownload]) -> None:
    conn, frame = ctx.conn, ctx.frame
    transfer = await grant_download(conn.node.app, frame.blob_id)
    if transfer is None:
        raise Refuse(ErrorCode.NOT_FOUND)
    await conn.send(_token(ctx.request_id, transfer))
