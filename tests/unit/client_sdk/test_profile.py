"""Profiles: create, open, passphrases, locking, corruption, migrations, sealing at rest."""

from __future__ import annotations

import gzip
import shutil
import sqlite3
from pathlib import Path

import pytest

from client_sdk.errors import (
    ProfileCorrupt,
    ProfileExists,
    ProfileLocked,
    ProfileNotFound,
    ProfileTooNew,
    StoreClosed,
    StoreError,
    WrongPassphrase,
)
from client_sdk.history import ConversationKind, MessageKind, NewMessage
from client_sdk.store import (
    Contact,
    ContactState,
    Durability,
    LocalIdentity,
    MailboxDirection,
    OutboxEntry,
    Outgoing,
    PairwiseMailbox,
    Profile,
    Recipient,
)
from client_sdk.store._sqlite_schema import MIGRATIONS, SCHEMA_VERSION, Migration, migrate
from pigeon_crypto.identity import IdentityKeyPair
from pigeon_crypto.prekeys import KemKind, KemPreKeyPair, OneTimePreKeyPair, SignedPreKeyPair
from pigeon_crypto.rng import SeededRng
from pigeon_crypto.sealing import Argon2Params, WrappedKey
from pigeon_crypto.sender_keys import OutboundSenderKey

from .support import FAST, NOW, account, mailbox, session_pair, text

PASS = "correct horse battery staple"
DATA = Path(__file__).parent / "data"


def make(tmp_path: Path, name: str = "p.db", passphrase: str = PASS) -> Profile:
    return Profile.create(tmp_path / name, passphrase, params=FAST, durability=Durability.OFF)


def write_message(profile: Profile, body: str = "persisted words") -> int:
    s = profile.store
    cid = s.ensure_conversation(ConversationKind.DIRECT, account(1), now_ms=NOW).id
    s.apply(text(cid, 1, body), now_ms=NOW)
    return cid


# --- lifecycle ----------------------------------------------------------------------------


def test_create_open_reopen(tmp_path: Path) -> None:
    with make(tmp_path) as p:
        cid = write_message(p)
        assert repr(p) == f"Profile({str(tmp_path / 'p.db')!r}, open)"
    assert repr(p).endswith("closed)")
    for _ in range(2):
        with Profile.open(tmp_path / "p.db", PASS) as p:
            assert p.store.get_message(cid, text(cid, 1).message_id).body == "persisted words"  # type: ignore[union-attr]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["p.db"]  # no temp or WAL files left


def test_create_refuses_existing_paths_and_empty_passphrases(tmp_path: Path) -> None:
    make(tmp_path).close()
    with pytest.raises(ProfileExists, match="refusing to overwrite"):
        make(tmp_path)
    (tmp_path / "other").write_bytes(b"precious")
    with pytest.raises(ProfileExists):
        make(tmp_path, "other")
    assert (tmp_path / "other").read_bytes() == b"precious"
    with pytest.raises(ValueError):
        make(tmp_path, "new.db", passphrase="")


def test_open_missing(tmp_path: Path) -> None:
    with pytest.raises(ProfileNotFound, match="no profile at"):
        Profile.open(tmp_path / "nothing.db", PASS)
    assert not (tmp_path / "nothing.db").exists()  # opening never creates
    with pytest.raises(ProfileNotFound):
        Profile.open(tmp_path, PASS)  # a directory


def test_wrong_passphrase(tmp_path: Path) -> None:
    make(tmp_path).close()
    with pytest.raises(WrongPassphrase):
        Profile.open(tmp_path / "p.db", "wrong")
    Profile.open(tmp_path / "p.db", PASS).close()  # the failed attempt released the lock


def test_closed_store_raises(tmp_path: Path) -> None:
    p = make(tmp_path)
    p.close()
    p.close()  # idempotent
    with pytest.raises(StoreClosed):
        p.store.message_count()


def test_a_profile_has_one_owner(tmp_path: Path) -> None:
    p = make(tmp_path)
    with pytest.raises(ProfileLocked, match="in use"):
        Profile.open(tmp_path / "p.db", PASS)
    p.close()
    with Profile.open(tmp_path / "p.db", PASS), pytest.raises(ProfileLocked):
        Profile.open(tmp_path / "p.db", PASS)


def test_nested_store_calls_are_refused(profile: Profile) -> None:
    cid = write_message(profile)

    def calls_back() -> object:
        yield text(cid, 2)
        profile.store.message_count()  # a store call inside import_messages' transaction
        yield text(cid, 3)

    with pytest.raises(StoreError, match="cannot be nested"):
        profile.store.import_messages(calls_back())  # type: ignore[arg-type]
    assert profile.store.message_count(cid) == 1  # rolled back


def test_pragmas(profile: Profile) -> None:
    with profile._db.read("test") as tx:
        q = tx.conn.execute
        assert q("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert q("PRAGMA foreign_keys").fetchone()[0] == 1
        assert q("PRAGMA secure_delete").fetchone()[0] == 1
        assert q("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
        assert q("PRAGMA locking_mode").fetchone()[0] == "exclusive"
        assert q("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION


# --- passphrases --------------------------------------------------------------------------


def test_change_passphrase(tmp_path: Path) -> None:
    with make(tmp_path) as p:
        cid = write_message(p)
        p.store.put_setting("token", b"sealed value", secret=True)
        with pytest.raises(WrongPassphrase):
            p.change_passphrase("not it", "new one")
        with pytest.raises(ValueError):
            p.change_passphrase(PASS, "")
        p.change_passphrase(PASS, "new one")
    with pytest.raises(WrongPassphrase):
        Profile.open(tmp_path / "p.db", PASS)
    with Profile.open(tmp_path / "p.db", "new one") as p:
        assert p.store.get_setting("token") == b"sealed value"  # records untouched
        assert p.store.message_count(cid) == 1


def _stored_params(path: Path) -> Argon2Params:
    conn = sqlite3.connect(path)
    try:
        blob = conn.execute("SELECT value FROM profile_meta WHERE name = 'wrapped_key'"
                            ).fetchone()[0]
    finally:
        conn.close()
    return WrappedKey.from_bytes(blob).params


def test_argon2_parameters_can_rise(tmp_path: Path) -> None:
    higher = Argon2Params(time_cost=2, memory_kib=16, parallelism=1)
    make(tmp_path).close()
    Profile.open(tmp_path / "p.db", PASS, upgrade_params=FAST).close()  # already enough
    assert _stored_params(tmp_path / "p.db") == FAST
    Profile.open(tmp_path / "p.db", PASS, upgrade_params=higher).close()
    assert _stored_params(tmp_path / "p.db") == higher
    with Profile.open(tmp_path / "p.db", PASS) as p:
        p.change_passphrase(PASS, PASS, params=FAST)
    assert _stored_params(tmp_path / "p.db") == FAST


# --- corruption ---------------------------------------------------------------------------


def _damage(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def test_overwritten_header_is_corrupt(tmp_path: Path) -> None:
    make(tmp_path).close()
    _damage(tmp_path / "p.db", 0, b"\xff" * 100)
    with pytest.raises(ProfileCorrupt, match="corrupted or not a Pigeon profile") as info:
        Profile.open(tmp_path / "p.db", PASS)
    assert "SQLITE_NOTADB" in info.value.reason


def test_truncated_file_is_corrupt(tmp_path: Path) -> None:
    with make(tmp_path) as p:
        cid = write_message(p)
        p.store.import_messages(text(cid, n, "x " * 200) for n in range(2, 400))
    path = tmp_path / "p.db"
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(ProfileCorrupt), Profile.open(path, PASS) as p:
        p.check_integrity()


@pytest.mark.parametrize("content", [b"", b"hello, not a database" * 100])
def test_files_that_are_not_profiles(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "p.db"
    path.write_bytes(content)
    with pytest.raises(ProfileCorrupt):
        Profile.open(path, PASS)


def test_other_sqlite_files_are_not_profiles(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(ProfileCorrupt, match="application_id"):
        Profile.open(path, PASS)


def test_missing_wrapped_key_is_corrupt(tmp_path: Path) -> None:
    make(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "p.db")
    conn.execute("DELETE FROM profile_meta WHERE name = 'wrapped_key'")
    conn.commit()
    conn.close()
    with pytest.raises(ProfileCorrupt, match="wrapped data key is missing"):
        Profile.open(tmp_path / "p.db", PASS)


def test_damaged_pages_are_reported_as_corrupt(tmp_path: Path) -> None:
    with make(tmp_path) as p:
        cid = write_message(p)
        p.store.import_messages(text(cid, n, f"body {n} " * 30) for n in range(2, 300))
    path = tmp_path / "p.db"
    size = path.stat().st_size
    for offset in range(4096, size - 4096, size // 8):  # every eighth of the file
        damaged = tmp_path / f"d{offset}.db"
        shutil.copy(path, damaged)
        _damage(damaged, offset, bytes(range(256)) * 16)
        with pytest.raises(ProfileCorrupt), Profile.open(damaged, PASS) as p:
            p.check_integrity()


def test_tampered_wrapped_key_reads_as_wrong_passphrase(tmp_path: Path) -> None:
    make(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "p.db")
    blob = bytearray(conn.execute("SELECT value FROM profile_meta WHERE name = 'wrapped_key'"
                                  ).fetchone()[0])
    blob[-1] ^= 1
    conn.execute("UPDATE profile_meta SET value = ? WHERE name = 'wrapped_key'", (bytes(blob),))
    conn.commit()
    conn.close()
    with pytest.raises(WrongPassphrase):  # an AEAD cannot tell the two apart
        Profile.open(tmp_path / "p.db", PASS)


def test_wrapped_key_from_another_profile_is_caught(tmp_path: Path) -> None:
    make(tmp_path, "a.db").close()
    make(tmp_path, "b.db").close()
    src = sqlite3.connect(tmp_path / "b.db")
    blob = src.execute("SELECT value FROM profile_meta WHERE name = 'wrapped_key'").fetchone()[0]
    src.close()
    dst = sqlite3.connect(tmp_path / "a.db")
    dst.execute("UPDATE profile_meta SET value = ? WHERE name = 'wrapped_key'", (blob,))
    dst.commit()
    dst.close()
    with pytest.raises(ProfileCorrupt, match="does not open this profile"):
        Profile.open(tmp_path / "a.db", PASS)


def test_sealed_rows_cannot_be_swapped(tmp_path: Path) -> None:
    alice, bob, _ = session_pair(b"swap")
    with make(tmp_path) as p:
        p.store.store_session(account(1), alice)
        p.store.store_session(account(2), bob)
    conn = sqlite3.connect(tmp_path / "p.db")
    states = dict(conn.execute("SELECT peer, state FROM sessions"))
    conn.execute("UPDATE sessions SET state = ? WHERE peer = ?", (states[account(2)], account(1)))
    conn.commit()
    conn.close()
    with Profile.open(tmp_path / "p.db", PASS) as p:
        with pytest.raises(ProfileCorrupt, match=r"sealed sessions\.state failed"):
            p.store.load_session(account(1))
        assert p.store.load_session(account(2)).to_bytes() == bob.to_bytes()  # type: ignore[union-attr]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    make(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "p.db")
    conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    conn.commit()
    conn.close()
    with pytest.raises(ProfileTooNew) as info:
        Profile.open(tmp_path / "p.db", PASS)
    assert (info.value.found, info.value.supported) == (99, SCHEMA_VERSION)
    assert isinstance(info.value, StoreError)


# --- migrations ---------------------------------------------------------------------------


def test_migrations_run_in_order_once_and_atomically() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    calls: list[int] = []

    def v2(c: sqlite3.Connection) -> None:
        calls.append(2)
        c.execute("ALTER TABLE messages ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")

    def v3_broken(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration bug")

    first = MIGRATIONS[:1]  # the test's own v2 and v3 follow the shipped v1
    assert migrate(conn, first) == 1
    assert migrate(conn, (*first, Migration(2, v2))) == 2
    assert migrate(conn, (*first, Migration(2, v2))) == 2
    assert calls == [2]
    with pytest.raises(RuntimeError):
        migrate(conn, (*first, Migration(2, v2), Migration(3, v3_broken)))
    assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half_done'"
                        ).fetchone()[0] == 0
    with pytest.raises(ValueError):
        migrate(conn, (Migration(2, v2), Migration(1, v2)))


# --- sealing at rest ----------------------------------------------------------------------


def test_secrets_are_not_in_the_file(tmp_path: Path) -> None:
    rng = SeededRng(b"at rest")
    identity = IdentityKeyPair.generate(rng)
    spk = SignedPreKeyPair.generate(identity, key_id=1, now_ms=NOW, rng=rng)
    kem = KemPreKeyPair.generate(identity, key_id=1, kind=KemKind.LAST_RESORT, now_ms=NOW,
                                 rng=rng)
    otk = OneTimePreKeyPair.generate(key_id=1, rng=rng)
    alice, _, _ = session_pair(b"at rest, session")
    sender_key = OutboundSenderKey.create(rng)
    contact_cap, outbox_cap, token = rng(32), rng(32), rng(32)
    manifest = b"FILE-MANIFEST-" + rng(32)
    avatar = b"AVATAR-MANIFEST-" + rng(32)
    p = make(tmp_path)
    s = p.store
    s.save_local_identity(LocalIdentity.new(identity))
    s.save_signed_prekey(spk)
    s.save_kem_prekeys([kem])
    s.save_one_time_prekeys([otk])
    s.store_session(account(1), alice)
    s.store_outbound_sender_key(b"group", sender_key)
    s.put_setting("token", token, secret=True)
    s.save_contact(Contact(
        account_id=account(1), state=ContactState.ACCEPTED, avatar_manifest=avatar,
        mailboxes=(PairwiseMailbox(mailbox_id=mailbox(1), direction=MailboxDirection.OUTBOUND,
                                   capability=contact_cap, created_at_ms=NOW),),
        created_at_ms=NOW, updated_at_ms=NOW))
    cid = s.ensure_conversation(ConversationKind.DIRECT, account(1), now_ms=NOW).id
    s.enqueue(Outgoing(
        entry=OutboxEntry(client_msg_id=b"\x07" * 16, created_at_ms=NOW, blob=b"ct",
                          recipients=(Recipient(mailbox_id=mailbox(2), capability=outbox_cap),)),
        history=NewMessage(conversation_id=cid, message_id=b"\x08" * 16, sender=None,
                           sent_at_ms=NOW, kind=MessageKind.FILE, body="visible caption",
                           attachment=manifest)))
    state = alice.to_bytes()
    secrets = {
        "identity seed": identity.signing_seed, "identity dh": identity.dh_private,
        "signed prekey": spk.private, "kem seed": kem.seed, "one-time prekey": otk.private,
        "sender chain key": sender_key.chain_key,
        "sender signing seed": sender_key.signing_key.seed,
        "contact capability": contact_cap, "outbox capability": outbox_cap, "token": token,
        "file manifest": manifest, "avatar manifest": avatar,
        **{f"ratchet state [{i}:]": state[i:i + 16] for i in range(0, len(state) - 16, 16)},
    }

    def raw() -> bytes:
        return b"".join(f.read_bytes() for f in sorted(tmp_path.iterdir()))

    for phase in ("open", "closed"):
        data = raw()
        assert b"visible caption" in data  # history is plaintext by design (see the docs)
        found = [name for name, secret in secrets.items() if secret in data]
        assert found == [], phase
        p.close()


# --- frozen v1 fixture ---------------------------------------------------------------------

FIXTURE = DATA / "profile_v1.db.gz"
FIXTURE_PASS = "fixture passphrase"


def build_fixture(path: Path) -> None:
    """Write the frozen v1 profile (run ``python -m tests.unit.client_sdk.test_profile``)."""
    rng = SeededRng(b"fixture v1")
    alice, _, _ = session_pair(b"fixture v1")
    with Profile.create(path, FIXTURE_PASS, params=FAST, rng=rng) as p:
        s = p.store
        s.save_local_identity(LocalIdentity.new(IdentityKeyPair.generate(rng)))
        s.store_session(account(1), alice)
        cid = s.ensure_conversation(ConversationKind.DIRECT, account(1), now_ms=NOW).id
        s.apply(text(cid, 1, "frozen in version one"), now_ms=NOW)


def test_frozen_v1_profile_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    path.write_bytes(gzip.decompress(FIXTURE.read_bytes()))
    alice, _, _ = session_pair(b"fixture v1")
    with Profile.open(path, FIXTURE_PASS) as p:
        p.check_integrity()
        s = p.store
        assert s.local_identity() is not None
        assert s.load_session(account(1)).to_bytes() == alice.to_bytes()  # type: ignore[union-attr]
        hits = s.search("frozen").hits
        assert [h.message.body for h in hits] == ["frozen in version one"]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "v1.db"
        build_fixture(out)
        DATA.mkdir(exist_ok=True)
        FIXTURE.write_bytes(gzip.compress(out.read_bytes(), mtime=0))
        print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
