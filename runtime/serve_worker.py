"""The model side of ``latentcache serve``: one worker thread owns the pipeline and runs queued jobs in
arrival order; pieces of text go back to the HTTP side through each job's ``deliver`` callback."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from latentcache.runtime import Pipeline, RequestStats
from latentcache.runtime.serve_protocol import ApiError, Outcome
from latentcache.sampling import Sampling

log = logging.getLogger("latentcache.serve")
EVERY = 32  # tokens between augmentations of every-n: make_policy's default, named for the capacity check


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down: retry later", "server_error", None, "shutting_down")


@dataclass(frozen=True)
class Piece:
    text: str


@dataclass(frozen=True)
class Done:
    outcome: Outcome


@dataclass(frozen=True)
class Failed:
    error: ApiError


Event = Piece | Done | Failed


@dataclass
class Job:
    """A tokenized, capacity-checked request waiting for (or running on) the model."""

    ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...]
    coprocessor: bool
    policy: str
    stream: bool  # False: only the final Done/Failed is delivered (the text is in the outcome)
    deliver: Callable[[Event], None]  # thread-safe: called from the worker thread
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued -> running -> done, or queued -> cancelled (guarded by the worker's lock)


class StopMatcher:
    """Cuts the text at the first stop sequence; holds back a tail that might be the start of one, so a
    streaming client never receives text that a later piece turns into a stop."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops, self.pending = stops, ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop sequence was hit)."""
        text = self.pending + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return text[:min(hits)], True
        keep = self._partial(text)
        self.pending = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        pending, self.pending = self.pending, ""
        return pending

    def _partial(self, text: str) -> int:
        longest = max((len(s) for s in self.stops), default=1) - 1
        for size in range(min(longest, len(text)), 0, -1):
            if any(s.startswith(text[-size:]) for s in self.stops):
                return size
        return 0


def run_job(pipeline: Pipeline, job: Job) -> Outcome:
    """Generate for one job on the calling (worker) thread; pieces go out as they are decoded."""
    stats = RequestStats()
    policy = pipeline.policy(job.coprocessor, job.policy, every=EVERY)
    generator, stop_ids = pipeline.generator, pipeline.tokenizer.stop_ids
    # The generator runs whole batches; artifacts exported with --batch > 1 get the prompt in every row.
    steps = generator.generate([job.ids] * generator.batch, job.max_tokens, job.sampling, stop_ids, policy, stats)

    def tokens():
        for step in steps:
            if job.cancelled.is_set():  # the client went away: stop spending the model on it
                return
            yield int(step[0])

    matcher, text = StopMatcher(job.stop), []
    started = time.perf_counter()
    hit = False
    try:
        for piece in pipeline.tokenizer.stream(tokens()):
            emit, hit = matcher.feed(piece)
            _emit(job, text, emit)
            if hit:
                break
        else:
            _emit(job, text, matcher.flush())
    finally:
        steps.close()  # runs Generator.generate's own cleanup (an async coprocessor is joined) on an early stop
    if hit:
        stats.stop_reason = "stop_string"
    # OpenAI's finish reasons: "stop" for a stop token or sequence, "length" for max_tokens or the context limit
    # (an entropy schedule that outgrows the first reservation ends like OpenAI does at the context limit).
    finish = "stop" if stats.stop_reason in ("eos", "stop_string") else "length"
    info = _latency(stats, job, pipeline, started)
    return Outcome("".join(text), finish, len(job.ids), stats.new_tokens, info)


def _emit(job: Job, text: list[str], piece: str) -> None:
    if piece:
        text.append(piece)
        if job.stream:
            job.deliver(Piece(piece))


def _latency(stats: RequestStats, job: Job, pipeline: Pipeline, started: float) -> dict:
    """The extra ``latentcache`` object: what ran and where the time went (milliseconds). ``ttft_ms`` counts
    from the start of prefill, as ``RequestStats`` does; time spent waiting for the model is ``queue_ms``."""
    steps = stats.step_s
    return {
        "coprocessor": job.coprocessor,
        "policy": job.policy if job.coprocessor else "none",
        "stop_reason": stats.stop_reason,
        "latents": pipeline.manifest.num_latents * len(stats.augment_s),
        "augmented_at": list(stats.augmented_at),
        "queue_ms": round((started - job.enqueued) * 1000, 3),
        "prefill_ms": round(stats.prefill_s * 1000, 3),
        "ttft_ms": round(stats.first_token_s * 1000, 3),
        "coprocessor_ms": round(sum(stats.augment_s) * 1000, 3),
        "decode_ms_per_token": round(sum(steps) / len(steps) * 1000, 3) if steps else None,
        "total_ms": round((time.perf_counter() - started) * 1000, 3),
    }


class Worker:
    """The one thread that owns the model, and the bounded arrival-order queue in front of it."""

    def __init__(self, pipeline: Pipeline, queue_size: int) -> None:
        self.pipeline, self.queue_size = pipeline, queue_size
        self.jobs: queue.Queue[Job | None] = queue.Queue()  # unbounded: admission is counted under the lock
        self.lock = threading.Lock()
        self.waiting, self.running, self.served, self.closing = 0, None, 0, False
        self.thread = threading.Thread(target=self._loop, name="latentcache-model", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """At shutdown: stop the running job at its next token, refuse the waiting ones, end the thread."""
        with self.lock:
            self.closing = True
            if self.running is not None:
                self.running.cancelled.set()
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        with self.lock:
            if self.closing:
                raise shutting_down()
            if self.waiting >= self.queue_size:
                raise ApiError(503, f"the server is busy: {self.waiting} requests are already waiting for the "
                               "model (--queue-size); retry later", "server_error", None, "queue_full")
            self.waiting += 1
        self.jobs.put(job)

    def cancel(self, job: Job) -> None:
        """The client is gone: a waiting job leaves the queue now, a running one stops at its next token."""
        job.cancelled.set()
        with self.lock:
            if job.state == "queued":
                job.state = "cancelled"
                self.waiting -= 1

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            with self.lock:
                if job.state == "cancelled":
                    continue
                self.waiting -= 1
                if self.closing:
                    job.state = "done"
                    job.deliver(Failed(shutting_down()))
                    continue
                job.state, self.running = "running", job
            try:
                job.deliver(Done(run_job(self.pipeline, job)))
            except ApiError as exc:
                job.deliver(Failed(exc))
            except Exception as exc:  # the server outlives a failed request; the log keeps the traceback
                log.exception("generation failed")
                job.deliver(Failed(ApiError(500, f"generation failed: {type(exc).__name__}: {exc}".splitlines()[0],
                                            "server_error")))
            finally:
                with self.lock:
                    job.state, self.running = "done", None
                    self.served += 1
