"""Logging: JSON lines and text, and nothing secret-looking ever reaches the output."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from relay.config import LogFormat
from relay.logs import redact_text, setup_logging
from relay.tls import format_fingerprint

PAYLOAD = b"\x93\x01\x02" + b"frame-payload-SECRET-" + os.urandom(64)
TOKEN = os.urandom(32)
CAPABILITY = os.urandom(32)


def secrets_in_every_form() -> list[str]:
    """Every way the test's secrets could appear in a log line."""
    forms = []
    for raw in (PAYLOAD, TOKEN, CAPABILITY):
        forms += [raw.hex(), repr(raw), str(raw),
                  base64.urlsafe_b64encode(raw).decode().rstrip("=")]
    forms.append("frame-payload-SECRET")
    return forms


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)


@pytest.fixture(params=[LogFormat.TEXT, LogFormat.JSON])
def captured(request: pytest.FixtureRequest,
             restore_logging: None) -> tuple[LogFormat, io.StringIO]:
    stream = io.StringIO()
    setup_logging("DEBUG", request.param, stream=stream)
    return request.param, stream


def log_everything() -> None:
    log = logging.getLogger("pigeon.relay.test")
    log.info("frame received: %r", PAYLOAD)
    log.info("frame received: %s", PAYLOAD)
    log.info(PAYLOAD)
    log.info("mapping args %(frame)s", {"frame": PAYLOAD})
    log.info("send refused", extra={"payload": PAYLOAD, "capability": CAPABILITY.hex(),
                                    "token": TOKEN.hex(), "data": PAYLOAD})
    log.warning("bad token %s from client", TOKEN.hex())
    log.warning("bad token %s", base64.urlsafe_b64encode(TOKEN).decode().rstrip("="))
    log.warning("blob %s", base64.urlsafe_b64encode(PAYLOAD).decode())
    try:
        raise ValueError(f"decode failed on {PAYLOAD!r} with key {TOKEN.hex()}")
    except ValueError:
        log.exception("handler crashed")
    # aiohttp's access logger, as the relay configures it: blob ids sit in the path.
    logging.getLogger("aiohttp.access").info(
        '127.0.0.1 "PUT /v1/blobs/%s/1790000000000/0 HTTP/1.1" 200', CAPABILITY[:16].hex(),
        extra={"first_request_line": f"PUT /v1/blobs/{CAPABILITY[:16].hex()}/1/0"})


def test_no_secret_bytes_reach_the_log(captured: tuple[LogFormat, io.StringIO]) -> None:
    fmt, stream = captured
    log_everything()
    if fmt is LogFormat.JSON:
        assert all(json.loads(line) for line in stream.getvalue().splitlines())
    out = stream.getvalue()
    for form in secrets_in_every_form():
        assert form not in out, form
    assert CAPABILITY[:16].hex() not in out
    assert "<" in out and "bytes>" in out  # bytes are shown as their length only
    assert "[redacted]" in out
    assert "handler crashed" in out and "ValueError" in out  # the traceback is kept


def test_json_lines(restore_logging: None) -> None:
    stream = io.StringIO()
    setup_logging("INFO", LogFormat.JSON, stream=stream)
    logging.getLogger("pigeon.relay.x").warning("queue full", extra={"queue": "store", "n": 3})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("pigeon.relay.x").exception("failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["level"] == "WARNING" and first["logger"] == "pigeon.relay.x"
    assert first["msg"] == "queue full" and first["queue"] == "store" and first["n"] == 3
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert "RuntimeError: boom" in lines[1]["exc"]


def test_level_filters(restore_logging: None) -> None:
    stream = io.StringIO()
    setup_logging("WARNING", LogFormat.TEXT, stream=stream)
    logging.getLogger("pigeon.relay").info("hidden")
    logging.getLogger("pigeon.relay").warning("shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()


def test_redaction_keeps_what_operators_need() -> None:
    fp = format_fingerprint(bytes(range(32)))
    assert redact_text(f"pin {fp}") == f"pin {fp}"  # logged on purpose, colon form
    path = "/tmp/pytest-of-root/pytest-3/test_zero_configuration_start0/pigeon-relay.db"
    assert redact_text(path) == path
    assert redact_text("listening on http://127.0.0.1:8765") == (
        "listening on http://127.0.0.1:8765")
    assert redact_text("id " + "ab" * 16) == "id [redacted]"


def test_a_blob_url_loses_its_id_and_token_expiry() -> None:
    """The expiry in a blob URL is one per grant: left in an access log, it would link
    an upload to its downloads as well as the id would."""
    from relay.blob_http import BLOB_PATH_PREFIX, blob_url_path

    path = blob_url_path(b"\xab" * 16, 1796413252320)  # the relay's own URLs, not a copy
    line = f'127.0.0.1 "GET {path}/12 HTTP/1.1" 206 5'
    assert redact_text(line) == (
        f'127.0.0.1 "GET {BLOB_PATH_PREFIX}/[redacted]/12 HTTP/1.1" 206 5')
