"""A block of memory shared between the pool (parent) and one worker process.

Each worker gets one block: the *slot* (its current task's start time and how many
tasks it has started) and the *journal* of outcomes it holds (see ``_protocol``). We
map a memory file ourselves rather than use ``multiprocessing``'s ``RawArray``: that
one comes from a process-wide heap whose files stay open for the life of the
process, while ours is gone when its worker is.

Imported by worker processes: keep it light.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

__all__ = ["SLOT_BYTES", "SharedBlock", "attach"]

SLOT_BYTES = 16  # two doubles: [start time of the current task, tasks started]


class SharedBlock:
    """``size`` bytes of zeroed shared memory, handed to a child process by passing
    this object among the arguments of ``Process`` (it pickles as a duplicate of its
    file descriptor, which ``multiprocessing`` sends along while the child starts; the
    child gets an ``mmap``, see `attach`)."""

    def __init__(self, size: int) -> None:
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("tasklanes-worker", os.MFD_CLOEXEC)
        else:  # pragma: no cover - not Linux
            import tempfile

            with tempfile.TemporaryFile() as f:
                fd = os.dup(f.fileno())
        try:
            os.ftruncate(fd, size)
            self.mmap = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.size = size

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocessing.reduction import DupFd

        if self._fd < 0:
            raise RuntimeError("this SharedBlock was already handed to its process")
        return (attach, (DupFd(self._fd), self.size))

    def fileno(self) -> int:
        """The block's memory file, until `started` (handed over by descriptor)."""
        if self._fd < 0:
            raise RuntimeError("this SharedBlock was already handed to its process")
        return self._fd

    def started(self) -> None:
        """The child has its copy: drop our descriptor (the mapping stays)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        self.started()
        try:
            self.mmap.close()
        except BufferError:  # pragma: no cover - a view is still alive; GC unmaps it
            pass


def attach(dupfd: Any, size: int) -> mmap.mmap:
    """In the child: map the block whose descriptor ``multiprocessing`` passed us."""
    fd = dupfd.detach()
    try:
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)
