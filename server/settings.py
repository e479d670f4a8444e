"""Server configuration: one typed object, read once at start-up.

Sources, later ones winning: defaults, a TOML file, `LIANXIN_*` environment
variables (`LIANXIN_PORT=8470`). A bad value fails loudly at start.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

PREFIX = "LIANXIN_"
CACHED_STATES = 2_000  # see Settings.cached_states
PACKED_STATES = 8_000  # see Settings.packed_states
# A device pushing large changes must not make every reader's page as large.
PAGE_BYTES = 4 * 1024 * 1024  # see Settings.max_page_bytes


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    data_dir: Path = Path("lianxin-data")
    # The data keys' store: back it up apart from the data (default: data_dir/keys).
    keys_dir: Path | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8470
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 8 * 1024 * 1024
    max_batch_changes: Annotated[int, msgspec.Meta(ge=1)] = 1000
    max_pull_limit: Annotated[int, msgspec.Meta(ge=1)] = 5000
    # A pull page also ends once its changes or states pass this many bytes (one always fits).
    max_page_bytes: Annotated[int, msgspec.Meta(ge=1)] = PAGE_BYTES
    request_window_s: Annotated[int, msgspec.Meta(ge=1)] = 300
    max_clock_drift_ms: Annotated[int, msgspec.Meta(ge=0)] = 24 * 60 * 60 * 1000
    # Recently used records whose newest merge state the writer keeps (about 10 KB each).
    cached_states: Annotated[int, msgspec.Meta(ge=1)] = CACHED_STATES
    # And behind those, more kept encoded (about 2 KB each; server.storage.state_cache).
    packed_states: Annotated[int, msgspec.Meta(ge=0)] = PACKED_STATES
    # Sync requests a device may make a minute, in bursts of as many (0: no limit).
    sync_requests_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 600
    # Refused enrolments an address may make a minute, in bursts of as many (0: no limit).
    enrol_failures_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 10
    # Refuse sync requests that are not sealed envelopes (PROTOCOL.md section 14).
    require_sealed: bool = True
    # The supervisor console: sessions end after this long idle, or this long in all.
    session_idle_s: Annotated[int, msgspec.Meta(ge=60)] = 30 * 60
    session_max_s: Annotated[int, msgspec.Meta(ge=60)] = 12 * 60 * 60
    # Sign-in attempts allowed per user name (and per client address) in a window.
    login_max_failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    login_window_s: Annotated[int, msgspec.Meta(ge=1)] = 15 * 60
    # Admins sign in only with an authenticator code (`lianxin user totp`); off only for
    # demos and tests.
    admin_second_factor: bool = True
    # Session cookies only over HTTPS; switch off only to serve the console over plain
    # HTTP on 127.0.0.1 (tests, the demo).
    secure_cookies: bool = True
    # How often a serving office looks whether its audit chain's head is due to be signed
    # (`audit.checkpoint_if_due`): console acts are signed with no push coming (0: never).
    checkpoint_check_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    # The office's clock (an IANA name): the console shows times and dates on it.
    time_zone: str = "Asia/Shanghai"

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.time_zone)
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError(f"time_zone {self.time_zone!r} is not a known time zone") from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @property
    def store_path(self) -> Path:
        return self.data_dir / "lianxin.db"

    @property
    def keys_path(self) -> Path:
        return self.data_dir / "office-keys.json"

    @property
    def key_store_path(self) -> Path:
        return (self.keys_dir or self.data_dir / "keys") / "data-keys.db"


def load_settings(
    file: Path | None = None, env: Mapping[str, str] = os.environ, **overrides: object
) -> Settings:
    """Settings from a TOML file, then the environment, then keyword overrides."""
    values: dict[str, object] = {}
    if file is not None:
        values.update(tomllib.loads(file.read_text()))
    fields = set(Settings.__struct_fields__)
    for key, value in env.items():
        if key.startswith(PREFIX) and key[len(PREFIX) :].lower() in fields:
            values[key[len(PREFIX) :].lower()] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as error:
        raise SystemExit(f"lianxin: bad setting: {error}") from None
