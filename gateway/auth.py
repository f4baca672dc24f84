"""Who is calling and what they may do: JWT bearer tokens for devices (HTTP) and clients (/live).

Roles: `driver` (sub = its driver id), `rider` (sub = rider id), `ops` (sees and may publish
everything; the simulator is a fleet integration holding an ops token). HS256 with the configured
secret; RS256 too when a public key is configured (tokens minted by an external identity provider).
"""
from __future__ import annotations

import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jwt
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import Unauthorized
from infra.settings import Settings

__all__ = [
    "ROLES", "Principal", "Tokens", "principal_of", "auth_middleware", "may_publish", "may_subscribe",
    "bearer_token",
]

# system: other systems (shops, carriers) writing orders; customer: follows its own orders.
ROLES = ("driver", "rider", "ops", "system", "customer")
MIN_SECRET_BYTES = 32
# Verified tokens remembered (a device posts with the same token for its whole lifetime): HMAC and
# claim checks were a quarter of the gateway's CPU under ride load (py-spy, bench-dispatch).
VERIFIED_CACHE_MAX = 50_000


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    role: str
    sub: str


PRINCIPAL = web.RequestKey("principal", Principal)  # set by auth_middleware on every /v1/ request


def _dev_key(state_dir: Path) -> bytes:
    """A random HS256 key shared by every process on this state_dir; created once, owner-only."""
    path = state_dir / "jwt.key"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process won the race; read theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


class Tokens:
    """Mints and verifies livetrack tokens for one Settings."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.jwt_secret.get_secret_value()
        if secret and len(secret.encode()) < MIN_SECRET_BYTES:  # RFC 7518 3.2: at least the hash size
            raise ValueError(f"LIVETRACK_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        self._hs_key = secret.encode() if secret else _dev_key(settings.state_dir)
        self._rs_key = settings.jwt_public_key.read_bytes() if settings.jwt_public_key else None
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_s
        self.default_ttl_s = settings.token_ttl_s
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def mint(self, role: str, sub: str, ttl_s: float | None = None) -> str:
        """An HS256 token for `role`/`sub`, valid `ttl_s` seconds."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        now = int(time.time())
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        claims = {"sub": sub, "role": role, "iss": self._issuer, "iat": now, "exp": now + int(ttl)}
        return jwt.encode(claims, self._hs_key, algorithm="HS256")

    def verify(self, token: object) -> Principal:
        """The token's principal, or Unauthorized saying why not (never echoing the token)."""
        if not isinstance(token, str) or not token:
            raise Unauthorized("missing token")
        hit = self._verified.get(token)
        if hit is not None:
            principal, expires = hit
            if time.time() <= expires:
                self._verified.move_to_end(token)
                return principal
            del self._verified[token]  # expired since it was verified: decode again for the reason
        principal, expires = self._decode(token)
        self._verified[token] = (principal, expires)
        if len(self._verified) > VERIFIED_CACHE_MAX:
            self._verified.popitem(last=False)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        """Full verification: signature, issuer, required claims, expiry; the principal and its expiry."""
        try:
            alg = jwt.get_unverified_header(token).get("alg")
            key = self._key_for(alg)
            claims = jwt.decode(
                token, key, algorithms=[str(alg)], issuer=self._issuer, leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "role", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("bad signature") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token lacks claim {exc.claim!r}") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("malformed token") from None
        role, sub = claims.get("role"), claims.get("sub")
        if role not in ROLES:
            raise Unauthorized("unknown role")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("token lacks a subject")
        return Principal(role, sub), float(claims["exp"]) + self._leeway

    def _key_for(self, alg: object) -> bytes:
        if alg == "HS256":
            return self._hs_key
        if alg == "RS256" and self._rs_key is not None:
            return self._rs_key
        raise Unauthorized(f"algorithm {alg!r} not accepted")


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def principal_of(request: web.Request) -> Principal:
    """The caller of a `/v1/` view (set by auth_middleware)."""
    return request[PRINCIPAL]


def auth_middleware(tokens: Tokens) -> Callable[..., Any]:
    """Requires a valid bearer token on every `/v1/` route."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1/"):
            request[PRINCIPAL] = tokens.verify(bearer_token(request.headers.get("Authorization")))
        return await handler(request)

    return middleware


def may_publish(principal: Principal, driver_id: str) -> bool:
    """Ops publish for any driver, a driver only for itself, riders never."""
    return principal.role == "ops" or (principal.role == "driver" and principal.sub == driver_id)


def _nobody(_ident: str) -> str | None:
    return None


def may_subscribe(principal: Principal, channel: str, ride_rider: Callable[[str], str | None],
                  order_customer: Callable[[str], str | None] = _nobody) -> bool:
    """Ops see everything; anyone its own notifications (user:{sub}); a driver its own channel; a rider the channels of its own rides; a customer
    those of its own orders; a system those of every order (it writes them)."""
    if principal.role == "ops":
        return True
    kind, _, ident = channel.partition(":")
    if kind == "user":  # a user's notifications: its own only, whatever its role
        return ident == principal.sub
    if principal.role == "driver":
        return kind == "driver" and ident == principal.sub
    if principal.role == "rider":
        return kind == "ride" and ride_rider(ident) == principal.sub
    if principal.role == "customer":
        return kind == "order" and order_customer(ident) == principal.sub
    if principal.role == "system":
        return kind == "order"
    return False
