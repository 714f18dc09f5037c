"""SQLite operations for contacts and their pairwise mailboxes (inside a transaction).

The avatar manifest (it holds the avatar's file key) and every mailbox capability are
sealed; AD keys are the account id and the mailbox id.
"""

from __future__ import annotations

from typing import Any

from pigeon_crypto.identity import IdentityPublicKey

from ..errors import StoreConflict
from ._sqlite_db import Tx
from .records import Contact, ContactState, MailboxDirection, PairwiseMailbox

_CONTACT_COLUMNS = (
    "account_id, state, identity, rotation_chain, profile_name, avatar_manifest, verified, "
    "identity_changed, created_at_ms, updated_at_ms"
)


def _mailboxes(tx: Tx, account_id: bytes) -> tuple[PairwiseMailbox, ...]:
    rows = tx.conn.execute(
        "SELECT mailbox_id, direction, capability, relay_url, created_at_ms, retired_at_ms "
        "FROM contact_mailboxes WHERE account_id = ? ORDER BY created_at_ms, mailbox_id",
        (account_id,),
    ).fetchall()
    out = []
    for mailbox_id, direction, sealed, relay_url, created, retired in rows:
        cap = tx.unseal("contact_mailboxes", "capability", mailbox_id, sealed)
        try:
            out.append(PairwiseMailbox(
                mailbox_id=mailbox_id, direction=MailboxDirection(direction), capability=cap,
                relay_url=relay_url, created_at_ms=created, retired_at_ms=retired,
            ))
        except ValueError as exc:
            raise tx.corrupt("stored contact mailbox is invalid") from exc
    return tuple(out)


def _contact(tx: Tx, row: Any) -> Contact:
    (account_id, state, identity_raw, chain, name, sealed_avatar, verified, changed, created,
     updated) = row
    identity = None
    if identity_raw is not None:
        identity = tx.decode("contact identity", IdentityPublicKey.from_bytes, identity_raw)
    avatar = None
    if sealed_avatar is not None:
        avatar = tx.unseal("contacts", "avatar_manifest", account_id, sealed_avatar)
    try:
        return Contact(
            account_id=account_id, state=ContactState(state), identity=identity,
            rotation_chain=bytes(chain), profile_name=name, avatar_manifest=avatar,
            mailboxes=_mailboxes(tx, account_id), verified=bool(verified),
            identity_changed=bool(changed), created_at_ms=created, updated_at_ms=updated,
        )
    except ValueError as exc:
        raise tx.corrupt("stored contact is invalid") from exc


def get_contact(tx: Tx, account_id: bytes) -> Contact | None:
    row = tx.conn.execute(
        f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE account_id = ?",  # noqa: S608
        (account_id,),
    ).fetchone()
    return None if row is None else _contact(tx, row)


def save_contact(tx: Tx, contact: Contact) -> None:
    aid = contact.account_id
    for m in contact.mailboxes:
        owner = tx.conn.execute("SELECT account_id FROM contact_mailboxes WHERE mailbox_id = ?",
                                (m.mailbox_id,)).fetchone()
        if owner is not None and owner[0] != aid:
            raise StoreConflict("a mailbox of this contact belongs to another contact")
    avatar = (None if contact.avatar_manifest is None
              else tx.seal("contacts", "avatar_manifest", aid, contact.avatar_manifest))
    tx.conn.execute(
        f"INSERT INTO contacts ({_CONTACT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
        "ON CONFLICT (account_id) DO UPDATE SET state = excluded.state, "
        "identity = excluded.identity, rotation_chain = excluded.rotation_chain, "
        "profile_name = excluded.profile_name, avatar_manifest = excluded.avatar_manifest, "
        "verified = excluded.verified, identity_changed = excluded.identity_changed, "
        "created_at_ms = excluded.created_at_ms, updated_at_ms = excluded.updated_at_ms",
        (aid, int(contact.state),
         None if contact.identity is None else contact.identity.to_bytes(),
         contact.rotation_chain, contact.profile_name, avatar, int(contact.verified),
         int(contact.identity_changed), contact.created_at_ms, contact.updated_at_ms),
    )
    tx.conn.execute("DELETE FROM contact_mailboxes WHERE account_id = ?", (aid,))
    tx.conn.executemany(
        "INSERT INTO contact_mailboxes (mailbox_id, account_id, direction, capability, "
        "relay_url, created_at_ms, retired_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(m.mailbox_id, aid, int(m.direction),
          tx.seal("contact_mailboxes", "capability", m.mailbox_id, m.capability),
          m.relay_url, m.created_at_ms, m.retired_at_ms) for m in contact.mailboxes],
    )


def delete_contact(tx: Tx, account_id: bytes) -> bool:
    tx.conn.execute("DELETE FROM contacts WHERE account_id = ?", (account_id,))
    return tx.changes() > 0


def list_contacts(tx: Tx, state: ContactState | None) -> list[Contact]:
    if state is None:
        rows = tx.conn.execute(
            f"SELECT {_CONTACT_COLUMNS} FROM contacts ORDER BY account_id"  # noqa: S608
        ).fetchall()
    else:
        rows = tx.conn.execute(
            f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE state = ? "  # noqa: S608
            "ORDER BY account_id", (int(state),),
        ).fetchall()
    return [_contact(tx, r) for r in rows]


def contact_for_mailbox(tx: Tx, mailbox_id: bytes) -> Contact | None:
    row = tx.conn.execute(
        "SELECT account_id FROM contact_mailboxes WHERE mailbox_id = ? AND direction = ?",
        (mailbox_id, int(MailboxDirection.INBOUND)),
    ).fetchone()
    return None if row is None else get_contact(tx, row[0])
