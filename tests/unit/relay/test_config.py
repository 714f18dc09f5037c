"""RelayConfig, the option table, parsers and the persisted relay identity."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from protocol import limits as L
from relay import cli
from relay.config import (
    MAX_FRAME_SIZE,
    MAX_MESSAGE_TTL_MS,
    OPTIONS,
    ConfigError,
    LogFormat,
    RelayConfig,
    RelayIdentity,
    SyncMode,
    config_from,
    format_duration,
    format_size,
    load_or_create_identity,
    parse_bool,
    parse_duration,
    parse_size,
)
from relay.push import MAX_PUSH_URL_SIZE

OPS_GUIDE = Path(__file__).parents[3] / "docs" / "relay.md"


def test_zero_configuration_defaults() -> None:
    c = RelayConfig()
    assert (c.host, c.port, c.scheme) == ("127.0.0.1", 8765, "http")
    assert c.database == Path("pigeon-relay.db")
    assert c.blobs == Path("pigeon-relay-blobs")
    assert c.relay_id_path == Path("pigeon-relay.id")
    assert c.secret_path == Path("pigeon-relay.secret")
    assert c.message_ttl_ms == 30 * 24 * 3600 * 1000
    assert c.synchronous is SyncMode.FULL and c.log_format is LogFormat.TEXT
    assert not c.invite_only and not c.tls
    d = RelayConfig(data_dir=Path("/srv/pigeon"), db_path=Path("/db/r.sqlite"))
    assert d.blobs == Path("/srv/pigeon/pigeon-relay-blobs")
    assert d.secret_path == Path("/db/r.secret") and d.relay_id_path == Path("/db/r.id")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.port = 1  # type: ignore[misc]


def test_limits_agree_with_the_protocol() -> None:
    assert MAX_FRAME_SIZE == L.MAX_FRAME_SIZE
    assert MAX_MESSAGE_TTL_MS == L.MAX_TTL_MS
    assert MAX_PUSH_URL_SIZE == L.MAX_PUSH_URL_SIZE
    assert RelayConfig().blob_max_size <= L.MAX_FILE_SIZE
    assert 16 in L.RELAY_ID_SIZES


@pytest.mark.parametrize(("text", "ms"), [
    ("30d", 30 * 86_400_000), ("12h", 43_200_000), ("15m", 900_000), ("90s", 90_000),
    ("250ms", 250), ("2", 2000), ("1.5s", 1500), (" 7d ", 7 * 86_400_000),
])
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize(("text", "n"), [
    ("1GiB", 1024**3), ("16MiB", 16 * 1024**2), ("16M", 16 * 1024**2), ("64k", 65536),
    ("64KB", 65536), ("1000", 1000), ("10b", 10),
])
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n


def test_parsers_refuse_garbage_and_format_back() -> None:
    for bad in ("", "d", "1y", "-1s", "1 2"):
        with pytest.raises(ConfigError):
            parse_duration(bad)
    for bad in ("", "1TB", "-5", "1.5M"):
        with pytest.raises(ConfigError):
            parse_size(bad)
    with pytest.raises(ConfigError):
        parse_bool("maybe")
    assert [parse_bool(t) for t in ("1", "yes", "ON", "0", "off", "")] == [
        True, True, True, False, False, False]
    assert format_duration(30 * 86_400_000) == "30d" and format_duration(1500) == "1500ms"
    assert format_size(16 * 1024**2) == "16MiB" and format_size(1000) == "1000"


def test_command_line_beats_environment_beats_default() -> None:
    env = {"PIGEON_RELAY_PORT": "9000", "PIGEON_RELAY_HOST": "0.0.0.0",
           "PIGEON_RELAY_INVITE_ONLY": "yes", "PIGEON_RELAY_MESSAGE_TTL": "7d",
           "PIGEON_RELAY_LOG_FORMAT": "JSON", "PIGEON_RELAY_SYNCHRONOUS": "normal",
           "UNRELATED": "x"}
    c = config_from({"port": "0"}, env)
    assert c.port == 0 and c.host == "0.0.0.0" and c.invite_only
    assert c.message_ttl_ms == 7 * 86_400_000
    assert c.log_format is LogFormat.JSON and c.synchronous is SyncMode.NORMAL
    assert config_from({}, {}) == RelayConfig()


def test_errors_name_the_flag_or_variable() -> None:
    with pytest.raises(ConfigError, match="--port"):
        config_from({"port": "eighty"}, {})
    with pytest.raises(ConfigError, match="PIGEON_RELAY_BLOB_TTL"):
        config_from({}, {"PIGEON_RELAY_BLOB_TTL": "soon"})
    with pytest.raises(ConfigError, match="30 days"):
        config_from({"message_ttl_ms": "31d"}, {})
    with pytest.raises(ConfigError, match="relay-id"):
        config_from({"relay_id": "abcd"}, {})


@pytest.mark.parametrize("kwargs", [
    {"port": 70000}, {"tls_cert": Path("c.pem")}, {"message_ttl_ms": 0},
    {"conn_credit_capacity": 0.0}, {"misbehaviour_threshold": 0}, {"log_level": "LOUD"},
    {"relay_id": b"short"},
])
def test_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RelayConfig(**kwargs)  # type: ignore[arg-type]


def test_option_table_is_consistent() -> None:
    fields = {f.name for f in dataclasses.fields(RelayConfig)}
    names = [o.name for o in OPTIONS]
    assert len(set(names)) == len(names) and set(names) <= fields
    assert fields - set(names) == set()  # every setting is reachable by flag and variable
    envs = [o.env for o in OPTIONS]
    assert len(set(envs)) == len(envs)
    assert all(e.startswith("PIGEON_RELAY_") for e in envs)
    for opt in OPTIONS:
        assert opt.default_text()


def test_cli_parser_is_built_from_the_table() -> None:
    args = cli._serve_parser().parse_args(["--invite-only", "--port", "0", "--db", "x.db"])
    c = config_from(vars(args), {})
    assert c.invite_only and c.port == 0 and c.database == Path("x.db")


def test_operators_guide_documents_every_option() -> None:
    guide = OPS_GUIDE.read_text(encoding="utf-8")
    for opt in OPTIONS:
        assert f"`{opt.flag}`" in guide, opt.flag
        assert f"`{opt.env}`" in guide, opt.env


def test_identity_is_created_once_and_stable(tmp_path: Path) -> None:
    config = RelayConfig(data_dir=tmp_path / "data")
    first = load_or_create_identity(config)
    assert len(first.relay_id) == 16 and len(first.token_secret) == 32
    assert (tmp_path / "data" / "pigeon-relay.secret").stat().st_mode & 0o777 == 0o600
    again = load_or_create_identity(config)
    assert again == first
    assert "token_secret" not in repr(first) and first.token_secret.hex() not in repr(first)
    # No temp files are left behind.
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "pigeon-relay.id", "pigeon-relay.secret"]


def test_concurrent_first_starts_agree(tmp_path: Path) -> None:
    config = RelayConfig(data_dir=tmp_path)
    results: list[RelayIdentity] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        results.append(load_or_create_identity(config))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(results) == 8 and len(set(results)) == 1


def test_explicit_relay_id_and_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "shared.secret"
    secret.write_text("ab" * 32 + "\n")
    config = RelayConfig(data_dir=tmp_path, relay_id=bytes(range(32)), secret_file=secret)
    ident = load_or_create_identity(config)
    assert ident.relay_id == bytes(range(32)) and ident.token_secret == b"\xab" * 32
    assert not config.relay_id_path.exists()


def test_malformed_identity_files_are_refused(tmp_path: Path) -> None:
    config = RelayConfig(data_dir=tmp_path)
    config.relay_id_path.write_text("not hex")
    with pytest.raises(ConfigError, match="relay id"):
        load_or_create_identity(config)
    config.relay_id_path.write_text("00" * 16)
    config.secret_path.write_text("00" * 8)  # too short for an HMAC key
    with pytest.raises(ConfigError, match="token secret"):
        load_or_create_identity(config)


# --------------------------------------------------------------------------- scale-out

PG = "postgresql://relay:hunter2@db.example:5432/pigeon"


@pytest.mark.parametrize("kwargs", [
    {"store_url": "mysql://db/pigeon"},
    {"store_url": "/var/lib/pigeon.db"},
    {"bus_url": "http://redis:6379"},
    {"store_schema": "Pigeon"},
    {"store_schema": "pigeon; DROP TABLE accounts"},
    {"bus_prefix": "a:b"},
])
def test_scale_out_urls_and_names_are_checked(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RelayConfig(**kwargs)  # type: ignore[arg-type]


def test_scale_out_settings_from_the_environment_and_not_in_reprs() -> None:
    env = {"PIGEON_RELAY_STORE_URL": PG, "PIGEON_RELAY_BUS_URL": "redis://:pw@cache:6379/1",
           "PIGEON_RELAY_STORE_SCHEMA": "relay_a", "PIGEON_RELAY_BUS_PREFIX": "relay_a"}
    c = config_from({}, env)
    assert (c.store_url, c.bus_url) == (PG, "redis://:pw@cache:6379/1")
    assert (c.store_schema, c.bus_prefix) == ("relay_a", "relay_a")
    assert "hunter2" not in repr(c) and ":pw@" not in repr(c)


def test_a_shared_database_needs_a_given_relay_id_and_secret(tmp_path: Path) -> None:
    """Nodes that made up their own relay ids would refuse each other's logins."""
    secret = tmp_path / "token.secret"
    for partial in ({}, {"relay_id": bytes(16)}, {"secret_file": secret}):
        config = RelayConfig(data_dir=tmp_path, store_url=PG, **partial)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="relay-id and secret-file"):
            config.check_shared_identity()
        with pytest.raises(ConfigError, match="relay-id and secret-file"):
            load_or_create_identity(config)
    assert not secret.exists() and not (tmp_path / "pigeon-relay.id").exists()
    shared = RelayConfig(data_dir=tmp_path, store_url=PG, relay_id=bytes(range(16)),
                         secret_file=secret)
    shared.check_shared_identity()
    assert load_or_create_identity(shared).relay_id == bytes(range(16))
    RelayConfig(data_dir=tmp_path).check_shared_identity()  # SQLite: made up on first start


def test_serve_refuses_a_shared_database_without_identity(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli._serve_main(["--store-url", PG, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "relay-id and secret-file" in err and "usage:" not in err
