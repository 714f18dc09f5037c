"""``pigeon-relay``: run the relay, administer its store, print its TLS fingerprint.

Usage::

    pigeon-relay [serve] [--host ADDR] [--port PORT] [--data-dir DIR] ...   # run (default)
    pigeon-relay admin [--data-dir DIR | --db FILE] [--json] COMMAND ...    # no server needed
        invite create [--expires DURATION] [--count N]
        invite revoke CODE | --hash HEX
        invite list
        accounts list [--limit N]
        accounts delete ACCOUNT_ID_HEX
        queues [--limit N]
        info
    pigeon-relay fingerprint --tls-cert FILE

Every ``serve`` option is also read from a ``PIGEON_RELAY_*`` variable (the option table is
:data:`relay.config.OPTIONS`; command line first, then environment, then default).

``serve`` prints exactly one line on stdout once it accepts connections, for scripts and
tests (``--port 0`` binds a free port)::

    pigeon-relay listening on http://127.0.0.1:PORT

Logs go to stderr. SIGINT and SIGTERM shut down gracefully: stop accepting, close
WebSockets (1001), let requests finish (``--shutdown-timeout``), stop the sweeper and the
push notifier, close the store; the exit status is then 0. A startup failure (port in use,
unreadable TLS files, unusable database) exits with status 1 and one error line.

``admin`` works directly on the SQLite file (WAL: safe while a relay is running) through
the :class:`relay.ports.Store` protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import gc
import json
import logging
import os
import secrets
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from pigeon_crypto.errors import PigeonError

from .config import (
    OPTIONS,
    ConfigError,
    RelayConfig,
    SyncMode,
    config_from,
    load_token_secret,
    parse_duration,
)
from .logs import setup_logging
from .ports import (
    ACCOUNT_ID_LEN,
    InviteRecord,
    Notification,
    NotificationKind,
    Store,
    StoreConflict,
    invite_code_hash,
)
from .store_sqlite import SqliteStore
from .tls import certificate_fingerprint, format_fingerprint, server_ssl_context

__all__ = ["LISTENING_PREFIX", "main", "serve"]

_log = logging.getLogger("pigeon.relay")

LISTENING_PREFIX: Final = "pigeon-relay listening on "
ACCESS_LOG_FORMAT: Final = '%a "%r" %s %b %Tf'


def relay_version() -> str:
    # Not relay.app's: importing aiohttp and the app costs ~0.3 s that admin commands skip.
    try:
        return metadata.version("pigeon-messenger")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0+unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point. Returns the process exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "admin":
        return _admin_main(args[1:])
    if args and args[0] == "fingerprint":
        return _fingerprint_main(args[1:])
    if args and args[0] == "serve":
        args = args[1:]
    return _serve_main(args)


# --------------------------------------------------------------------------- serve


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pigeon-relay",
        description="Run a Pigeon relay. Commands: serve (default), admin (`pigeon-relay "
                    "admin --help`), fingerprint (`pigeon-relay fingerprint --help`).",
        epilog="Every option can also be set with the environment variable shown in "
               "brackets. Durations: 30d, 12h, 15m, 90s, 250ms. Sizes: 1GiB, 16MiB, 64KiB.",
    )
    for opt in OPTIONS:
        help_text = f"{opt.help} [{opt.env}; default {opt.default_text().strip('`')}]"
        if opt.flag_only_bool:
            parser.add_argument(opt.flag, dest=opt.name, action="store_const", const=True,
                                default=None, help=help_text)
        else:
            parser.add_argument(opt.flag, dest=opt.name, metavar=opt.metavar, default=None,
                                help=help_text)
    parser.add_argument("--version", action="version", version=relay_version())
    return parser


def _serve_main(argv: Sequence[str]) -> int:
    parser = _serve_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from(vars(args), os.environ)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        config.check_shared_identity()
    except ConfigError as exc:  # the options parse: no usage dump above the reason
        print(f"pigeon-relay: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    try:
        asyncio.run(serve(config))
    except _StartupError as exc:
        _log.error("relay failed to start: %s", exc)  # stderr, in the chosen log format
        return 1
    except _StoreFailed as exc:
        _log.critical("relay stopped: %s", exc)
        return 70  # EX_SOFTWARE
    return 0


class _StartupError(Exception):
    pass


class _StoreFailed(Exception):
    """The store's writer process died while serving."""


GC_THRESHOLDS: Final = (50_000, 50, 100)
"""Cyclic-GC thresholds of a serving relay (CPython's default: 700, 10, 10). Each frame
allocates a few short-lived containers (frame records, tasks, futures) that reference
counting frees; with the default, a generation-0 pass ran every few hundred frames and
took 17-29% of the event loop under load (docs/benchmarks.md). Real cycles (closed
connections) are still collected, just in larger, rarer passes."""


def tune_gc() -> None:
    """Move everything alive after start-up (modules, the app, the schema) out of the
    collector's reach (``gc.freeze``) and raise the thresholds (:data:`GC_THRESHOLDS`),
    so that collections scan only what the traffic allocates, and rarely."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(config: RelayConfig, *, ready: Callable[[str], None] | None = None) -> None:
    """Run the relay until SIGINT/SIGTERM (or until cancelled), then shut down gracefully.

    Args:
        config: the relay configuration.
        ready: called with the base URL once listening (default: print the listening line).

    Raises:
        _StartupError: the relay could not start (the message says why).
    """
    from aiohttp import web

    from .app import create_app
    from .typedefs import STORE

    ssl_context: ssl.SSLContext | None = None
    if config.tls_cert is not None and config.tls_key is not None:
        try:
            ssl_context = server_ssl_context(config.tls_cert, config.tls_key)
            fingerprint = format_fingerprint(certificate_fingerprint(config.tls_cert))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise _StartupError(f"cannot load TLS certificate/key: {exc}") from exc
    access_log = logging.getLogger("aiohttp.access") if config.access_log else None
    runner = web.AppRunner(
        create_app(config), handle_signals=False, access_log=access_log,
        access_log_format=ACCESS_LOG_FORMAT, shutdown_timeout=config.shutdown_timeout_ms / 1000,
    )
    try:
        await runner.setup()
    except (PigeonError, OSError, ConfigError) as exc:
        await runner.cleanup()
        raise _StartupError(f"cannot open the relay's data: {exc}") from exc
    try:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            raise _StartupError(f"cannot listen on {config.host}:{config.port}: "
                                f"{exc.strerror or exc}") from exc
        host, port = runner.addresses[0][:2]
        url = f"{config.scheme}://{_url_host(str(host))}:{port}"
        database = ("PostgreSQL, schema " + config.store_schema
                    if config.store_url is not None else str(config.database))
        _log.info("relay %s listening on %s (database %s, blobs %s, bus %s)", relay_version(),
                  url, database, config.blobs,
                  "Redis" if config.bus_url is not None else "in-process")
        if config.store_url is not None and config.bus_url is None:
            _log.warning("a shared database without --bus-url: clients of this node hear "
                         "of messages sent through other nodes only when they reconnect")
        if ssl_context is not None:
            _log.info("TLS certificate SHA-256 fingerprint (clients pin this): %s",
                      fingerprint)
        elif not _is_loopback(config.host):
            _log.warning("listening on %s without TLS: clients require wss:// except on "
                         "loopback; use --tls-cert/--tls-key or a TLS-terminating proxy",
                         config.host)
        if config.synchronous is not SyncMode.FULL:
            _log.warning("synchronous=%s: acknowledged messages may be lost on power loss",
                         config.synchronous.value)
        tune_gc()
        if ready is not None:
            ready(url)
        else:
            print(f"{LISTENING_PREFIX}{url}", flush=True)
        await _wait_for_signal()
        store = runner.app.get(STORE)
        failed = store.failed if isinstance(store, SqliteStore) else None
        _log.info("shutting down")
    finally:
        await runner.cleanup()
    if failed is not None:
        raise _StoreFailed(failed)
    _log.info("shutdown complete")


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
            pass
    try:
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


# --------------------------------------------------------------------------- fingerprint


def _fingerprint_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pigeon-relay fingerprint",
        description="Print the SHA-256 fingerprint of the relay's TLS certificate (what "
                    "clients pin).",
    )
    parser.add_argument("--tls-cert", metavar="FILE",
                        default=os.environ.get("PIGEON_RELAY_TLS_CERT"),
                        help="PEM certificate [PIGEON_RELAY_TLS_CERT]")
    args = parser.parse_args(argv)
    if not args.tls_cert:
        parser.error("--tls-cert is required")
    try:
        print(format_fingerprint(certificate_fingerprint(Path(args.tls_cert))))
    except (OSError, ValueError) as exc:
        print(f"pigeon-relay: error: {exc}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- admin


def _admin_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pigeon-relay admin",
        description="Administer a relay's store directly (no server needed; safe while "
                    "one runs).",
    )
    parser.add_argument("--data-dir", metavar="DIR", help="[PIGEON_RELAY_DATA_DIR]")
    parser.add_argument("--db", dest="db_path", metavar="FILE", help="[PIGEON_RELAY_DB]")
    parser.add_argument("--blob-dir", metavar="DIR", help="[PIGEON_RELAY_BLOB_DIR]")
    parser.add_argument("--store-url", metavar="URL",
                        help="a PostgreSQL store instead [PIGEON_RELAY_STORE_URL]")
    parser.add_argument("--store-schema", metavar="NAME", help="[PIGEON_RELAY_STORE_SCHEMA]")
    parser.add_argument("--bus-url", metavar="URL",
                        help="the nodes' Redis bus: `accounts delete` tells them (closes the "
                             "account's live sessions) [PIGEON_RELAY_BUS_URL]")
    parser.add_argument("--bus-prefix", metavar="NAME", help="[PIGEON_RELAY_BUS_PREFIX]")
    parser.add_argument("--secret-file", metavar="FILE",
                        help="the nodes' token secret (keys the bus) [PIGEON_RELAY_SECRET_FILE]")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    invite = sub.add_parser("invite", help="invite codes (for --invite-only)")
    isub = invite.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = isub.add_parser("create", help="create invite codes (printed once)")
    create.add_argument("--expires", metavar="DURATION", help="e.g. 7d (default: never)")
    create.add_argument("--count", type=int, default=1, help="how many (default 1)")
    revoke = isub.add_parser("revoke", help="revoke an unused invite code")
    revoke.add_argument("code", nargs="?", help="the code as handed out")
    revoke.add_argument("--hash", metavar="HEX", help="or its hash (prefix) from `list`")
    isub.add_parser("list", help="list invites (hashes only; codes are not stored)")

    accounts = sub.add_parser("accounts", help="registered accounts")
    asub = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")
    alist = asub.add_parser("list", help="list accounts")
    alist.add_argument("--limit", type=int, default=1000, help="at most N (default 1000)")
    delete = asub.add_parser("delete", help="delete an account, its mailboxes and queues")
    delete.add_argument("account_id", help="32 hex digits")

    queues = sub.add_parser("queues", help="queued envelopes: totals and largest mailboxes")
    queues.add_argument("--limit", type=int, default=20, help="mailboxes shown (default 20)")
    sub.add_parser("info", help="relay id and data paths")
    return parser


def _admin_main(argv: Sequence[str]) -> int:
    parser = _admin_parser()
    args = parser.parse_args(argv)
    flags = {"data_dir": args.data_dir, "db_path": args.db_path, "blob_dir": args.blob_dir,
             "store_url": args.store_url, "store_schema": args.store_schema,
             "bus_url": args.bus_url, "bus_prefix": args.bus_prefix,
             "secret_file": args.secret_file}
    env = {k: v for k, v in os.environ.items()
           if k in ("PIGEON_RELAY_DATA_DIR", "PIGEON_RELAY_DB", "PIGEON_RELAY_BLOB_DIR",
                    "PIGEON_RELAY_SECRET_FILE", "PIGEON_RELAY_RELAY_ID",
                    "PIGEON_RELAY_STORE_URL", "PIGEON_RELAY_STORE_SCHEMA",
                    "PIGEON_RELAY_BUS_URL", "PIGEON_RELAY_BUS_PREFIX")}
    try:
        config = config_from(flags, env)
    except ConfigError as exc:
        parser.error(str(exc))
    setup_logging("WARNING")
    creates = args.command == "invite" and args.action == "create"
    if (not creates and args.command != "info" and config.store_url is None
            and not config.database.exists()):
        print(f"pigeon-relay: error: no relay database at {config.database} "
              "(use --data-dir or --db)", file=sys.stderr)
        return 1
    out = _Output(json_mode=args.json)
    try:
        if args.command == "info":
            return _info(config, out)
        return asyncio.run(_with_store(
            config, lambda store: _ADMIN[args.command](store, args, config, out),
            create=creates))
    except (PigeonError, ConfigError, OSError) as exc:
        print(f"pigeon-relay: error: {exc}", file=sys.stderr)
        return 1


async def _with_store(config: RelayConfig, fn: Callable[[Store], Awaitable[int]], *,
                      create: bool = False) -> int:
    from .app import open_store

    store = await open_store(config, create=create)
    try:
        return await fn(store)
    finally:
        await store.close()


class _Output:
    def __init__(self, *, json_mode: bool) -> None:
        self.json_mode = json_mode

    def emit(self, obj: Any, lines: Sequence[str]) -> None:
        if self.json_mode:
            print(json.dumps(obj, indent=2, sort_keys=True))
        else:
            for line in lines:
                print(line)


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_ms() -> int:
    return int(_dt.datetime.now(tz=_dt.UTC).timestamp() * 1000)


def _invite_json(r: InviteRecord, now: int) -> dict[str, Any]:
    if r.used_at_ms is not None:
        state = "used"
    elif r.expires_at_ms is not None and r.expires_at_ms <= now:
        state = "expired"
    else:
        state = "open"
    return {"hash": r.code_hash.hex(), "created_at_ms": r.created_at_ms,
            "expires_at_ms": r.expires_at_ms, "used_at_ms": r.used_at_ms, "state": state}


async def _invite(store: Store, args: argparse.Namespace, config: RelayConfig,
                  out: _Output) -> int:
    now = _now_ms()
    if args.action == "create":
        if args.count < 1:
            raise ConfigError("--count must be positive")
        expires = now + parse_duration(args.expires) if args.expires else None
        codes = []
        for _ in range(args.count):
            code = secrets.token_urlsafe(16)  # 128 bits, 22 characters
            try:
                await store.create_invite(code_hash=invite_code_hash(code), now_ms=now,
                                          expires_at_ms=expires)
            except StoreConflict:  # pragma: no cover - 128 random bits
                continue
            codes.append(code)
        out.emit({"codes": codes, "expires_at_ms": expires}, codes)
        return 0
    if args.action == "list":
        invites = [_invite_json(r, now) for r in await store.list_invites()]
        out.emit(invites, [
            f"{i['hash'][:16]}  {i['state']:7}  created {_iso(i['created_at_ms'])}  "
            f"expires {_iso(i['expires_at_ms'])}  used {_iso(i['used_at_ms'])}"
            for i in invites
        ] or ["no invites"])
        return 0
    # revoke
    if (args.code is None) == (args.hash is None):
        raise ConfigError("give either an invite code or --hash")
    if args.code is not None:
        code_hash = invite_code_hash(args.code)
    else:
        prefix = args.hash.lower()
        matches = [r.code_hash for r in await store.list_invites()
                   if r.code_hash.hex().startswith(prefix)]
        if len(prefix) < 8:
            raise ConfigError("--hash needs 8 or more hex digits of a hash from `invite list`")
        if not matches:
            out.emit({"revoked": False}, ["no such invite (revoked invites are not listed)"])
            return 1
        if len(matches) > 1:
            raise ConfigError(f"--hash {prefix} matches {len(matches)} invites: give more digits")
        code_hash = matches[0]
    revoked = await store.revoke_invite(code_hash)
    out.emit({"revoked": revoked}, ["revoked" if revoked else "no such invite"])
    return 0 if revoked else 1


async def _accounts(store: Store, args: argparse.Namespace, config: RelayConfig,
                    out: _Output) -> int:
    if args.action == "list":
        rows: list[dict[str, Any]] = []
        after: bytes | None = None
        while len(rows) < args.limit:
            page = await store.list_accounts(after=after, limit=min(500, args.limit - len(rows)))
            if not page:
                break
            rows += [{"account_id": a.account_id.hex(), "created_at_ms": a.created_at_ms,
                      "mailboxes": a.mailbox_count} for a in page]
            after = page[-1].account_id
        out.emit(rows, [f"{r['account_id']}  created {_iso(r['created_at_ms'])}  "
                        f"mailboxes {r['mailboxes']}" for r in rows] or ["no accounts"])
        return 0
    try:
        account_id = bytes.fromhex(args.account_id)
    except ValueError:
        account_id = b""
    if len(account_id) != ACCOUNT_ID_LEN:
        raise ConfigError("an account id is 32 hex digits")
    secret = load_token_secret(config) if config.bus_url is not None else None
    mailboxes = [r.mailbox_id for r in await store.list_mailboxes(account_id)]
    deleted = await store.delete_account(account_id)
    told = deleted and secret is not None
    if told:
        assert secret is not None
        await _tell_nodes(config, secret, account_id, mailboxes)
    out.emit({"deleted": deleted, "nodes_told": told},
             ["deleted" if deleted else "no such account"]
             + (["the relay's nodes were told (its live sessions close)"] if told else []))
    return 0 if deleted else 1


async def _tell_nodes(config: RelayConfig, secret: bytes, account_id: bytes,
                      mailboxes: Sequence[bytes]) -> None:
    """What a node's ``DeleteAccount`` tells the others, said on the bus: forget the
    mailboxes, stop delivering them (``CLOSED``), close the account's sessions."""
    from .app import open_bus

    bus = await open_bus(config, secret)
    try:
        for mailbox_id in mailboxes:
            await bus.invalidate(mailbox_id)
        await bus.publish_many([(m, Notification(kind=NotificationKind.CLOSED))
                                for m in mailboxes])
        await bus.sessions_revoked(account_id)  # returns once Redis took all of it
    finally:
        await bus.close()


def _folder_usage(root: Path) -> tuple[int, int]:
    """(blob folders, bytes) under the blob root: shards ``xx/<blob id hex>/``."""
    blobs = size = 0
    if not root.is_dir():
        return 0, 0
    for shard in root.iterdir():
        if not shard.is_dir():
            continue
        for blob in shard.iterdir():
            if blob.is_dir():
                blobs += 1
                size += sum(f.stat().st_size for f in blob.iterdir() if f.is_file())
    return blobs, size


async def _queues(store: Store, args: argparse.Namespace, config: RelayConfig,
                  out: _Output) -> int:
    sizes = await store.queue_sizes(limit=args.limit)
    files, file_bytes = await asyncio.to_thread(_folder_usage, config.blobs)
    mailboxes: list[dict[str, Any]] = [
        {"mailbox_id": q.mailbox_id.hex(), "account_id": q.account_id.hex(),
         "pending": q.pending, "oldest_received_at_ms": q.oldest_received_at_ms}
        for q in sizes.mailboxes
    ]
    obj = {
        "total_messages": sizes.total_messages,
        "stored_envelopes": sizes.total_blobs,
        "stored_envelope_bytes": sizes.total_blob_bytes,
        "file_blobs": files,
        "file_blob_bytes": file_bytes,
        "mailboxes": mailboxes,
    }
    lines = [
        f"queued deliveries: {sizes.total_messages}",
        f"stored envelopes: {sizes.total_blobs} ({sizes.total_blob_bytes} bytes)",
        f"file blobs: {files} ({file_bytes} bytes)",
    ] + [f"{q['mailbox_id']}  account {q['account_id']}  pending {q['pending']}  "
         f"oldest {_iso(q['oldest_received_at_ms'])}" for q in mailboxes]
    out.emit(obj, lines)
    return 0


def _info(config: RelayConfig, out: _Output) -> int:
    shared = config.store_url is not None
    relay_id = None
    if config.relay_id is not None:
        relay_id = config.relay_id.hex()
    elif not shared and config.relay_id_path.exists():
        relay_id = config.relay_id_path.read_text(encoding="ascii").strip()
    # A shared database's nodes are given their relay id, secret file and blob folder on
    # their own command lines: only what this command was given can be shown.
    database = f"postgresql, schema {config.store_schema}" if shared else str(config.database)
    blob_dir = str(config.blobs) if not shared or config.blob_dir is not None else None
    secret = str(config.secret_path) if not shared or config.secret_file is not None else None
    obj = {"relay_id": relay_id, "database": database, "blob_dir": blob_dir,
           "secret_file": secret, "version": relay_version()}
    out.emit(obj, [f"{k}: {v if v is not None else '-'}" for k, v in obj.items()])
    return 0


_ADMIN: Final[Mapping[str, Callable[[Store, argparse.Namespace, RelayConfig, _Output],
                                    Awaitable[int]]]] = {
    "invite": _invite,
    "accounts": _accounts,
    "queues": _queues,
}
