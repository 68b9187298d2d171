"""The pool's side of the wire, as pure code on bytes (no processes, no threads).

The formats are described in `_protocol`. Here: encoding a chunk of tasks, splitting
the byte stream a worker sends into frames, decoding the header of a batch of held
outcomes and walking its records, and reading a dead worker's journal. The manager
calls these on its hot path, so they stay small and allocation-light; the tests in
`tests/test_processes_wire.py` drive them on hand-made bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Container, Iterator
from typing import Any

from .._call import Call
from ._pickling import dumps_chunk
from ._protocol import (
    CHUNK_HEADER,
    FRAME_HEADER,
    FRAME_HEADER_LONG,
    JOURNAL_ARRAY_CODES,
    JOURNAL_HEADER,
    JOURNAL_RECORDS,
    MANY_HEADER,
    RECORD_LEN,
    frame,
)

__all__ = [
    "FrameSplitter",
    "chunk_message",
    "decode_array",
    "decode_many",
    "encode_chunk",
    "encode_items",
    "iter_records",
    "read_journal",
]

_partial = functools.partial
_unpack_len = FRAME_HEADER.unpack_from
_unpack_long = FRAME_HEADER_LONG.unpack_from
_unpack_many = MANY_HEADER.unpack_from
_MANY_SIZE = MANY_HEADER.size
_unpack_record = RECORD_LEN.unpack_from
_REC = RECORD_LEN.size
_HEAD = JOURNAL_HEADER.size


def encode_chunk(tasks: list[Callable[[], object]]) -> bytes:
    """Pickle a chunk's tasks as `(fn, seq)` or `(fn, seq, True)` (see `_protocol`).

    When every task calls the same function with positional arguments only, `fn` is
    that function (pickled once) and `seq` the argument tuples -- or, when every task
    has exactly one argument, the arguments themselves, with a third item `True` (a
    *bare* chunk: cheaper to pickle and to load than a tuple each, and the worker calls
    `fn(arg)`); otherwise `fn` is None and `seq` the tasks. Raises whatever pickling
    raises.
    """
    first = tasks[0]
    args: list[tuple[Any, ...]] = []
    append = args.append
    if type(first) is _partial:
        fn = first.func
        for t in tasks:
            if type(t) is not _partial or t.func is not fn or t.keywords:
                break
            append(t.args)
        else:
            return _dumps_args(fn, args)
    elif type(first) is Call:
        fn = first.fn
        for t in tasks:
            if type(t) is not Call or t.fn is not fn or t.kwargs:
                break
            append(t.args)
        else:
            return _dumps_args(fn, args)
    return dumps_chunk(None, tasks)


def encode_items(fn: object, items: list[Any]) -> bytes:
    """Pickle a chunk of ``amap(fn, items)``'s items as a bare chunk ``(fn, items, True)``:
    what `encode_chunk` makes of ``[call(fn, item) for item in items]``, without
    building (or walking) a `Call` per item."""
    return dumps_chunk(fn, items, True)


def _dumps_args(fn: object, args: list[tuple[Any, ...]]) -> bytes:
    try:
        # One argument each (the common `call(f, x)`): send the arguments bare.
        bare = [arg for (arg,) in args]
    except ValueError:
        return dumps_chunk(fn, args)
    return dumps_chunk(fn, bare, True)


def chunk_message(chunk_id: int, budget: float, payload: bytes, flags: int = 0) -> bytes:
    """The framed message that carries a chunk to a worker (`flags`: `CHUNK_TIMED`)."""
    return frame(CHUNK_HEADER.pack(chunk_id, budget, flags) + payload)


class FrameSplitter:
    """Splits the byte stream read from one worker into frames.

    [feed][tasklanes._processes._wire.FrameSplitter.feed] takes whatever one read
    returned and gives back the complete frames; an incomplete tail is kept for the
    next call. A big message arrives in many reads: they are gathered and parsed
    once, not re-joined on every read.
    """

    __slots__ = ("_need", "_pending")

    def __init__(self) -> None:
        self._pending = bytearray()
        self._need = 0  # the length of the pending message once whole (0: not known yet)

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int]]]:
        """`(buffer, spans)`: each span is the `(start, end)` of one frame's payload
        in `buffer`, in order."""
        if self._pending:
            pending = self._pending
            pending += data
            if len(pending) < self._need:
                return b"", []
            data = bytes(pending)
            self._pending = bytearray()
            self._need = 0
        spans: list[tuple[int, int]] = []
        n = len(data)
        pos = 0
        while n - pos >= 4:
            size = _unpack_len(data, pos)[0]
            start = pos + 4
            if size < 0:
                if n - start < 8:
                    break
                size = _unpack_long(data, start)[0]
                start += 8
            end = start + size
            if end > n:
                break
            spans.append((start, end))
            pos = end
        if pos < n:
            self._pending = bytearray(memoryview(data)[pos:])
            rest = n - pos
            if rest >= 4:
                size = _unpack_len(data, pos)[0]
                if size >= 0:
                    self._need = 4 + size
                elif rest >= 12:
                    self._need = 12 + _unpack_long(data, pos + 4)[0]
        return data, spans

    def take_big(self, threshold: int, tags: Container[int]) -> tuple[memoryview, int] | None:
        """Hand over the incomplete message kept, if its payload is `threshold` bytes or
        more and its first byte (the tag, one of `tags`) has arrived: `(the payload's
        bytes so far, the payload's size)`. The caller reads the rest of it from the
        pipe itself (see `_stream`); this splitter starts afresh after it. None
        otherwise (nothing changes)."""
        need = self._need
        if need - 4 < threshold:  # also when no length is known yet (0)
            return None
        pending = self._pending
        head = 4 if _unpack_len(pending, 0)[0] >= 0 else 12
        if len(pending) <= head or pending[head] not in tags:
            return None
        self._pending = bytearray()
        self._need = 0
        return memoryview(pending)[head:], need - head

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message kept for the next call."""
        return len(self._pending)


def decode_many(payload: memoryview) -> tuple[float | None, int, int, memoryview]:
    """A `TAG_OK_MANY` payload (after the tag): `(chunk_seconds, count, epoch, records)`;
    `chunk_seconds` is None when the chunk goes on (NaN on the wire)."""
    seconds, count, epoch = _unpack_many(payload, 0)
    return (None if seconds != seconds else seconds), count, epoch, payload[_MANY_SIZE:]


def iter_records(records: memoryview, count: int) -> Iterator[memoryview]:
    """The `count` pickles of a block of records (a `TAG_OK_MANY` message, a journal)."""
    pos = 0
    for _ in range(count):
        n = _unpack_record(records, pos)[0]
        start = pos + _REC
        pos = start + n
        yield records[start:pos]


def decode_array(body: memoryview, count: int) -> list[Any]:
    """The values of a `TAG_OK_ARRAY` message (its body after `MANY_HEADER`): one form
    byte, then `count` native 64-bit ints or doubles."""
    code = JOURNAL_ARRAY_CODES.get(body[0])
    if code is None or len(body) - 1 != 8 * count:
        raise ValueError(f"a malformed array of {count} outcomes (form {body[0]})")
    return _numbers(body[1:], code)


def _numbers(raw: memoryview, code: str) -> list[Any]:
    """`raw` (bytes) read as native items of format `code`, as a list of numbers."""
    view: Any = raw.cast("B")  # (`code` comes from a table; mypy wants a literal)
    values: list[Any] = view.cast(code).tolist()
    return values


def read_journal(
    journal: memoryview, last_epoch: int
) -> tuple[int, memoryview | list[Any]] | None:
    """The outcomes a dead worker held and never sent: `(count, records)` -- or
    `(count, values)`, a list, when the journal held them as an array of numbers -- or
    None.

    None when nothing is held, when that epoch's message already arrived
    (`epoch <= last_epoch`), or when the header is torn (those tasks then run again
    rather than take a garbled result).
    """
    epoch, used, count, form = JOURNAL_HEADER.unpack_from(journal, 0)
    if not count or epoch <= last_epoch:
        return None
    if form != JOURNAL_RECORDS:
        code = JOURNAL_ARRAY_CODES.get(form)
        if code is None or 8 * count > len(journal) - _HEAD:
            return None
        return count, _numbers(journal[_HEAD : _HEAD + 8 * count], code)
    if used > len(journal) - _HEAD or count * _REC > used:
        return None
    return count, journal[_HEAD : _HEAD + used]
