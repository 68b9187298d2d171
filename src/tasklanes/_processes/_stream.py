"""Big results, unpickled straight from a worker's pipe on a helper thread.

The manager thread reads what a worker sends into a buffer and unpickles each frame
from it (`_results`). For a large result that means the buffer and the result are
both whole at one moment: twice the result's size in the parent. A frame of
`STREAM_ABOVE` bytes or more is instead handed over, as soon as its header and first
byte have arrived, to a [BigFrameReader][tasklanes._processes._stream.BigFrameReader]:
a short-lived thread that runs `pickle.load` over the pipe itself, limited to that
frame. The unpickler reads the bytes of a large `bytes`, `bytearray` or out-of-band
buffer straight into the object it builds, so the parent holds the result once.

Meanwhile the manager stops watching that pipe (the reader owns it until the frame's
end) and goes on serving the other workers, deadlines and cancels. The reader hands
its outcome back as a command (`_commands.StreamDone`), and the manager settles it as
it would a frame it had parsed itself, then reads the pipe again.

How a reader ends ([StreamEnd][tasklanes._processes._stream.StreamEnd]):

- `WHOLE`: the frame was read to its end. It holds a value, or the error that
  unpickling raised (a corrupt frame, or a class this process cannot import: that
  task fails alone, as on the buffered path); whatever follows the pickle inside the
  frame is skipped, so the next frame is read where it starts.
- `CUT`: the worker died (or closed its pipe) before the frame's end. There is no
  outcome, and the pipe is out of step: the manager reads no more from it. The
  worker's exit settles its tasks as any crash does (the task that was sending takes
  the blame, `WorkerCrashed`, unless it already failed with its timeout or was
  cancelled).
- `FAILED`: the reader itself raised (a bug): the task fails with that error and the
  worker is killed, since its pipe can no longer be read in step.

Example, the shape of one reader's life (the manager does this in `_results` and
`_manager`):

```python
reader = BigFrameReader(worker, w.rfd, w.sentinel, prefix, size, on_done)
reader.start()  # on_done(reader) runs on the reader's thread when it ends
```

Cancellation: nothing interrupts a reader from outside, and nothing needs to. The
pool ends a transfer by killing the worker (a timeout, a cancel, the pool's close):
the reader waits on the worker's sentinel as well as on its pipe, so it sees the death
at once, reads what is left in the pipe (all the worker ever wrote is there by then)
and ends `CUT`, or `WHOLE` if the frame was complete. That also covers a pipe kept
open by a grandchild of the worker. As a last resort
[abandon][tasklanes._processes._stream.BigFrameReader.abandon] makes it give up
within a second.
"""

from __future__ import annotations

import enum
import io
import os
import pickle
import select
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._protocol import SECONDS, TAG_OK, TAG_OK_LAST, TAG_OTHER

if TYPE_CHECKING:
    from ._workers import WorkerHandle

__all__ = ["STREAM_ABOVE", "STREAMED_TAGS", "BigFrameReader", "StreamEnd"]

STREAM_ABOVE = 1 << 20
"""A frame whose payload is this many bytes or more is unpickled from the pipe."""

STREAMED_TAGS = frozenset({TAG_OK, TAG_OK_LAST, TAG_OTHER})
"""The messages that may be big: one task's value, or an error (see `_protocol`).
Batches of held outcomes are bounded by the journal's size and never are."""

# The reader's buffer, for the pickle's small opcodes; a big `bytes` object is read
# past it, straight into its own memory.
_BUFFER = 1 << 16
# The pipe keeps its default capacity (64 KiB on Linux). Raising it for the transfer
# (`F_SETPIPE_SZ`, 1 MiB) measured within the noise (100 MB: 0.20-0.22 s against
# 0.22-0.23 s), and the pages count against a per-user limit
# (`/proc/sys/fs/pipe-user-pages-soft`) past which every new pipe of that user shrinks.
_WAIT_MS = 1000  # how often a waiting reader looks at `abandoned`


class StreamEnd(enum.Enum):
    RUNNING = "running"
    WHOLE = "whole"
    CUT = "cut"
    FAILED = "failed"


class _Cut(Exception):
    """The frame ended early: its writer is gone."""


class _FrameReader(io.RawIOBase):
    """The rest of one frame of a pipe, as a raw binary stream: the bytes the manager
    had already read (`prefix`), then `left` bytes from `fd`, then end of file.

    `fd` is non-blocking (the manager's selector watches it the rest of the time): a
    read that finds the pipe empty waits for it, or for the writer's death.
    """

    def __init__(
        self, fd: int, sentinel: int, prefix: memoryview, left: int, owner: BigFrameReader
    ) -> None:
        super().__init__()
        self._fd = fd
        self._prefix = prefix
        self.left = left
        self._owner = owner
        self._writer_gone = False
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._sentinel = sentinel
        self._poll.register(sentinel, select.POLLIN)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._prefix:
            n = min(len(view), len(self._prefix))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        n = min(len(view), self.left)
        if n <= 0:
            return 0  # the frame's end
        while True:
            try:
                got = os.readv(self._fd, [view[:n]])
            except BlockingIOError:
                self._wait()
                continue
            if not got:
                raise _Cut
            self.left -= got
            return got

    def _wait(self) -> None:
        """Until the pipe has data, or its writer died (then one more read: whatever
        it wrote before it died is in the pipe)."""
        if self._writer_gone:
            raise _Cut  # dead, and its pipe is empty
        while True:
            events = self._poll.poll(_WAIT_MS)
            if self._owner.abandoned:
                raise _Cut
            for fd, _ in events:
                if fd == self._fd:
                    return
            if events:  # the sentinel alone: the worker is dead
                self._writer_gone = True
                return


class BigFrameReader:
    """Reads one big frame of a worker's pipe on its own thread (see the module doc).

    `prefix` holds the payload bytes the manager had already read, `size` is the whole
    payload's length. The outcome, once `on_done(reader)` has been called (on the
    reader's thread), is in `end`, `tag`, `seconds` (a `TAG_OK_LAST` frame's chunk
    time), `ok` and `value` (the value, the unpickled message, or the error).
    """

    __slots__ = (
        "_fd",
        "_on_done",
        "_prefix",
        "_sentinel",
        "_size",
        "abandoned",
        "end",
        "exited",
        "ok",
        "seconds",
        "tag",
        "thread",
        "value",
        "worker",
    )

    def __init__(
        self,
        worker: WorkerHandle,
        fd: int,
        sentinel: int,
        prefix: memoryview,
        size: int,
        on_done: Callable[[BigFrameReader], object],
    ) -> None:
        self.worker = worker
        self._fd = fd
        self._sentinel = sentinel
        self._prefix = prefix
        self._size = size
        self._on_done = on_done
        self.end = StreamEnd.RUNNING
        self.tag = -1
        self.seconds: float | None = None
        self.ok = False
        self.value: object = None
        self.exited = False  # manager-only: the worker's sentinel fired meanwhile
        self.abandoned = False
        self.thread = threading.Thread(
            target=self._run, name="tasklanes-result-reader", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def abandon(self) -> None:
        """Make a reader that still waits give up (within a second): at the pool's
        shutdown, for a worker that even SIGKILL did not end."""
        self.abandoned = True

    def _run(self) -> None:
        try:
            self._read()
            self.end = StreamEnd.WHOLE
        except _Cut:
            self.end = StreamEnd.CUT
        except BaseException as exc:
            self.value = exc
            self.ok = False
            self.end = StreamEnd.FAILED
        finally:
            self._prefix = memoryview(b"")  # the manager's buffer: let it go
            self._on_done(self)

    def _read(self) -> None:
        raw = _FrameReader(
            self._fd, self._sentinel, self._prefix, self._size - len(self._prefix), self
        )
        self._prefix = memoryview(b"")
        stream = io.BufferedReader(raw, _BUFFER)
        self.tag = tag = stream.read(1)[0]
        try:
            if tag == TAG_OK_LAST:
                head = stream.read(SECONDS.size)
                if len(head) < SECONDS.size:
                    raise pickle.UnpicklingError("frame too short for its header")
                self.seconds = SECONDS.unpack(head)[0]
            self.value = pickle.load(stream)
            self.ok = True
        except _Cut:
            raise
        except BaseException as exc:
            self.value = exc
            self.ok = False
        # Whatever follows the pickle in the frame (nothing, from a sound worker; the
        # rest of a pickle that failed midway) is skipped: the next frame starts there.
        while stream.read(_BUFFER):
            pass
