"""tasklanes' own worker-process pool: the engine under the cpu lane.

``_pool`` is the parent side (a synchronous, thread-safe engine driven by one manager
thread), ``_worker`` the code that runs inside each worker process, ``_protocol`` the
message formats both sides share. Nothing here imports anyio: the async cpu lane wraps
the pool, and the worker side stays cheap to import.
"""
