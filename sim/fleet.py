"""Fleet simulator: drivers drive between random waypoints and ping `POST /v1/locations`.

The drivers are pure state (`Driver`, `step`, `ping`, `tick`), testable without a
network; `run_fleet` is the wiring: a clock, an HTTP session, retries and stats.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol, TypedDict

import aiohttp

from infra import clock
from infra.settings import Settings

__all__ = [
    "City",
    "Driver",
    "FleetStats",
    "Ping",
    "advance",
    "backoff_s",
    "chunks",
    "make_fleet",
    "ping",
    "request_headers",
    "run_fleet",
    "step",
    "tick",
]

log = logging.getLogger(__name__)

EARTH_RADIUS_M = 6_371_008.8
MIN_SPEED_MPS, MAX_SPEED_MPS = 5.0, 15.0
MAX_TURN_DEG_S = 45.0  # steering toward the waypoint; turning radius <= 15 / 0.785 = 19 m
HEADING_NOISE_DEG = 2.0  # wander per sqrt(second) of driving
SPEED_NOISE_MPS = 0.5  # speed random walk per sqrt(second)
ARRIVE_M = 40.0  # waypoint reached; above twice the turning radius so nobody circles one
SUBSTEP_S = 1.0  # a long gap (a stalled gateway) is driven in steps of at most this
WAYPOINT_FRACTION = 0.95  # waypoints keep off the edge of the area
GPS_ACCURACY_M = (3.0, 8.0)  # reported accuracy; the position noise sigma is half of it

CHUNK_MAX = 200  # pings per request
TICK_MAX_S = 0.1  # pings are staggered over the period and sent in ticks of at most this
SUMMARY_EVERY_S = 10.0
HTTP_TIMEOUT_S = 10.0
RETRY_STATUSES = frozenset({502, 503, 504})  # nothing was accepted; the worker drops duplicates anyway
RETRY_ATTEMPTS = 6  # then the chunk counts as failed and the fleet moves on
BACKOFF_BASE_S, BACKOFF_MAX_S = 0.25, 5.0
DEFAULT_SEED = 7


class Ping(TypedDict):
    """One item of a `POST /v1/locations` body."""

    driver_id: str
    seq: int
    lat: float
    lng: float
    ts: int
    accuracy: float
    speed: float
    bearing: float


@dataclass(frozen=True)
class City:
    """The simulated area: a circle around a centre, in a local east/north metric plane."""

    lat: float
    lng: float
    radius_m: float

    @classmethod
    def parse(cls, latlng: str, radius_m: float) -> City:
        """A City from 'lat,lng' text (settings.sim_city)."""
        try:
            lat, lng = (float(part) for part in latlng.split(","))
        except ValueError:
            raise ValueError(f"city must be 'lat,lng', got {latlng!r}") from None
        if not (-85 <= lat <= 85 and -180 <= lng <= 180) or radius_m <= 0:
            raise ValueError(f"bad city {latlng!r} or radius {radius_m}")
        return cls(lat, lng, radius_m)

    def to_latlng(self, x_m: float, y_m: float) -> tuple[float, float]:
        """Degrees of the point x_m east and y_m north of the centre (equirectangular: fine at city scale)."""
        lat = self.lat + math.degrees(y_m / EARTH_RADIUS_M)
        lng = self.lng + math.degrees(x_m / (EARTH_RADIUS_M * math.cos(math.radians(self.lat))))
        return lat, lng

    def from_latlng(self, lat: float, lng: float) -> tuple[float, float]:
        """(x_m east, y_m north) of a point: the inverse of to_latlng."""
        y = math.radians(lat - self.lat) * EARTH_RADIUS_M
        x = math.radians(lng - self.lng) * EARTH_RADIUS_M * math.cos(math.radians(self.lat))
        return x, y

    def random_point(self, rng: random.Random) -> tuple[float, float]:
        """A uniformly random (x_m, y_m) inside the area, off its edge."""
        r = self.radius_m * WAYPOINT_FRACTION * math.sqrt(rng.random())
        theta = rng.uniform(0, 2 * math.pi)
        return r * math.sin(theta), r * math.cos(theta)


@dataclass(frozen=True, slots=True)
class Driver:
    """One simulated driver: where it is, where it is going, what it sends next."""

    driver_id: str
    x_m: float  # east of the city centre
    y_m: float  # north of the city centre
    heading_deg: float  # compass bearing: 0 north, 90 east
    speed_mps: float
    wx_m: float  # the waypoint it drives to
    wy_m: float
    seq: int  # seq of its next ping
    t_s: float  # clock time (monotonic) of this state
    due_s: float  # clock time its next ping is due


def driver_id(i: int) -> str:
    """Id of the i-th (0-based) simulated driver: sim-0001, sim-0002, ..."""
    return f"sim-{i + 1:04d}"


def bearing_deg(x_m: float, y_m: float, to_x_m: float, to_y_m: float) -> float:
    """Compass bearing from one point of the plane to another, in [0, 360)."""
    return math.degrees(math.atan2(to_x_m - x_m, to_y_m - y_m)) % 360


def make_fleet(
    n: int, city: City, rng: random.Random, *, now_s: float, period_s: float, seq_base: int = 1,
    name: Callable[[int], str] = driver_id,
) -> list[Driver]:
    """n drivers (ids `name(0)`..`name(n - 1)`) at random places, their pings staggered evenly over one period."""
    return [_new_driver(name(i), city, rng, now_s, now_s + period_s * i / n, seq_base) for i in range(n)]


def _new_driver(did: str, city: City, rng: random.Random, now_s: float, due_s: float, seq: int) -> Driver:
    x, y = city.random_point(rng)
    wx, wy = city.random_point(rng)
    speed = rng.uniform(MIN_SPEED_MPS, MAX_SPEED_MPS)
    return Driver(did, x, y, bearing_deg(x, y, wx, wy), speed, wx, wy, seq, now_s, due_s)


def step(driver: Driver, dt_s: float, city: City, rng: random.Random) -> Driver:
    """`driver` after driving dt_s seconds (a long gap is driven in sub-steps of a second)."""
    while dt_s > 1e-9:
        h = min(dt_s, SUBSTEP_S)
        driver = _drive(driver, h, city, rng)
        dt_s -= h
    return driver


def _drive(d: Driver, h: float, city: City, rng: random.Random) -> Driver:
    if math.hypot(d.wx_m - d.x_m, d.wy_m - d.y_m) <= max(ARRIVE_M, d.speed_mps * h):
        wx, wy = city.random_point(rng)
        d = replace(d, wx_m=wx, wy_m=wy)
    heading = _steer(d.heading_deg, bearing_deg(d.x_m, d.y_m, d.wx_m, d.wy_m), h, rng)
    speed = min(MAX_SPEED_MPS, max(MIN_SPEED_MPS, d.speed_mps + rng.gauss(0, SPEED_NOISE_MPS * math.sqrt(h))))
    rad = math.radians(heading)
    x, y = _inside(d.x_m + speed * h * math.sin(rad), d.y_m + speed * h * math.cos(rad), city.radius_m)
    return replace(d, x_m=x, y_m=y, heading_deg=heading, speed_mps=speed)


def _steer(heading: float, target: float, h: float, rng: random.Random) -> float:
    off = (target - heading + 540) % 360 - 180  # signed, in [-180, 180)
    turn = max(-MAX_TURN_DEG_S * h, min(MAX_TURN_DEG_S * h, off))
    return (heading + turn + rng.gauss(0, HEADING_NOISE_DEG * math.sqrt(h))) % 360


def _inside(x: float, y: float, radius_m: float) -> tuple[float, float]:
    r = math.hypot(x, y)
    if r <= radius_m:
        return x, y
    return x * radius_m / r, y * radius_m / r  # pulled back onto the edge; it steers back in


def ping(driver: Driver, now_ms: int, city: City, rng: random.Random) -> tuple[Driver, Ping]:
    """The driver's next ping, fixed at now_ms with GPS noise, and the driver with its seq advanced."""
    accuracy = round(rng.uniform(*GPS_ACCURACY_M), 1)
    sigma = accuracy / 2
    lat, lng = city.to_latlng(driver.x_m + rng.gauss(0, sigma), driver.y_m + rng.gauss(0, sigma))
    item: Ping = {
        "driver_id": driver.driver_id, "seq": driver.seq, "lat": round(lat, 6), "lng": round(lng, 6),
        "ts": now_ms, "accuracy": accuracy, "speed": round(max(0.0, driver.speed_mps + rng.gauss(0, 0.2)), 1),
        "bearing": round(driver.heading_deg, 1) % 360,
    }
    return replace(driver, seq=driver.seq + 1), item


def advance(
    driver: Driver, now_s: float, now_ms: int, period_s: float, city: City, rng: random.Random
) -> tuple[Driver, Ping]:
    """Drive a due driver up to now_s, take its ping, and schedule the next one on its phase."""
    moved, item = ping(step(driver, now_s - driver.t_s, city, rng), now_ms, city, rng)
    missed = math.floor((now_s - driver.due_s) / period_s)  # > 0 after a stall: skip, don't burst
    return replace(moved, t_s=now_s, due_s=driver.due_s + (missed + 1) * period_s), item


def tick(
    drivers: Sequence[Driver], now_s: float, now_ms: int, period_s: float, city: City, rng: random.Random
) -> tuple[list[Driver], list[Ping]]:
    """Advance every driver due by now_s; the new fleet and the pings due in this tick."""
    fleet: list[Driver] = []
    pings: list[Ping] = []
    for d in drivers:
        if d.due_s <= now_s:
            d, item = advance(d, now_s, now_ms, period_s, city, rng)
            pings.append(item)
        fleet.append(d)
    return fleet, pings


def chunks(items: Sequence[Ping], size: int) -> list[list[Ping]]:
    """items in consecutive lists of at most `size`."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Delay before retry number `attempt` (1-based): exponential, capped, jittered."""
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0 ** (attempt - 1)) * (0.5 + 0.5 * rng.random())


def request_headers(token: str | None = None) -> dict[str, str]:
    """Headers of every ingest request: the one place credentials are added."""
    headers = {"User-Agent": "livetrack-sim", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


class Dispatch(Protocol):
    """What the tick loop needs of the ride simulation (sim.dispatch.DispatchSim)."""

    stats: Any

    async def start(self, http: aiohttp.ClientSession, city: City) -> None: ...

    async def stop(self) -> None: ...

    def steer(self, drivers: Sequence[Driver]) -> list[Driver]: ...


@dataclass
class FleetStats:
    """What the simulator sent and what became of it (pings, except requests and retries)."""

    sent: int = 0  # pings put in a request, once however often retried
    accepted: int = 0  # pings the gateway answered 202 for
    failed: int = 0  # pings refused (400, 413, ...) or given up on after RETRY_ATTEMPTS
    requests: int = 0  # HTTP requests, retries included
    retries: int = 0
    last_error: str = ""

    def summary(self, since: FleetStats, interval_s: float, drivers: int) -> str:
        """One log line: totals, and the accepted rate since the `since` copy was taken."""
        rate = (self.accepted - since.accepted) / interval_s if interval_s > 0 else 0.0
        line = (
            f"fleet of {drivers}: sent={self.sent} accepted={self.accepted} failed={self.failed} "
            f"requests={self.requests} retries={self.retries} ({rate:.1f} accepted/s)"
        )
        changed = (self.failed, self.retries) != (since.failed, since.retries)
        return f"{line}; last error: {self.last_error}" if changed and self.last_error else line


class _Sender:
    """Posts chunks of pings to the gateway, retrying what is safe to retry, counting outcomes."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, headers: dict[str, str], stats: FleetStats,
        jitter: random.Random, chunk_max: int,
    ) -> None:
        self.session, self.url, self.headers = session, url, headers
        self.stats, self.jitter, self.chunk_max = stats, jitter, chunk_max

    async def send(self, pings: Sequence[Ping]) -> None:
        """Post all pings of a tick, one request per chunk, concurrently."""
        await asyncio.gather(*(self.post_chunk(c) for c in chunks(pings, self.chunk_max)))

    async def post_chunk(self, chunk: list[Ping]) -> None:
        """Post one chunk; retry 503 and lost connections with backoff; never raises an HTTP error."""
        self.stats.sent += len(chunk)
        for attempt in range(RETRY_ATTEMPTS):
            if attempt:
                self.stats.retries += 1
                await asyncio.sleep(backoff_s(attempt, self.jitter))
            self.stats.requests += 1
            status, body = await self._post(chunk)
            if status == 202:
                self.stats.accepted += _accepted(body, len(chunk))
                return
            if status is not None and status not in RETRY_STATUSES:
                self._failed(len(chunk), f"HTTP {status} {_brief(body)}")  # 400, 413: retrying cannot help
                return
            self.stats.last_error = f"HTTP {status} {_brief(body)}" if status else str(body)
            log.debug("retrying %d pings: %s", len(chunk), self.stats.last_error)
        self._failed(len(chunk), f"gave up after {RETRY_ATTEMPTS} attempts: {self.stats.last_error}")

    async def _post(self, chunk: list[Ping]) -> tuple[int | None, Any]:
        """Status and decoded JSON body of one request; (None, reason) when no answer came."""
        try:
            async with self.session.post(self.url, json=chunk, headers=self.headers) as resp:
                try:
                    return resp.status, await resp.json(content_type=None)
                except ValueError:  # not JSON: the status still tells what happened
                    return resp.status, None
        except (aiohttp.ClientError, TimeoutError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def _failed(self, n: int, reason: str) -> None:
        if not self.stats.failed:  # the first one at once; the rest show in the periodic summary
            log.warning("%d pings failed: %s", n, reason)
        self.stats.failed += n
        self.stats.last_error = reason


def _accepted(body: Any, default: int) -> int:
    n = body.get("accepted") if isinstance(body, dict) else None
    return n if isinstance(n, int) else default


def _brief(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    problems = body.get("problems") or []
    shown = "; ".join(f"[{p.get('index')}] {p.get('field')}: {p.get('reason')}" for p in problems[:3])
    return f"{body.get('error', '')} {shown}".strip()


async def run_fleet(
    settings: Settings,
    *,
    duration_s: float | None = None,
    session: aiohttp.ClientSession | None = None,
    token: str | None = None,
    seed: int = DEFAULT_SEED,
    dispatch: Dispatch | None = None,
    drivers: int | None = None,
    name: Callable[[int], str] = driver_id,
) -> FleetStats:
    """Drive `drivers` (default settings.sim_drivers) drivers named by `name` against the gateway for
    duration_s, or until cancelled; with `dispatch` (sim.dispatch, sim.shop), riders request rides and
    drivers take them, or a shop's couriers deliver its orders."""
    n = settings.sim_drivers if drivers is None else drivers
    if n < 1 or settings.sim_rate_hz <= 0:
        raise ValueError("the fleet needs at least one driver and sim_rate_hz > 0")
    city = City.parse(settings.sim_city, settings.sim_radius_m)
    stats = FleetStats()
    http = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
    sender = _Sender(http, f"{settings.gateway_url}/v1/locations", request_headers(token), stats,
                     random.Random(seed + 1), min(CHUNK_MAX, settings.ingest_max_items))
    log.info("fleet of %d drivers at %s Hz around %s -> %s", n, settings.sim_rate_hz, settings.sim_city, sender.url)
    started = time.monotonic()
    try:
        if dispatch is not None:
            await dispatch.start(http, city)
        await _drive_fleet(settings, city, sender, duration_s, random.Random(seed), dispatch, n=n, name=name)
    finally:
        if dispatch is not None:
            await dispatch.stop()
            log.info("dispatch: %s", dict(dispatch.stats))
        if session is None:
            await http.close()
        log.info("fleet stopped: %s", stats.summary(FleetStats(), time.monotonic() - started, n))
    return stats


async def _drive_fleet(
    settings: Settings, city: City, sender: _Sender, duration_s: float | None, rng: random.Random,
    dispatch: Dispatch | None = None, *, n: int, name: Callable[[int], str],
) -> None:
    """The tick loop: advance due drivers, send their pings, log a summary every SUMMARY_EVERY_S."""
    loop = asyncio.get_running_loop()
    period_s = 1.0 / settings.sim_rate_hz
    tick_s = min(period_s, TICK_MAX_S)
    start = next_tick = last_log = loop.time()
    end = math.inf if duration_s is None else start + duration_s
    # Seqs start at the start time in ms, so a restarted simulator is not taken for a replay.
    drivers = make_fleet(n, city, rng, now_s=start, period_s=period_s, seq_base=clock.now_ms(), name=name)
    since = replace(sender.stats)
    while next_tick < end:
        now = loop.time()
        if dispatch is not None:
            drivers = dispatch.steer(drivers)
        drivers, pings = tick(drivers, now, clock.now_ms(), period_s, city, rng)
        await sender.send(pings)
        if now - last_log >= SUMMARY_EVERY_S:
            log.info("%s", sender.stats.summary(since, now - last_log, len(drivers)))
            last_log, since = now, replace(sender.stats)
        next_tick = max(next_tick + tick_s, loop.time())  # behind (slow gateway): don't catch up
        if next_tick < end:
            await asyncio.sleep(next_tick - loop.time())
