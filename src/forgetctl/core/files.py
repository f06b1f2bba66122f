"""File helpers: crash-safe writes of artefacts and outputs, and the bounded reader that
every user-supplied input file goes through."""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from forgetctl.core.errors import BadInput

MAX_INPUT_BYTES = 20 * 1024 * 1024
"""Request files, record files, policies and exported heads."""


PRIVATE_FILE = 0o600
"""Files holding personal data or evidence (ledger, exports, reports)."""


PRIVATE_DIR = 0o700


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def read_bounded(path: str | Path, limit: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, else one BadInput line.

    FIFOs, devices and directories are refused before reading (a FIFO would block for ever,
    /dev/zero would fill memory), and the limit is enforced while reading, not after, since
    a file can grow between the stat and the read.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise BadInput(f"{path}: {_kind(os.stat(path).st_mode)}, expected a regular file")
        # O_NONBLOCK: should a FIFO be swapped in after the stat, open does not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BadInput(f"cannot read {path}: no such file") from None
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadInput(f"{path}: {_kind(os.fstat(fd).st_mode)}, expected a regular file")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > limit:
                raise BadInput(f"{path}: file too large (over {limit} bytes)")
            chunks.append(chunk)
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_text(path: str | Path, limit: int = MAX_INPUT_BYTES) -> str:
    """A bounded UTF-8 text file (a BOM is dropped); binary or other encodings refused."""
    raw = read_bounded(path, limit)
    if b"\x00" in raw:
        raise BadInput(f"{path}: binary file, expected text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text (byte {exc.start})") from None


def write_atomic(
    dest: str | Path, data: str | bytes | Callable[[BinaryIO], object], mode: int = PRIVATE_FILE
) -> Path:
    """Write ``data`` to the regular file ``dest`` through a fresh sibling and a rename.

    ``data`` may be a function that writes to the open file, for content too large to hold
    in memory twice (a training checkpoint).

    Only a regular file is ever replaced: a device, directory, FIFO or symlink at ``dest``
    is refused (a rename over /dev/full would replace the device node; over a symlink it
    would replace the link, not what it names). The sibling is created with O_EXCL in
    ``mode`` and removed on any failure, so nothing is left behind.
    """
    dest = Path(dest)
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise BadInput(f"cannot write {dest}: {exc.strerror or exc}") from None
    else:
        if stat.S_ISLNK(st.st_mode):
            raise BadInput(f"{dest}: a symbolic link; give the path of the file itself")
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{dest}: {_kind(st.st_mode)}, only a regular file is written")
    parent = dest.parent
    tmp = parent / f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise BadInput(f"cannot write {dest}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, bytes):
                fh.write(data)
            else:
                data(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # an existing umask must not widen or narrow what we meant
        os.replace(tmp, dest)
        _fsync_dir(parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BadInput(f"cannot write {dest}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success fsync it and rename it to ``dest``.

    On any exception the temporary directory is removed and ``dest`` is untouched, so a
    reader never sees a half-written adapter or model. Leftover ``.tmp-*`` siblings (from
    a kill -9) are removed by ``clean_partial``.
    """
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        os.rename(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_partial(root: Path) -> list[Path]:
    """Remove the leftovers of interrupted atomic writes under ``root``: ``.tmp-*``
    directories of :func:`atomic_dir` and ``.*.tmp`` siblings of :func:`write_atomic`."""
    removed = []
    if root.exists():
        for path in [*root.rglob(".tmp-*"), *root.rglob(".*.tmp")]:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
            removed.append(path)
    return removed
