"""Message formats shared by the pool (parent) and its worker processes.

Both directions use the framing of `multiprocessing.connection.Connection`: a
4-byte big-endian signed length, then the payload (a length of ``-1`` means an 8-byte
unsigned length follows, for payloads of 2 GiB or more). Keeping that framing lets the
worker use ``Connection.recv_bytes`` while the parent reads raw file descriptors in bulk
and parses frames itself.

Parent -> worker:

* a *chunk*: ``CHUNK_HEADER`` (chunk id, time budget in seconds, flags: ``CHUNK_TIMED``
  when the job has a per-task timeout) followed by the pickle
  of ``(fn, seq)``. When every task of the chunk calls the same function with
  positional arguments only (``call(f, x)``, ``functools.partial(f, x)``: the common
  case of a batch), ``fn`` is that function and ``seq`` the list of argument tuples:
  the function is pickled once and the worker calls ``fn(*args)``. Otherwise ``fn`` is
  None and ``seq`` the list of tasks. When every task of such a chunk has exactly one
  argument, the pickle is ``(fn, args, True)`` instead, ``args`` the list of the
  arguments themselves (a *bare* chunk: no tuple per task to pickle, load and unpack;
  the worker calls ``fn(arg)``). Pickling one list is several times cheaper per
  task than pickling tasks one by one, and these forms cheaper again. No indices travel:
  the parent knows which tasks it put in which chunk. The header is outside the pickle
  so that a worker can hand back a chunk it has not started without unpickling it.

There is no stop message: a worker exits at end of file on its task pipe (the parent
closes it to retire a worker) or when the parent dies (see ``_worker.main``).

Worker -> parent, one message per event, told apart by their first byte:

* ``TAG_OK`` + pickle(value): the next task of the worker's stream returned ``value``.
* ``TAG_OK_LAST`` + 8-byte float + pickle(value): the same, for the last task of a chunk;
  the float is the chunk's run time in the worker (the parent learns task durations
  per chunk; cheaper than per task).
* ``TAG_OK_MANY`` + ``MANY_HEADER`` (float, count, epoch) + ``count`` records (each a
  ``RECORD_LEN`` and a pickle): the next ``count`` tasks of the stream, all of one
  chunk, returned these values. A worker holds the outcomes of quick tasks for up to
  half a millisecond and sends them in one message: one write (and one wake-up of
  the parent) instead of one per task. The float is the chunk's run time when the
  last of them ends the chunk, else NaN.
* ``TAG_OK_LIST`` + ``MANY_HEADER`` + pickle(list of ``count`` values): the same as
  ``TAG_OK_MANY``, sent instead when every held value is of a plain immutable type
  (``int``, ``float``, ``str``, ...): one ``loads`` in the parent for the whole batch
  rather than one per task. The journal holds the same outcomes as records, as ever.
* ``TAG_OK_ARRAY`` + ``MANY_HEADER`` + one byte (``JOURNAL_INTS`` or ``JOURNAL_FLOATS``)
  + the ``count`` values as a native array of 64-bit ints or doubles: the same again,
  when every held value is an ``int`` that fits 64 bits, or every one a ``float``. The
  worker writes such values straight into its journal (one item store per task, no
  pickle), and the parent reads them back with one ``memoryview.cast(...).tolist()``.
* ``TAG_OTHER`` + pickle(tuple), the tuple one of:

  - ``("error", chunk_seconds_or_None, exception, traceback_text)``: the next task
    raised (``chunk_seconds`` is set when it was the last task of its chunk);
  - ``("bad_result", chunk_seconds_or_None, message)``: the next task returned a value
    that could not be pickled;
  - ``("ready", pid)``: sent once, when the worker is ready for its first chunk;
  - ``("returned", chunk_id, position, chunk_seconds)``: the worker gave back the tasks
    of a chunk from ``position`` on, unstarted (the chunk overran its time budget);
  - ``("unloadable", chunk_id, exception, traceback_text)``: the chunk could not be
    unpickled in the worker; none of its tasks ran.

Outcomes carry no index: a worker runs its chunks strictly in order, so the parent
knows which task each outcome belongs to.

Besides the pipes, each worker shares two blocks of memory with the parent:

* the *slot*, two doubles the worker sets before it starts each task of a chunk
  flagged ``CHUNK_TIMED`` (the start time, then how many tasks it has started in its
  life). Outcomes may be held in the worker, so the parent reads the slot to learn
  which task runs and since when: the start its timeout counts from, and the task to
  fail when it overruns. Without a timeout the worker skips these stores: when it
  dies, the task that was running is the first without an outcome once its pipe is
  drained and its journal read (it runs its tasks in order, and every finished one
  is in one or the other);
* the *journal*, where the worker writes each held outcome as it finishes (the
  records of the next ``TAG_OK_MANY`` message). It sends them as one message later,
  then starts a new epoch of the journal. If the worker dies (a crash, or killed for a
  timeout) before it sent them, the parent reads them from the journal -- unless the
  message of that epoch did arrive -- so no finished task loses its outcome or runs
  twice. The header's last field says how the journal holds them: records
  (``JOURNAL_RECORDS``), or an array of 64-bit ints or doubles (``JOURNAL_INTS``,
  ``JOURNAL_FLOATS``; the records area then holds ``count`` 8-byte items).

This module is imported by worker processes: keep it free of heavy imports.
"""

from __future__ import annotations

import struct

__all__ = [
    "CHUNK_HEADER",
    "CHUNK_TIMED",
    "FRAME_HEADER",
    "FRAME_HEADER_LONG",
    "JOURNAL_BYTES",
    "JOURNAL_ARRAY_CODES",
    "JOURNAL_FLOATS",
    "JOURNAL_HEADER",
    "JOURNAL_INTS",
    "JOURNAL_RECORDS",
    "MANY_HEADER",
    "RECORD_LEN",
    "SECONDS",
    "TAG_OK",
    "TAG_OK_LAST",
    "TAG_OTHER",
    "TAG_OK_ARRAY",
    "TAG_OK_LIST",
    "TAG_OK_MANY",
    "RemoteError",
    "frame",
]

FRAME_HEADER = struct.Struct("!i")
FRAME_HEADER_LONG = struct.Struct("!Q")
CHUNK_HEADER = struct.Struct("<qdB")
#: A chunk header flag: the job has a per-task timeout; the worker publishes each
#: task's start in its slot.
CHUNK_TIMED = 1

SECONDS = struct.Struct("<d")
# TAG_OK_MANY's header: the chunk's run time (NaN: the chunk goes on), how many
# records follow, and the journal epoch they come from.
MANY_HEADER = struct.Struct("<dIQ")
# One record of a TAG_OK_MANY message or of a journal: its length, then a pickle.
RECORD_LEN = struct.Struct("<I")
# The journal: a worker's held outcomes, in shared memory (see above). Its header is
# (epoch, bytes of records used, records, form), then the records.
JOURNAL_HEADER = struct.Struct("=QQQQ")  # native order: the worker stores its fields as items
# The journal's forms: pickled records, or a native array of int64 / doubles.
JOURNAL_RECORDS = 0
JOURNAL_INTS = 1
JOURNAL_FLOATS = 2
#: The `memoryview.cast` format of each array form.
JOURNAL_ARRAY_CODES = {JOURNAL_INTS: "q", JOURNAL_FLOATS: "d"}
JOURNAL_BYTES = 256 * 1024

TAG_OK = 0
TAG_OK_LAST = 1
TAG_OTHER = 2
TAG_OK_MANY = 3
TAG_OK_LIST = 4
TAG_OK_ARRAY = 5


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
