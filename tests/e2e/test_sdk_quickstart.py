"""The SDK quickstart of docs/sdk.md (§15.2) runs as written: two instances
of it, one relay; each prints the other's "hello!"."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from client_sdk.testing import RelayProcess, pigeon_relay, relay_pipeline_available  # noqa: F401

DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"


def _quickstart() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### 15.2 Quickstart"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


async def test_quickstart(pigeon_relay: RelayProcess, tmp_path: Path) -> None:  # noqa: F811
    if not await relay_pipeline_available(pigeon_relay.url):
        pytest.skip("relay pipeline not available (the relay closed with 4501)")
    printed: dict[str, list[str]] = {"bob": [], "alice": []}
    changed = asyncio.Event()

    def record(who: str, *args: object) -> None:
        printed[who].append(" ".join(map(str, args)))
        changed.set()

    def namespace(who: str) -> dict[str, Any]:
        ns: dict[str, Any] = {"print": lambda *a: record(who, *a)}
        exec(compile(_quickstart(), str(DOC), "exec"), ns)
        return ns

    async def until(done: Any) -> None:
        while not done():
            changed.clear()
            await changed.wait()

    bob = asyncio.ensure_future(namespace("bob")["chat"](str(tmp_path / "bob.pigeon"),
                                                         pigeon_relay.url))
    alice = None
    try:
        async with asyncio.timeout(30):
            await until(lambda: printed["bob"])
            link = printed["bob"][0].removeprefix("add me: ")
            alice = asyncio.ensure_future(namespace("alice")["chat"](
                str(tmp_path / "alice.pigeon"), pigeon_relay.url, link))
            await until(lambda: "hello!" in printed["bob"] and "hello!" in printed["alice"])
    finally:
        for task in (bob, alice):
            if task is not None:
                task.cancel()
        await asyncio.gather(bob, *(t for t in [alice] if t), return_exceptions=True)
