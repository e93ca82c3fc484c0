"""The server's settings, read from `FLOW_*` environment variables (pydantic-settings).

`load_settings()` turns every problem into one `SettingsError` whose message is a single line
that names the variable and says what to put in it: `flowc serve` prints it and stops."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import pydantic
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.db import DEFAULT_DATABASE_URL
from server.ratelimit import DEFAULT_RATE

#: Meta's current versioned Graph API (reference §12: v25.0 is used by every 2026 example).
DEFAULT_GRAPH_API_URL = "https://graph.facebook.com/v25.0"
#: Largest webhook body accepted; Meta batches at most ~1,000 small events per POST.
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_RECLAIM_AFTER = 30.0
DEFAULT_OUTBOX_LEASE_SECONDS = 30.0
DEFAULT_PAGE_SEND_RATE = DEFAULT_RATE

# What to say about a variable that is missing or wrong (the first line of the fix).
_HELP = {
    "app_secret": "your Meta app's App Secret, from App Dashboard > App settings > Basic",
    "verify_token": "the Verify Token you typed in the app's Webhooks settings",
    "secret_key": "a long random string that encrypts page tokens in the database",
    "page_id": "the numeric id of the Facebook Page",
    "page_token": "the Page access token",
    "database_url": "a SQLite path or a postgresql:// URL",
    "graph_api_url": "the Graph API base URL, e.g. " + DEFAULT_GRAPH_API_URL,
    "max_body_bytes": "a size in bytes, e.g. 1048576",
    "admin_token": "a long random string for POST /admin/reload",
    "app_id": "your Meta app's numeric id",
    "reclaim_after": "a number of seconds, e.g. 30",
    "outbox_lease_seconds": "a number of seconds, e.g. 30",
    "page_send_rate": "Send API calls per second per page, e.g. 125",
}


class SettingsError(Exception):
    """A setting is missing or invalid; `str()` is one line for the person starting the server."""


class Settings(BaseSettings):
    """Everything `flowc serve` is configured with. Secrets are `SecretStr`: they never show
    in a repr, a log line or an error message."""

    model_config = SettingsConfigDict(env_prefix="FLOW_", extra="ignore", frozen=True)

    app_secret: SecretStr
    verify_token: SecretStr
    secret_key: SecretStr
    page_id: str | None = None
    page_token: SecretStr | None = None
    #: Our app's id: tells a hand-over to us from one away from us, and our echoes from a
    #: person's. Optional; without it a `pass_thread_control` we receive means "ours".
    app_id: str | None = None
    database_url: str = DEFAULT_DATABASE_URL
    graph_api_url: str = DEFAULT_GRAPH_API_URL
    admin_token: SecretStr | None = None
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0)
    #: Several instances on one database: an event still pending this many seconds after it
    #: arrived is taken over by any instance (its own may have crashed).
    reclaim_after: float = Field(default=DEFAULT_RECLAIM_AFTER, gt=0)
    #: How long an instance owns a conversation's outbound messages without renewing; a
    #: crashed instance's conversations are sent by another after this.
    outbox_lease_seconds: float = Field(default=DEFAULT_OUTBOX_LEASE_SECONDS, gt=0)
    #: Send API calls per second per page from this instance. Meta allows 300 per page in
    #: all: with N instances, set about 250 / N.
    page_send_rate: float = Field(default=DEFAULT_PAGE_SEND_RATE, gt=0)

    @field_validator("app_secret", "verify_token", "secret_key", "page_token", "admin_token")
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty")
        return value

    @field_validator("page_id", "app_id")
    @classmethod
    def _digits(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value.isdigit():
            raise ValueError(f"must be digits, not {value!r}")
        return value

    @field_validator("graph_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http(s) URL, not {value!r}")
        return value

    @model_validator(mode="after")
    def _page_pair(self) -> Settings:
        if (self.page_id is None) != (self.page_token is None):
            given, missing = (
                ("FLOW_PAGE_ID", "FLOW_PAGE_TOKEN")
                if self.page_id
                else ("FLOW_PAGE_TOKEN", "FLOW_PAGE_ID")
            )
            raise ValueError(f"{given} is set but {missing} is not: set both, or neither")
        return self


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the settings from `environ` (default: the process environment) plus `overrides`
    (command-line options win). Raises `SettingsError` with one line for the first problem."""
    try:
        if environ is None:
            return Settings(**overrides)
        values = {
            key[len("FLOW_") :].lower(): value
            for key, value in environ.items()
            if key.startswith("FLOW_") and key[len("FLOW_") :].lower() in Settings.model_fields
        }
        values.update(overrides)
        # Only the given mapping counts: no process environment leaks into a test's settings.
        return _IsolatedSettings(**values)
    except pydantic.ValidationError as e:
        raise SettingsError(_one_line(e)) from None


class _IsolatedSettings(Settings):
    """`Settings` that read nothing from the environment (values come as arguments)."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: Any, init_settings: Any, **_sources: Any
    ) -> tuple[Any, ...]:
        return (init_settings,)


def _one_line(error: pydantic.ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    name = f"FLOW_{field.upper()}" if field else "the settings"
    hint = _HELP.get(field, "")
    if first["type"] == "missing":
        return f"{name} is not set: set it to {hint}" if hint else f"{name} is not set"
    message = str(first["msg"]).removeprefix("Value error, ")
    if not field:
        return message  # a rule between settings names its variables itself
    if first["type"] != "value_error":  # pydantic's own wording: "Input should be …"
        message = "is invalid: " + message[:1].lower() + message[1:]
    return f"{name} {message}" + (f" (expected {hint})" if hint else "")
