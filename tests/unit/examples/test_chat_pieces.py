"""pigeon-chat's pure pieces: command parsing, what reaches the terminal, progress bars."""

from __future__ import annotations

import asyncio
import re

import pytest

from examples.chat.syntax import (
    COMMANDS,
    UsageError,
    format_duration,
    parse_duration,
    split_command,
)
from examples.chat.transfers import Transfers
from examples.chat.view import human_size, plain, safe_file_name, short_id


def test_every_command_has_a_summary_and_a_handler_name() -> None:
    names = [spec.name for spec in COMMANDS]
    assert len(names) == len(set(names))
    for spec in COMMANDS:
        assert spec.summary and spec.usage.startswith(f"/{spec.name}")


@pytest.mark.parametrize(("line", "name", "args"), [
    ("/help", "help", []),
    ("/HELP verify", "help", ["verify"]),
    ("/name  Alice Liddell ", "name", ["Alice Liddell"]),
    ("/get #a1b2c3 'my folder/x.bin'", "get", ["#a1b2c3", "my folder/x.bin"]),
    ("/search two words", "search", ["two words"]),
    ("/verify 12345 67890", "verify", ["12345 67890"]),
])
def test_split_command(line: str, name: str, args: list[str]) -> None:
    spec, got = split_command(line)
    assert (spec.name, got) == (name, args)


@pytest.mark.parametrize(("line", "message"), [
    ("/nope", "unknown command /nope"),
    ("/open", "usage: /open <contact>"),
    ("/get #a1", "usage: /get <message> <dest>"),
    ("/accept a b", "usage: /accept [contact]"),
    ("/get 'unclosed x", "No closing quotation"),
])
def test_split_command_refuses(line: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        split_command(line)


def test_plain_neutralizes_terminal_escapes() -> None:
    hostile = "hi\x1b[2J\x1b]0;title\x07\u202eevil"
    shown = plain(hostile)
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert shown.startswith("hi\\u001b[2J")
    assert plain("a" * 10, limit=4) == "aaaa…"
    assert plain("two\nlines") == "two\n    lines"


def test_safe_file_name() -> None:
    assert safe_file_name("../../etc/passwd") == "passwd"
    assert safe_file_name("C:\\Users\\x\\photo.jpg") == "photo.jpg"
    assert safe_file_name(".bashrc") == "bashrc"
    assert safe_file_name("a\x1bb\nc.txt") == "abc.txt"
    assert safe_file_name("..") == "file"


def test_sizes_and_ids() -> None:
    assert human_size(999) == "999 B"
    assert human_size(3 * 1024 * 1024 + 123) == "3.1 MB"
    assert human_size(5 * 10**12) == "5000.0 GB"
    assert short_id(bytes.fromhex("a1b2c3d4") + bytes(12)) == "#a1b2c3"


async def test_progress_bar_rendering() -> None:
    redraws: list[None] = []
    transfers = Transfers(lambda: redraws.append(None))
    assert not transfers and transfers.render(80) == ""
    running = transfers.start("→ Bob photo.jpg", 2_000_000)
    transfers.callback(running)(1_000_000, 2_000_000)  # from the SDK, any thread
    await asyncio.sleep(0.01)
    line = transfers.render(100)
    assert "→ Bob photo.jpg" in line and " 50%" in line and "1.0/2.0 MB" in line
    assert "\n" not in line
    transfers.finish(running)
    assert not transfers and transfers.render(80) == "" and len(redraws) >= 2


@pytest.mark.parametrize(("text", "ms"), [
    ("30s", 30_000), ("5m", 300_000), ("1H", 3_600_000), ("7d", 604_800_000),
    ("2w", 1_209_600_000), ("365d", 31_536_000_000), ("off", None), (" OFF ", None),
])
def test_parse_duration(text: str, ms: int | None) -> None:
    assert parse_duration(text) == ms
    assert parse_duration(format_duration(ms)) == ms


@pytest.mark.parametrize("text", ["", "0s", "10", "h", "1y", "-1h", "1.5h", "366d", "53w"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


def test_format_duration_picks_the_largest_whole_unit() -> None:
    assert [format_duration(ms) for ms in (1_209_600_000, 86_400_000 * 3, 90_000, 1_500)] == [
        "2w", "3d", "90s", "1500ms"]
