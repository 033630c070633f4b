"""Test helpers: a real multi-process (gloo, CPU) runner, and tiny config overrides."""

from __future__ import annotations

import os
import pickle
import socket
import time
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


def write_multiband_folder(
    root,
    bands: int = 6,
    size: int = 24,
    per_class: int = 8,
    classes: int = 2,
    dtype: str = "uint16",
    seed: int = 0,
    layout: str = "planar",
) -> list:
    """``root/<class>/<i>.tif``: multi-band tiles whose spectrum depends on the class (class k is bright in the
    bands b with b % classes == k, like a land-cover class's spectral signature) plus a low-frequency pattern
    and noise, in uint16 "reflectances" (0-10000) or float32. ``layout``: planar (C, H, W) or interleaved (H, W, C).
    Returns the written paths."""
    from pathlib import Path

    import numpy as np
    import tifffile

    rng = np.random.default_rng(seed)
    paths = []
    for k in range(classes):
        (Path(root) / f"class{k}").mkdir(parents=True, exist_ok=True)
        spectrum = np.where(np.arange(bands) % classes == k, 6000.0, 2000.0)[:, None, None]
        for i in range(per_class):
            pattern = np.kron(rng.random((bands, 3, 3)), np.ones((size // 3 + 1, size // 3 + 1)))[:, :size, :size]
            x = spectrum * (0.7 + 0.6 * pattern) + 300 * rng.standard_normal((bands, size, size))
            x = np.clip(x, 0, 10000).astype(dtype)
            if layout == "interleaved":
                x = x.transpose(1, 2, 0)
            path = Path(root) / f"class{k}" / f"{i}.tif"
            tifffile.imwrite(
                path, x, photometric="minisblack", planarconfig="contig" if layout == "interleaved" else None
            )
            paths.append(path)
    return paths


class RecordSamples(L.Callback):
    """Writes what this process trained on and ended with to ``out_dir/rank{global_rank}.pt``: the labels of
    every training batch (with ``SyntheticDataModule(num_classes=num_samples)`` a label is the sample index),
    the node rank, world size and the final state dict."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.labels = out_dir, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.labels += batch[1].tolist()

    def on_train_end(self, trainer, pl_module) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(
            {
                "labels": self.labels,
                "global_rank": trainer.global_rank,
                "node_rank": trainer.node_rank,
                "world_size": trainer.world_size,
                "num_nodes": trainer.num_nodes,
                "state_dict": state,
            },
            os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"),
        )


WORDS = [
    "the",
    "cat",
    "dog",
    "king",
    "queen",
    "sword",
    "crown",
    "night",
    "day",
    "love",
    "war",
    "sea",
    "ship",
    "house",
    "lord",
    "lady",
    "fool",
    "ghost",
    "moon",
    "sun",
    "sat",
    "ran",
    "saw",
    "loved",
    "fought",
    "sailed",
    "slept",
    "spoke",
    "said",
    "wept",
    "is",
    "was",
    "shall",
    "will",
    "doth",
    "hath",
    "and",
    "but",
    "or",
    "of",
    "to",
    "in",
    "on",
    "by",
]


def write_corpus(folder, docs: int = 6, sentences: int = 40, seed: int = 0):
    """A folder of generated text files (pseudo-sentences over a small vocabulary, one file per document)."""
    import random
    from pathlib import Path

    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(docs):
        lines = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))).capitalize() + "." for _ in range(sentences)
        ]
        (folder / f"doc{d}.txt").write_text("\n".join(lines) + "\n")
    return folder
