"""Bearer tokens: who may call, which models, and which role.

The tokens file (YAML) holds sha256 hashes, never tokens; `enclave serve token create` mints a
256-bit token, prints it once and appends its entry::

    - name: ehr-gateway          # for people; the audit log records a short hash id instead
      sha256: 9f86d0...          # hex sha256 of the token
      role: reader               # reader: Inference only; admin: also the Admin service;
                                 # reviewer: Inference and the Review service (feedback on answers)
      models: [clinical-legal]   # optional: only these models (default: every model)
      title: pharmacist          # optional, reviewers: what kind of expert (exported with their
                                 # corrections instead of who gave them)

A presented token is hashed and compared in constant time against every entry
(hmac.compare_digest, no early exit), so timing says nothing about how close a guess was. The
file is read again when it changes or on SIGHUP (``Gate.reload``): calls in flight keep the
caller they were admitted with.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from enclave.config import StrictConfig, read_yaml
from enclave.errors import ConfigError
from serve.errors import PermissionDenied, Unauthenticated

ROLES = ("reader", "admin", "reviewer")
MIN_BITS = 128
TOKEN_PREFIX = "enclave_"
# Tokens that appear in documentation and examples; a tokens file that accepts one is refused.
PLACEHOLDERS = (
    "change-me",
    "changeme",
    "replace-me",
    "REPLACE_ME",
    "<token>",
    "TOKEN",
    "secret",
    "password",
    "admin-token-0123456789",
    "reader-token-0123456789",
    "enclave_REPLACE_WITH_A_TOKEN_FROM_enclave_serve_token_create",
)
PLACEHOLDER_WORDS = re.compile(
    r"change.?me|replace|example|placeholder|password|secret|token|test|dummy|xxxx", re.IGNORECASE
)
PLACEHOLDER_HASHES = {"0" * 64}  # the example file's stand-in hash


class TokenEntry(StrictConfig):
    """One caller's token, as its hash."""

    name: str = Field(min_length=1, max_length=128)
    """Who holds it (for people and logs)."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hex sha256 of the token (`enclave serve token create` writes it)."""
    role: Literal["reader", "admin", "reviewer"] = "reader"
    """reader: the Inference service; admin: also load and unload adapters; reviewer: also give
    feedback on answers (the Review service)."""
    models: list[str] | None = None
    """Models this token may use; empty: all."""
    title: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[\w .-]+$")
    """Reviewers: what kind of expert holds it (pharmacist, senior associate): exported with
    their corrections, so training data says where it came from without saying who."""
    created: str | None = None
    """When it was made (informational)."""


@dataclass(frozen=True)
class Caller:
    """Who is calling: a hashed token id (or the peer address, without a token), never the token itself."""

    id: str
    name: str
    models: frozenset[str] | None = None
    role: str = "reader"
    authenticated: bool = True
    title: str | None = None  # a reviewer's kind of expertise (never their name)

    @property
    def admin(self) -> bool:
        return self.role == "admin" and self.authenticated

    def check_model(self, model: str) -> None:
        """Raise PermissionDenied when this caller may not use ``model``."""
        if self.models is not None and model not in self.models:
            raise PermissionDenied(
                f"model: this token may not use {model!r}; it may use: {', '.join(sorted(self.models))}"
            )

    def check_admin(self) -> None:
        """Raise PermissionDenied unless the caller holds an admin token (there is no admin without tokens)."""
        if not self.authenticated:
            raise PermissionDenied(
                "this rpc needs an admin token, and this server has no tokens file: configure "
                "auth.tokens_file and make one with `enclave serve token create --role admin`"
            )
        if not self.admin:
            raise PermissionDenied("this rpc needs a token with role: admin in the server's tokens file")

    def check_reviewer(self) -> None:
        """Raise PermissionDenied unless the caller holds a reviewer token."""
        if not (self.authenticated and self.role == "reviewer"):
            raise PermissionDenied(
                "feedback needs a token with role: reviewer in the server's tokens file; make one with "
                "`enclave serve token create --role reviewer --title TITLE`"
            )


def anonymous(peer: str) -> Caller:
    """A caller without a token (a server with no tokens file): limited per peer address, never admin."""
    return Caller(id="anonymous", name=f"peer:{peer_host(peer)}", role="reader", authenticated=False)


def peer_host(peer: str) -> str:
    """``ipv4:10.0.0.7:51234`` -> ``ipv4:10.0.0.7``; ``ipv6:[::1]:5000`` -> ``ipv6:[::1]``; unix sockets as they are."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer or "unknown"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_id(token: str) -> str:
    """The id the audit log records for a token: a prefix of its hash."""
    return "sha256:" + token_hash(token)[:16]


def new_token() -> str:
    """A fresh token with 256 bits from the OS's CSPRNG (drawn again in the rare case it spells a placeholder word)."""
    while weakness(token := TOKEN_PREFIX + secrets.token_urlsafe(32)):
        pass
    return token


def entropy_bits(token: str) -> float:
    """A generous estimate of a token's entropy: its length times log2 of the alphabet its characters span.

    Random tokens reach it; words, repeats and sequences score lower than it, so a low figure is
    certainly weak, which is all the check needs.
    """
    body = token.removeprefix(TOKEN_PREFIX)
    if not body:
        return 0.0
    if re.fullmatch(r"[0-9a-fA-F]+", body):
        alphabet = 16
    else:
        alphabet = sum(
            n
            for pattern, n in ((r"[a-z]", 26), (r"[A-Z]", 26), (r"[0-9]", 10), (r"[^a-zA-Z0-9]", 33))
            if re.search(pattern, body)
        )
    distinct = len(set(body))
    return len(body) * math.log2(max(2, min(alphabet, distinct * 2)))


def weakness(token: str) -> str | None:
    """Why a token must not be accepted (a placeholder, or under 128 bits), or None."""
    if (
        token in PLACEHOLDERS
        or token_hash(token) in PLACEHOLDER_HASHES
        or PLACEHOLDER_WORDS.search(token.removeprefix(TOKEN_PREFIX))
    ):
        return "it looks like a placeholder from an example (make a real one with `enclave serve token create`)"
    bits = entropy_bits(token)
    if bits < MIN_BITS:
        return (
            f"it has about {bits:.0f} bits of entropy, under the {MIN_BITS} required "
            "(`enclave serve token create` makes 256)"
        )
    return None


def _entry_problems(i: int, raw) -> list[str]:
    """Problems a schema check would miss or would word with the secret in it."""
    if not isinstance(raw, dict):
        return [f"[{i}]: expected a mapping with name, sha256 and role"]
    out = []
    if "token" in raw:
        why = weakness(str(raw["token"]))
        weak = f"; the token is also weak: {why}" if why else ""
        out.append(
            f"[{i}] ({raw.get('name', '?')}): holds a token in clear text; "
            "the file stores sha256 hashes only. Make a new "
            "token with `enclave serve token create --name NAME --role ROLE --tokens-file FILE` "
            f"and delete this entry{weak}"
        )
    if "admin" in raw:
        out.append(f"[{i}] ({raw.get('name', '?')}): `admin: true` is now `role: admin`")
    if str(raw.get("sha256", "")).lower() in PLACEHOLDER_HASHES:
        out.append(
            f"[{i}] ({raw.get('name', '?')}): sha256 is the example's placeholder; "
            "make a real token with `enclave serve token create`"
        )
    return out


class Tokens:
    """The tokens file: hashes, names, roles and models."""

    def __init__(self, path: Path, allow_empty: bool = False) -> None:
        """Read and check the file; ``allow_empty`` (on reload): an empty list refuses every caller."""
        self.path = Path(path).expanduser()
        data = read_yaml(self.path, expect=list)
        problems = [p for i, raw in enumerate(data) for p in _entry_problems(i, raw)]
        if problems:
            raise ConfigError(f"auth.tokens_file {self.path}", problems)
        entries = []
        for i, raw in enumerate(data):
            try:
                entries.append(TokenEntry.model_validate(raw))
            except ValidationError as exc:  # never echo a value from this file: the messages name the key only
                problems += [f"[{i}].{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        if problems:
            raise ConfigError(f"auth.tokens_file {self.path}", problems)
        if not entries and not allow_empty:
            raise ConfigError(
                f"auth.tokens_file {self.path}",
                [
                    "no tokens: add one with `enclave serve token create`, "
                    "or leave auth.tokens_file empty to turn auth off"
                ],
            )
        self.entries = [
            (
                bytes.fromhex(e.sha256),
                Caller(
                    "sha256:" + e.sha256[:16], e.name, frozenset(e.models) if e.models else None, e.role, title=e.title
                ),
            )
            for e in entries
        ]

    def caller(self, metadata) -> Caller:
        """The caller for a call's metadata, or Unauthenticated."""
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if header is None:
            raise Unauthenticated("missing `authorization: Bearer <token>` metadata; this server needs a token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authorization metadata must be `Bearer <token>`")
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for expected, caller in self.entries:  # no early exit: every entry is compared
            if hmac.compare_digest(expected, digest):
                found = caller
        if found is None:
            raise Unauthenticated("the bearer token is not known to this server")
        return found


def add_token(
    path: Path,
    name: str,
    role: str,
    models: list[str] | None = None,
    token: str | None = None,
    title: str | None = None,
) -> str:
    """Append a token's hash to a tokens file (created with mode 0600); returns the token, which is stored nowhere.

    Args:
        path: the tokens file.
        name: who holds it; must be new in the file.
        role: ``reader``, ``admin`` or ``reviewer``.
        models: the models it may use (None: all).
        title: a reviewer's kind of expertise (pharmacist), exported with their feedback.
        token: an existing token to register (from a site's secret store), or None to make one.

    Raises:
        EnclaveError: a weak or placeholder token, an unknown role, a name already in the file.
    """
    import datetime as dt
    import json

    from enclave.atomic import atomic_write_bytes
    from enclave.errors import EnclaveError

    if role not in ROLES:
        raise EnclaveError(f"--role: {role!r} is not a role", fix=f"use one of: {', '.join(ROLES)}")
    if title is not None and role != "reviewer":
        raise EnclaveError(f"--title: {title!r} is for reviewers", fix="add --role reviewer, or leave --title out")
    if token is None:
        token = new_token()
    elif why := weakness(token):
        raise EnclaveError(
            f"the token given is refused: {why}", fix="use `enclave serve token create` without a token to make one"
        )
    path = Path(path).expanduser()
    text = (
        path.read_text(encoding="utf-8")
        if path.is_file()
        else "# Enclave tokens file: sha256 hashes, made by `enclave serve token create`\n"
    )
    existing = read_yaml(path, expect=list) if path.is_file() else []
    if any(isinstance(e, dict) and e.get("name") == name for e in existing):
        raise EnclaveError(
            f"--name: {name!r} is already in {path}", fix="pick another name (delete its entry to revoke the old token)"
        )
    entry = {
        "name": name,
        "sha256": token_hash(token),
        "role": role,
        "models": models or None,
        "title": title,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    line = "- {" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in entry.items() if v is not None) + "}\n"
    atomic_write_bytes(
        path, (text if text.endswith("\n") or not text else text + "\n").encode() + line.encode(), mode=0o600
    )
    return token


def revoke_token(path: Path, name: str) -> None:
    """Remove the entry named ``name`` from a tokens file (rewritten atomically, mode 0600).

    Raises:
        EnclaveError: no such entry.
    """
    import yaml

    from enclave.atomic import atomic_write_bytes
    from enclave.errors import EnclaveError

    path = Path(path).expanduser()
    entries = read_yaml(path, expect=list)
    kept = [e for e in entries if not (isinstance(e, dict) and e.get("name") == name)]
    if len(kept) == len(entries):
        names = [e.get("name") for e in entries if isinstance(e, dict)]
        raise EnclaveError(
            f"--name: no token named {name!r} in {path}", fix=f"use one of: {', '.join(map(str, names)) or 'none'}"
        )
    text = "# Enclave tokens file: sha256 hashes, made by `enclave serve token create`\n" + (
        yaml.safe_dump(kept, sort_keys=False) if kept else "[]\n"
    )
    atomic_write_bytes(path, text.encode(), mode=0o600)
