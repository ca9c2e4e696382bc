"""The one worker pool of the package: spawned processes that run jobs, for the search and the study alike.

Each worker starts with `start_worker` (its thread count; Ctrl-C and SIGTERM
are the parent's to handle; it ends itself when the parent dies), imports the
plugins the parent loaded (`blockswap.util.plugins`) and the modules the caller
names, and only then unpickles and runs the caller's initializer: what those
modules register resolves by name in the worker, so nothing registered travels
by pickling. A failing start is kept and raised by every job, so the parent
reads one error instead of a broken pool and a child's traceback.

One interrupt rule: leaving the pool's `with` block with an exception (Ctrl-C,
SIGTERM, a failed job) stops the running jobs at once. The parent sends SIGUSR1
to every worker, which raises KeyboardInterrupt in the job it is running and
refuses the ones already queued to it; the pool then ends every process.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any

import torch.multiprocessing as mp

from .errors import BlockSwapError
from .plugins import load_plugin, loaded_plugins
from .system import start_worker

__all__ = ["WorkerPool", "MAKE_IT_A_PLUGIN"]

MAKE_IT_A_PLUGIN = ("make it a plugin, a module that registers it on import, loaded with --plugin MODULE_OR_FILE or "
                    "$BLOCKSWAP_PLUGINS (from Python: blockswap.util.plugins.load_plugin); or use one worker")

_start_error: BaseException | None = None  # in a worker: why its start failed, raised by every job
_running = False  # in a worker: a job is running (SIGUSR1 interrupts it)
_stopping = False  # in a worker: the parent is stopping the pool (no further job runs)


def _on_stop(signum: int, frame: object) -> None:
    """SIGUSR1 in a worker: the parent is stopping; end the running job and refuse the queued ones."""
    global _stopping
    _stopping = True
    if _running:
        raise KeyboardInterrupt


def _start(parent: int, threads: int, plugins: list[str], modules: list[str], payload: bytes) -> None:
    """Runs once in each worker: the process rules, the plugins and modules, then the caller's initializer."""
    global _start_error
    signal.signal(signal.SIGUSR1, _on_stop)
    start_worker(parent, threads)
    try:
        for spec in plugins:
            load_plugin(spec)
        for module in modules:
            with contextlib.suppress(ImportError):  # the initializer names what is then missing
                importlib.import_module(module)
        try:
            initializer, initargs = pickle.loads(payload)
        except (AttributeError, ImportError, pickle.UnpicklingError) as e:
            raise BlockSwapError(f"a worker process cannot rebuild what the pool sends it ({e}); "
                                 f"define it at the top level of a module, {MAKE_IT_A_PLUGIN}") from None
        if initializer is not None:
            initializer(*initargs)
    except BaseException as e:  # noqa: BLE001 - kept for the jobs to raise in the parent, as one error
        _start_error = e if isinstance(e, BlockSwapError) else BlockSwapError(f"a worker process failed to start: "
                                                                              f"{type(e).__name__}: {e}")


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while workers are spawned, then deliver them. A spawned worker reads its start
    (the pool's payload, larger than a pipe) while it imports; a signal raised in the parent mid-write would leave
    it a truncated pickle and a traceback on stderr. Outside the main thread, signals cannot be handled anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    kept = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in kept.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(held):
            signal.raise_signal(s)


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """One job in a worker: the start's error if it failed, KeyboardInterrupt once the pool is stopping."""
    global _running
    if _start_error is not None:
        raise _start_error
    if _stopping:
        raise KeyboardInterrupt
    _running = True
    try:
        return fn(*args)
    finally:
        _running = False


class WorkerPool:
    """`workers` spawned processes with `threads` torch threads each, started once and reused for many jobs.

    Each worker imports the loaded plugins and `modules`, then calls
    `initializer(*initargs)` (both pickled, and unpickled after those imports).
    """

    def __init__(self, workers: int, threads: int, initializer: Callable[..., None] | None = None,
                 initargs: tuple[Any, ...] = (), modules: Iterable[str] = ()) -> None:
        try:
            payload = pickle.dumps((initializer, initargs))
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            raise BlockSwapError(f"what the workers need cannot be sent to them ({e}); define it at the top level "
                                 f"of a module, {MAKE_IT_A_PLUGIN}") from None
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_start,
            initargs=(os.getpid(), threads, loaded_plugins(), sorted(set(modules)), payload))

    def run(self, fn: Callable[..., Any], jobs: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        """`fn(*job)` for every job, run in the workers; the results in completion order."""
        with _signals_deferred():  # submitting spawns the workers
            futures: list[Future[Any]] = [self._pool.submit(_call, fn, job) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()

    def stop(self) -> None:
        """End the running jobs now (SIGUSR1 to every worker), drop the queued ones, end the workers."""
        for pid in list(getattr(self._pool, "_processes", None) or {}):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Wait for the submitted jobs, then end the workers."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is None:
            self.close()
        else:
            self.stop()
