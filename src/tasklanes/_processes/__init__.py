"""tasklanes' own worker-process pool: the engine under the cpu lane.

``_pool`` is the parent side's public face (``ProcessPool``, a synchronous,
thread-safe engine driven by one manager thread; its parts are listed in its
docstring and in docs/architecture.md), ``_worker`` the code that runs inside each
worker process, ``_protocol`` the message formats both sides share. Nothing here
imports anyio: the async cpu lane wraps the pool, and the worker side stays cheap to
import.
"""
