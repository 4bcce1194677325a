"""Ed25519 keys: generate, store (0600), load, and name them by key id.

A key named ``alice`` lives in ``DEPIN_HOME/keys/alice.key`` (PKCS#8 PEM,
private, mode 0600) and ``alice.pub`` (``ed25519 <base64 raw public key>``).
The key id is derived from the public key alone, so anyone holding the public
half computes the same id. Private key material never leaves this module in
a message, a log line or JSON.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from depin.errors import InputError, KeyFileError, NotFoundError

KEY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
PUBLIC_PREFIX = "ed25519 "
KEY_ID_HEX_CHARS = 16
MAX_KEY_FILE_BYTES = 16 * 1024  # an Ed25519 PKCS#8 PEM is 119 bytes


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """The public facts about a stored key pair."""

    name: str
    key_id: str
    public_key: str  # base64 of the 32 raw bytes
    path: Path  # the private key file


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable id: the first 16 hex digits of SHA-256 over the raw public key."""
    return hashlib.sha256(raw_public(public_key)).hexdigest()[:KEY_ID_HEX_CHARS]


def raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(public_key: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public(public_key)).decode("ascii")


@functools.lru_cache(maxsize=4096)
def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """Parse a base64 raw Ed25519 public key, with or without the ``ed25519 `` prefix."""
    text = text.strip().removeprefix(PUBLIC_PREFIX).strip()
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise InputError("not an Ed25519 public key (expected 32 bytes in base64)") from exc


def _check_name(name: str) -> str:
    if not KEY_NAME_PATTERN.match(name):
        raise InputError(
            f"bad key name {name!r}: use letters, digits, '.', '_' or '-' (at most 64 characters)"
        )
    return name


def generate(name: str, keys_dir: Path) -> KeyInfo:
    """Create a new key pair ``name`` in ``keys_dir``; refuses to overwrite one.

    Both files appear or neither does, so a failure never leaves a private key
    without its public half (which would block the name for good).
    """
    _check_name(name)
    _make_private_dir(keys_dir)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = private.public_key()
    private_path = keys_dir / f"{name}{PRIVATE_SUFFIX}"
    public_path = keys_dir / f"{name}{PUBLIC_SUFFIX}"
    pub_line = (PUBLIC_PREFIX + public_key_b64(public) + "\n").encode("ascii")
    try:
        _write_pair(name, (private_path, pem, 0o600), (public_path, pub_line, 0o644))
    except OSError as exc:
        raise KeyFileError(f"cannot write key {name!r} in {keys_dir}: {exc.strerror}") from exc
    return KeyInfo(name, key_id(public), public_key_b64(public), private_path)


def _make_private_dir(keys_dir: Path) -> None:
    """Create ``keys_dir`` as 0700, or tighten it: mkdir's mode does not touch an existing one."""
    try:
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(keys_dir.stat().st_mode) != 0o700:
            keys_dir.chmod(0o700)
    except OSError as exc:
        raise KeyFileError(
            f"cannot make {keys_dir} a private directory ({exc.strerror}): "
            f"create it yourself with `mkdir -p {keys_dir} && chmod 700 {keys_dir}`"
        ) from exc


_PendingFile = tuple[Path, bytes, int]  # final path, content, mode


def _write_pair(name: str, *files: _PendingFile) -> None:
    """Write each file under a temporary name, then link all into place, or none.

    A hard link fails when its target exists, which keeps O_EXCL's promise
    (never clobber a key) where a rename would silently replace it.
    """
    temporaries: list[Path] = []
    placed: list[Path] = []
    try:
        for path, content, mode in files:
            temporaries.append(_write_temporary(path, content, mode))
        for (path, _, _), temporary in zip(files, temporaries, strict=True):
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise KeyFileError(f"key {name!r} already exists at {path}") from None
            placed.append(path)
    except BaseException:
        for path in placed:
            path.unlink(missing_ok=True)
        raise
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
    _sync_dir(files[0][0].parent)


def _write_temporary(path: Path, content: bytes, mode: int) -> Path:
    # A name list_keys never matches (it globs *.pub); O_EXCL: the mode holds from the first byte.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _sync_dir(directory: Path) -> None:
    """Make the new names durable, best effort: some file systems cannot fsync a directory."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _private_path(name_or_path: str, keys_dir: Path) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == PRIVATE_SUFFIX and candidate.exists():
        return candidate
    path = keys_dir / f"{_check_name(name_or_path)}{PRIVATE_SUFFIX}"
    if not path.exists():
        raise NotFoundError(
            f"no key named {name_or_path!r} in {keys_dir}: "
            f"create it with `depin keys new {name_or_path}`"
        )
    return path


def load_private(name_or_path: str, keys_dir: Path) -> Ed25519PrivateKey:
    """Load a private key by name (or path), refusing files others can read."""
    path = _private_path(name_or_path, keys_dir)
    pem = _read_private_file(path)
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PKCS#8 PEM private key") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a private key that is not Ed25519")
    return private


def _read_private_file(path: Path) -> bytes:
    """The key file's bytes, its mode checked on the very file read (no stat-then-open race).

    O_NOFOLLOW: a symlink could point the check and the read at a file chosen by
    whoever can write the link; O_NONBLOCK: a FIFO must not hang the open.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if path.is_symlink():
            raise KeyFileError(
                f"private key {path} is a symbolic link: give the path of the key file itself"
            ) from exc
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise KeyFileError(f"private key {path} is not a regular file")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"private key {path} is accessible by group or others "
                f"(mode {stat.filemode(mode)}): run `chmod 600 {path}`"
            )
        pem = fh.read(MAX_KEY_FILE_BYTES + 1)
    if len(pem) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path} is larger than a private key file ({MAX_KEY_FILE_BYTES} bytes)")
    return pem


def load_public(name_or_path: str, keys_dir: Path) -> Ed25519PublicKey:
    """A public key from a key name, a ``.pub``/``.key`` file, or a base64 string."""
    candidate = Path(name_or_path)
    if candidate.suffix == PUBLIC_SUFFIX and candidate.is_file():
        return _read_public(candidate)
    if KEY_NAME_PATTERN.match(name_or_path):
        pub = keys_dir / f"{name_or_path}{PUBLIC_SUFFIX}"
        if pub.is_file():
            return _read_public(pub)
        if (
            keys_dir / f"{name_or_path}{PRIVATE_SUFFIX}"
        ).exists() or candidate.suffix == PRIVATE_SUFFIX:
            return load_private(name_or_path, keys_dir).public_key()
    try:
        return public_key_from_b64(name_or_path)
    except InputError:
        raise NotFoundError(
            f"no key {name_or_path!r}: give a key name from `depin keys list`, a .pub file "
            "or a base64 Ed25519 public key"
        ) from None


def _read_public(path: Path) -> Ed25519PublicKey:
    try:
        return public_key_from_b64(path.read_text())
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc


def list_keys(keys_dir: Path) -> list[KeyInfo]:
    """Every key pair stored in ``keys_dir``, by name."""
    if not keys_dir.is_dir():
        return []
    infos = []
    for pub_path in sorted(keys_dir.glob(f"*{PUBLIC_SUFFIX}")):
        public = _read_public(pub_path)
        name = pub_path.name.removesuffix(PUBLIC_SUFFIX)
        infos.append(
            KeyInfo(
                name, key_id(public), public_key_b64(public), keys_dir / f"{name}{PRIVATE_SUFFIX}"
            )
        )
    return infos
