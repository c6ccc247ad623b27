"""One run per job: an OS lock on a file beside the journal.

``fcntl.flock`` is released by the kernel when its holder dies however it
dies (SIGKILL, a crash, a power cut), so a stale lock cannot outlive its
process: "taking over" a dead run's lock is simply acquiring it.  The file
holds ``pid@host`` only so the refusal can say who holds the job.
"""

from __future__ import annotations

import fcntl
import os
import socket

from .base import JournalError

__all__ = ["JobLock", "JobLocked"]


class JobLocked(JournalError):
    """Another live process runs this job (the CLI exits 75: try again later)."""

    def __init__(self, path: str, holder: str) -> None:
        super().__init__(
            f"journal {path} is in use by another run ({holder or 'unknown process'});"
            " wait for it to finish, or stop it first"
        )
        self.holder = holder


class JobLock:
    """An exclusive, non-blocking lock on ``<journal>.lock``, held until ``release()``."""

    def __init__(self, journal_path: str | os.PathLike[str]) -> None:
        self.journal_path = os.fspath(journal_path)
        self.path = self.journal_path + ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`JobLocked` naming its holder."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot create lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise JobLocked(self.journal_path, holder) from None
        except OSError as exc:
            os.close(fd)
            raise JournalError(f"cannot lock {self.path}: {exc.strerror}") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass  # the holder's name is a courtesy; the lock is what counts
        self._fd = fd

    def release(self) -> None:
        """Unlock (idempotent).  The file stays: deleting it would race a newcomer."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
