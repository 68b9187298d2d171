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
    CHUNK_TIMED,
    JOURNAL_HEADER,
    MANY_HEADER,
    RECORD_LEN,
    TAG_OK_ARRAY,
    TAG_OK_LIST,
    TAG_OK_MANY,
    frame,
)
from tasklanes._processes._wire import (
    FrameSplitter,
    chunk_message,
    decode_array,
    decode_many,
    encode_chunk,
    encode_items,
    iter_records,
    read_journal,
)
from tasklanes._processes._worker import _Journal

from . import _pool_tasks as T

P = functools.partial


def test_encode_chunk_sends_a_shared_function_once() -> None:
    fn, seq = pickle.loads(encode_chunk([P(T.sleep_then, 0, 2), P(T.sleep_then, 0, 4)]))
    assert fn is T.sleep_then and seq == [(0, 2), (0, 4)]
    fn, seq = pickle.loads(encode_chunk([call(T.sleep_then, 0, 2), call(T.sleep_then, 0, 8)]))
    assert fn is T.sleep_then and seq == [(0, 2), (0, 8)]


def test_encode_chunk_sends_single_arguments_bare() -> None:
    # One argument each: the arguments themselves, no tuple each, and a flag.
    assert pickle.loads(encode_chunk([P(T.inc, 1), P(T.inc, 2)])) == (T.inc, [1, 2], True)
    assert pickle.loads(encode_chunk([call(T.inc, (1,)), call(T.inc, 7)])) == (
        T.inc,
        [(1,), 7],
        True,
    )
    # Any other count of arguments in the chunk: tuples, as ever.
    fn, seq = pickle.loads(encode_chunk([call(T.inc, 1), call(T.inc)]))
    assert fn is T.inc and seq == [(1,), ()]


def test_encode_items_is_the_bare_chunk_of_the_same_calls() -> None:
    # amap's items on the cpu lane: the chunk `call(fn, item)` each would make, built
    # without any `Call` (a tuple item stays one argument).
    items = [1, (2,), "x"]
    assert encode_items(T.inc, items) == encode_chunk([call(T.inc, x) for x in items])
    assert pickle.loads(encode_items(T.inc, items)) == (T.inc, items, True)


def test_encode_chunk_mixed_tasks_travel_whole() -> None:
    tasks = [P(T.inc, 1), P(T.identity, 2), P(T.inc, x=3)]
    fn, seq = pickle.loads(encode_chunk(tasks))
    assert fn is None
    assert [task.func for task in seq] == [T.inc, T.identity, T.inc]


def test_encode_chunk_sends_a_lambda_by_value() -> None:
    # Not importable by name: it travels by value (cloudpickle, extra "interactive").
    [task] = pickle.loads(encode_chunk([lambda: 41 + 1]))[1]
    assert task() == 42


def test_encode_chunk_raises_on_what_does_not_pickle_at_all() -> None:
    lock = threading.Lock()
    with pytest.raises(TypeError):
        encode_chunk([P(T.identity, lock)])


def test_chunk_message_is_a_frame_with_its_header() -> None:
    msg = chunk_message(42, 0.5, b"payload")
    splitter = FrameSplitter()
    data, spans = splitter.feed(msg)
    [(start, end)] = spans
    assert CHUNK_HEADER.unpack_from(data, start) == (42, 0.5, 0)
    assert data[start + CHUNK_HEADER.size : end] == b"payload"
    msg = chunk_message(7, 0.25, b"timed", CHUNK_TIMED)
    data, [(start, end)] = FrameSplitter().feed(msg)
    assert CHUNK_HEADER.unpack_from(data, start) == (7, 0.25, CHUNK_TIMED)
    assert data[start + CHUNK_HEADER.size : end] == b"timed"


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
    JOURNAL_HEADER.pack_into(block, 0, 1, 10_000, 2, 0)  # more bytes than the block has
    assert read_journal(memoryview(block), -1) is None
    JOURNAL_HEADER.pack_into(block, 0, 1, 4, 2, 0)  # two records cannot fit in 4 bytes
    assert read_journal(memoryview(block), -1) is None


def test_ok_many_tag_is_distinct() -> None:
    assert TAG_OK_MANY not in (0, 1, 2)
    assert TAG_OK_LIST not in (0, 1, 2, TAG_OK_MANY)
    assert TAG_OK_ARRAY not in (0, 1, 2, TAG_OK_MANY, TAG_OK_LIST)


def _flushed(
    values: list[object], numbers: bool = False
) -> tuple[int, float | None, int, int, memoryview]:
    """Hold `values` in a journal (as the worker does: numbers as array items when
    `numbers`), flush it into a pipe: the message's tag and header and its body."""
    import os

    r, w = os.pipe()
    try:
        journal = _Journal(bytearray(JOURNAL_HEADER.size + 4096), out=w)
        for value in values:
            if not (numbers and journal.add_number(value, 0.0)):
                assert journal.add(pickle.dumps(value), 0.0, value)
        journal.flush(0.5)
        data, spans = FrameSplitter().feed(os.read(r, 65536))
    finally:
        os.close(r)
        os.close(w)
    [(start, end)] = spans
    seconds, count, epoch, body = decode_many(memoryview(data)[start + 1 : end])
    return data[start], seconds, count, epoch, body


def test_plain_values_are_flushed_as_one_pickled_list() -> None:
    tag, seconds, count, epoch, body = _flushed([1, 2.5, "x", None, b"y"])
    assert (tag, seconds, count, epoch) == (TAG_OK_LIST, 0.5, 5, 0)
    assert pickle.loads(body) == [1, 2.5, "x", None, b"y"]


def test_other_values_are_flushed_as_records() -> None:
    # A list, even among ints: each task's value must stay its own object.
    tag, _, count, _, body = _flushed([1, [2], 3])
    assert (tag, count) == (TAG_OK_MANY, 3)
    assert [pickle.loads(r) for r in iter_records(body, count)] == [1, [2], 3]


def test_ints_and_floats_are_held_and_flushed_as_native_arrays() -> None:
    for values in ([1, -2, 2**63 - 1, -(2**63)], [0.5, -1e300, math.inf]):
        tag, seconds, count, epoch, body = _flushed(values, numbers=True)
        assert (tag, seconds, count, epoch) == (TAG_OK_ARRAY, 0.5, len(values), 0)
        got = decode_array(body, count)
        assert got == values
        assert [type(v) for v in got] == [type(v) for v in values]


def test_numbers_that_do_not_fit_an_array_go_pickled() -> None:
    # An int past 64 bits, a bool (an int subclass), an int after a float: one form
    # per epoch, and every value comes back with its exact type.
    for values in ([1, 2**64, 3], [1, True, 2], [0.5, 1, 2.5], [1, "x", 2, 3.5]):
        got: list[object] = []
        for tag, count, body in _messages(values):
            if tag == TAG_OK_ARRAY:
                got += decode_array(body, count)
            elif tag == TAG_OK_LIST:
                got += pickle.loads(body)
            else:
                got += [pickle.loads(r) for r in iter_records(body, count)]
        assert got == values
        assert [type(v) for v in got] == [type(v) for v in values]


def _messages(values: list[object]) -> list[tuple[int, int, memoryview]]:
    """Every message a journal sends for `values` held as the worker holds them, then
    flushed: `(tag, count, body)` each."""
    import os

    r, w = os.pipe()
    try:
        journal = _Journal(bytearray(JOURNAL_HEADER.size + 4096), out=w)
        for value in values:
            if not journal.add_number(value, 0.0):
                assert journal.add(pickle.dumps(value), 0.0, value)
        journal.flush(0.5)
        data, spans = FrameSplitter().feed(os.read(r, 65536))
    finally:
        os.close(r)
        os.close(w)
    out = []
    for start, end in spans:
        _, count, _, body = decode_many(memoryview(data)[start + 1 : end])
        out.append((data[start], count, body))
    return out


def _journal_after(values: list[object]) -> tuple[bytearray, list[int]]:
    """A journal that held `values` as the worker holds them (flushing into a pipe
    when the form changes), and the tags of the messages it sent."""
    import os

    block = bytearray(JOURNAL_HEADER.size + 4096)
    r, w = os.pipe()
    try:
        journal = _Journal(block, out=w)
        for value in values:
            if not journal.add_number(value, 0.0):
                assert journal.add(pickle.dumps(value), 0.0, value)
        os.set_blocking(r, False)
        try:
            data, spans = FrameSplitter().feed(os.read(r, 65536))
        except BlockingIOError:
            data, spans = b"", []
    finally:
        os.close(r)
        os.close(w)
    return block, [data[start] for start, _ in spans]


def test_a_dead_workers_array_journal_is_read_back() -> None:
    block, sent = _journal_after([7, 8, 9])
    assert sent == []  # all held
    found = read_journal(memoryview(block), last_epoch=-1)
    assert found == (3, [7, 8, 9])
    assert read_journal(memoryview(block), last_epoch=0) is None
    # A string after the ints: the ints are sent, the string is held as a record.
    block, sent = _journal_after([7, 8, "x"])
    assert sent == [TAG_OK_ARRAY]
    found = read_journal(memoryview(block), last_epoch=0)
    assert found is not None and not isinstance(found[1], list)
    count, records = found
    assert [pickle.loads(r) for r in iter_records(records, count)] == ["x"]
    # A torn array header (more items than the block holds): nothing is taken.
    JOURNAL_HEADER.pack_into(block, 0, 5, 0, 10_000, 1)
    assert read_journal(memoryview(block), last_epoch=0) is None


def test_a_chunk_hands_back_only_when_its_tasks_are_really_long() -> None:
    from tasklanes._processes._worker import _really_over

    budget = 0.02
    # Quick tasks on a busy machine: over budget on the wall clock only.
    assert not _really_over(0.05, 0.0001, 0.004, budget)
    # One long task, a chunk that used its budget in CPU time, or ten budgets.
    assert _really_over(0.05, 0.03, 0.001, budget)
    assert _really_over(0.05, 0.0001, 0.025, budget)
    assert _really_over(0.25, 0.0001, 0.001, budget)


def test_frame_splitter_hands_over_a_big_pending_frame() -> None:
    from tasklanes._processes._protocol import FRAME_HEADER, FRAME_HEADER_LONG

    payload = bytes([7]) + b"p" * 5000
    splitter = FrameSplitter()
    small = frame(b"\x01hello")
    data, spans = splitter.feed(small + frame(payload)[:100])
    assert [bytes(data[a:b]) for a, b in spans] == [b"\x01hello"]
    assert splitter.take_big(10_000, {7}) is None  # under the threshold: kept
    assert splitter.take_big(1000, {8}) is None  # not a tag that may be streamed
    assert splitter.pending == 100
    prefix, size = splitter.take_big(1000, {7})  # type: ignore[misc]
    assert bytes(prefix) == payload[:96] and size == len(payload)
    assert splitter.pending == 0  # forgotten: the caller reads the rest
    data, spans = splitter.feed(small)  # the next frame is read afresh
    assert [bytes(data[a:b]) for a, b in spans] == [b"\x01hello"]
    # The length alone, no tag yet: not yet.
    splitter.feed(frame(payload)[:4])
    assert splitter.take_big(1000, {7}) is None
    # The long header (-1, then 8 bytes).
    splitter = FrameSplitter()
    splitter.feed(FRAME_HEADER.pack(-1) + FRAME_HEADER_LONG.pack(len(payload)) + payload[:10])
    prefix, size = splitter.take_big(1000, {7})  # type: ignore[misc]
    assert bytes(prefix) == payload[:10] and size == len(payload)
