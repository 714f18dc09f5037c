"""The avatar arguments of AsyncClient's calls: keywords only, and a manifest is checked
as one before anything is stored or sent. No relay: nothing here reaches the network."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client_sdk import AsyncClient, UnknownGroup
from client_sdk.store import Durability
from tests.helpers import avatar_manifest

from .support import FAST

_MANIFEST = avatar_manifest()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncClient]:
    client = AsyncClient.open(tmp_path / "alice.pigeon", "pass", params=FAST,
                              durability=Durability.OFF)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def test_set_group_avatar_takes_the_manifest_by_keyword(client: AsyncClient) -> None:
    with pytest.raises(TypeError):
        await client.set_group_avatar(bytes(16), _MANIFEST)  # type: ignore[misc]
    with pytest.raises(UnknownGroup):  # by keyword it gets as far as the group's checks
        await client.set_group_avatar(bytes(16), avatar_manifest=_MANIFEST)


async def test_set_profile_refuses_what_is_not_a_manifest(client: AsyncClient) -> None:
    await client.set_profile("Alice", avatar_manifest=_MANIFEST)
    with pytest.raises(ValueError, match="not an encoded file manifest"):
        await client.set_profile("Mallory", avatar_manifest=b"an encoded manifest")
    assert client.display_name == "Alice"  # nothing stored
    stored = await client._run(lambda c: c.store.get_setting("avatar_manifest"))
    assert stored == _MANIFEST


async def test_set_profile_keeps_a_manifest(client: AsyncClient) -> None:
    await client.set_profile("Alice", avatar_manifest=_MANIFEST)
    assert client.display_name == "Alice"
    stored = await client._run(lambda c: c.store.get_setting("avatar_manifest"))
    assert stored == _MANIFEST
    await client.set_profile("Alice")  # neither: no avatar
    assert await client._run(lambda c: c.store.get_setting("avatar_manifest")) is None
    with pytest.raises(ValueError, match="not both"):
        await client.set_profile("Alice", avatar="avatar.png", avatar_manifest=_MANIFEST)
