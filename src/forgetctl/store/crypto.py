"""Keeping personal data out of the ledger.

Two mechanisms (DESIGN.md, "The ledger"):

* a blind index: subject names and identifiers are stored only as HMAC-SHA256 under a key
  that lives in ``keys/`` outside the database, so duplicates can be found without the
  database holding the names;
* crypto-shredding: each request's payload (names, aliases, records, prompt sets) is
  encrypted with AES-256-GCM under a key of its own in ``keys/requests/``. Destroying that
  key (``request purge``) makes every stored copy of the payload unreadable.

A third key signs the ledger's chain head (Ed25519), so that whoever can write the database
but not ``keys/`` cannot rewrite, truncate or extend the chain unnoticed. The home keys are
created once, when the ledger starts signing (:meth:`Keyring.create_missing`), and never
again: a missing or damaged key is refused, since a new one would silently cut the home
off its history (a new index key no longer finds duplicates; a new signing key would sign
a forged head).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from forgetctl.core.errors import InvalidState, LedgerCorrupt
from forgetctl.core.text import normalise_name

INDEX_KEY = "blind-index.key"
HEAD_KEY = "ledger-head.key"
RESTORE = "restore ledger.db and keys/ from the same backup (`forgetctl doctor`)"


def _head_message(seq: int, head_hash: str) -> bytes:
    return f"forgetctl ledger head {seq} {head_hash}".encode()


def verify_head(public_key: str, seq: int, head_hash: str, signature: str) -> bool:
    """Whether ``signature`` (hex) signs the head (seq, hash) under ``public_key`` (hex)."""
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key))
        key.verify(bytes.fromhex(signature), _head_message(seq, head_hash))
    except (InvalidSignature, ValueError):
        return False
    return True


class HeadSigner:
    """Signs the ledger's chain head with the home's Ed25519 key."""

    def __init__(self, seed: bytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key = raw.hex()

    def sign(self, seq: int, head_hash: str) -> str:
        return self._key.sign(_head_message(seq, head_hash)).hex()


class Keyring:
    def __init__(self, keys_dir: Path):
        self.dir = keys_dir

    def create_missing(self) -> None:
        """Create the home keys that do not exist yet (only when the ledger starts signing)."""
        for name in (INDEX_KEY, HEAD_KEY):
            self._read_or_create(self.dir / name)

    def check(self) -> None:
        """Refuse a missing, empty or damaged home key."""
        for name in (INDEX_KEY, HEAD_KEY):
            self._home_key(name)

    def _home_key(self, name: str) -> bytes:
        path = self.dir / name
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            raise LedgerCorrupt(f"{path} is missing: {RESTORE}") from None
        except OSError as exc:
            raise LedgerCorrupt(f"{path}: cannot read it ({exc.strerror}): {RESTORE}") from None
        if len(key) != 32:
            raise LedgerCorrupt(f"{path} is damaged ({len(key)} bytes, not 32): {RESTORE}")
        return key

    def head_signer(self) -> HeadSigner:
        return HeadSigner(self._home_key(HEAD_KEY))

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
        key = self._home_key(INDEX_KEY)
        return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()

    def blind_index(self, value: str, kind: str = "name") -> str:
        return self.keyed_hash(f"{kind}:{normalise_name(value)}")

    # -- per-request payload keys ------------------------------------------------------
    def _request_key_path(self, request_id: int) -> Path:
        return self.dir / "requests" / f"{request_id}.key"

    def request_key_ids(self) -> list[int]:
        folder = self.dir / "requests"
        return (
            [int(p.stem) for p in folder.glob("*.key") if p.stem.isdecimal()]
            if folder.is_dir()
            else []
        )

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
