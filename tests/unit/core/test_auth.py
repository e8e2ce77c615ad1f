import time

import jwt
import pytest

from dmha.auth import Authenticator, RateLimiter, load_secrets
from dmha.config import AuthConfig
from dmha.errors import (
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)


@pytest.fixture
def auth():
    return Authenticator(AuthConfig(), "s" * 64, "admin-key")


def test_issue_and_verify_roundtrip(auth):
    token, exp = auth.issue("alice", ("trainer", "user"))
    p = auth.verify(token)
    assert p.user_id == "alice" and p.roles == {"trainer", "user"}
    assert exp > time.time()
    p.require("trainer")
    with pytest.raises(PermissionDenied, match="admin"):
        p.require("admin")


@pytest.mark.parametrize(
    "make",
    [
        lambda a: "",
        lambda a: "not-a-jwt",
        lambda a: jwt.encode(
            {"sub": "alice", "exp": int(time.time()) + 60, "iss": "dmha"}, "wrong" * 8, algorithm="HS256"
        ),
        lambda a: jwt.encode({"sub": "alice", "exp": int(time.time()) - 5, "iss": "dmha"}, "s" * 64, algorithm="HS256"),
        lambda a: jwt.encode(
            {"sub": "alice", "exp": int(time.time()) + 60, "iss": "evil"}, "s" * 64, algorithm="HS256"
        ),
        lambda a: jwt.encode(
            {"sub": "alice", "exp": int(time.time()) + 60, "iss": "dmha", "roles": ["god"]}, "s" * 64, algorithm="HS256"
        ),
        lambda a: jwt.encode(
            {"sub": "alice", "exp": int(time.time()) + 60, "iss": "dmha"}, "s" * 64, algorithm="HS512"
        ),
    ],
    ids=["missing", "malformed", "forged", "expired", "issuer", "roles", "algorithm"],
)
def test_bad_tokens_are_unauthenticated(auth, make):
    with pytest.raises(Unauthenticated):
        auth.verify(make(auth))


def test_api_key_and_validation(auth):
    with pytest.raises(Unauthenticated):
        auth.issue_with_key("nope", "alice", ("user",))
    token, _ = auth.issue_with_key("admin-key", "bob", ())
    assert auth.verify(token).roles == {"user"}
    with pytest.raises(InvalidArgument, match="roles"):
        auth.issue("bob", ("root",))
    with pytest.raises(InvalidArgument, match="user_id"):
        auth.issue("bad user!", ("user",))


def test_secrets_generated_once_and_private(tmp_path):
    first = load_secrets(AuthConfig(), tmp_path)
    assert load_secrets(AuthConfig(), tmp_path) == first
    assert (tmp_path / "secrets.json").stat().st_mode & 0o077 == 0
    cfg = AuthConfig(jwt_secret="from-config", admin_api_key="k")
    assert load_secrets(cfg, tmp_path) == ("from-config", "k")


def test_rate_limiter_refills():
    now = [0.0]
    lim = RateLimiter(2, clock=lambda: now[0])
    lim.check("a")
    lim.check("a")
    with pytest.raises(ResourceExhausted, match="2 requests/minute"):
        lim.check("a")
    lim.check("b")  # per user
    now[0] += 30.0
    lim.check("a")
    RateLimiter(0).check("a")  # disabled
