"""Keeping personal data out of the ledger.

Two mechanisms (DESIGN.md, "The ledger"):

* a blind index: subject names and identifiers are stored only as HMAC-SHA256 under a key
  that lives in ``keys/`` outside the database, so duplicates can be found without the
  database holding the names;
* crypto-shredding: each request's payload (names, aliases, records, prompt sets) is
  encrypted with AES-256-GCM under a key of its own in ``keys/requests/``. Destroying that
  key (``request purge``) makes every stored copy of the payload unreadable.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from forgetctl.core.errors import InvalidState
from forgetctl.core.text import normalise_name


class Keyring:
    def __init__(self, keys_dir: Path):
        self.dir = keys_dir

    def _read_or_create(self, path: Path) -> bytes:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # O_EXCL: two processes racing to create the key cannot both win.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return path.read_bytes()
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
                fh.flush()
                os.fsync(fh.fileno())
        return path.read_bytes()

    # -- blind index -------------------------------------------------------------------
    def keyed_hash(self, message: str) -> str:
        """HMAC-SHA256 of ``message`` under the home's index key: a lookup key that
        cannot be reversed, or recomputed from a guessed value, without ``keys/``."""
        key = self._read_or_create(self.dir / "blind-index.key")
        return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()

    def blind_index(self, value: str, kind: str = "name") -> str:
        return self.keyed_hash(f"{kind}:{normalise_name(value)}")

    # -- per-request payload keys ------------------------------------------------------
    def _request_key_path(self, request_id: int) -> Path:
        return self.dir / "requests" / f"{request_id}.key"

    def has_request_key(self, request_id: int) -> bool:
        return self._request_key_path(request_id).exists()

    def encrypt(self, request_id: int, payload: dict) -> bytes:
        key = self._read_or_create(self._request_key_path(request_id))
        nonce = secrets.token_bytes(12)
        aad = f"request:{request_id}".encode()
        plaintext = json.dumps(payload, sort_keys=True).encode()
        return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)

    def decrypt(self, request_id: int, blob: bytes) -> dict:
        path = self._request_key_path(request_id)
        if not path.exists():
            raise InvalidState(f"request {request_id}: payload key destroyed (purged)")
        aad = f"request:{request_id}".encode()
        plaintext = AESGCM(path.read_bytes()).decrypt(blob[:12], blob[12:], aad)
        return json.loads(plaintext)

    def destroy_request_key(self, request_id: int) -> None:
        path = self._request_key_path(request_id)
        if path.exists():
            # Overwrite before unlinking so the key bytes do not linger in the file's blocks.
            with open(path, "r+b") as fh:
                fh.write(secrets.token_bytes(32))
                fh.flush()
                os.fsync(fh.fileno())
            path.unlink()
