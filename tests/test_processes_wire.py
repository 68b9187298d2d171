"""The pool's wire as pure code (`tasklanes._processes._wire`): bytes in, bytes out, no
processes."""

from __future__ import annotations

import functools
import math
import pickle
import threading

import pytest

from tasklanes import call
from tasklanes._processes._protocol import (
    CHUNK_HEADER,
    JOURNAL_HEADER,
    MANY_HEADER,
    RECORD_LEN,
    TAG_OK_MANY,
    frame,
)
from tasklanes._processes._wire import (
    FrameSplitter,
    chunk_message,
    decode_many,
    encode_chunk,
    iter_records,
    read_journal,
)
from tasklanes._processes._worker import _Journal

from . import _pool_tasks as T

P = functools.partial


def test_encode_chunk_sends_a_shared_function_once() -> None:
    fn, seq = pickle.loads(encode_chunk([(0, P(T.inc, 1)), (1, P(T.inc, 2))]))
    assert fn is T.inc and seq == [(1,), (2,)]
    fn, seq = pickle.loads(encode_chunk([(0, call(T.inc, 1)), (5, call(T.inc, 7))]))
    assert fn is T.inc and seq == [(1,), (7,)]


def test_encode_chunk_mixed_tasks_travel_whole() -> None:
    items = [(0, P(T.inc, 1)), (1, P(T.identity, 2)), (2, P(T.inc, x=3))]
    fn, seq = pickle.loads(encode_chunk(items))  # type: ignore[arg-type]
    assert fn is None
    assert [task.func for task in seq] == [T.inc, T.identity, T.inc]


def test_encode_chunk_sends_a_lambda_by_value() -> None:
    # Not importable by name: it travels by value (cloudpickle, extra "interactive").
    [task] = pickle.loads(encode_chunk([(0, lambda: 41 + 1)]))[1]  # type: ignore[arg-type]
    assert task() == 42


def test_encode_chunk_raises_on_what_does_not_pickle_at_all() -> None:
    lock = threading.Lock()
    with pytest.raises(TypeError):
        encode_chunk([(0, P(T.identity, lock))])


def test_chunk_message_is_a_frame_with_its_header() -> None:
    msg = chunk_message(42, 0.5, b"payload")
    splitter = FrameSplitter()
    data, spans = splitter.feed(msg)
    [(start, end)] = spans
    assert CHUNK_HEADER.unpack_from(data, start) == (42, 0.5)
    assert data[start + CHUNK_HEADER.size : end] == b"payload"


def _payloads(splitter: FrameSplitter, data: bytes) -> list[bytes]:
    buf, spans = splitter.feed(data)
    return [bytes(buf[s:e]) for s, e in spans]


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7, 64])
def test_frames_split_anywhere_come_out_whole(step: int) -> None:
    payloads = [b"a", b"", b"hello" * 100, bytes(range(256)) * 50, b"z"]
    stream = b"".join(frame(p) for p in payloads)
    splitter = FrameSplitter()
    got: list[bytes] = []
    for i in range(0, len(stream), step):
        got += _payloads(splitter, stream[i : i + step])
    assert got == payloads
    assert splitter.pending == 0


def test_long_frame_header() -> None:
    # A payload of 2 GiB or more uses the long header (-1, then 8 bytes); the splitter
    # reads it the same way at any size.
    payload = b"x" * 1000
    long_frame = b"\xff\xff\xff\xff" + len(payload).to_bytes(8, "big") + payload
    splitter = FrameSplitter()
    assert _payloads(splitter, long_frame[:7]) == []
    assert _payloads(splitter, long_frame[7:500]) == []
    assert splitter.pending == 500
    assert _payloads(splitter, long_frame[500:] + frame(b"next")) == [payload, b"next"]


def _records(values: list[object]) -> bytes:
    out = b""
    for value in values:
        data = pickle.dumps(value)
        out += RECORD_LEN.pack(len(data)) + data
    return out


def test_decode_many_and_records() -> None:
    values: list[object] = [1, "two", [3]]
    payload = MANY_HEADER.pack(0.25, 3, 7) + _records(values)
    seconds, count, epoch, records = decode_many(memoryview(payload))
    assert (seconds, count, epoch) == (0.25, 3, 7)
    assert [pickle.loads(r) for r in iter_records(records, count)] == values
    seconds, *_ = decode_many(memoryview(MANY_HEADER.pack(math.nan, 0, 0)))
    assert seconds is None  # NaN on the wire: the chunk goes on


def test_journal_written_by_a_worker_is_read_back() -> None:
    block = bytearray(JOURNAL_HEADER.size + 4096)
    journal = _Journal(block, out=-1)  # no flush here, so the fd is never used
    for value in (10, 20, 30):
        assert journal.add(pickle.dumps(value), 0.0)
    found = read_journal(memoryview(block), last_epoch=-1)
    assert found is not None
    count, records = found
    assert [pickle.loads(r) for r in iter_records(records, count)] == [10, 20, 30]
    # That epoch's message already arrived: nothing to recover.
    assert read_journal(memoryview(block), last_epoch=0) is None


def test_empty_and_torn_journals() -> None:
    block = bytearray(JOURNAL_HEADER.size + 64)
    assert read_journal(memoryview(block), -1) is None  # nothing held
    JOURNAL_HEADER.pack_into(block, 0, 1, 10_000, 2)  # more bytes than the block has
    assert read_journal(memoryview(block), -1) is None
    JOURNAL_HEADER.pack_into(block, 0, 1, 4, 2)  # two records cannot fit in 4 bytes
    assert read_journal(memoryview(block), -1) is None


def test_ok_many_tag_is_distinct() -> None:
    assert TAG_OK_MANY not in (0, 1, 2)
