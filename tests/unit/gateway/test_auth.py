"""Tokens and the per-role policy, without a server."""
from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth import Principal, Tokens, bearer_token, may_publish, may_subscribe
from gateway.errors import Unauthorized
from infra.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path, jwt_secret="s3cret-for-tests-0123456789abcdef!")


def _claims(**over: object) -> dict:
    # Parametrized tokens are made at collection: valid for longer than the whole suite runs.
    now = int(time.time())
    # Made at collection: valid long enough for a whole suite to reach these tests.
    return {"sub": "d-1", "role": "driver", "iss": "livetrack", "iat": now, "exp": now + 3600, **over}


def test_minted_token_verifies_to_its_principal(settings: Settings) -> None:
    tokens = Tokens(settings)
    assert tokens.verify(tokens.mint("driver", "d-1", 60)) == Principal("driver", "d-1")
    assert tokens.verify(tokens.mint("ops", "alice")) == Principal("ops", "alice")


@pytest.mark.parametrize("token, reason", [
    (None, "missing token"),
    ("", "missing token"),
    ("not-a-jwt", "malformed token"),
    (jwt.encode(_claims(exp=int(time.time()) - 60), "s3cret-for-tests-0123456789abcdef!", "HS256"), "token expired"),
    (jwt.encode(_claims(), "another-key-0123456789abcdef-0123456789", "HS256"), "bad signature"),
    (jwt.encode(_claims(iss="someone-else"), "s3cret-for-tests-0123456789abcdef!", "HS256"), "wrong issuer"),
    (jwt.encode(_claims(role="admin"), "s3cret-for-tests-0123456789abcdef!", "HS256"), "unknown role"),
    (jwt.encode({k: v for k, v in _claims().items() if k != "exp"}, "s3cret-for-tests-0123456789abcdef!", "HS256"),
     "token lacks claim 'exp'"),
    (jwt.encode(_claims(), None, "none"), "algorithm 'none' not accepted"),
])
def test_bad_tokens_are_refused_with_the_reason(settings: Settings, token: object, reason: str) -> None:
    with pytest.raises(Unauthorized) as err:
        Tokens(settings).verify(token)
    assert str(err.value) == reason


def test_refusal_never_echoes_the_token(settings: Settings) -> None:
    bad = jwt.encode(_claims(), "another-key-0123456789abcdef-0123456789", "HS256")
    with pytest.raises(Unauthorized) as err:
        Tokens(settings).verify(bad)
    assert bad not in str(err.value) and "another-key-0123456789abcdef-0123456789" not in str(err.value)


def test_rs256_accepted_only_with_a_configured_public_key(tmp_path: Path, settings: Settings) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "pub.pem"
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    token = jwt.encode(_claims(role="rider", sub="u-9"), key, "RS256")
    with pytest.raises(Unauthorized, match="algorithm 'RS256' not accepted"):
        Tokens(settings).verify(token)
    with_key = Settings(state_dir=tmp_path, jwt_secret="s3cret-for-tests-0123456789abcdef!", jwt_public_key=pem)
    assert Tokens(with_key).verify(token) == Principal("rider", "u-9")


def test_dev_key_is_shared_through_the_state_dir_and_private(tmp_path: Path) -> None:
    a, b = Tokens(Settings(state_dir=tmp_path)), Tokens(Settings(state_dir=tmp_path))
    assert b.verify(a.mint("ops", "x")) == Principal("ops", "x")
    assert (tmp_path / "jwt.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(Unauthorized, match="bad signature"):
        Tokens(Settings(state_dir=tmp_path / "other")).verify(a.mint("ops", "x"))


def test_mint_refuses_an_unknown_role(settings: Settings) -> None:
    with pytest.raises(ValueError):
        Tokens(settings).mint("admin", "x")


@pytest.mark.parametrize("header, token", [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), (None, None), ("", None),
])
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_publish_policy() -> None:
    assert may_publish(Principal("ops", "sim"), "d-1")
    assert may_publish(Principal("driver", "d-1"), "d-1")
    assert not may_publish(Principal("driver", "d-1"), "d-2")
    assert not may_publish(Principal("rider", "d-1"), "d-1")


RIDES = {"r-1": "u-1"}


@pytest.mark.parametrize("principal, channel, allowed", [
    (Principal("ops", "o"), "fleet", True),
    (Principal("ops", "o"), "cell:8928308280fffff", True),
    (Principal("ops", "o"), "ride:r-1", True),
    (Principal("driver", "d-1"), "driver:d-1", True),
    (Principal("driver", "d-1"), "driver:d-2", False),
    (Principal("driver", "d-1"), "fleet", False),
    (Principal("driver", "d-1"), "ride:r-1", False),
    (Principal("rider", "u-1"), "ride:r-1", True),
    (Principal("rider", "u-2"), "ride:r-1", False),
    (Principal("rider", "u-1"), "ride:r-unknown", False),
    (Principal("rider", "u-1"), "driver:d-1", False),
    (Principal("rider", "u-1"), "cell:8928308280fffff", False),
])
def test_subscribe_policy(principal: Principal, channel: str, allowed: bool) -> None:
    assert may_subscribe(principal, channel, RIDES.get) is allowed


def test_a_short_secret_is_refused_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Tokens(Settings(state_dir=tmp_path, jwt_secret="short"))


def test_a_remembered_token_is_refused_once_it_expires(tmp_path: Path) -> None:
    tokens = Tokens(Settings(state_dir=tmp_path, jwt_leeway_s=0))
    token = tokens.mint("driver", "d-1", ttl_s=1)
    assert tokens.verify(token) == Principal("driver", "d-1")
    assert tokens.verify(token) == Principal("driver", "d-1")  # from the cache
    time.sleep(2.1)  # `exp` has whole seconds
    with pytest.raises(Unauthorized, match="token expired"):
        tokens.verify(token)


def test_a_bad_token_is_never_remembered(settings: Settings) -> None:
    tokens = Tokens(settings)
    forged = jwt.encode(_claims(), "another-key-0123456789abcdef-0123456789", "HS256")
    for _ in range(2):
        with pytest.raises(Unauthorized, match="bad signature"):
            tokens.verify(forged)
