"""Ed25519 keys for signed checkpoints: generate, store, load, identify.

No OTel, no PostgreSQL: the emitter, the verifier and an auditor's offline
proof check all use this module.

File formats (standard, readable by OpenSSL and any Ed25519 library):

* private key: PEM, PKCS#8, unencrypted (``-----BEGIN PRIVATE KEY-----``),
  file mode 0600. Protect it like any signing secret.
* public key: PEM, SubjectPublicKeyInfo (``-----BEGIN PUBLIC KEY-----``).
  This is what a verifier is handed (``--trusted-key``).

A key is named by its *key id*, derived from the key and never chosen::

    key_id = lowercase_hex(SHA-256(raw 32-byte Ed25519 public key))[:32]

(the first 16 bytes of the digest). A checkpoint names the key id that signed
it, so several trusted keys can be checked at once and keys can rotate.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from otel_audit.errors import AuditConfigurationError

__all__ = [
    "KEY_ID_HEX_CHARS",
    "SigningKey",
    "VerifyKey",
    "generate_signing_key",
    "key_id_for",
    "load_signing_key",
    "load_trusted_key",
    "load_trusted_keys",
    "write_keypair",
]

_log = logging.getLogger("otel_audit")

KEY_ID_HEX_CHARS = 32


def key_id_for(raw_public_key: bytes) -> str:
    """The key id of a raw 32-byte Ed25519 public key (see the module docstring)."""
    if len(raw_public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(raw_public_key).hexdigest()[:KEY_ID_HEX_CHARS]


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class VerifyKey:
    """A public key the verifier trusts, with its key id."""

    public: Ed25519PublicKey
    key_id: str
    source: str = ""

    @classmethod
    def from_public(cls, public: Ed25519PublicKey, source: str = "") -> VerifyKey:
        return cls(public, key_id_for(_raw(public)), source)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self.public.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def public_pem(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    """The emitter's private key, with its key id."""

    private: Ed25519PrivateKey
    key_id: str
    source: str = ""

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey, source: str = "") -> SigningKey:
        return cls(private, key_id_for(_raw(private.public_key())), source)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def verify_key(self) -> VerifyKey:
        return VerifyKey.from_public(self.private.public_key(), self.source)

    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def __repr__(self) -> str:  # never print key material
        return f"SigningKey(key_id={self.key_id!r}, source={self.source!r})"


def generate_signing_key() -> SigningKey:
    return SigningKey.from_private(Ed25519PrivateKey.generate())


def write_keypair(key: SigningKey, path: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, Path]:
    """Write the private key to ``path`` (mode 0600) and the public key to ``path.pub``.

    Refuses to replace existing files unless ``force``: overwriting a signing
    key by accident would leave checkpoints nobody can verify any more.
    """
    private_path = Path(path)
    public_path = private_path.with_name(private_path.name + ".pub")
    if not force:
        for existing in (private_path, public_path):
            if existing.exists():
                raise FileExistsError(
                    f"{existing} already exists; choose another --out, or pass --force to replace it (checkpoints "
                    "signed with the old key then verify only with the old public key, so keep it)"
                )
    if private_path.parent and not private_path.parent.exists():
        private_path.parent.mkdir(parents=True, exist_ok=True)
    _write_new(private_path, key.private_pem(), 0o600, force)
    _write_new(public_path, key.verify_key().public_pem(), 0o644, force)
    return private_path, public_path


def _write_new(path: Path, data: bytes, mode: int, force: bool) -> None:
    if force:
        with_suffix = path.with_name(path.name + ".tmp")
        fd = os.open(with_suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        target: Path | None = path
        path = with_suffix
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        target = None
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we promise
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if target is not None:
        os.replace(path, target)


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """Load the emitter's private key (PEM PKCS#8 Ed25519)."""
    path = Path(path)
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise AuditConfigurationError(
            f"cannot read the checkpoint signing key {path}: {exc.strerror or exc}. Create one with "
            f"`otel-audit keygen --out {path}`, or point OTEL_AUDIT_SIGNING_KEY (signing_key=) at the right file"
        ) from exc
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        hint = " (that is a public key: use the file without .pub)" if b"PUBLIC KEY" in data else ""
        raise AuditConfigurationError(
            f"{path} is not an unencrypted PEM private key{hint}: {exc}. Create one with `otel-audit keygen --out PATH`"
        ) from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise AuditConfigurationError(
            f"{path} holds a {type(private).__name__}, not an Ed25519 key; create one with `otel-audit keygen --out PATH`"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning(
            "otel-audit: the signing key %s is readable by group or others (mode %o); restrict it with chmod 600",
            path,
            stat.S_IMODE(mode),
        )
    return SigningKey.from_private(private, str(path))


def load_trusted_key(path: str | os.PathLike[str]) -> VerifyKey:
    """Load a public key a verifier trusts (PEM SubjectPublicKeyInfo, Ed25519)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditConfigurationError(
            f"cannot read trusted key {path}: {exc.strerror or exc}; pass the .pub file written by `otel-audit keygen`"
        ) from exc
    if b"PRIVATE KEY" in data:
        raise AuditConfigurationError(
            f"{path} is a private key; a verifier needs only the public key ({path}.pub). Do not hand out the "
            "private key: whoever holds it can sign checkpoints"
        )
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise AuditConfigurationError(
            f"{path} is not a PEM public key: {exc}; pass the .pub file written by `otel-audit keygen`"
        ) from exc
    if not isinstance(public, Ed25519PublicKey):
        raise AuditConfigurationError(f"{path} holds a {type(public).__name__}, not an Ed25519 public key")
    return VerifyKey.from_public(public, str(path))


def load_trusted_keys(paths: list[str] | list[Path]) -> dict[str, VerifyKey]:
    """key id -> key, for every path (the same key given twice counts once)."""
    keys: dict[str, VerifyKey] = {}
    for path in paths:
        key = load_trusted_key(path)
        keys.setdefault(key.key_id, key)
    return keys
