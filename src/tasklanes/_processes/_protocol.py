"""Message formats shared by the pool (parent) and its worker processes.

Both directions use the framing of :class:`multiprocessing.connection.Connection`: a
4-byte big-endian signed length, then the payload (a length of ``-1`` means an 8-byte
unsigned length follows, for payloads of 2 GiB or more). Keeping that framing lets the
worker use ``Connection.recv_bytes`` while the parent reads raw file descriptors in bulk
and parses frames itself.

Parent -> worker:

* a *chunk*: ``CHUNK_HEADER`` (chunk id, time budget in seconds) followed by the pickle
  of a list of ``(index, task)`` pairs. The header is outside the pickle so that a worker
  can hand back a chunk it has not started without unpickling it.
* ``STOP`` (an empty payload): finish the current task, then exit.

Worker -> parent, each payload a pickled tuple whose first item is a tag:

* ``(OK, seconds, value)`` and ``(ERROR, seconds, exception, traceback_text)``: the
  outcome of the next task of the worker's stream. Outcomes carry no index: a worker
  runs its chunks strictly in order, and the parent knows the order.
* ``(READY, pid)``: sent once, when the worker is ready for its first chunk.
* ``(RETURNED, chunk_id, position)``: the worker gave back the tasks of a chunk from
  ``position`` on, unstarted (the chunk overran its time budget).
* ``(UNLOADABLE, chunk_id, exception, traceback_text)``: the chunk could not be
  unpickled in the worker; none of its tasks ran.

This module is imported by worker processes: keep it free of heavy imports.
"""

from __future__ import annotations

import struct

__all__ = [
    "CHUNK_HEADER",
    "ERROR",
    "FRAME_HEADER",
    "FRAME_HEADER_LONG",
    "OK",
    "READY",
    "RETURNED",
    "STOP",
    "UNLOADABLE",
    "RemoteError",
    "frame",
]

FRAME_HEADER = struct.Struct("!i")
FRAME_HEADER_LONG = struct.Struct("!Q")
CHUNK_HEADER = struct.Struct("<qd")

STOP = b""

OK = 0
ERROR = 1
READY = 2
RETURNED = 3
UNLOADABLE = 4


def frame(payload: bytes) -> bytes:
    """One message, framed as ``Connection.send_bytes`` frames it."""
    n = len(payload)
    if n > 0x7FFFFFFF:
        return FRAME_HEADER.pack(-1) + FRAME_HEADER_LONG.pack(n) + payload
    return FRAME_HEADER.pack(n) + payload


class RemoteError(RuntimeError):
    """Stands in for an exception from a worker process that could not be pickled.

    ``.type_name`` is the qualified name of the original exception's type, and
    ``.message`` its ``str()``; the worker's traceback is attached as a note, like
    any other exception that crosses from a worker.
    """

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(f"{type_name}: {message}" if message else type_name)

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str]]:
        return (type(self), (self.type_name, self.message))
