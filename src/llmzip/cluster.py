"""Running llmzip on a Ray cluster: `llmzip bench --ray` and `llmzip --ray FILES`.

What is spread over the cluster, and what is not:
- bench: every (file shard x compressor) measurement is one Ray task; shards of one file run in
  parallel (`--shard-bytes`, the same cut as a local run);
- compression of several files, decompression and `-t`: every file is one Ray task, coded by
  the same Compressor or Decompressor code as a local run, so each output is byte for byte the
  local one;
- compression of one file: the model's full passes, one Ray task per chunk (`ChunkEngine`), while
  the driver runs the rest of the encoder as a local run does — the encoder's choices (groups,
  the xz fallback over 1 MiB spans, the model record before the first model chunk) and the online
  model (learnt from every earlier unit of the file) depend on what came before in the file, but
  a chunk's rows depend on its own tokens alone, and an exact engine computes the same integers
  on every node. The output is again byte for byte the local one.

A file is never decoded across tasks: a decoding step needs the tokens the step before decoded.

Models reach the workers through each node's own install (a built-in name, `smollm2` from its
package, or a path that holds the same model on every node), loaded once per worker process and
kept for the next task. The driver loads the model too; a worker checks that what it loaded has
the driver's fingerprint and engine settings, and refuses the task otherwise.

Faults: a task whose worker dies is run again by Ray (MAX_RETRIES); the result is the same since
the work is a pure function of its input. An error a task raises is not retried and reaches the
caller as the llmzip error it was. Leaving early (Ctrl-C, an error) cancels the tasks not done.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import LLMZipError, ModelError

INSTALL = "pip install 'llmzip[ray]'"
MAX_RETRIES = 3  # runs of a task whose worker died (killed, out of memory, node lost)
_POLL_SECONDS = 0.5  # how long a wait may block before Ctrl-C is looked at again


class ClusterError(LLMZipError):
    """The cluster cannot run the work: Ray is missing, unreachable, lacks resources, or lost a task."""


class WorkerModelError(ClusterError, ModelError):
    """A worker has no model, or not the driver's model (fingerprint or engine settings differ)."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--ray needs Ray, which is not installed; install it with: {INSTALL}") from None
    return ray


@contextmanager
def session(address: str | None = None, *, num_cpus: int | None = None):
    """Ray, connected to the cluster at `address` (host:port), or to a local cluster started here
    (with `num_cpus` worker slots, by default one per core) and stopped on leaving.

    Without an address Ray also honours RAY_ADDRESS. When this process is already connected (a
    test, a notebook), that connection is used and left open.
    """
    ray = import_ray()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
    if ray.is_initialized():
        yield ray
        return
    options = dict(log_to_driver=False, logging_level=logging.ERROR)
    if not address:
        options.update(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False)
    try:
        ray.init(address=address or None, **options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as error:
        where = f"the Ray cluster at {address}" if address else "a Ray cluster"
        raise ClusterError(f"cannot connect to {where}: {str(error).strip().splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """One clear error for an address nothing answers at: Ray itself retries for minutes."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address)
    if match is None:
        return  # "auto", "local": Ray's own words, resolved by Ray
    host, port = match.group(1), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {error.strerror or error}; start it with "
                           "`ray start --head` on the head node, or check the address") from None


def check_resources(ray, *, cpus: int, gpus: int = 0) -> None:
    """Refuse work no node could take: Ray would wait for such a node for ever."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    most_cpus = max((resources.get("CPU", 0) for resources in nodes), default=0)
    if most_cpus < cpus:
        raise ClusterError(f"no node of the Ray cluster has {cpus} CPUs for a task (-T); the largest has {most_cpus:g}")
    if gpus and not any(resources.get("GPU", 0) >= gpus for resources in nodes):
        raise ClusterError("no node of the Ray cluster has a GPU, but --device cuda asks for one per model task")


def portable_model(model: str | None) -> str | None:
    """A model path made absolute, since a worker's working directory is not the driver's."""
    from . import models

    if model is None or model in models.named_models() or not Path(model).expanduser().exists():
        return model
    return str(Path(model).expanduser().resolve())


# -- results ------------------------------------------------------------------------------------


def result(ray, ref):
    """The value of a finished or running task, waiting in short steps so that Ctrl-C is seen."""
    while not ray.wait([ref], timeout=_POLL_SECONDS)[0]:
        pass
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, LLMZipError):
            raise cause from None
        if isinstance(cause, ImportError):
            raise ClusterError(f"a Ray worker cannot import llmzip ({cause}); install llmzip on every node") from None
        kind = type(cause).__name__ if cause else "error"
        raise ClusterError(f"a Ray task failed: {kind}: {cause or error}") from None
    except ray.exceptions.TaskCancelledError:
        raise ClusterError("a Ray task was cancelled") from None
    except ray.exceptions.RayError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ClusterError(f"a Ray task was lost ({MAX_RETRIES} retries): {first_line}") from None


def completed(ray, refs: list):
    """(ref, value) as tasks finish, in any order; tasks still pending are cancelled if the caller
    stops early (Ctrl-C, an error from one task)."""
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=_POLL_SECONDS)
            for ref in done:
                yield ref, result(ray, ref)
    finally:
        cancel(ray, pending)


def cancel(ray, refs: list) -> None:
    """Stop the tasks of `refs` that have not finished."""
    if not refs:
        return
    # Only those still pending: cancelling a finished task can abort the driver in Ray (2.60,
    # "Tried to complete task that was not pending").
    _, pending = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    for ref in pending:
        try:
            ray.cancel(ref, force=True)  # force: stop a running task too, not only a queued one
        except Exception:  # already finished, or its worker already gone: nothing left to stop
            pass


# -- bench --------------------------------------------------------------------------------------


class RayExecutor:
    """Runs bench jobs (bench.Job) as Ray tasks; hands them back as they finish."""

    def __init__(self, ray, *, threads: int = 1, gpu: bool = False):
        check_resources(ray, cpus=threads, gpus=1 if gpu else 0)
        self.ray, self.threads, self.gpu = ray, threads, gpu
        self._task = ray.remote(_measure_task)

    def run(self, jobs):
        from .bench import BenchError

        submitted = {}
        try:
            for job in jobs:
                spec = job.codec.spec
                if spec is None:
                    raise BenchError(f"compressor '{job.codec.label}' cannot be built on a Ray worker (no spec)")
                model = "model" in spec
                if model:
                    spec = dict(spec, model=portable_model(spec["model"]))
                task = self._task.options(num_cpus=self.threads if model else 1,
                                          num_gpus=1 if model and self.gpu else 0, max_retries=MAX_RETRIES)
                ref = task.remote(spec, job.codec.identity, job.data, job.repeat, self.threads if model else 1)
                job.data = None  # the object store holds it now
                submitted[ref] = job
            for ref, (measured, device) in completed(self.ray, list(submitted)):
                job = submitted[ref]
                job.measured, job.device = measured, device
                yield job
        finally:
            cancel(self.ray, list(submitted))  # those still running when the caller stops early


# -- files --------------------------------------------------------------------------------------


class FileTasks:
    """Compression, decompression or testing of whole files as Ray tasks, one task per file."""

    def __init__(self, ray, *, threads: int = 1, gpu: bool = False):
        check_resources(ray, cpus=threads, gpus=1 if gpu else 0)
        self.ray, self.threads = ray, threads
        options = dict(num_cpus=threads, num_gpus=1 if gpu else 0, max_retries=MAX_RETRIES)
        self._compress = ray.remote(_compress_task).options(**options)
        self._decompress = ray.remote(_decompress_task).options(**options)

    def compress(self, data: bytes, options, model_settings: dict):
        """`options`: the Compressor's (api.CompressOptions); `model_settings`: the driver's
        Compressor's model record, which the worker's must equal."""
        options = dataclasses.asdict(options) | {"model": portable_model(options.model)}
        return self._compress.remote(options, model_settings, data, self.threads)

    def decompress(self, data: bytes, options: dict, *, test: bool = False):
        options = dict(options, model=portable_model(options.get("model")))
        return self._decompress.remote(options, data, self.threads, test)

    def result(self, ref):
        return result(self.ray, ref)

    def cancel(self, refs: list) -> None:
        cancel(self.ray, refs)


class ChunkEngine:
    """The driver's exact engine with its full passes run as Ray tasks, one per chunk; everything
    else (the settings, sessions, caches) is the local engine's. The encoder takes each chunk's rows
    as they arrive, as it takes a local full pass's, so its output does not change."""

    def __init__(self, ray, compressor, *, threads: int = 1, gpu: bool = False):
        check_resources(ray, cpus=threads, gpus=1 if gpu else 0)
        self.ray, self.local, self.threads = ray, compressor.engine, threads
        self._options = dataclasses.asdict(compressor.options) | {"model": portable_model(compressor.options.model)}
        self._settings = compressor.model_settings()
        options = dict(num_cpus=threads, num_gpus=1 if gpu else 0, max_retries=MAX_RETRIES)
        self._task = ray.remote(_full_pass_task).options(**options)
        slots = int(ray.cluster_resources().get("GPU" if gpu else "CPU", 1) // (1 if gpu else threads))
        # One task more than the cluster runs at once keeps every worker busy while the driver codes;
        # no more, since each finished task holds its chunk's rows in the object store.
        self.window = max(1, slots) + 1
        # A worker without the driver's model is refused now, with one line, not after the first group.
        result(ray, ray.remote(_check_task).options(**options).remote(self._options, self._settings, threads))

    def __getattr__(self, name: str):
        return getattr(self.local, name)

    def sequence_pieces(self, token_lists: list[np.ndarray], positions: int | None = None, step_major: bool = False):
        """(sequence, start, rows) as the local engine yields them; each sequence's rows computed by one
        task. `step_major` holds the rows of every sequence before the first piece: an online unit's,
        3.2 GB of int32 for 16 chunks of 1,023 SmolLM2 tokens."""
        from .engine.exact import HEAD_ROWS_PER_PASS, step_major_starts

        positions = positions or HEAD_ROWS_PER_PASS
        if not step_major:
            for index, rows in self._sequence_rows(token_lists):
                for start in range(0, len(rows), positions):
                    yield index, start, rows[start : start + positions].astype(np.int64)
            return
        held = dict(self._sequence_rows(token_lists))
        for index, start in step_major_starts({index: len(rows) for index, rows in held.items()}, positions):
            yield index, start, held[index][start : start + positions].astype(np.int64)

    def _sequence_rows(self, token_lists: list[np.ndarray]):
        """(sequence, all its rows) in order, as the tasks return them."""
        jobs = [(index, np.asarray(tokens, dtype=np.int64)) for index, tokens in enumerate(token_lists)
                if len(tokens)]
        in_flight: list[tuple[int, object]] = []
        try:
            while jobs or in_flight:
                while jobs and len(in_flight) < self.window:
                    index, tokens = jobs.pop(0)
                    in_flight.append((index, self._task.remote(self._options, self._settings, tokens, self.threads)))
                index, ref = in_flight.pop(0)
                yield index, result(self.ray, ref)
        finally:
            cancel(self.ray, [ref for _, ref in in_flight])  # the caller stopped early: Ctrl-C, an error

    def sequence_weights(self, token_lists: list[np.ndarray]) -> list[np.ndarray]:
        return type(self.local).sequence_weights(self, token_lists)


@contextmanager
def chunks_on(ray, compressor, *, threads: int = 1, gpu: bool = False):
    """`compressor` with its full passes spread over the cluster (ChunkEngine) while inside."""
    local = compressor.engine
    compressor.engine = ChunkEngine(ray, compressor, threads=threads, gpu=gpu)
    try:
        yield compressor
    finally:
        compressor.engine = local


# -- on the workers -----------------------------------------------------------------------------

_built: dict[str, object] = {}  # per worker process: compressors with their loaded models, for the next task


def _prepare(threads: int) -> None:
    # As the command line does: OpenMP threads sleep between torch's small operations.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(max(1, threads))


def _node() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:
        return "?"


def _built_once(key: list, build):
    text = json.dumps(key, sort_keys=True)
    if text not in _built:
        try:
            _built[text] = build()
        except WorkerModelError:
            raise
        except ModelError as error:
            raise WorkerModelError(f"on Ray node {_node()}: {error}") from None
    return _built[text]


def _measure_task(spec: dict, identity: dict, data: bytes, repeat: int, threads: int):
    from . import bench

    _prepare(threads)

    def build():
        codec = bench.codec_from_spec(spec)
        if codec.identity != identity:
            raise WorkerModelError(_difference(codec.name, codec.identity, identity))
        return codec

    codec = _built_once(["codec", spec, identity], build)
    return bench.measure(codec, data, repeat), codec.device


def _compressor(options: dict, model_settings: dict):
    """This worker's Compressor for the driver's options, refused unless its model record is the driver's."""
    from .api import Compressor

    def build():
        compressor = Compressor(**options)
        if compressor.model_settings() != model_settings:
            raise WorkerModelError(_difference(compressor.model.name, compressor.model_settings(), model_settings))
        return compressor

    return _built_once(["compressor", options, model_settings], build)


def _compress_task(options: dict, model_settings: dict, data: bytes, threads: int) -> bytes:
    from .api import write_empty_stream

    _prepare(threads)
    output = io.BytesIO()
    if not data:  # as the command line does: an empty input needs no model
        write_empty_stream(output, content_size=0)
        return output.getvalue()
    _compressor(options, model_settings).copy_stream(io.BytesIO(data), output, content_size=len(data))
    return output.getvalue()


def _check_task(options: dict, model_settings: dict, threads: int) -> None:
    _prepare(threads)
    _compressor(options, model_settings)


def _full_pass_task(options: dict, model_settings: dict, tokens: np.ndarray, threads: int) -> np.ndarray:
    """One chunk's rows: int32, half the bytes through the object store (an exact engine's entries
    are positive and sum to 2**30, so each fits)."""
    _prepare(threads)
    engine = _compressor(options, model_settings).engine
    rows = np.empty((len(tokens), engine.vocab_size), dtype=np.int32)
    for _, start, piece in engine.sequence_pieces([tokens]):
        rows[start : start + len(piece)] = piece
    return rows


def _decompress_task(options: dict, data: bytes, threads: int, test: bool):
    from .api import Decompressor

    _prepare(threads)
    decompressor = _built_once(["decompressor", options], lambda: Decompressor(**options))
    output = io.BytesIO()
    try:
        size = decompressor.copy_stream(io.BytesIO(data), _Discard() if test else output)
    except ModelError as error:  # named with the node: the file may decode on the driver's machine
        raise ModelError(f"on Ray node {_node()}: {error}") from None
    return size if test else output.getvalue()


class _Discard:
    def write(self, data) -> int:
        return len(data)


def _difference(name: str, worker: dict, driver: dict) -> str:
    """Why a worker's model is refused, in one line."""
    def fingerprint(settings: dict) -> str:
        value = settings.get("fingerprint") or settings.get("model", {}).get("fingerprint", "?")
        return str(value)[:12]

    if fingerprint(worker) != fingerprint(driver):
        return (f"on Ray node {_node()}, model '{name}' has sha256 {fingerprint(worker)}…, not {fingerprint(driver)}… "
                "as on the driver; install the same model on every node")
    changed = sorted(key for key in set(worker) | set(driver) if worker.get(key) != driver.get(key))
    return (f"on Ray node {_node()}, model '{name}' is the driver's but its settings differ ({', '.join(changed)}); "
            "use the same llmzip version and device on every node")


__all__ = ["ChunkEngine", "ClusterError", "FileTasks", "RayExecutor", "WorkerModelError", "chunks_on", "import_ray",
           "session"]
