"""What the file readers and writers share: line-oriented binary reading with byte offsets,
and writing that records its offset at each commit and truncates back to it on restart."""

from __future__ import annotations

import codecs
import errno
import hashlib
import os
from pathlib import Path
from typing import Any, BinaryIO

from batchctl.errors import BatchctlError, OutputUnwritable
from batchctl.items.paths import PathTemplate, resolve_path

PART_SUFFIX = ".part"  # an atomic writer's file until its step completes
CHECKSUM_SUFFIX = ".sha256"  # the checksum file beside a finished file (sha256sum's format)
HASH_BLOCK = 1 << 20  # bytes read at a time to checksum a finished file


class CheckpointMismatch(BatchctlError):
    """A file does not match its writer's checkpoint: it was changed by someone else."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def unwritable(path: Path, exc: OSError) -> OutputUnwritable:
    """The one-line error for an OSError met opening or writing `path`:
    "disk full writing out.csv: No space left on device", "cannot write out.csv: Is a
    directory". A file system error of a file writer is never retried nor skipped (it is a
    BatchctlError): a full disk fills again, and an item is not to blame."""
    reason = exc.strerror or str(exc)
    other = os.fsdecode(exc.filename) if exc.filename is not None else None
    if other is not None and other != str(path):
        reason = f"{reason}: {other}"
    if exc.errno in DISK_FULL:
        return OutputUnwritable(f"disk full writing {path}: {reason}", errno=exc.errno)
    if isinstance(exc, (FileExistsError, NotADirectoryError)):  # a file where a folder must be
        blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            reason = f"{blocking} is a file, not a folder"
    return OutputUnwritable(f"cannot write {path}: {reason}", errno=exc.errno)


def open_for_reading(path: Path, encoding: str, state: dict[str, Any]) -> tuple[BinaryIO, int]:
    """The file opened in binary, past a UTF-8 byte-order mark, and the offset where the data
    begins; a saved `offset` in `state` is sought later by the caller."""
    handle = open(path, "rb")  # noqa: SIM115 - closed by the reader's close()
    start = 0
    if codecs.lookup(encoding).name in ("utf-8", "utf-8-sig"):
        if handle.read(3) == codecs.BOM_UTF8:
            start = 3
    handle.seek(start)
    return handle, start


def line_decoder(encoding: str) -> Any:
    """A fast bytes -> str function for one line (ASCII-compatible encodings only)."""
    name = codecs.lookup(encoding).name
    if name in ("utf-8", "utf-8-sig"):
        return bytes.decode
    return lambda line: line.decode(encoding)


class FileWriter:
    """A file written by chunks: byte offset in the state, truncation on restart, optional
    atomic finish (write to `<file>.part`, rename when the step completes) and checksum.

    Not transactional: each chunk's bytes are written and flushed before the checkpoint
    commits; a restart truncates the file back to the committed offset, so the file holds
    every item exactly once whatever the moment of a crash.

    A file system error (a full disk, a read-only file system, a path that is a folder) is
    OutputUnwritable, naming the path: the chunk rolls back, the file is cut back to its
    committed offset (which frees what the failed chunk took), and the step fails; a restart
    once the cause is fixed resumes at that offset.
    """

    transactional = False

    def __init__(self, path: PathTemplate, *, atomic: bool = False, checksum: bool = False) -> None:
        self.template = path
        self.atomic = atomic
        self.checksum = checksum
        self.path: Path | None = None
        self._file: BinaryIO | None = None
        self._offset = 0
        self._inode: int | None = None  # the file this writer last wrote (see _resume)
        self._broken = False  # a write failed: bytes beyond the checkpoint may be in the buffer

    @property
    def target(self) -> Path:
        """The file being written: the final path, or its `.part` while atomic."""
        assert self.path is not None, "the writer is not open"
        return self.path.with_name(self.path.name + PART_SUFFIX) if self.atomic else self.path

    def open(self, ctx: Any, state: dict[str, Any]) -> None:
        self.path = resolve_path(self.template, ctx)
        target = self.target
        offset = state.get("offset")
        self._broken = False
        try:
            if offset is None:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(target, "wb")  # noqa: SIM115 - closed by close()
                self._offset = 0
            else:
                if self.atomic and not target.exists() and self.path.exists():
                    self.path.replace(target)  # renamed, but the step was not recorded complete
                self._file = self._resume(target, int(offset))
                self._offset = int(offset)
            self._inode = os.fstat(self._file.fileno()).st_ino
        except CheckpointMismatch:
            raise
        except OSError as exc:
            self.close()
            raise unwritable(target, exc) from exc
        self.restore(state)

    def _resume(self, target: Path, offset: int) -> BinaryIO:
        """The file cut back to its committed `offset`, open for writing at its end.

        This writer wrote the file itself (a rolled-back chunk): cut it in place. Anyone else
        (a restart, another worker taking the partition over) writes a fresh copy of the
        committed bytes and renames it over the file: a process that lost the file to us, and
        may still hold it open, then writes only into a file no longer on disk.
        """
        try:
            handle = open(target, "r+b")  # noqa: SIM115 - closed by close() or below
        except FileNotFoundError:
            raise CheckpointMismatch(
                f"{target} is gone; its checkpoint says {offset} bytes were written"
            ) from None
        size = handle.seek(0, os.SEEK_END)
        if size < offset:
            handle.close()
            raise CheckpointMismatch(
                f"{target} has {size} bytes, fewer than the {offset} its checkpoint committed"
            )
        if os.fstat(handle.fileno()).st_ino == self._inode:
            handle.truncate(offset)
            handle.seek(offset)
            return handle
        fresh = target.with_name(f"{target.name}.{os.getpid()}.resume")
        mode = os.fstat(handle.fileno()).st_mode & 0o7777
        try:
            copy = os.fdopen(os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode), "w+b")
        except BaseException:
            handle.close()
            raise
        try:
            _copy_bytes(handle, copy, offset)
            copy.flush()
            os.fsync(copy.fileno())
            fresh.replace(target)
        except BaseException:
            copy.close()
            fresh.unlink(missing_ok=True)
            raise
        finally:
            handle.close()
        return copy

    def restore(self, state: dict[str, Any]) -> None:
        """Subclasses take back what they saved in `saved_state`."""

    def saved_state(self) -> dict[str, Any]:
        return {}

    def emit(self, data: bytes) -> None:
        assert self._file is not None, "the writer is not open"
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as exc:
            self._broken = True  # closed without a flush, then cut back by the chunk's rollback
            raise unwritable(self.target, exc) from exc
        self._offset += len(data)

    @property
    def fresh(self) -> bool:
        return self._offset == 0

    def state(self) -> dict[str, Any]:
        return {"offset": self._offset, **self.saved_state()}

    def complete(self) -> None:
        """The step completed: make the file durable, checksum it, give it its final name."""
        assert self._file is not None and self.path is not None, "the writer is not open"
        writing = self.target
        try:
            self._file.flush()
            os.fsync(self._file.fileno())  # a delayed ENOSPC (or EIO) is reported here
            self._file.close()
            self._file = None
            if self.checksum:
                digest = _sha256(self.target)
                sums = self.path.with_name(self.path.name + CHECKSUM_SUFFIX)
                partial = sums.with_name(sums.name + PART_SUFFIX)
                writing = partial
                partial.write_text(f"{digest}  {self.path.name}\n", encoding="utf-8")
                partial.replace(sums)
            if self.atomic:
                writing = self.path
                self.target.replace(self.path)
        except OSError as exc:
            self._broken = True
            self.close()
            raise unwritable(writing, exc) from exc

    def close(self) -> None:
        """Close the file. After a failed write its buffer may hold bytes it could not write:
        they are beyond the checkpoint, so they are dropped with the error they raise again."""
        handle, self._file = self._file, None
        if handle is None:
            return
        try:
            handle.close()  # the descriptor is closed even when the final flush fails
        except OSError as exc:
            if not self._broken:
                raise unwritable(self.target, exc) from exc


def _copy_bytes(source: BinaryIO, target: BinaryIO, count: int) -> None:
    """The first `count` bytes of `source` into `target`, in the kernel where it can."""
    copied = 0
    while copied < count:
        sent = os.sendfile(target.fileno(), source.fileno(), copied, count - copied)
        if sent == 0:
            raise CheckpointMismatch(f"{source.name} ended before its committed {count} bytes")
        copied += sent
    target.seek(count)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
