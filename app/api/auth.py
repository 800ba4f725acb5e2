"""Bearer-token guard for mutating endpoints, on when TASKLANE_API_TOKEN is set.

GETs stay open (status pages, probes, dashboards); every POST depends on require_token,
directly or through app/api/dependencies.py's AuthorisedManager (the task routes). The
WebSocket handler uses token_matches() with a header or ?token= (browsers cannot set headers
on a WebSocket).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

if TYPE_CHECKING:
    from app.config import Settings


def expected_token(settings: Settings) -> str | None:
    """The configured token, or None when auth is off (an empty value also means off)."""
    if settings.api_token is None:
        return None
    return settings.api_token.get_secret_value() or None


def token_matches(settings: Settings, presented: str | None) -> bool:
    """True when auth is off, or `presented` equals the token (constant-time comparison)."""
    expected = expected_token(settings)
    if expected is None:
        return True
    if not presented:
        return False
    return secrets.compare_digest(presented.encode(), expected.encode())


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, else None."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


async def require_token(request: Request) -> None:
    """Dependency: 401 with `WWW-Authenticate: Bearer` unless the request carries the token."""
    settings: Settings = request.app.state.settings
    if not token_matches(settings, bearer(request.headers.get("authorization"))):
        raise HTTPException(
            status_code=401,
            detail="Missing or invalid bearer token.",
            headers={"WWW-Authenticate": "Bearer"},
        )
