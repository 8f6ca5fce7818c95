"""Shadow traffic: mirrored ads go through a bounded queue to background workers.

`offer` never waits: it puts the job on an `asyncio.Queue(maxsize=shadow_queue_size)` and, when
the queue is full, drops the job and counts it (`adaudit_shadow_dropped_total`). The primary
answer has already been computed when a job is offered, so the shadow model can neither delay
nor fail it. A job holds the answering model's input tensors for the ad (reused when the shadow
model takes the same shapes) and, only when it may need other inputs, the ad's bytes; never the
decoded image, so the queue's memory stays bounded. `shadow_workers` tasks take jobs, run the
shadow model (`run`: the gateway's `predict`, the same path as the primary), compare verdict
and violation with the answer, count agreements and disagreement pairs, and store every
disagreement (request id and both outputs) in the decision log for review (one write per
shadow call). A failing shadow
model is counted (`adaudit_errors_total{kind="shadow_failed"}`) and logged, nothing more.

Every shadow metric and every disagreement row names the model and version that answered the
mirrored ad (`primary`, `primary_version`: the primary's, or the canary's for an ad the canary
answered), so a canary version's agreement with the teacher never blends with the primary version's.

Two settings keep a shadow that shares the primary's machine (a CPU box, or one GPU) from
slowing the primary, while it still compares as many ads as it can:

- `shadow_batch`: a worker takes up to this many queued ads and runs them in one shadow call
  (a large model's batch costs far less per ad than its single calls);
- `shadow_busy_fraction` f: the shadow model is kept busy at most a fraction f of the time: after
  a call that took d seconds, the next may start d * (1 - f) / f seconds later (one pacer for all
  workers). Queued ads wait meanwhile, and the queue's bound drops what does not fit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .encoding import Prediction
from .intake import RawAd

log = logging.getLogger("adaudit.service")
COMPARED_TASKS = ("verdict", "violation")  # the answer's fields (of the taxonomy's verdict and reason tasks)


@dataclass
class ShadowJob:
    request_id: str
    model: str  # the model and version that answered
    version: str
    prediction: Prediction  # as answered: the decision's verdict and violation
    inputs: dict[str, np.ndarray]  # the answering model's inputs for this ad, reused when shapes match
    input_key: tuple
    source: RawAd | None  # the ad's bytes, kept only when the shadow model may need other inputs
    # the shadow's prediction as the gateway would have answered it: the same policy and term hits decide
    answer_as: Callable[..., Prediction] = lambda prediction, taxonomy=None: prediction  # (prediction, taxonomy)


class ShadowMirror:
    def __init__(self, target, run, record, metrics, queue_size: int, workers: int, batch: int = 1,
                 busy_fraction: float = 1.0):
        """`run(jobs) -> (spec, [Prediction])` runs the shadow model on several jobs at once; `record(rows)`
        stores the disagreements of one call."""
        if not 0 < busy_fraction <= 1 or batch < 1:
            raise ValueError("the shadow needs batch >= 1 and 0 < busy_fraction <= 1")
        self.target, self.run, self.record, self.metrics = target, run, record, metrics
        self.queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=queue_size)
        self.workers, self.batch, self.busy_fraction = workers, batch, busy_fraction
        self._tasks: list[asyncio.Task] = []
        self._next_start = 0.0  # the pacer: monotonic time before which no shadow call starts

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"adaudit-shadow-{i}") for i in range(self.workers)]

    async def stop(self, drain_s: float = 0.0) -> None:
        """Let the queued jobs finish for up to `drain_s` seconds (graceful shutdown), then stop the workers."""
        if drain_s > 0 and self._tasks:
            try:
                await asyncio.wait_for(self.queue.join(), drain_s)
            except asyncio.TimeoutError:
                log.warning("shadow queue not drained after %.1f s: %d mirrored ads not compared", drain_s,
                            self.queue.qsize())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def offer(self, job: ShadowJob) -> bool:
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.shadow_dropped.labels(job.model, job.version).inc()
            return False
        self.metrics.shadow_queue_depth.labels(job.model, job.version).inc()
        return True

    async def drain(self) -> None:
        """Wait until every queued job is compared (tests, shutdown)."""
        await self.queue.join()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            while len(jobs) < self.batch and not self.queue.empty():
                jobs.append(self.queue.get_nowait())
            for job in jobs:
                self.metrics.shadow_queue_depth.labels(job.model, job.version).dec()
            try:
                await asyncio.sleep(max(0.0, self._next_start - loop.time()))
                started = loop.time()
                try:
                    await self.compare(jobs)
                finally:
                    ended = loop.time()
                    self._next_start = max(self._next_start, ended) + \
                        (ended - started) * (1 - self.busy_fraction) / self.busy_fraction
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.metrics.errors.labels("shadow_failed").inc(len(jobs))
                log.warning("shadow model %s failed on %d mirrored ads (request %s first): %s", self.target.model,
                            len(jobs), jobs[0].request_id, getattr(error, "message", error))
            finally:
                for _ in jobs:
                    self.queue.task_done()

    async def compare(self, jobs: list[ShadowJob]) -> None:
        spec, shadows = await self.run(jobs)
        disagreements = []
        for job, shadow in zip(jobs, shadows):
            shadow = job.answer_as(shadow, spec.taxonomy)  # answers compared with answers, under the ad's policy
            primary, labels = job.prediction.labels, shadow.labels
            pair = (job.model, job.version, spec.name)  # the answering model and version, and the shadow
            self.metrics.shadow_comparisons.labels(*pair).inc()
            disagree = False
            for task in COMPARED_TASKS:
                if primary[task] == labels[task]:
                    self.metrics.shadow_agreements.labels(*pair, task).inc()
                else:
                    disagree = True
                    self.metrics.shadow_disagreements.labels(*pair, task, primary[task], labels[task]).inc()
            if disagree:
                disagreements.append({
                    "request_id": job.request_id, "primary_model": job.model, "primary_version": job.version,
                    "shadow_model": spec.name, "shadow_version": spec.version,
                    "primary_outputs": job.prediction.as_dict(), "shadow_outputs": shadow.as_dict()})
        if disagreements:  # one thread hop and one commit for the whole shadow call
            await asyncio.to_thread(self.record, disagreements)
