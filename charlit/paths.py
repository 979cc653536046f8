"""Path safety: names from configs and persona files stay inside their cache, and caches of code stay private.

:func:`inside` joins user-supplied parts onto a root and refuses results outside it. :func:`private_dir` and
:func:`check_private` guard caches whose content is executed (compiled kernels): another user must not be able
to plant or swap a file there. :func:`exclusive_lock` serialises processes that would build the same thing.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class UnsafePathError(ValueError):
    """A path that leaves its root, or a cache that someone else could write to."""


def inside(root: str | Path, *parts: str, what: str = "path") -> Path:
    """``root / parts...``, resolved; an :class:`UnsafePathError` naming ``what`` when it is not inside ``root``."""
    base = Path(root).expanduser().resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise UnsafePathError(
            f"{what} {'/'.join(parts)!r} leads outside {base} (to {path}): names that become paths must not be "
            f"absolute or contain '..'."
        )
    return path


def check_private(path: str | Path, setting: str = "the cache") -> None:
    """Refuse ``path`` unless it is owned by this user and no one else can write to it (symlinks are not followed);
    the error suggests pointing ``setting`` elsewhere."""
    info = os.lstat(path)
    elsewhere = f"point {setting} to a directory only you can write to"
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePathError(
            f"{path} is a symbolic link: charlit will not run code from it. Delete it, or {elsewhere}."
        )
    if info.st_uid != os.getuid():
        raise UnsafePathError(
            f"{path} is owned by uid {info.st_uid}, not by you (uid {os.getuid()}): charlit will not run code from it. "
            f"Delete it, or {elsewhere}."
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePathError(
            f"{path} is writable by group or others (mode {stat.filemode(info.st_mode)}): charlit will not run code "
            f"from it. Run `chmod go-w {path}`, or {elsewhere}."
        )


def private_dir(path: str | Path, setting: str = "the cache") -> Path:
    """``path`` as a directory, created with mode 0700 when missing, checked with :func:`check_private`."""
    path = Path(path).expanduser()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(path.resolve(), setting)
    return path


def write_private(path: str | Path, text: str) -> None:
    """Replace ``path`` atomically by a 0600 file holding ``text`` (a symlink there is replaced, not followed)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_lock(path: str | Path) -> int:
    """A descriptor to ``flock`` on: ``path`` made 0600, never opened through a symlink."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symlink; charlit never takes a lock through one: remove it.") from None
        raise


def try_lock(path: str | Path) -> int | None:
    """An exclusive ``flock`` on ``path``: its descriptor (close it to release), or None when another process
    holds it."""
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def exclusive_lock(path: str | Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``, waiting for it; ``on_wait()`` runs first if it is taken."""
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
