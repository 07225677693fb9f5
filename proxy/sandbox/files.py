"""File rules shared by the backends: name validation, copy-out caps, safe extraction.

Everything here treats the sandbox's side as hostile: names are validated, symlinks and
special files are never followed or materialised, and the byte/file caps are enforced
before anything is written. The destination on the host is trusted: only directories and
regular files are ever created in it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

from proxy.sandbox.base import CopiedFile, CopyReport, SkippedFile, SkipReason, UnsafePathError
from proxy.sandbox.tarstream import MemberEnd, MemberKind, MemberStart, TarReader

MAX_RECORDED_SKIPS = 1000
MAX_DEPTH = 100
_CHUNK = 256 * 1024
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def clean_relative_path(name: str) -> PurePosixPath:
    """Validate a relative '/'-separated name; '.' and empty components are dropped."""
    if not name or "\0" in name or "\\" in name:
        raise UnsafePathError(f"unsafe file name {name!r}: empty, NUL or backslash")
    if name.startswith("/"):
        raise UnsafePathError(f"unsafe file name {name!r}: absolute")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError(f"unsafe file name {name!r}: contains '..'")
    if not parts:
        raise UnsafePathError(f"unsafe file name {name!r}: names no file")
    return PurePosixPath(*parts)


def clean_absolute_dir(path: str) -> PurePosixPath:
    """Validate an absolute directory path inside a sandbox (no '..', NUL or backslash)."""
    if not path.startswith("/"):
        raise UnsafePathError(f"sandbox directory {path!r} must be absolute")
    if path == "/":
        return PurePosixPath("/")
    return PurePosixPath("/") / clean_relative_path(path.lstrip("/"))


class CopyBudget:
    """Enforces ``max_bytes`` (total) and ``max_files`` and builds the `CopyReport`."""

    def __init__(self, max_bytes: int, max_files: int) -> None:
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.report = CopyReport()
        self._bytes = 0
        self._files = 0

    def skip(self, path: str, reason: SkipReason) -> None:
        if len(self.report.skipped) < MAX_RECORDED_SKIPS:
            self.report.skipped.append(SkippedFile(path, reason))
        else:
            self.report.skipped_unrecorded += 1

    def admit(self, path: str, size: int) -> bool:
        """Reserve room for a file, or record why it does not fit."""
        if self._files >= self.max_files:
            self.skip(path, SkipReason.TOO_MANY_FILES)
            return False
        if self._bytes + size > self.max_bytes:
            self.skip(path, SkipReason.TOO_LARGE)
            return False
        self._files += 1
        self._bytes += size
        return True

    def copied(self, path: str, size: int) -> None:
        self.report.files.append(CopiedFile(path, size))


def open_dest_file(dest: Path, rel: PurePosixPath) -> int | None:
    """Open ``dest/rel`` for writing (parents created); None when the name collides."""
    target = dest.joinpath(*rel.parts)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return os.open(
            target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink in dest: never write through it
            return None
        raise


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class ArchiveExtractor:
    """Apply a tar stream to ``dest`` under the copy-out rules.

    ``root`` is the archive's top-level name for the copied directory (Docker names members
    ``<basename of src>/...``); it is stripped. Feed chunks; when ``read_limit`` archive bytes
    have been read, `stopped` turns true and the caller should stop reading.
    """

    def __init__(self, dest: Path, budget: CopyBudget, root: str, read_limit: int) -> None:
        self._dest = dest
        self._budget = budget
        self._root = root
        self._read_limit = read_limit
        self._read = 0
        self._reader = TarReader()
        self._fd: int | None = None
        self._current: tuple[str, int] | None = None  # (path, bytes written)
        self._member = ""  # name of the current member in the archive
        self._shown = ""  # the same, as reported (relative to the copied directory)
        self.stopped = False

    def feed(self, data: bytes) -> None:
        if self.stopped:
            return
        self._read += len(data)
        try:
            for event in self._reader.feed(data):
                self._apply(event)
        except BaseException:
            self._abort_current()
            raise
        if self._reader.finished:
            self.stopped = True
        elif self._read > self._read_limit:
            self._abort_current()
            self._budget.skip(self._shown or ".", SkipReason.ARCHIVE_TOO_LARGE)
            self.stopped = True

    def close(self) -> None:
        """Finish; raises `TarFormatError` when the archive was cut short."""
        if not self.stopped:
            self._abort_current()
            self._reader.close()

    def _abort_current(self) -> None:
        """Drop a half-written file: a report never lists a file that is not complete."""
        if self._fd is not None and self._current is not None:
            self._close_fd()
            rel = self._relative(self._member)
            if rel is not None and rel.parts:
                self._dest.joinpath(*rel.parts).unlink(missing_ok=True)
        self._current = None

    def _apply(self, event: MemberStart | MemberEnd | bytes) -> None:
        if isinstance(event, bytes):
            if self._fd is not None and self._current is not None:
                write_all(self._fd, event)
                self._current = (self._current[0], self._current[1] + len(event))
            return
        if isinstance(event, MemberEnd):
            if self._fd is not None and self._current is not None:
                self._close_fd()
                self._budget.copied(*self._current)
            self._current = None
            return
        self._member = self._shown = event.name
        rel = self._relative(event.name)
        if rel is None:
            self._budget.skip(event.name, SkipReason.UNSAFE_PATH)
            return
        path = self._shown = str(rel) if rel.parts else event.name
        if event.kind is MemberKind.DIR:
            return
        reason = _KIND_SKIPS.get(event.kind)
        if reason is not None:
            self._budget.skip(path, reason)
            return
        if not rel.parts:
            rel = PurePosixPath(self._root or "file")
        if not self._budget.admit(path, event.size):
            return
        self._fd = open_dest_file(self._dest, rel)
        if self._fd is None:
            self._budget.skip(path, SkipReason.CONFLICT)
            return
        self._current = (path, 0)

    def _relative(self, name: str) -> PurePosixPath | None:
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if self._root:
            if not parts or parts[0] != self._root:
                return None
            parts = parts[1:]
        if not parts:
            return PurePosixPath()
        try:
            return clean_relative_path("/".join(parts))
        except UnsafePathError:
            return None

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_KIND_SKIPS = {
    MemberKind.SYMLINK: SkipReason.SYMLINK,
    MemberKind.HARDLINK: SkipReason.LINK,
    MemberKind.DEVICE: SkipReason.SPECIAL,
    MemberKind.FIFO: SkipReason.SPECIAL,
    MemberKind.OTHER: SkipReason.SPECIAL,
}


def copy_tree(src: Path, dest: Path, budget: CopyBudget) -> None:
    """Copy regular files from the host directory ``src`` into ``dest`` (blocking).

    Walks with directory file descriptors and ``O_NOFOLLOW`` so that a process still running
    in the sandbox cannot swap a directory for a symlink mid-walk and redirect the copy.
    """
    try:
        top = os.open(src, _OPEN_DIR)
    except FileNotFoundError:
        return
    except OSError:
        kind = SkipReason.SYMLINK if src.is_symlink() else SkipReason.SPECIAL
        budget.skip(".", kind)
        return
    try:
        _walk(top, PurePosixPath(), dest, budget, 0)
    finally:
        os.close(top)


def _walk(dirfd: int, rel: PurePosixPath, dest: Path, budget: CopyBudget, depth: int) -> None:
    with os.scandir(dirfd) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        path = rel / entry.name
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            budget.skip(str(path), SkipReason.SYMLINK)
        elif stat.S_ISDIR(mode):
            if depth >= MAX_DEPTH:
                budget.skip(str(path), SkipReason.UNSAFE_PATH)
                continue
            try:
                child = os.open(entry.name, _OPEN_DIR, dir_fd=dirfd)
            except OSError:
                budget.skip(str(path), SkipReason.SYMLINK)
                continue
            try:
                _walk(child, path, dest, budget, depth + 1)
            finally:
                os.close(child)
        elif stat.S_ISREG(mode):
            _copy_file(dirfd, entry.name, path, dest, budget)
        else:
            budget.skip(str(path), SkipReason.SPECIAL)


def _copy_file(dirfd: int, name: str, rel: PurePosixPath, dest: Path, budget: CopyBudget) -> None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        src = os.open(name, flags, dir_fd=dirfd)
    except OSError:
        budget.skip(str(rel), SkipReason.SYMLINK)  # swapped for a link (or vanished) mid-walk
        return
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            budget.skip(str(rel), SkipReason.SPECIAL)
            return
        if not budget.admit(str(rel), st.st_size):
            return
        out = open_dest_file(dest, rel)
        if out is None:
            budget.skip(str(rel), SkipReason.CONFLICT)
            return
        written = 0
        try:
            # Copy at most the admitted size, even if the file grows meanwhile.
            while written < st.st_size:
                chunk = os.read(src, min(_CHUNK, st.st_size - written))
                if not chunk:
                    break
                write_all(out, chunk)
                written += len(chunk)
        finally:
            os.close(out)
        budget.copied(str(rel), written)
    finally:
        os.close(src)
