"""Manager layer: handing outcomes to each job's callbacks, and settling jobs.

A job settles (its `on_settled` runs, once) when it was cancelled and none of its
tasks runs any more, or when its input is closed and every task put has been
delivered and no worker holds its chunks (a worker killed for a timeout is gone,
too). At shutdown every job settles, its unfinished tasks failed with the pool's
closed error, so that no caller waits forever on a pool that is gone.
"""

from __future__ import annotations

from collections.abc import Callable

from .._errors import closed_error
from ._job import Delivered, JobCore, tasks_in
from ._log import log
from ._reaper import Reaper

__all__ = ["Delivery"]


def _call_back(what: str, callback: Callable[[], None]) -> None:
    try:
        callback()
    except BaseException:
        log.error("a pool job's %s callback raised", what, exc_info=True, extra={"lane": "cpu"})


class Delivery(Reaper):
    def _deliver_and_settle(self) -> None:
        settled = False
        for job in self.jobs:
            out = job.out
            if out:
                job.out = []
                job.delivered += tasks_in(out)
                try:
                    job.deliver(out)
                except BaseException:
                    log.error(
                        "a pool job's deliver callback raised", exc_info=True, extra={"lane": "cpu"}
                    )
            if job.cancelled:
                if job.holders == 0:
                    job.settled = settled = True
            elif (
                job.input_closed and job.delivered == job.put and not job.queue and job.holders == 0
            ):
                job.settled = settled = True
        if settled:
            done = [job for job in self.jobs if job.settled]
            self.jobs = [job for job in self.jobs if not job.settled]
            self.rr = 0
            self._update_counts()
            for job in done:
                _call_back("on_settled", job.on_settled)

    def _fail_unfinished_jobs(self) -> None:
        """At shutdown: every task of an open job that has no outcome yet fails with
        the closed error, and every job settles."""
        for job in self.jobs:
            if job.settled:
                continue
            dropped = job.drop_queue()
            if not job.cancelled:
                unfinished = [
                    i for first, tasks in dropped for i in range(first, first + len(tasks))
                ]
                for w in self.workers:
                    for chunk in w.inflight:
                        if chunk.job is not job:
                            continue
                        for k in range(chunk.done, len(chunk.tasks)):
                            if w.timed_out is None or w.timed_out != (chunk, k):
                                unfinished.append(chunk.first + k)
                job.out.extend((index, False, closed_error(index)) for index in unfinished)
            out, job.out = job.out, []
            job.delivered += tasks_in(out)
            job.settled = True
            if out and not job.cancelled:
                self._deliver_now(job, out)
            _call_back("on_settled", job.on_settled)
        self.jobs = []

    @staticmethod
    def _deliver_now(job: JobCore, out: list[Delivered]) -> None:
        _call_back("deliver", lambda: job.deliver(out))
