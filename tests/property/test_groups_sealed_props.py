"""Sealed group changes under any arrival (docs/protocol.md §9.14, "Sealed changes"):
the two halves in any order, in any batches, duplicated, either one lost, with tampered
copies of the blob mixed in. A member takes the state exactly when the genuine blob and
its key both arrived, and holds nothing but what still waits for its other half."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_sdk.groups import GroupChanged
from protocol.frames import Delivery

from ..unit.client_sdk.test_core import FakeRelay
from ..unit.client_sdk.test_groups_sealed import LONG, _create, _group, _head, _pending, _redeliver

BLOB, KEY = "blob", "key"


@st.composite
def arrivals(draw: st.DrawFn) -> list[list[tuple[str, int]]]:
    """Batches of arrivals: ``(BLOB | KEY, 0)`` for a genuine half (several times for
    redeliveries), ``("forged", bit)`` for a copy of the blob with one bit flipped."""
    items: list[tuple[str, int]] = []
    for half in (BLOB, KEY):
        items += [(half, 0)] * draw(st.integers(0, 2))  # 0: lost
    items += [("forged", b) for b in draw(st.lists(st.integers(0, 2047), max_size=2,
                                                   unique=True))]
    order = draw(st.permutations(items))
    cuts = sorted(draw(st.lists(st.integers(0, len(order)), max_size=3)))
    batches, start = [], 0
    for cut in [*cuts, len(order)]:
        batches.append(list(order[start:cut]))
        start = cut
    return [b for b in batches if b]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrivals())
def test_any_arrival_of_the_halves(batches: list[list[tuple[str, int]]]) -> None:
    relay = FakeRelay()
    admin, *members = _group(relay)
    gid = _create(admin, members, LONG)
    admin.flush()
    m = members[0]
    blob, key = _pending(relay, m)
    assert blob.blob[0] == 0x82 and len(blob.blob) > 256
    forged: dict[int, Delivery] = {}

    def delivery(kind: str, bit: int) -> Delivery:
        if kind == BLOB:
            return blob
        if kind == KEY:
            return key
        if bit not in forged:
            data = bytearray(blob.blob)
            data[1 + bit // 8 % (len(data) - 1)] ^= 1 << (bit % 8)
            forged[bit] = _redeliver(relay, blob, bytes(data))
        return forged[bit]

    for batch in batches:
        m.sync([delivery(kind, bit) for kind, bit in batch])
    got = {kind for b in batches for kind, _ in b}
    changes = m.take(GroupChanged)
    if {BLOB, KEY} <= got:
        assert _head(m, gid) == _head(admin, gid) and len(changes) == 1
    else:
        assert _head(m, gid) is None and changes == []
    waiting = 1 if len(got & {BLOB, KEY}) == 1 else 0
    assert m.store.sealed_control_count() == waiting + len(forged)
