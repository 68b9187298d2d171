"""Checked by mypy --strict in tests/test_typing.py: the public API's types, precisely."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

from tasklanes import BatchIterator, Call, Offloaded, amap, as_completed, call, offload, run_all


async def fetch(url: str, retries: int = 3) -> bytes:
    return url.encode()


def parse(text: str) -> int:
    return len(text)


@offload(kind="cpu", timeout=30)
def render(frame: int) -> bytes:
    return bytes(frame)


@offload
def read_config(path: str) -> dict[str, str]:
    return {}


@offload(kind="io", limit=10)
async def get(url: str) -> bytes:
    return b""


async def main() -> None:
    # call: ParamSpec keeps the arguments checked and the result typed.
    assert_type(call(parse, "x"), Call[int])
    assert_type(call(fetch, "u", retries=1), Call[Coroutine[Any, Any, bytes]])
    call(parse, 3)  # type: ignore[arg-type]

    # run_all: the result type follows the tasks; return_exceptions widens it.
    assert_type(await run_all([fetch("a"), fetch("b")]), list[bytes])
    assert_type(await run_all([call(fetch, "a")], limit=3), list[bytes])
    assert_type(await run_all([call(parse, "a")], kind="blocking"), list[int])
    assert_type(await run_all([call(parse, "a")], kind="cpu", timeout=1.0), list[int])
    assert_type(
        await run_all([fetch("a")], return_exceptions=True), list[bytes | BaseException]
    )
    assert_type(
        await run_all([call(parse, "a")], kind="cpu", return_exceptions=True),
        list[int | BaseException],
    )

    # as_completed and amap
    assert_type(as_completed([fetch("a")]), BatchIterator[tuple[int, bytes]])
    async for index, data in as_completed([fetch("a")]):
        assert_type(index, int)
        assert_type(data, bytes)
    assert_type(amap(fetch, ["a", "b"]), BatchIterator[bytes])
    assert_type(amap(parse, ["a"], kind="blocking"), BatchIterator[int])

    # offload: the decorated function is awaitable with the original's parameters.
    assert isinstance(render, Offloaded)
    assert_type(await render(3), bytes)
    assert_type(await render.map([1, 2]), list[bytes])
    assert_type(render.__wrapped__(3), bytes)
    assert_type(await read_config("p"), dict[str, str])
    assert_type(await get("u"), bytes)
    assert_type(await get.map(["u"]), list[bytes])
    await render("3")  # type: ignore[arg-type]
