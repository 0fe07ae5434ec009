"""Users and API tokens. Tokens are shown once and stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
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
        return affected(result)


def authenticate(db_url: str, token: str) -> Principal | None:
    if not token or len(token) > 200:
        return None
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
