"""Fixtures: every store test runs against MemoryStore and the SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from client_sdk.store import ClientStore, Durability, MemoryStore, Profile

from .support import FAST


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClientStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    profile = Profile.create(tmp_path / "profile.db", "passphrase", params=FAST,
                             durability=Durability.OFF)
    try:
        yield profile.store
    finally:
        profile.close()


@pytest.fixture
def profile(tmp_path: Path) -> Iterator[Profile]:
    p = Profile.create(tmp_path / "profile.db", "passphrase", params=FAST,
                       durability=Durability.OFF)
    try:
        yield p
    finally:
        p.close()
