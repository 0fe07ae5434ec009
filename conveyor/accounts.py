"""Users and API tokens. Tokens are shown once and stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from conveyor.db.base import utcnow
from conveyor.db.models import ApiToken, User
from conveyor.db.session import affected, read_session, transaction

TOKEN_PREFIX = "cvy_"


@dataclass(frozen=True)
class Principal:
    user_id: str
    name: str
    is_admin: bool

    @property
    def scope(self) -> str | None:
        """The owner filter for queries: None (everything) for an admin."""
        return None if self.is_admin else self.user_id


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AccountError(Exception):
    pass


def create_user(db_url: str, name: str, *, admin: bool = False) -> tuple[User, str]:
    """Create a user and a first token; returns the token in clear (shown once)."""
    name = name.strip()
    if not name or len(name) > 100:
        raise AccountError("a user name is 1 to 100 characters")
    with transaction(db_url) as session:
        if session.scalars(select(User).where(User.name == name)).first() is not None:
            raise AccountError(f"user {name!r} already exists")
        user = User(name=name, is_admin=admin)
        session.add(user)
        session.flush()
        token = _add_token(session, user.id)
    return user, token


def new_token(db_url: str, name: str) -> str:
    with transaction(db_url) as session:
        user = session.scalars(select(User).where(User.name == name)).first()
        if user is None:
            raise AccountError(f"no user named {name!r}")
        return _add_token(session, user.id)


def _add_token(session: Session, user_id: str) -> str:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user_id, token_hash=hash_token(token), prefix=token[:10]))
    return token


def revoke_tokens(db_url: str, name: str) -> int:
    with transaction(db_url) as session:
        user = session.scalars(select(User).where(User.name == name)).first()
        if user is None:
            raise AccountError(f"no user named {name!r}")
        result = session.execute(update(ApiToken).where(ApiToken.user_id == user.id)
                                 .values(revoked=True))
    _auth_cache.clear()
    return affected(result)


AUTH_CACHE_S = 5.0  # a revoked token stops working within this many seconds
_auth_cache: dict[tuple[str, str], tuple[float, Principal]] = {}


def authenticate(db_url: str, token: str) -> Principal | None:
    """The principal of a valid token (cached briefly per process), else None."""
    if not token or len(token) > 200:
        return None
    key = (db_url, hash_token(token))
    hit = _auth_cache.get(key)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    principal = _authenticate(db_url, token)
    if principal is not None:
        if len(_auth_cache) > 1000:
            _auth_cache.clear()
        _auth_cache[key] = (time.monotonic() + AUTH_CACHE_S, principal)
    else:
        _auth_cache.pop(key, None)
    return principal


def _authenticate(db_url: str, token: str) -> Principal | None:
    with read_session(db_url) as session:
        row = session.execute(
            select(ApiToken.id, ApiToken.last_used_at, User.id, User.name, User.is_admin)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == hash_token(token), ApiToken.revoked.is_(False))
        ).first()
    if row is None:
        return None
    token_id, last_used, user_id, name, is_admin = row
    now = utcnow()
    if last_used is None or (now - last_used).total_seconds() > 300:
        with transaction(db_url) as session:
            session.execute(update(ApiToken).where(ApiToken.id == token_id)
                            .values(last_used_at=now))
    return Principal(user_id, name, bool(is_admin))


def list_users(db_url: str) -> list[User]:
    with transaction(db_url) as session:
        return list(session.scalars(select(User).order_by(User.created_at)))


def has_admin(db_url: str) -> bool:
    with transaction(db_url) as session:
        return session.scalars(select(User.id).where(User.is_admin.is_(True))).first() is not None
