"""The one settings object: every knob typed, documented, tied to one LIVETRACK_* variable.

Built once by an entry point (`Settings()` reads the environment) and passed in;
no other module reads the environment.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, TypeVar

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "number_list"]

_N = TypeVar("_N", int, float)


class Settings(BaseSettings):
    """Configuration for broker, worker, gateway, simulator and benchmarks."""

    model_config = SettingsConfigDict(env_prefix="LIVETRACK_", frozen=True, extra="ignore")

    # --- Kafka -------------------------------------------------------------
    kafka_bootstrap: str = Field(
        "", description="Existing cluster's bootstrap servers; empty = run the embedded local broker."
    )
    kafka_port: int = Field(19092, description="Port of the embedded broker (controller uses port+1).")
    kafka_version: str = Field("4.1.1", description="Apache Kafka version fetched from Maven Central.")
    kafka_home: Path = Field(
        Path.home() / ".cache" / "livetrack" / "kafka",
        description="Where the broker jars are cached (outside git, fetched once).",
    )
    kafka_heap: str = Field("768m", description="Max heap of the embedded broker JVM.")
    kafka_jvm_opts: str = Field(
        "-XX:+UseG1GC -XX:TieredStopAtLevel=1",
        description="Embedded broker JVM options; C1-only JIT cuts a fresh broker's CPU by 2/3 (bench-broker).",
    )
    replication_factor: int = Field(1, description="Replication factor of created topics.")
    partitions: int = Field(8, description="Partitions of the keyed data topics.")
    locations_retention_ms: int = Field(
        7 * 24 * 3600 * 1000, description="Retention of the canonical `locations` log (replay)."
    )
    push_retention_ms: int = Field(24 * 3600 * 1000, description="Retention of the `push` topic.")

    # --- local state -------------------------------------------------------
    state_dir: Path = Field(Path(".livetrack"), description="Broker data, worker RocksDB, pid and log files.")

    # --- worker ------------------------------------------------------------
    app_id: str = Field("livetrack", description="Faust app id: names the consumer group and changelogs.")
    topic_prefix: str = Field(
        "", description="Prefix of every declared topic the worker reads and writes ('' = live; a shadow's: replay)."
    )
    worker_web_port: int = Field(6066, description="Faust worker web server port (binds 127.0.0.1).")
    worker_instance_id: str = Field(
        "", description="Static consumer-group member id ('' = hostname-webport); unique per worker."
    )
    worker_session_timeout_s: float = Field(
        15.0, description="A worker silent this long loses its partitions to the others."
    )
    worker_batch_max: int = Field(500, description="Max events an agent takes per batch.")
    worker_batch_within_s: float = Field(0.005, description="Max wait to fill an agent batch.")
    table_cache_max: int = Field(200_000, description="Decoded table values cached per table (write-through).")
    fault_at: str = Field(
        "", description="Testing only: kill the worker at a commit step, `agent:point[:n]` (agents.runtime.Faults)."
    )
    switch_interval_ms: float = Field(
        1.0, gt=0, description="Python's GIL switch interval in the worker and gateway (Python's default: 5 ms)."
    )
    h3_resolution: int = Field(9, ge=0, le=15, description="H3 resolution for driver cell membership.")
    max_speed_mps: float = Field(
        83.0, description="Implied speed above which a ping is an impossible jump (300 km/h)."
    )
    push_min_distance_m: float = Field(10.0, description="Push a driver move at least this far...")
    push_min_interval_ms: int = Field(5000, description="...or after this long since the last push.")
    membership_refresh_ms: int = Field(
        30_000, description="Re-announce an unchanged cell membership this often (keeps TTL fresh)."
    )
    membership_ttl_ms: int = Field(90_000, description="A driver silent this long leaves its cell.")

    # --- dispatch ----------------------------------------------------------
    dispatch_k_min: int = Field(1, ge=0, le=10, description="H3 k-ring a ride's candidate search starts with.")
    dispatch_k_max: int = Field(3, ge=0, le=10, description="Widest k-ring searched when too few candidates.")
    dispatch_min_candidates: int = Field(3, ge=1, description="Widen the ring until this many untried candidates.")
    dispatch_candidate_max_age_ms: int = Field(
        60_000, description="Candidates must have been seen in their cell this recently (cell_to_drivers)."
    )
    dispatch_driver_max_age_ms: int = Field(
        30_000, description="A driver whose last ping is older is refused a reservation (offline)."
    )
    offer_ttl_ms: int = Field(10_000, description="How long a driver holds an offer (the reservation's TTL).")
    offer_grace_ms: int = Field(
        500, description="The ride gives up on an offer this long after its TTL (the driver's own expiry wins)."
    )
    reserve_timeout_ms: int = Field(3_000, description="No answer to a reservation this long: try the next driver.")
    dispatch_retry_ms: int = Field(1_000, description="All candidates busy: look again after this long...")
    dispatch_max_wait_ms: int = Field(30_000, description="...until the ride is this old, then NO_DRIVERS.")
    dispatch_tick_ms: int = Field(100, description="How often the rides agent checks its deadlines.")
    dispatch_speed_mps: float = Field(
        8.0, gt=0, description="Travel speed where no per-cell speed is known: ETAs, and a cell's DEFAULT speed "
        "when its own moves are too few (8 m/s = 29 km/h)."
    )
    eta_push_threshold_s: float = Field(30.0, description="Push a new ETA to the rider when it changed by this much.")
    ride_push_min_distance_m: float = Field(
        50.0, description="Push the assigned driver's position to the rider after a move this long."
    )
    ride_view_replay_ms: int = Field(
        6 * 3600 * 1000, description="The gateway rebuilds its view of rides from this much of `rides` on boot."
    )
    ride_reply_timeout_s: float = Field(
        3.0, description="How long a ride API call waits for the ride's outcome before answering 202."
    )

    # --- orders -----------------------------------------------------------
    order_arriving_m: float = Field(
        150.0, ge=0, description="The pipeline sets an order ARRIVING when its courier is this close to the drop-off..."
    )
    order_arriving_eta_s: float = Field(60.0, ge=0, description="...or this few seconds away from it.")
    order_reply_timeout_s: float = Field(
        3.0, gt=0, description="How long an orders API call waits for the gateway's view to show what it sent."
    )
    order_view_replay_ms: int = Field(
        30 * 24 * 3600 * 1000, gt=0, description="The gateway rebuilds its view of orders from this much of `orders`."
    )
    idempotency_keys_max: int = Field(
        100_000, ge=1, description="Idempotency-Key answers a gateway node remembers (the oldest are forgotten)."
    )

    # --- features (supply, demand, surge, travel speed per H3 cell) ---------
    features_windows_s: str = Field(
        "60,120,240,480", description="Window sizes (s), each as a tumbling and a hopping window."
    )
    features_hop_s: int = Field(30, ge=1, description="Hopping windows advance by this (s); divides every size.")
    features_grace_ms: int = Field(
        10_000, ge=0, description="A window closes this long (event time) after its end; later events count as late."
    )
    features_max_future_ms: int = Field(
        120_000, ge=0, description="Events stamped further than this ahead of the wall clock are refused (bad clocks)."
    )
    features_ring_weights: str = Field(
        "1.0,0.5", description="k-ring smoothing weight per grid distance 0..k (k = count - 1)."
    )
    features_primary_window_s: int = Field(
        120, description="The hopping window whose features feed surge lookups and the cell:{h3} channel."
    )
    features_surge_floor: float = Field(1.0, ge=1.0, description="Surge multiplier never below this (fares never discount).")
    features_surge_cap: float = Field(3.0, ge=0, description="Surge multiplier never above this.")
    features_surge_sensitivity: float = Field(
        0.5, ge=0, description="Surge = 1 + sensitivity * (ratio - 1), ratio = (demand + prior) / (supply + prior)."
    )
    features_surge_prior: float = Field(
        1.0, gt=0, description="Pseudo-count added to smoothed demand and supply (no division by zero, calm when thin)."
    )
    features_speed_min_moving_s: float = Field(
        20.0, ge=0, description="Moving time (s) a cell's drivers need in a window for the cell's own speed."
    )
    features_speed_min_mps: float = Field(
        0.5, ge=0, description="Consecutive fixes slower than this are a parked driver, not travel."
    )
    features_speed_max_gap_ms: int = Field(
        30_000, gt=0, description="Consecutive fixes further apart in time are not one segment of travel."
    )
    features_running_ms: int = Field(
        0, ge=0, description="Also emit running (not final) primary-window features at most this often per cell; 0 = off."
    )
    features_stale_ms: int = Field(
        600_000, gt=0, description="Surge and speed lookups ignore features whose window ended longer ago than this."
    )

    # --- gateway -----------------------------------------------------------
    gateway_host: str = Field("127.0.0.1", description="Gateway bind address.")
    gateway_port: int = Field(8080, description="Gateway HTTP/Socket.IO port.")
    ingest_max_items: int = Field(500, description="Max pings in one POST /v1/locations.")
    ingest_max_body_bytes: int = Field(1 << 20, description="Max request body; larger gets 413.")
    ingest_linger_ms: float = Field(
        20.0, description="Ingest flushes at most this often under load (a lone ping goes at once)."
    )
    ingest_batch_max: int = Field(500, description="Pings per LocationBatch record at most.")
    cors_origins: str = Field("", description="Comma-separated origins allowed on /live ('' = same origin).")
    api_rate_per_s: float = Field(
        100.0, gt=0, description="API requests a second per token (bursts of twice that); ops and system unlimited. Over it: 429."
    )
    live_event_rate_per_s: float = Field(
        100.0, gt=0, description="/live events a second per connection (bursts of twice that); ops and system unlimited."
    )
    live_max_subscriptions: int = Field(10_000, gt=0, description="Channels one /live connection may hold; ops and system unlimited.")
    live_max_connections_per_token: int = Field(
        100, gt=0, description="/live connections open at once per token subject; ops and system unlimited."
    )

    # --- push delivery (gateway) ---------------------------------------------
    push_history_max: int = Field(256, ge=1, description="Updates kept per channel for resume (`since`), at most.")
    push_history_age_ms: int = Field(
        600_000, ge=1000,
        description="Updates kept per channel for resume, by age; a booting gateway rebuilds this window from `push`.",
    )
    push_location_ttl_ms: int = Field(
        30_000, ge=0, description="TTL of driver location pushes: never delivered later than this after they are sent."
    )
    push_ack_priority: int = Field(
        5, ge=0, le=9,
        description="Pushes of at least this priority are events: acked, retried until their TTL, never coalesced.",
    )
    push_retry_ms: int = Field(2000, ge=10, description="Resend an unacked event this long after it was sent.")
    push_send_backlog: int = Field(
        16, ge=1, description="A connection with this many unsent frames is slow: its updates queue, coalesced."
    )
    push_pending_max: int = Field(
        5000, ge=1, description="A slow connection with more updates queued than this is dropped (it resumes)."
    )
    push_tick_ms: int = Field(50, ge=5, description="How often slow connections' queues and due retries are served.")

    # --- notifications -------------------------------------------------------
    notify_tick_ms: int = Field(250, ge=10, description="How often the notifications timer fires due steps.")
    notify_escalation_s: float = Field(
        20.0, ge=0, description="An escalation step (SMS) goes this long after the first unless the user acked."
    )
    notify_dedupe_window_s: int = Field(
        24 * 3600, ge=1, description="A notification request repeating an idempotency key within this is a duplicate."
    )
    notify_inbox_max: int = Field(50, ge=1, description="Notifications kept per user's inbox (the oldest go).")
    notify_caps: str = Field(
        "sms:10,email:30,webpush:60", description="Non-critical sends per user and hour, per channel (channel:n,...)."
    )
    notify_send_concurrency: int = Field(64, ge=1, description="Provider sends in flight per senders batch.")
    notify_retry_attempts: int = Field(4, ge=1, description="Tries per provider for a transient failure...")
    notify_retry_first_s: float = Field(0.5, gt=0, description="...the first backoff (doubling, jittered +-20 %)...")
    notify_retry_max_s: float = Field(8.0, gt=0, description="...capped here; a Retry-After longer than that wins.")
    notify_provider_timeout_s: float = Field(5.0, gt=0, description="One provider call's time limit.")
    notify_breaker_failures: int = Field(5, ge=1, description="Failures in a row that open a provider's circuit...")
    notify_breaker_cooldown_s: float = Field(30.0, gt=0, description="...for this long (the next provider is used).")
    notify_smtp_servers: str = Field(
        "127.0.0.1:2525", description="SMTP servers host:port in failover order ('' = no e-mail channel)."
    )
    notify_smtp_starttls: bool = Field(False, description="Upgrade SMTP connections with STARTTLS.")
    notify_smtp_username: str = Field("", description="SMTP AUTH user ('' = no AUTH).")
    notify_smtp_password: SecretStr = Field(SecretStr(""), description="SMTP AUTH password.")
    notify_email_from: str = Field("livetrack <noreply@livetrack.local>", description="From: of notification mail.")
    notify_sms_base_urls: str = Field(
        "http://127.0.0.1:2526", description="Twilio Messages API base URLs in failover order ('' = no SMS channel)."
    )
    notify_twilio_account_sid: str = Field("AC00000000000000000000000000000000", description="Twilio account SID.")
    notify_twilio_auth_token: SecretStr = Field(SecretStr("local-simulator"), description="Twilio auth token.")
    notify_sms_from: str = Field("+15005550006", description="Sender number of notification SMS.")
    notify_vapid_key: Path | None = Field(
        None, description="VAPID private key (PEM); None = one made once in state_dir/vapid.pem (0600)."
    )
    notify_vapid_subject: str = Field("mailto:ops@livetrack.local", description="VAPID `sub` claim.")
    notify_api_rate_per_s: float = Field(
        200.0, gt=0, description="Notification API calls per second per caller (a burst of twice that)."
    )
    notify_sinks_port: int = Field(
        2527, description="`livetrack demo`'s local push service and mailbox/SMS pages (SMTP 2525, SMS 2526)."
    )

    # --- auth ----------------------------------------------------------------
    jwt_secret: SecretStr = Field(
        SecretStr(""), description="HS256 key for tokens; '' = a random dev key kept in state_dir/jwt.key (0600)."
    )
    jwt_public_key: Path | None = Field(
        None, description="PEM public key file; when set, RS256 tokens signed by its private key are accepted too."
    )
    jwt_issuer: str = Field("livetrack", description="`iss` every token must carry.")
    jwt_leeway_s: float = Field(5.0, description="Clock skew tolerated on `exp`/`iat`.")
    token_ttl_s: int = Field(3600, description="Default lifetime of tokens minted by `livetrack token`.")

    # --- simulator ---------------------------------------------------------
    sim_drivers: int = Field(200, description="Simulated drivers.")
    sim_rate_hz: float = Field(1.0, description="Pings per second per simulated driver.")
    sim_city: str = Field("37.7749,-122.4194", description="Simulated city centre 'lat,lng'.")
    sim_radius_m: float = Field(4000.0, description="Radius of the simulated area.")
    sim_ride_rate_hz: float = Field(0.5, description="Ride requests per second by simulated riders (0 = none).")
    sim_accept_p: float = Field(0.8, ge=0, le=1, description="Probability a simulated driver accepts an offer...")
    sim_decline_p: float = Field(0.1, ge=0, le=1, description="...declines it (else it ignores it until the TTL).")
    sim_order_rate_hz: float = Field(0.2, ge=0, description="Orders per second the simulated shop creates (0 = none).")
    sim_couriers: int = Field(10, ge=1, description="The simulated shop's couriers (drivers shop-courier-001...).")
    sim_legacy_rate_hz: float = Field(
        1.0, ge=0, description="Queue rows per second the demo's simulated legacy job commits (0 = none)."
    )

    # --- legacy bridge (PostgreSQL, Kafka Connect) ---
    postgres_dsn: str = Field(
        "", description="Existing PostgreSQL's libpq DSN (wal_level=logical); empty = run the local PostgreSQL 15."
    )
    postgres_port: int = Field(15432, description="Port of the local PostgreSQL (binds 127.0.0.1).")
    postgres_bin: Path = Field(
        Path("/usr/lib/postgresql/15/bin"), description="initdb and postgres of the local server (Debian's postgresql-15)."
    )
    postgres_os_user: str = Field(
        "postgres", description="System user the local server runs as when livetrack runs as root (postgres refuses root)."
    )
    postgres_password: SecretStr = Field(
        SecretStr(""), description="Local server's password of user livetrack; '' = a random one kept in "
        "state_dir/postgres/password (0600)."
    )
    postgres_slot: str = Field("livetrack_legacy", description="Logical replication slot Debezium reads the queue from.")
    postgres_publication: str = Field(
        "livetrack_legacy", description="pgoutput publication of the queue table (Debezium creates it: order_events only)."
    )
    connect_rest_port: int = Field(18083, description="Kafka Connect worker's REST port (binds 127.0.0.1).")
    connect_home: Path = Field(
        Path.home() / ".cache" / "livetrack" / "connect",
        description="Where the Kafka Connect and Debezium jars are cached (outside git, fetched once).",
    )
    connect_debezium_version: str = Field("3.6.1.Final", description="Debezium version fetched from Maven Central.")
    connect_heap: str = Field("512m", description="Max heap of the Kafka Connect worker JVM.")
    connect_jvm_opts: str = Field(
        "-XX:+UseSerialGC -XX:TieredStopAtLevel=1", description="Connect worker JVM options (C1-only JIT, as the broker)."
    )
    connect_group_id: str = Field(
        "livetrack-connect", description="Connect worker group; names its internal topics `<id>-configs`, `-offsets`, `-status`."
    )
    connect_connector: str = Field("livetrack-legacy-orders", description="Name of the Debezium connector.")
    connect_offset_flush_ms: int = Field(
        1000, ge=10, description="Connect commits source offsets this often: what a killed worker sends again, at most."
    )
    connect_poll_ms: int = Field(
        50, ge=1, description="Debezium hands its queued rows to Connect at least this often (poll.interval.ms)."
    )
    connect_retry_wait_ms: int = Field(
        2000, ge=0, description="Debezium reconnects this long after losing PostgreSQL (a retriable error)."
    )

    @field_validator("features_windows_s")
    @classmethod
    def _window_sizes(cls, v: str) -> str:
        sizes = number_list(v, int)
        if not sizes or min(sizes) < 1:
            raise ValueError("window sizes must be positive whole seconds, e.g. 60,120,240,480")
        return v

    @field_validator("features_ring_weights")
    @classmethod
    def _ring_weights(cls, v: str) -> str:
        weights = number_list(v, float)
        if not weights or weights[0] <= 0 or min(weights) < 0:
            raise ValueError("ring weights must be >= 0 with the cell's own (the first) > 0, e.g. 1.0,0.5")
        return v

    @field_validator("postgres_slot", "postgres_publication")
    @classmethod
    def _pg_name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9_]{1,63}", v):
            raise ValueError("slot and publication names are 1-63 of a-z 0-9 _ (PostgreSQL's rule for slots)")
        return v

    @model_validator(mode="after")
    def _features_consistent(self) -> "Settings":
        sizes = number_list(self.features_windows_s, int)
        if any(size % self.features_hop_s for size in sizes):
            raise ValueError(f"features_hop_s {self.features_hop_s} must divide every window size {sizes}")
        if self.features_primary_window_s not in sizes:
            raise ValueError(f"features_primary_window_s must be one of the window sizes {sizes}")
        if self.features_surge_floor > self.features_surge_cap:
            raise ValueError("features_surge_floor must not exceed features_surge_cap")
        return self

    @property
    def embedded_kafka(self) -> bool:
        """True when livetrack runs its own broker."""
        return not self.kafka_bootstrap

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers to connect to, embedded or external."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"

    @property
    def embedded_postgres(self) -> bool:
        """True when livetrack runs its own PostgreSQL for the legacy bridge."""
        return not self.postgres_dsn

    @property
    def connect_url(self) -> str:
        return f"http://127.0.0.1:{self.connect_rest_port}"


def number_list(text: str, kind: Callable[[str], _N]) -> list[_N]:
    """Comma-separated numbers (a list setting); ValueError when one is not a number."""
    return [kind(part) for part in text.split(",") if part.strip()]
