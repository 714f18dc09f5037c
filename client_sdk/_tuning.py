"""Interpreter settings for a running :class:`~client_sdk.client.AsyncClient`.

Why: the client runs its core (store, crypto) on a worker thread beside the event loop.
Every SQLite statement and every ``os.urandom`` call releases the GIL; when the loop
holds it, the worker waits for the loop to block or for the interpreter's switch
interval (5 ms by default) before it runs again. Under a stream of messages that wait,
not the work, bounded a client (``python -m bench.sdk.messages``: ~5,000 -> ~8,000
messages/s with 1 ms, the same CPU). The cyclic GC's full collections walk every
object of a heap that holds thousands of queued rows; making them ten times rarer saved
about a tenth of the client's CPU in the same benchmark.

Policy: a setting is changed only while it still has the interpreter's default (an
application that chose its own keeps it), when the first client starts; it is put back
when the last one closes, if nobody changed it meanwhile. Only clients opened with
``AsyncClient.open(..., tune_interpreter=True)`` apply it (the default leaves the
interpreter alone); the benchmark, the demo and the chat opt in.
"""

from __future__ import annotations

import gc
import sys
import threading
from typing import Final

__all__ = ["GC_THRESHOLDS", "SWITCH_INTERVAL_S", "acquire", "release"]

SWITCH_INTERVAL_S: Final = 0.001
"""Thread switch interval while a client runs (the interpreter's default is 5 ms)."""
GC_THRESHOLDS: Final = (700, 10, 100)
"""Full collections ten times rarer than the default ``(700, 10, 10)``; young
collections unchanged."""
_DEFAULT_SWITCH_S: Final = 0.005
_DEFAULT_GC: Final = (700, 10, 10)

_lock = threading.Lock()
_clients = 0
_changed_switch = False
_changed_gc = False


def acquire() -> None:
    """A client starts: apply the settings if it is the first."""
    global _clients, _changed_switch, _changed_gc
    with _lock:
        _clients += 1
        if _clients > 1:
            return
        _changed_switch = sys.getswitchinterval() == _DEFAULT_SWITCH_S
        if _changed_switch:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        _changed_gc = gc.get_threshold() == _DEFAULT_GC
        if _changed_gc:
            gc.set_threshold(*GC_THRESHOLDS)


def release() -> None:
    """A client closed: the last one puts back what was changed (and is unchanged)."""
    global _clients
    with _lock:
        if _clients == 0:
            return
        _clients -= 1
        if _clients:
            return
        if _changed_switch and sys.getswitchinterval() == SWITCH_INTERVAL_S:
            sys.setswitchinterval(_DEFAULT_SWITCH_S)
        if _changed_gc and gc.get_threshold() == GC_THRESHOLDS:
            gc.set_threshold(*_DEFAULT_GC)
