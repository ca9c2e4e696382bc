"""The machine a process runs on: its usable cores, and the start of every spawned worker process."""

from __future__ import annotations

import os
import signal
import threading
import time

import torch

__all__ = ["watch_parent", "start_worker", "usable_cores"]

_PARENT_POLL_S = 0.5


def watch_parent(parent: int) -> None:
    """End this process as soon as `parent` is gone (its children are then adopted by another process)."""
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_S)
    os._exit(1)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def start_worker(parent: int, threads: int) -> None:
    """The start of every spawned worker: Ctrl-C and SIGTERM are the parent's to handle, the process ends
    itself when `parent` dies, and torch uses `threads` threads."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=watch_parent, args=(parent,), daemon=True, name="blockswap-parent-watch").start()
    torch.set_num_threads(threads)
