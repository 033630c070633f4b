"""Test helpers: a real multi-process (gloo, CPU) runner, and tiny config overrides."""

from __future__ import annotations

import os
import pickle
import time
import socket
import traceback
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn: Callable, rank: int, world_size: int, port: int, queue, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        out = fn(rank, world_size, *args)
        # plain pickling copies tensors into the message (torch's queue pickler would share them through file
        # descriptors, which break once this process exits)
        queue.put((rank, pickle.dumps(out), None))
    except BaseException:  # report, don't hang the parent
        queue.put((rank, None, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(fn: Callable, *args: Any, world_size: int = 2, timeout: float = 180.0) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` forked processes joined in a gloo process group;
    return the per-rank results (which must be picklable), re-raising a worker's exception here."""
    ctx = mp.get_context("fork")
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(fn, r, world_size, port, queue, args)) for r in range(world_size)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    for _ in procs:
        rank, out, err = queue.get()
        if err is not None:
            for p in procs:
                p.kill()
            raise RuntimeError(f"rank {rank} failed:\n{err}")
        results[rank] = pickle.loads(out)
    for p in procs:
        p.join(timeout)
    return [results[r] for r in range(world_size)]


class Throttle(L.Callback):
    """Sleeps after every training batch (makes a run last long enough to be killed mid-epoch)."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)


WORDS = ("the cat dog king queen sword crown night day love war sea ship house lord lady fool ghost moon sun "
         "sat ran saw loved fought sailed slept spoke said wept is was shall will doth hath and but or of to in on by").split()


def write_corpus(folder, docs: int = 6, sentences: int = 40, seed: int = 0):
    """A folder of generated text files (pseudo-sentences over a small vocabulary, one file per document)."""
    import random
    from pathlib import Path

    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(docs):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))).capitalize() + "." for _ in range(sentences)]
        (folder / f"doc{d}.txt").write_text("\n".join(lines) + "\n")
    return folder
