"""Retry: arguments, the backoff formula, and the final note."""

from __future__ import annotations

import pytest

from tasklanes import Retry, WorkerCrashed, call
from tasklanes._retry import check_retry, check_retryable_task, note_attempts


def test_defaults() -> None:
    r = Retry()
    assert r.attempts == 3
    assert r.on == (TimeoutError, ConnectionError, WorkerCrashed)
    assert (r.backoff, r.max_backoff, r.multiplier, r.jitter) == (0.1, 10.0, 2.0, True)
    assert repr(r).startswith("Retry(attempts=3, on=(TimeoutError, ConnectionError, WorkerCrashed)")


def test_delay_without_jitter_follows_the_formula() -> None:
    r = Retry(attempts=10, backoff=0.5, max_backoff=3.0, multiplier=3.0, jitter=False)
    assert [r.delay(k) for k in (1, 2, 3, 4)] == [0.5, 1.5, 3.0, 3.0]
    assert Retry(jitter=False).delay(10_000) == 10.0  # no overflow on huge failure counts


def test_full_jitter_stays_within_the_ceiling() -> None:
    r = Retry(backoff=1.0, max_backoff=4.0)
    samples = [r.delay(3) for _ in range(2000)]
    assert all(0.0 <= s <= 4.0 for s in samples)
    assert max(samples) > 3.0 and min(samples) < 1.0  # spread over the whole range


def test_should_retry() -> None:
    r = Retry(attempts=3, on=ConnectionError)
    assert r.on == (ConnectionError,)
    assert r.should_retry(ConnectionResetError(), 1)
    assert r.should_retry(ConnectionError(), 2)
    assert not r.should_retry(ConnectionError(), 3)  # the last attempt
    assert not r.should_retry(ValueError(), 1)  # not in `on`


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"attempts": 0}, ValueError, "attempts must be >= 1"),
        ({"attempts": 2.0}, TypeError, "attempts must be an int"),
        ({"on": ()}, TypeError, "non-empty tuple"),
        ({"on": [ValueError]}, TypeError, "on must be an exception class"),
        ({"on": (ValueError, 3)}, TypeError, "on must hold exception classes"),
        ({"on": KeyboardInterrupt}, ValueError, "would retry cancellation"),
        ({"backoff": -1}, ValueError, "backoff must be a finite number"),
        ({"max_backoff": "1"}, TypeError, "max_backoff must be a number"),
        ({"multiplier": 0.5}, ValueError, "multiplier must be a finite number >= 1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        Retry(**kwargs)  # type: ignore[arg-type]


def test_check_retry() -> None:
    assert check_retry(None) is None
    assert check_retry(5).attempts == 5  # type: ignore[union-attr]
    r = Retry()
    assert check_retry(r) is r
    with pytest.raises(ValueError, match="retry must be a number of attempts >= 1"):
        check_retry(0)
    with pytest.raises(TypeError, match="retry must be None, a number of attempts"):
        check_retry(True)


def test_a_coroutine_cannot_be_retried() -> None:
    async def fetch() -> None:
        pass

    coro = fetch()
    with pytest.raises(TypeError, match=r"call\(fetch, url\)"):
        check_retryable_task(coro, 4)
    coro.close()
    check_retryable_task(call(fetch), 0)  # a callable is fine


def test_note_attempts_once() -> None:
    exc = ConnectionError("reset")
    note_attempts(exc, 3)
    note_attempts(exc, 3)
    assert exc.__notes__ == ["(tasklanes: failed after 3 attempts)"]
