import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# measured precisions (precision: auto on a CPU with native bf16) are cached apart from the user's cache
os.environ.setdefault(
    "LIGHTNING_SSL_CACHE", os.path.join(__import__("tempfile").gettempdir(), "lightning_ssl_test_cache")
)
# `make test` runs two pytest-xdist workers: each gets its share of the cores, and so do the processes it starts (CLI
# runs, DDP groups). More threads than cores makes OpenMP spin against itself: 10x slower steps, not 2x.
_threads = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
torch.set_num_threads(_threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
