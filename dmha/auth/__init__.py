"""Authentication (JWT) and the per-user rate limit."""

from dmha.auth.ratelimit import RateLimiter
from dmha.auth.tokens import ROLES, Authenticator, Principal, Role, load_secrets

__all__ = ["ROLES", "Authenticator", "Principal", "RateLimiter", "Role", "load_secrets"]
