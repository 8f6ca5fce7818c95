"""Gateway settings: environment variables `ADAUDIT_*`, an optional YAML file, then defaults.

Precedence (highest first): keyword arguments (what the `adaudit serve` flags pass), environment
variables (`ADAUDIT_BACKEND=embedded`, `ADAUDIT_SHADOW_FRACTION=0.1`, ...), the YAML file named by
`ADAUDIT_SETTINGS_FILE` (keys are the field names below), the defaults. Unknown keys in the file
and inconsistent combinations (a canary fraction without a canary model, the embedded backend
without a model folder) are refused at start-up with a message naming the setting.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict,
                               YamlConfigSettingsSource)

from .addresses import parse_targets
from .security import parse_api_keys

SETTINGS_FILE_VARIABLE = "ADAUDIT_SETTINGS_FILE"


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ADAUDIT_", extra="forbid", protected_namespaces=(),
                                      coerce_numbers_to_str=True,  # YAML `primary_version: 2`
                                      hide_input_in_errors=True)  # a bad key entry or database URL is no secret leak

    backend: Literal["triton", "embedded"] = "triton"
    # how the gateway talks to Triton: its HTTP/REST protocol (binary tensors; triton_http.py), the default
    # as its calls cost less (benchmarks/results/serving-history.md), or gRPC (triton_grpc.py)
    triton_protocol: Literal["http", "grpc"] = "http"
    # load spreading (addresses.py): a Triton URL may name several host:port (comma-separated); its names are
    # looked up again every triton_resolve_interval_s (and after a failed call) and calls go round robin over
    # the addresses; a connection (HTTP) or channel (gRPC) older than triton_connection_max_age_s is not reused
    triton_resolve_interval_s: float = Field(5.0, gt=0, le=3600)
    triton_connection_max_age_s: float = Field(60.0, gt=0)
    triton_url: str = "127.0.0.1:8000"  # host:port of Triton's endpoint for triton_protocol (HTTP 8000, gRPC 8001)
    # host:port of the Triton that serves the shadow model, and the one that serves the canary; None: triton_url.
    # The gateway keeps one backend per distinct address, so a shadow on its own Triton (its own GPU) never
    # queues in front of the primary's requests, nor counts in the primary Triton's queue time (its HPA)
    shadow_triton_url: str | None = None
    canary_triton_url: str | None = None
    model_dir: Path | None = None  # embedded: MODEL_DIR/<model name>/ (a model folder or numbered versions)
    # triton: the model repository Triton serves, read-only, for the tokenizer each version was exported with
    # (REPO/<model>/<version>/model/); needed by a model whose export says it has its own tokenizer
    model_repository: Path | None = None

    primary_model: str = "student"
    primary_version: str | None = None  # None: the latest version the backend serves
    shadow_model: str | None = "teacher"
    shadow_version: str | None = None
    shadow_fraction: float = Field(0.0, ge=0.0, le=1.0)
    shadow_queue_size: int = Field(256, ge=1)
    shadow_workers: int = Field(2, ge=1, le=64)
    shadow_batch: int = Field(8, ge=1, le=1024)  # mirrored ads one shadow call may carry (shadow.py)
    shadow_busy_fraction: float = Field(1.0, gt=0.0, le=1.0)  # at most this share of the time in shadow calls
    canary_model: str | None = None
    canary_version: str | None = None
    canary_fraction: float = Field(0.0, ge=0.0, le=1.0)

    database_url: str = "sqlite:///adaudit-decisions.db"
    # a server database's connection pool, per gateway process: pool_size kept open, up to max_overflow more
    # under load; every pod may hold their sum, so pods x (pool_size + max_overflow) must stay under the
    # server's max_connections (PostgreSQL's default 100, 3 of them reserved)
    database_pool_size: int = Field(5, ge=1, le=100)
    database_max_overflow: int = Field(10, ge=0, le=100)
    # whether the gateway upgrades the decision log's schema at start (`adaudit db upgrade`'s migrations);
    # None: on SQLite, where it is the only writer (`adaudit serve`, `make run`), and not on a server
    # database, which several gateways share: there the Helm chart's Job or an operator upgrades it first,
    # and a gateway whose database is behind stays unready (503 from /readyz naming `adaudit db upgrade`)
    database_migrate_on_start: bool | None = None

    max_batch: int = Field(16, ge=1, le=1024)
    max_text_chars: int = Field(500, ge=1)
    max_image_bytes: int = Field(5 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(25_000_000, ge=1)  # width x height; larger is a decompression bomb
    max_body_bytes: int | None = Field(None, ge=1)  # cap; by default the room the ads need at the limits
    request_timeout_s: float = Field(5.0, gt=0)  # per backend call, and the decision log's wait for a lock

    # security: API keys as "name:sha256 hex digest of the key" (comma-separated or a JSON list); none: open
    api_keys: Annotated[list[str], NoDecode] = []
    rate_limit_per_s: float = Field(0.0, ge=0)  # requests per second per caller (token bucket); 0: no limit
    rate_limit_burst: int = Field(0, ge=0)  # the bucket's size; 0: max(1, rate_limit_per_s)
    cors_origins: Annotated[list[str], NoDecode] = []  # browser origins allowed; none: CORS off
    # overload and shutdown
    backend_calls_in_flight: int = Field(2, ge=1, le=64)  # per model: ads of requests that wait meanwhile go together
    max_in_flight: int = Field(64, ge=1)  # /v1 requests served at once; more are answered 503 at once
    shutdown_drain_s: float = Field(10.0, ge=0)  # at stop, how long the shadow queue may take to drain

    # audit decisions (docs/decisions.md): a folder of policy YAMLs (None: the shipped default.yaml and
    # strict.yaml), the one a request that names none gets, and the API key names allowed to reload them
    # (POST /v1/policies/reload; none listed: any caller the API keys admit)
    policy_dir: Path | None = None
    default_policy: str = Field("default", min_length=1, max_length=64)
    # evidence (explain=true, service/evidence.py, docs/evidence.md): occlusion of the copy's first
    # explain_max_chars characters, first a variant per clause (a copy of one clause: per run of explain_window
    # adjacent words), then, only where that span carries the class, per run of 1 to explain_window words inside
    # it (a clause only when it has more than explain_window words); and of the picture, first the whole picture,
    # then, only where that carries the class, each cell of an explain_grid x explain_grid grid. One backend
    # batch per level: the second goes out only when a span or the picture needs it
    explain_max_chars: int = Field(64, ge=1, le=2000)
    explain_window: int = Field(4, ge=1, le=16)
    explain_grid: int = Field(4, ge=1, le=16)
    policy_admins: Annotated[list[str], NoDecode] = []
    # the review loop (docs/console.md): keep the picture and copy of each ad answered `review` in the decision
    # log (table review_items) so a reviewer sees the ad in the queue and the console; off: the queue lists
    # the decisions without the ad (a platform that shows reviewers the ad from its own store)
    review_store_ads: bool = True
    # the share of automatic passes and blocks also put in the review queue as an audit sample (docs/console.md),
    # so the reviewed precision of automatic decisions is measured on ads nobody chose; 0 turns it off
    review_sample_rate: float = Field(0.01, ge=0.0, le=1.0)

    @field_validator("api_keys", "cors_origins", "policy_admins", mode="before")
    @classmethod
    def _list(cls, value):
        if isinstance(value, str):  # from the environment: a JSON list or comma-separated
            value = value.strip()
            value = json.loads(value) if value.startswith("[") else [v for v in value.split(",")]
        return [str(v).strip() for v in value if str(v).strip()]

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        parse_api_keys(value)  # refuses a malformed entry, naming it by position (never echoing a secret)
        return value

    @field_validator("triton_url", "shadow_triton_url", "canary_triton_url")
    @classmethod
    def _triton_addresses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_targets(value)  # host:port, or several comma-separated: refuses the entry that is not
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "GatewaySettings":
        if self.backend == "embedded" and self.model_dir is None:
            raise ValueError("backend 'embedded' needs model_dir (ADAUDIT_MODEL_DIR): a folder with one "
                             "subfolder per model name")
        if self.canary_fraction > 0 and not self.canary_model:
            raise ValueError("canary_fraction > 0 needs canary_model (ADAUDIT_CANARY_MODEL)")
        if self.shadow_fraction > 0 and not self.shadow_model:
            raise ValueError("shadow_fraction > 0 needs shadow_model (ADAUDIT_SHADOW_MODEL)")
        if self.policy_dir is not None and not self.policy_dir.is_dir():
            raise ValueError(f"policy_dir (ADAUDIT_POLICY_DIR) {self.policy_dir} is not a folder of policy YAMLs")
        return self

    def migrates_on_start(self) -> bool:
        """database_migrate_on_start, or where it is unset: True for a SQLite database, False for a server's."""
        if self.database_migrate_on_start is not None:
            return self.database_migrate_on_start
        return self.database_url.startswith("sqlite")

    def triton_urls(self) -> dict[str, str]:
        """The Triton address of each target: {"primary": ..., "canary": ..., "shadow": ...}."""
        return {"primary": self.triton_url, "canary": self.canary_triton_url or self.triton_url,
                "shadow": self.shadow_triton_url or self.triton_url}

    def body_limit(self, ads: int) -> int:
        """Largest request body for `ads` ads: their base64 images and copy, capped by max_body_bytes."""
        per_ad = self.max_image_bytes * 4 // 3 + 4 * self.max_text_chars + 1024
        limit = ads * per_ad + 4096
        return min(limit, self.max_body_bytes) if self.max_body_bytes is not None else limit

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource):
        sources = [init_settings, env_settings]
        file = os.environ.get(SETTINGS_FILE_VARIABLE)
        if file:
            if not Path(file).is_file():
                raise ValueError(f"{SETTINGS_FILE_VARIABLE}={file}: no such settings file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=file))
        return tuple(sources)
