"""The one config loader: TOML file -> validated, typed settings.

Every setting has a default, so the daemon runs with no file at all. Unknown keys are errors.
Secrets are never in the file itself: they are read from a file or an environment variable
that the file names, and are held as `SecretStr` so they never reach a log line.
"""

from __future__ import annotations

import os
import pathlib
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

CONFIG_ENV = "CAMPAIGND_CONFIG"
SYSTEM_CONFIG = pathlib.Path("/etc/campaignd/config.toml")

Role = Literal["viewer", "operator", "admin"]


class _Section(BaseModel):
    # nan and inf are TOML floats too; no setting means either.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SecretSource(_Section):
    """Where a secret comes from: exactly one of a file or an environment variable."""

    file: pathlib.Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretSource:
        if (self.file is None) == (self.env is None):
            raise ValueError("set exactly one of 'file' or 'env'")
        return self

    def read(self) -> SecretStr:
        """Read the secret now; raises ConfigError naming the source when it is missing."""
        if self.file is not None:
            try:
                value = self.file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    [Problem("file", f"cannot read secret file {self.file}: {exc.strerror}")]
                ) from exc
            if not value:
                raise ConfigError([Problem("file", f"secret file {self.file} is empty")])
            return SecretStr(value)
        assert self.env is not None
        env_value = os.environ.get(self.env, "").strip()
        if not env_value:
            raise ConfigError([Problem("env", f"environment variable {self.env} is not set or empty")])
        return SecretStr(env_value)


class DaemonSettings(_Section):
    """Process-wide settings."""

    state_directory: pathlib.Path | None = None
    runtime_directory: pathlib.Path | None = None
    shutdown_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    migrate_on_start: bool = True


class LogSettings(_Section):
    """Logging to stdout."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class DatabaseSettings(_Section):
    """Where campaigns are stored."""

    url: str = ""
    password: SecretSource | None = None
    pool_size: Annotated[int, Field(ge=1, le=200)] = 10

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value:
            return value
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            parsed = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"is not a database URL: {exc}") from None
        if parsed.password:
            # A password in the file would end up in backups and diffs; it comes from a secret source.
            raise ValueError("must not contain a password; use database.password.file or .env")
        return value


class TlsSettings(_Section):
    """TLS for the TCP listener; with client_ca_file, clients must present a certificate (mTLS)."""

    cert_file: pathlib.Path
    key_file: pathlib.Path
    client_ca_file: pathlib.Path | None = None


class TokenSettings(_Section):
    """A bearer token and the role it grants."""

    name: Annotated[str, Field(min_length=1, max_length=63)]
    role: Role
    secret: SecretSource


class GrpcSettings(_Section):
    """The API listeners."""

    socket: pathlib.Path | None = None
    socket_mode: Annotated[str, Field(pattern=r"^0?[0-7]{3}$")] = "0660"
    tcp_address: str = ""
    tls: TlsSettings | None = None
    max_message_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 4 * 1024 * 1024
    # Serve the listeners from a process of their own, apart from the sending (api/front.py).
    front_process: bool = True

    @model_validator(mode="after")
    def _tcp_needs_tls(self) -> GrpcSettings:
        if self.tcp_address and self.tls is None:
            raise ValueError("tcp_address requires a [grpc.tls] section: the TCP listener is TLS only")
        return self


class AuthSettings(_Section):
    """Bearer tokens accepted on the TCP listener. Unix-socket peers are trusted by file mode."""

    tokens: list[TokenSettings] = []

    @field_validator("tokens")
    @classmethod
    def _unique_names(cls, tokens: list[TokenSettings]) -> list[TokenSettings]:
        names = [t.name for t in tokens]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"token names must be unique: {', '.join(duplicated)}")
        return tokens


class LimitSettings(_Section):
    """Limits applied at call time; a reload changes them without a restart."""

    max_page_size: Annotated[int, Field(ge=1, le=10_000)] = 1000
    max_watchers: Annotated[int, Field(ge=1, le=100_000)] = 1000


class EngineSettings(_Section):
    """The sending engine."""

    # false: this daemon answers the API but sends nothing (another daemon on the database sends).
    enabled: bool = True
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 200
    # Batches of one channel sent at once by this daemon.
    batches_in_flight: Annotated[int, Field(ge=1, le=64)] = 4
    # SENDING longer than this without a live owner renewing the lease: back to QUEUED if its send
    # never started, else FAILED(ambiguous) or, on a channel that chose RESEND, sent again.
    sending_timeout: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    # SENT this long without a receipt: ASSUMED_DELIVERED, on channel types that have receipts.
    assume_delivered_after: Annotated[float, Field(gt=0, le=30 * 86_400)] = 600.0
    # Delay before the first retry; each further retry waits twice as long.
    retry_delay: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    tick_interval: Annotated[float, Field(gt=0, le=60)] = 0.25
    # Channel type -> how many campaigns may have such a channel RUNNING at once (SPEC §4.4).
    slots: dict[str, Annotated[int, Field(ge=1)]] = {}
    # What a launch does when no slot is free: wait in QUEUED, or be refused.
    slot_policy: Literal["queue", "refuse"] = "queue"
    # How long a transport that could not be reached rests before it is tried again.
    transport_rest: Annotated[float, Field(gt=0, le=3600)] = 10.0
    guard_max_failure_percent: Annotated[float, Field(gt=0, le=100)] = 5.0
    guard_min_sends: Annotated[int, Field(ge=1)] = 100
    # A database that cannot be written for longer than this pauses the channels this daemon runs
    # (cause SYSTEM); after a shorter fault they go on by themselves. Results are kept either way.
    storage_pause_after: Annotated[float, Field(gt=0, le=86_400)] = 30.0


class ClusterSettings(_Section):
    """Several daemons on one PostgreSQL database (docs/operations.md#running-a-cluster); unused
    on SQLite, where one daemon is the whole cluster."""

    # Seconds between two renewals of this daemon's membership (and, on the leader, its lease).
    heartbeat_interval: Annotated[float, Field(gt=0, le=60)] = 1.0
    # A member whose heartbeat is older than this has stopped: its leases are taken over and
    # barriers stop waiting for it. It fences itself (closes every gate) before that. At least
    # 1 s: PostgreSQL ends a frozen member's open transaction after the lease, and no sooner than
    # that (store.db.create_engine), so a shorter lease would lapse with its row locks still held.
    heartbeat_lease: Annotated[float, Field(ge=1, le=600, validate_default=True)] = 10.0

    @field_validator("heartbeat_lease")
    @classmethod
    def _lease_outlasts_heartbeats(cls, lease: float, info: ValidationInfo) -> float:
        interval = info.data.get("heartbeat_interval")
        if interval is not None and lease < 3 * interval:
            raise ValueError(
                f"must be at least 3 times heartbeat_interval ({3 * interval:g} s); it is {lease:g} s"
            )
        return lease


class TemplateSettings(_Section):
    """Rendering message templates, in worker processes; a restart applies changes."""

    # Seconds one recipient's message may take to render; past it the render is stopped.
    timeout: Annotated[float, Field(gt=0, le=60)] = 1.0
    # Address space of each worker process, in MiB: a template that needs more fails.
    memory_limit_mib: Annotated[int, Field(ge=64, le=65_536)] = 256
    # Worker processes: templates render on other cores than the daemon's event loop.
    workers: Annotated[int, Field(ge=1, le=64)] = 2


class MetricsSettings(_Section):
    """The Prometheus endpoint."""

    # host:port to serve /metrics on, e.g. "127.0.0.1:9464"; "" serves none.
    address: Annotated[str, Field(pattern=r"^$|^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}$")] = ""


class HttpTlsSettings(_Section):
    """TLS for the HTTP listener."""

    cert_file: pathlib.Path
    key_file: pathlib.Path


class HttpSettings(_Section):
    """The HTTP listener for what recipients and providers reach over HTTP: one-click
    unsubscribe, open and click tracking, and the routes channel plugins mount."""

    # host:port to listen on, e.g. "127.0.0.1:8025"; "" (the default) serves nothing.
    address: Annotated[str, Field(pattern=r"^$|^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}$")] = ""
    tls: HttpTlsSettings | None = None
    # The URL recipients reach the listener at (behind a reverse proxy, its public URL), without a
    # trailing slash; "" means http(s)://address.
    public_url: Annotated[str, Field(pattern=r"^$|^https?://[^\s?#]+[^/\s?#]$", max_length=500)] = ""
    # Larger request bodies are refused with 413.
    max_body_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024


class AudienceSettings(_Section):
    """How contacts are read."""

    # ISO 3166 region for phone numbers written without a country code; "" means such numbers are refused.
    default_region: Annotated[str, Field(pattern=r"^([A-Z]{2})?$")] = ""


class PluginSettings(_Section):
    """Channel plugins beyond the installed distributions found through entry points."""

    load: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")]] = []


NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"


class TransportSettings(_Section):
    """One transport: how channels of a type reach their provider (e.g. an SMTP relay)."""

    # The channel type it serves, as a loaded plugin declares it.
    type: Annotated[str, Field(pattern=NAME_PATTERN)]
    # Messages per second over any 1-second window; 0 means no limit.
    rate: Annotated[float, Field(ge=0, le=1_000_000)] = 0
    # Sends in flight at once (for SMTP: connections).
    concurrency: Annotated[int, Field(ge=1, le=1000)] = 10
    # The plugin's own settings; the plugin declares and validates them.
    options: dict[str, Any] = {}


class Settings(_Section):
    """All settings of one daemon."""

    daemon: DaemonSettings = DaemonSettings()
    log: LogSettings = LogSettings()
    database: DatabaseSettings = DatabaseSettings()
    grpc: GrpcSettings = GrpcSettings()
    auth: AuthSettings = AuthSettings()
    limits: LimitSettings = LimitSettings()
    plugins: PluginSettings = PluginSettings()
    audience: AudienceSettings = AudienceSettings()
    engine: EngineSettings = EngineSettings()
    cluster: ClusterSettings = ClusterSettings()
    templates: TemplateSettings = TemplateSettings()
    metrics: MetricsSettings = MetricsSettings()
    http: HttpSettings = HttpSettings()
    # Transport name -> transport; channels name these in their transport shares.
    transports: dict[Annotated[str, Field(pattern=NAME_PATTERN)], TransportSettings] = {}
    # Channel type -> that type's options, which its plugin declares and validates.
    channel_types: dict[Annotated[str, Field(pattern=NAME_PATTERN)], dict[str, Any]] = {}

    @property
    def state_directory(self) -> pathlib.Path:
        """The directory for the embedded database and other state."""
        return self.daemon.state_directory or default_state_directory()

    @property
    def runtime_directory(self) -> pathlib.Path:
        """The directory for the socket."""
        return self.daemon.runtime_directory or default_runtime_directory()

    @property
    def socket_path(self) -> pathlib.Path:
        """The Unix socket the API listens on."""
        return self.grpc.socket or self.runtime_directory / "campaignd.sock"

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL, with the password filled in from its secret source."""
        url = self.database.url or f"sqlite:///{self.state_directory / 'campaignd.db'}"
        if url.startswith("postgresql:"):
            url = "postgresql+psycopg:" + url.removeprefix("postgresql:")
        if self.database.password is not None:
            from sqlalchemy.engine import make_url

            return (
                make_url(url)
                .set(password=self.database.password.read().get_secret_value())
                .render_as_string(hide_password=False)
            )
        return url


@dataclass(frozen=True)
class Problem:
    """One problem in a config file: the dotted key path and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every reason."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def default_state_directory() -> pathlib.Path:
    """systemd's StateDirectory, else the XDG state home, else /var/lib for root."""
    if env := os.environ.get("STATE_DIRECTORY"):
        return pathlib.Path(env.split(":")[0])
    if os.geteuid() == 0 and not os.environ.get("XDG_STATE_HOME"):
        return pathlib.Path("/var/lib/campaignd")
    base = os.environ.get("XDG_STATE_HOME") or str(pathlib.Path.home() / ".local" / "state")
    return pathlib.Path(base) / "campaignd"


def default_runtime_directory() -> pathlib.Path:
    """systemd's RuntimeDirectory, else the XDG runtime dir, else /run for root, else /tmp."""
    if env := os.environ.get("RUNTIME_DIRECTORY"):
        return pathlib.Path(env.split(":")[0])
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return pathlib.Path(xdg) / "campaignd"
    if os.geteuid() == 0:
        return pathlib.Path("/run/campaignd")
    return pathlib.Path(f"/tmp/campaignd-{os.geteuid()}")  # noqa: S108 - private per-user directory, mode 0700


def _dotted(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
        else:
            parts.append(item)
    return ".".join(parts) or "(top level)"


def validation_problems(exc: ValidationError, within: str = "") -> list[Problem]:
    """The problems of a failed validation, with key paths under `within` (a dotted path)."""
    problems = []
    for err in exc.errors():
        message = (
            "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        )
        prefix: tuple[int | str, ...] = (within,) if within else ()
        problems.append(Problem(_dotted(prefix + tuple(err["loc"])), message))
    return problems


def parse(data: dict[str, Any], *, check_files: bool = True) -> Settings:
    """Validate a parsed TOML document; raises ConfigError listing every problem.

    With `check_files` False the secret and TLS files are not read: for clients such as
    campaignctl that only need to find the socket and may not be allowed to read them.
    """
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc)) from None
    if not check_files:
        return settings
    problems: list[Problem] = []
    for path, source in _secret_sources(settings):
        try:
            source.read()
        except ConfigError as exc:
            problems.extend(Problem(f"{path}.{p.path}", p.message) for p in exc.problems)
    tls = settings.grpc.tls
    if tls is not None:
        for key in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(tls, key)
            if path is not None and not os.access(path, os.R_OK):
                problems.append(Problem(f"grpc.tls.{key}", f"cannot read {path}"))
    if problems:
        raise ConfigError(problems)
    return settings


def _secret_sources(settings: Settings) -> list[tuple[str, SecretSource]]:
    sources = [(f"auth.tokens[{i}].secret", t.secret) for i, t in enumerate(settings.auth.tokens)]
    if settings.database.password is not None:
        sources.append(("database.password", settings.database.password))
    return sources


def load(path: pathlib.Path | None, *, check_files: bool = True) -> Settings:
    """Load settings from `path`, or from $CAMPAIGND_CONFIG or /etc/campaignd/config.toml when they
    exist, or the defaults when there is no file at all. `check_files` as for `parse`."""
    if path is None:
        if env := os.environ.get(CONFIG_ENV):
            path = pathlib.Path(env)
        elif SYSTEM_CONFIG.exists():
            path = SYSTEM_CONFIG
        else:
            return parse({}, check_files=check_files)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(str(path), f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(str(path), "is not UTF-8 text")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem(str(path), f"is not valid TOML: {exc}")]) from None
    return parse(data, check_files=check_files)
