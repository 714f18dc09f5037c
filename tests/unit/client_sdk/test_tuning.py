"""The interpreter settings a running client applies (client_sdk._tuning)."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_sdk import _tuning


@pytest.fixture
def defaults() -> Iterator[None]:
    switch, thresholds = sys.getswitchinterval(), gc.get_threshold()
    sys.setswitchinterval(0.005)
    gc.set_threshold(700, 10, 10)
    try:
        yield
    finally:
        sys.setswitchinterval(switch)
        gc.set_threshold(*thresholds)


def test_first_client_applies_last_client_restores(defaults: None) -> None:
    _tuning.acquire()
    _tuning.acquire()
    assert sys.getswitchinterval() == _tuning.SWITCH_INTERVAL_S
    assert gc.get_threshold() == _tuning.GC_THRESHOLDS
    _tuning.release()
    assert sys.getswitchinterval() == _tuning.SWITCH_INTERVAL_S  # one client still runs
    _tuning.release()
    assert sys.getswitchinterval() == 0.005
    assert gc.get_threshold() == (700, 10, 10)
    _tuning.release()  # more releases than clients: nothing happens
    assert gc.get_threshold() == (700, 10, 10)


def test_settings_the_application_chose_are_kept(defaults: None) -> None:
    sys.setswitchinterval(0.002)
    gc.set_threshold(5000, 20, 20)
    _tuning.acquire()
    assert sys.getswitchinterval() == 0.002
    assert gc.get_threshold() == (5000, 20, 20)
    _tuning.release()
    assert sys.getswitchinterval() == 0.002
    assert gc.get_threshold() == (5000, 20, 20)


def test_a_change_made_while_clients_run_is_not_undone(defaults: None) -> None:
    _tuning.acquire()
    gc.set_threshold(1000, 10, 10)
    _tuning.release()
    assert gc.get_threshold() == (1000, 10, 10)
    assert sys.getswitchinterval() == 0.005


async def test_a_client_leaves_the_interpreter_alone_unless_asked(
        defaults: None, tmp_path: Path) -> None:
    from client_sdk import AsyncClient
    from client_sdk.testing import FAST_PARAMS

    async with AsyncClient.open(tmp_path / "a.pigeon", "pass", params=FAST_PARAMS):
        assert sys.getswitchinterval() == 0.005
        assert gc.get_threshold() == (700, 10, 10)
    async with AsyncClient.open(tmp_path / "b.pigeon", "pass", params=FAST_PARAMS,
                                tune_interpreter=True):
        assert sys.getswitchinterval() == _tuning.SWITCH_INTERVAL_S
        assert gc.get_threshold() == _tuning.GC_THRESHOLDS
    assert sys.getswitchinterval() == 0.005
    assert gc.get_threshold() == (700, 10, 10)
