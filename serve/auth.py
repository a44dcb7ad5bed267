"""Bearer tokens: who may call, which models, and the admin role.

The tokens file (YAML)::

    - name: ehr-gateway          # for people; the audit log records a hash of the token instead
      token: 3f1c...             # the secret, at least 16 characters
      models: [clinical-legal]   # optional: only these models (default: every model)
    - name: ops
      token: 9ab2...
      admin: true                # may call the Admin service

Tokens are compared in constant time against every entry (hmac.compare_digest), so the time a
check takes says nothing about how much of a guess was right.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, TypeAdapter, ValidationError

from enclave.config import StrictConfig, format_errors, read_yaml
from enclave.errors import ConfigError
from serve.errors import PermissionDenied, Unauthenticated


class TokenEntry(StrictConfig):
    """One caller's token."""

    name: str = Field(min_length=1)
    """Who holds it (for people and logs)."""
    token: str = Field(min_length=16)
    """The secret sent as `authorization: Bearer <token>`."""
    models: list[str] | None = None
    """Models this token may use; empty: all."""
    admin: bool = False
    """May load and unload adapters (the Admin service)."""


@dataclass(frozen=True)
class Caller:
    """Who is calling: a hashed token id for the audit log, never the token itself."""

    id: str
    name: str
    models: frozenset[str] | None = None
    admin: bool = False

    def check_model(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            raise PermissionDenied(f"model: this token may not use {model!r}; it may use: {', '.join(sorted(self.models))}")

    def check_admin(self) -> None:
        if not self.admin:
            raise PermissionDenied("this rpc needs a token with admin: true in the server's tokens file")


ANONYMOUS = Caller(id="anonymous", name="anonymous", admin=True)


def token_id(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:16]


class Tokens:
    """The tokens file, loaded once at start."""

    def __init__(self, path: Path) -> None:
        data = read_yaml(path, expect=list)
        try:
            entries = TypeAdapter(list[TokenEntry]).validate_python(data)
        except ValidationError as exc:
            raise ConfigError(str(path), format_errors(exc)) from None
        if not entries:
            raise ConfigError(str(path), ["no tokens: list at least one, or leave auth.tokens_file empty to turn auth off"])
        self.entries = [(e.token.encode(), Caller(token_id(e.token), e.name, frozenset(e.models) if e.models else None, e.admin))
                        for e in entries]  # fmt: skip

    def caller(self, metadata) -> Caller:
        """The caller for a call's metadata, or Unauthenticated."""
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if header is None:
            raise Unauthenticated("missing `authorization: Bearer <token>` metadata; this server needs a token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authorization metadata must be `Bearer <token>`")
        found = None
        for secret, caller in self.entries:  # no early exit: every entry is compared
            if hmac.compare_digest(secret, token.strip().encode()):
                found = caller
        if found is None:
            raise Unauthenticated("the bearer token is not known to this server")
        return found
