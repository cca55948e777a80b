"""The cluster key: 32 random bytes in a file only its owner can read.

Role: create the key at cluster set-up (``generate_key``) and load it in the controller and
every agent (``load_key``), refusing a key file that others can read or write — a leaked
key lets anyone forge heartbeats, and so keep a dead host "alive" or make a live one look
replayed.

Must not: log, print or otherwise copy the key anywhere.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from nonstop.core.ha.heartbeat import KEY_BYTES


class KeyFileError(Exception):
    """The key file is missing, has the wrong size, or is readable by others."""


def generate_key(path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a fresh key to ``path`` with mode 0600 and return the path.

    The file is created with O_EXCL (unless ``overwrite``) and the final mode is set
    before any byte is written, so the key is never on disk with a wider mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it, but an existing file's mode could be wider
        os.write(fd, secrets.token_bytes(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def load_key(path: str | Path) -> bytes:
    """The key in ``path``; raises ``KeyFileError`` if group or others may access it."""
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read cluster key {path}: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"cluster key {path} has mode {stat.S_IMODE(st.st_mode):o}; expected 600")
    if len(data) != KEY_BYTES:
        raise KeyFileError(f"cluster key {path} is {len(data)} bytes; expected {KEY_BYTES}")
    return data
