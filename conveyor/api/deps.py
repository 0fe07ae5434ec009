"""FastAPI dependencies: settings, storage and the authenticated principal."""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request

from conveyor.accounts import Principal, authenticate
from conveyor.config import Settings
from conveyor.storage import Storage

TOKEN_COOKIE = "conveyor_token"


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


def token_from(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(TOKEN_COOKIE)


def optional_principal(
    request: Request, settings: Settings = Depends(get_app_settings)
) -> Principal | None:
    token = token_from(request)
    return authenticate(settings.resolved_database_url, token) if token else None


def require_principal(principal: Principal | None = Depends(optional_principal)) -> Principal:
    if principal is None:
        raise HTTPException(status_code=401, detail={"code": "unauthorized",
                                                     "message": "a valid API token is required"},
                            headers={"WWW-Authenticate": "Bearer"})
    return principal


def require_admin(principal: Principal = Depends(require_principal)) -> Principal:
    if not principal.is_admin:
        raise HTTPException(status_code=403, detail={"code": "forbidden",
                                                     "message": "admins only"})
    return principal
