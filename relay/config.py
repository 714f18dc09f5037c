"""Relay configuration: :class:`RelayConfig`, its option table, and the relay's identity files.

Theory of operation:

* :class:`RelayConfig` is a frozen dataclass (STYLE.md section 6): one value describes a
  relay completely, and ``create_app(config)`` builds the same app for production and tests.
  Every field has a default, so ``RelayConfig()`` is the zero-configuration relay: SQLite
  (WAL) file ``pigeon-relay.db`` and blob folder ``pigeon-relay-blobs`` in the working
  directory, listening on ``127.0.0.1:8765``.
* :data:`OPTIONS` is the single table of operator-facing settings: each row names the
  field, the command-line flag, the ``PIGEON_RELAY_*`` environment variable and the parser.
  ``relay.cli`` builds its argument parser from it and the operator's guide
  (docs/relay.md) documents the same rows (a test keeps them in step).
  Precedence: command line, then environment, then the default.
* Durations are written ``30d``, ``12h``, ``15m``, ``90s`` or ``250ms``; sizes ``100MiB``,
  ``16M``, ``64KiB`` or plain bytes. Fields hold milliseconds and bytes.
* The relay's **identity files** live beside the database, so the identity travels with the
  data it describes: ``<db stem>.id`` (the relay id, 16 random bytes, hex; sent to clients
  in ``Challenge`` and bound into their login signatures, so it must be stable across
  restarts) and ``<db stem>.secret`` (32 random bytes, hex, mode 0600: the HMAC key of blob
  tokens, persisted so that tokens survive a restart). Both are created on first start,
  atomically (temp file, fsync, hard link: two relays starting at once agree on one value).
  Several nodes sharing one database must share both: pass ``--relay-id`` and
  ``--secret-file``.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DEFAULT_PORT",
    "ENV_PREFIX",
    "MAX_MESSAGE_TTL_MS",
    "OPTIONS",
    "RELAY_ID_LEN",
    "TOKEN_SECRET_LEN",
    "ConfigError",
    "LogFormat",
    "Option",
    "RelayConfig",
    "RelayIdentity",
    "SyncMode",
    "config_from",
    "format_duration",
    "format_size",
    "load_or_create_identity",
    "load_token_secret",
    "parse_bool",
    "parse_duration",
    "parse_size",
]

ENV_PREFIX: Final = "PIGEON_RELAY_"
DEFAULT_PORT: Final = 8765
RELAY_ID_LEN: Final = 16
"""A random relay id (protocol ``RELAY_ID_SIZES`` allows 16 or 32 bytes)."""
TOKEN_SECRET_LEN: Final = 32
"""HMAC-SHA-256 key of blob tokens: as long as the MAC output."""
MAX_MESSAGE_TTL_MS: Final = 30 * 24 * 3600 * 1000
"""Protocol ``MAX_TTL_MS``: a relay may keep envelopes for less, never longer."""
MAX_FRAME_SIZE: Final = 256 * 1024
"""Protocol ``MAX_FRAME_SIZE`` (copied so this module imports nothing of ``protocol``;
tests/unit/relay/test_config.py checks they agree)."""

_DAY_MS: Final = 24 * 3600 * 1000


class ConfigError(ValueError):
    """A setting is malformed or out of range. The message names the setting, not secrets."""


class LogFormat(enum.StrEnum):
    TEXT = "text"
    """Human-readable lines."""
    JSON = "json"
    """One JSON object per line (for log shippers)."""


class SyncMode(enum.StrEnum):
    """SQLite ``PRAGMA synchronous`` (see ``relay.store_sqlite.Synchronous``).

    FULL survives power loss (the default; group commit makes it cheap), NORMAL survives a
    process crash, OFF is for tests and benchmarks.
    """

    FULL = "FULL"
    NORMAL = "NORMAL"
    OFF = "OFF"


class StoreWriter(enum.StrEnum):
    """Where the SQLite writer runs (see ``relay._sqlite_engine.WriterMode``).

    THREAD (the default): a thread of the relay's process, as the library and the
    admin CLI use. PROCESS: a child process fed whole group-commit batches (the writer
    no longer waits for the event loop's GIL around every statement).
    """

    PROCESS = "process"
    THREAD = "thread"


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig:
    """Everything a relay needs to start. Times in milliseconds, sizes in bytes.

    Paths are used as given (relative ones against the working directory); ``db_path`` and
    ``blob_dir`` default to files in ``data_dir``.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = Path(".")
    db_path: Path | None = None
    """Default: ``data_dir / "pigeon-relay.db"``."""
    blob_dir: Path | None = None
    """Default: ``data_dir / "pigeon-relay-blobs"``."""
    synchronous: SyncMode = SyncMode.FULL
    store_writer: StoreWriter = StoreWriter.THREAD
    store_url: str | None = field(default=None, repr=False)
    """None: the SQLite file. ``postgresql://…``: a PostgreSQL database that several nodes
    share (the ``postgres`` extra). Not in the repr: a DSN may hold a password."""
    store_schema: str = "pigeon"
    """The PostgreSQL schema the relay's tables live in."""
    bus_url: str | None = field(default=None, repr=False)
    """None: the in-process bus. ``redis://…``: Redis pub/sub between the nodes of one
    database (the ``redis`` extra)."""
    bus_prefix: str = "pigeon"
    """Prefix of the relay's Redis channels (nodes of one database use the same one)."""

    message_ttl_ms: int = MAX_MESSAGE_TTL_MS
    max_pending_per_mailbox: int = 10_000
    """Undelivered envelopes one mailbox may hold (the store refuses more: QUOTA_EXCEEDED)."""
    max_frame_size: int = MAX_FRAME_SIZE
    max_connections: int = 10_000

    blob_max_size: int = 1024 * 1024 * 1024
    """Largest file (all its chunks) a client may reserve; protocol allows up to 4 GiB."""
    blob_max_chunk_size: int = 16 * 1024 * 1024
    blob_ttl_ms: int = MAX_MESSAGE_TTL_MS
    """Blobs live as long as the messages whose manifests name them."""
    blob_token_ttl_ms: int = _DAY_MS
    """Validity of an upload or download token: long enough to resume on a bad network."""
    blob_quota_per_day: int = 4 * 1024 * 1024 * 1024
    """Bytes one account may reserve for files per day (a token bucket of this capacity,
    refilled over a day; each chunk also counts 4 KiB, the least a file costs on disk).
    At least ``blob_max_size``, or the largest files could never be reserved."""

    tls_cert: Path | None = None
    tls_key: Path | None = None

    invite_only: bool = False

    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    access_log: bool = True
    metrics: bool = True
    """Serve ``/metrics`` (needs the ``metrics`` extra, prometheus-client)."""

    conn_credit_capacity: float = 200.0
    conn_credit_refill_per_s: float = 20.0
    mailbox_credit_capacity: float = 500.0
    mailbox_credit_refill_per_s: float = 50.0
    mailbox_credit_buckets: int = 100_000
    """Per-mailbox buckets kept in memory (least recently used evicted first)."""
    misbehaviour_threshold: int = 5
    """Malformed or oversize frames tolerated on one connection before it is closed."""
    lookup_credit_capacity: float = 20.0
    """Burst of ``FetchBundle`` and ``LookupUsername`` requests, per connection and per
    client address (each consumes prekeys or probes the directory)."""
    lookup_credit_refill_per_s: float = 0.5
    challenge_window_ms: int = 60_000
    """How long after ``Challenge`` an ``Auth`` or ``Register`` is accepted."""
    delivery_window: int = 1000
    """Unacked deliveries per mailbox and connection; more follow as acks arrive."""
    max_pending_writes: int = 4096
    """Queued store writes above which the relay stops reading sockets (backpressure)."""
    prekeys_low_threshold: int = 10
    """One-time prekeys of either kind below which the owner gets ``PrekeysLow``."""
    rotation_grace_ms: int = 7 * _DAY_MS
    """How long a rotated-away mailbox keeps accepting sends unless the owner says."""

    sweep_interval_ms: int = 60_000
    push_timeout_ms: int = 5_000
    push_concurrency: int = 16
    push_allow_http: bool = False
    """Accept ``http://`` push URLs (tests and LAN setups); production wants ``https://``."""
    shutdown_timeout_ms: int = 10_000

    relay_id: bytes | None = None
    """None: read ``<db stem>.id``, created on first start."""
    secret_file: Path | None = None
    """None: ``<db stem>.secret`` beside the database."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("port must be 0..65535")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls-cert and tls-key go together")
        if not 0 < self.message_ttl_ms <= MAX_MESSAGE_TTL_MS:
            raise ConfigError("message-ttl must be positive and at most 30 days")
        if self.relay_id is not None and len(self.relay_id) not in (16, 32):
            raise ConfigError("relay-id must be 16 or 32 bytes")
        positive = (
            "max_pending_per_mailbox", "max_frame_size", "max_connections", "blob_max_size",
            "blob_max_chunk_size", "blob_ttl_ms", "blob_token_ttl_ms", "blob_quota_per_day",
            "conn_credit_capacity",
            "conn_credit_refill_per_s", "mailbox_credit_capacity",
            "mailbox_credit_refill_per_s", "mailbox_credit_buckets", "misbehaviour_threshold",
            "lookup_credit_capacity", "lookup_credit_refill_per_s", "challenge_window_ms",
            "delivery_window", "max_pending_writes", "prekeys_low_threshold",
            "rotation_grace_ms",
            "sweep_interval_ms", "push_timeout_ms", "push_concurrency", "shutdown_timeout_ms",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive")
        if self.blob_quota_per_day < self.blob_max_size:
            raise ConfigError("blob-quota must be at least blob-max-size")
        if self.store_url is not None and not self.store_url.startswith(
                ("postgresql://", "postgres://")):
            raise ConfigError("store-url must be a postgresql:// URL")
        if not _IDENTIFIER.match(self.store_schema):
            raise ConfigError("store-schema must be a lower-case identifier (a-z, 0-9, _)")
        if self.bus_url is not None and not self.bus_url.startswith(
                ("redis://", "rediss://", "unix://")):
            raise ConfigError("bus-url must be a redis://, rediss:// or unix:// URL")
        if not _IDENTIFIER.match(self.bus_prefix):
            raise ConfigError("bus-prefix must be a lower-case identifier (a-z, 0-9, _)")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError("log-level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")

    def check_shared_identity(self) -> None:
        """Raise ConfigError if a relay on a shared database would make up its own
        identity: every node of one database must bind logins to the same relay id and
        sign blob tokens with the same key, so with ``store_url`` both are given."""
        if self.store_url is not None and (self.relay_id is None or self.secret_file is None):
            raise ConfigError(
                "store-url needs relay-id and secret-file, the same on every node of the "
                "database (relay id: 32 hex digits, e.g. from `openssl rand -hex 16`; the "
                "secret file is created on first start, then copied to the other nodes)")

    @property
    def database(self) -> Path:
        """The SQLite file."""
        return self.db_path if self.db_path is not None else self.data_dir / "pigeon-relay.db"

    @property
    def blobs(self) -> Path:
        """The blob folder."""
        return self.blob_dir if self.blob_dir is not None else self.data_dir / "pigeon-relay-blobs"

    @property
    def relay_id_path(self) -> Path:
        return self.database.with_suffix(".id")

    @property
    def secret_path(self) -> Path:
        return self.secret_file if self.secret_file is not None else (
            self.database.with_suffix(".secret")
        )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# --------------------------------------------------------------------------- parsers

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": _DAY_MS, None: 1000}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_duration(text: str) -> int:
    """``"30d"`` -> milliseconds. A bare number is seconds. Raises ConfigError."""
    m = _DURATION.match(text)
    if m is None:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 30d, 12h, 15m, 90s, 250ms)")
    return round(float(m.group(1)) * _DURATION_MS[m.group(2)])


def format_duration(ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if ms and ms % _DURATION_MS[unit] == 0:
            return f"{ms // _DURATION_MS[unit]}{unit}"
    return f"{ms}ms"


def parse_size(text: str) -> int:
    """``"16MiB"``, ``"16M"``, ``"64k"`` or ``"1000"`` -> bytes (binary units). Raises
    ConfigError."""
    m = _SIZE.match(text)
    if m is None:
        raise ConfigError(f"not a size: {text!r} (use e.g. 1GiB, 16MiB, 64KiB, 1000)")
    unit = (m.group(2) or "").lower()[:1]
    return int(m.group(1)) * _SIZE_MULT[unit]


def format_size(n: int) -> str:
    for unit, mult in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"not a boolean: {text!r} (use 1/0, true/false, yes/no, on/off)")


def _parse_port(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"not a port: {text!r}") from None


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"not an integer: {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"not a number: {text!r}") from None


def _parse_relay_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ConfigError("relay-id must be hex") from None
    if len(raw) not in (16, 32):
        raise ConfigError("relay-id must be 16 or 32 bytes (32 or 64 hex digits)")
    return raw


def _parse_enum(kind: type[enum.StrEnum]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        for member in kind:
            if member.value.lower() == text.strip().lower():
                return member
        choices = ", ".join(m.value for m in kind)
        raise ConfigError(f"{text!r} is not one of {choices}")

    return parse


# --------------------------------------------------------------------------- option table


@dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    """One operator-facing setting: a :class:`RelayConfig` field, flag and variable."""

    name: str
    """The :class:`RelayConfig` field."""
    flag: str
    parse: Callable[[str], Any] = field(repr=False)
    help: str
    metavar: str = "VALUE"
    flag_only_bool: bool = False
    """A switch (``--invite-only``): given means true; the variable takes 1/0."""

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.removeprefix("--").replace("-", "_").upper()

    def default_text(self) -> str:
        """The default as the operator's guide shows it."""
        value = getattr(RelayConfig(), self.name)
        if value is None:
            return {
                "db_path": "`<data-dir>/pigeon-relay.db`",
                "blob_dir": "`<data-dir>/pigeon-relay-blobs`",
                "relay_id": "random, kept in `<db stem>.id` beside the database",
                "secret_file": "`<db stem>.secret`",
                "store_url": "unset: the SQLite file",
                "bus_url": "unset: in-process",
            }.get(self.name, "unset")
        if self.parse is parse_duration:
            return f"`{format_duration(value)}`"
        if self.parse is parse_size:
            return f"`{format_size(value)}`"
        if isinstance(value, bool):
            return "`1`" if value else "`0`"
        if isinstance(value, enum.Enum):
            return f"`{value.value}`"
        if isinstance(value, float) and value.is_integer():
            return f"`{int(value)}`"
        return f"`{value}`"


def _o(fld: str, flag: str, parse: Callable[[str], Any], help: str, metavar: str = "VALUE",
       *, switch: bool = False) -> Option:
    return Option(name=fld, flag=flag, parse=parse, help=help, metavar=metavar,
                  flag_only_bool=switch)


OPTIONS: Final[tuple[Option, ...]] = (
    _o("host", "--host", str, "address to listen on", "ADDR"),
    _o("port", "--port", _parse_port, "TCP port; 0 picks a free one (printed on stdout)", "PORT"),
    _o("data_dir", "--data-dir", Path, "folder for the database and blob folder", "DIR"),
    _o("db_path", "--db", Path, "SQLite database file", "FILE"),
    _o("blob_dir", "--blob-dir", Path, "folder for file blobs", "DIR"),
    _o("synchronous", "--synchronous", _parse_enum(SyncMode),
       "SQLite durability: FULL (power loss), NORMAL (process crash), OFF (tests)", "MODE"),
    _o("store_writer", "--store-writer", _parse_enum(StoreWriter),
       "where the SQLite writer runs: process (a child process) or thread", "MODE"),
    _o("store_url", "--store-url", str,
       "PostgreSQL database shared by several nodes (postgresql://…; prefer the variable: "
       "a password on the command line is visible to other users)", "URL"),
    _o("store_schema", "--store-schema", str, "PostgreSQL schema of the relay's tables",
       "NAME"),
    _o("bus_url", "--bus-url", str, "Redis for notifications between nodes (redis://…)",
       "URL"),
    _o("bus_prefix", "--bus-prefix", str, "prefix of the relay's Redis channels", "NAME"),
    _o("message_ttl_ms", "--message-ttl", parse_duration,
       "how long undelivered envelopes are kept (at most 30d)", "DURATION"),
    _o("max_pending_per_mailbox", "--max-pending", _parse_int,
       "undelivered envelopes one mailbox may hold", "N"),
    _o("max_frame_size", "--max-frame-size", parse_size, "largest WebSocket frame", "SIZE"),
    _o("max_connections", "--max-connections", _parse_int, "concurrent WebSocket connections",
       "N"),
    _o("blob_max_size", "--blob-max-size", parse_size, "largest file a client may upload",
       "SIZE"),
    _o("blob_max_chunk_size", "--blob-max-chunk-size", parse_size, "largest single chunk",
       "SIZE"),
    _o("blob_ttl_ms", "--blob-ttl", parse_duration, "how long blobs are kept", "DURATION"),
    _o("blob_token_ttl_ms", "--blob-token-ttl", parse_duration,
       "validity of blob upload/download tokens", "DURATION"),
    _o("blob_quota_per_day", "--blob-quota", parse_size,
       "file bytes one account may reserve per day (each chunk counts 4 KiB more)", "SIZE"),
    _o("tls_cert", "--tls-cert", Path, "PEM certificate (chain); enables HTTPS/WSS", "FILE"),
    _o("tls_key", "--tls-key", Path, "PEM private key of --tls-cert", "FILE"),
    _o("invite_only", "--invite-only", parse_bool,
       "registration needs an invite code (see `admin invite`)", switch=True),
    _o("log_level", "--log-level", str.upper, "DEBUG, INFO, WARNING or ERROR", "LEVEL"),
    _o("log_format", "--log-format", _parse_enum(LogFormat), "text or json (JSON lines)",
       "FORMAT"),
    _o("access_log", "--access-log", parse_bool, "log one line per HTTP request (1/0)", "BOOL"),
    _o("metrics", "--metrics", parse_bool, "serve /metrics (1/0)", "BOOL"),
    _o("conn_credit_capacity", "--conn-credit-capacity", _parse_float,
       "burst of sends per connection", "N"),
    _o("conn_credit_refill_per_s", "--conn-credit-refill", _parse_float,
       "sustained sends per second per connection", "N"),
    _o("mailbox_credit_capacity", "--mailbox-credit-capacity", _parse_float,
       "burst of envelopes into one mailbox", "N"),
    _o("mailbox_credit_refill_per_s", "--mailbox-credit-refill", _parse_float,
       "sustained envelopes per second into one mailbox", "N"),
    _o("mailbox_credit_buckets", "--mailbox-credit-buckets", _parse_int,
       "per-mailbox buckets kept in memory", "N"),
    _o("misbehaviour_threshold", "--misbehaviour-threshold", _parse_int,
       "bad frames tolerated before a connection is closed", "N"),
    _o("lookup_credit_capacity", "--lookup-credit-capacity", _parse_float,
       "burst of bundle fetches and username lookups per connection and per address", "N"),
    _o("lookup_credit_refill_per_s", "--lookup-credit-refill", _parse_float,
       "sustained bundle fetches and username lookups per second", "N"),
    _o("challenge_window_ms", "--challenge-window", parse_duration,
       "how long a login challenge may be answered", "DURATION"),
    _o("delivery_window", "--delivery-window", _parse_int,
       "unacked deliveries per mailbox and connection", "N"),
    _o("max_pending_writes", "--max-pending-writes", _parse_int,
       "queued store writes above which the relay stops reading sockets", "N"),
    _o("prekeys_low_threshold", "--prekeys-low", _parse_int,
       "one-time prekeys left below which the owner is told", "N"),
    _o("rotation_grace_ms", "--rotation-grace", parse_duration,
       "how long a rotated-away mailbox still accepts sends", "DURATION"),
    _o("sweep_interval_ms", "--sweep-interval", parse_duration,
       "how often expired envelopes and blobs are deleted", "DURATION"),
    _o("push_timeout_ms", "--push-timeout", parse_duration, "timeout of one push wake-up",
       "DURATION"),
    _o("push_concurrency", "--push-concurrency", _parse_int, "wake-ups in flight at once", "N"),
    _o("push_allow_http", "--push-allow-http", parse_bool,
       "accept http:// push URLs (tests, LAN)", switch=True),
    _o("shutdown_timeout_ms", "--shutdown-timeout", parse_duration,
       "grace period for connections on SIGTERM", "DURATION"),
    _o("relay_id", "--relay-id", _parse_relay_id,
       "fixed relay id, hex (several nodes on one database)", "HEX"),
    _o("secret_file", "--secret-file", Path,
       "key file of blob tokens and the Redis bus (shared by nodes)", "FILE"),
)


def config_from(
    flags: Mapping[str, str | bool | None],
    env: Mapping[str, str],
    *,
    base: RelayConfig | None = None,
) -> RelayConfig:
    """Build a config from parsed command-line values and the environment.

    Args:
        flags: ``{field: raw value}`` as given on the command line (None: not given; True
            for a given switch).
        env: the environment (``os.environ``); ``PIGEON_RELAY_*`` variables are read.
        base: the values to start from (default: :class:`RelayConfig` defaults).

    Raises:
        ConfigError: a value does not parse or is out of range; the message names the
            flag or variable.
    """
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw = flags.get(opt.name)
        source = opt.flag
        if raw is None and opt.env in env:
            raw, source = env[opt.env], opt.env
        if raw is None:
            continue
        try:
            values[opt.name] = raw if isinstance(raw, bool) else opt.parse(raw)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    try:
        return replace(base, **values) if base is not None else RelayConfig(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # pragma: no cover - parsers return right types
        raise ConfigError(str(exc)) from None


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayIdentity:
    """The relay id (public) and the blob-token key (secret), loaded at startup."""

    relay_id: bytes
    token_secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.relay_id) not in (16, 32):
            raise ConfigError("relay id must be 16 or 32 bytes")
        if len(self.token_secret) < TOKEN_SECRET_LEN:
            raise ConfigError(f"token secret must be at least {TOKEN_SECRET_LEN} bytes")


def _read_hex_file(path: Path, what: str, sizes: tuple[int, ...]) -> bytes:
    text = path.read_text(encoding="ascii").strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{what} file {path} is not hex") from None
    if len(raw) not in sizes:
        raise ConfigError(f"{what} file {path} holds {len(raw)} bytes, expected {sizes}")
    return raw


def _create_once(path: Path, value: bytes, *, mode: int) -> None:
    """Write *value* as hex to *path* unless it exists, atomically and race-free."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(value.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        # link() fails if another process created the file first: keep theirs.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_token_secret(config: RelayConfig) -> bytes:
    """Read the deployment's token secret, never creating it (``pigeon-relay admin``).

    Raises:
        ConfigError: no such file, or a malformed one.
    """
    if not config.secret_path.exists():
        raise ConfigError(f"no token secret at {config.secret_path} (--secret-file)")
    return _read_hex_file(config.secret_path, "token secret",
                          tuple(range(TOKEN_SECRET_LEN, 129)))


def load_or_create_identity(config: RelayConfig) -> RelayIdentity:
    """Read the relay id and token secret, creating the files on first start (blocking I/O).

    Raises:
        ConfigError: a file exists but is malformed.
        OSError: the folder is not writable.
    """
    config.check_shared_identity()
    config.database.parent.mkdir(parents=True, exist_ok=True)
    relay_id = config.relay_id
    if relay_id is None:
        if not config.relay_id_path.exists():
            _create_once(config.relay_id_path, secrets.token_bytes(RELAY_ID_LEN), mode=0o644)
        relay_id = _read_hex_file(config.relay_id_path, "relay id", (16, 32))
    secret_path = config.secret_path
    if not secret_path.exists():
        secret_path.parent.mkdir(parents=True, exist_ok=True)
        _create_once(secret_path, secrets.token_bytes(TOKEN_SECRET_LEN), mode=0o600)
    secret = _read_hex_file(secret_path, "token secret", tuple(range(TOKEN_SECRET_LEN, 129)))
    return RelayIdentity(relay_id=relay_id, token_secret=secret)
