"""Precision that fits the hardware: ``precision: auto`` resolves, once, to what is fast where the run happens.

bfloat16 is fast only where the hardware computes in it natively: CUDA GPUs from Ampere on, and CPUs with
AVX512-BF16 or AMX. Elsewhere autocast still works but emulates it; on an AVX2-only CPU a SimCLR step of the
Fashion-MNIST demo ran 15x *slower* in bf16-mixed than in fp32. So:

* a CUDA device that supports bf16  -> ``bf16-mixed``
* an older CUDA device               -> ``16-mixed`` (fp16 with a gradient scaler)
* a CPU with native bf16             -> ``bf16-mixed``
* any other CPU (or accelerator)     -> ``32-true``

oneDNN's ``ONEDNN_MAX_CPU_ISA`` is honoured: ``ONEDNN_MAX_CPU_ISA=AVX2`` makes a bf16-capable CPU behave like an
AVX2 one, and ``auto`` then picks fp32 for it too.

Native bf16 on a CPU pays for convolutions, not for every model: on a 2-core Xeon with AMX the Fashion-MNIST CNN
trains 1.3x faster in bf16-mixed, but MAE's small ViT (96 wide) 2.2x *slower* than in fp32 (the casts around
small matmuls, layer norms and attention cost more than AMX saves; ``benchmarks/precision.py``). So where one
process trains on a CPU with native bf16, ``lightning_ssl.trainer.Trainer`` (the CLI's and the one to use from
Python) with ``precision="auto"`` times the model's backbone when ``fit`` starts (``measure_cpu_precision``: median
of interleaved forward + backward passes in both precisions) and keeps bf16-mixed only when it is at least
``MARGIN`` (10%) faster; the answer is cached per model, torch version and CPU model, and printed with its figures.

Threads: ``limit_threads`` keeps torch's intra-op threads plus the data-loader workers within the CPUs the process
may use (its affinity and its cgroup's quota): more threads than cores makes OpenMP spin against itself.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

AUTO = "auto"


def cpu_bf16_support() -> tuple[bool, str]:
    """(native bf16 on this CPU, why): the CPU must have AVX512-BF16 or AMX-BF16 *and* oneDNN must be allowed to
    use them."""
    flags = [
        name
        for name, check in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
        if getattr(torch.cpu, check, lambda: False)()
    ]
    if not flags:
        return False, f"this CPU has no native bf16 (no AMX or AVX512-BF16; {torch.backends.cpu.get_cpu_capability()})"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, f"this CPU has {' and '.join(flags)} but oneDNN may not use them (ONEDNN_MAX_CPU_ISA?)"
    return True, f"this CPU has native bf16 ({' and '.join(flags)})"


def _wants_cuda(accelerator: str | None) -> bool:
    name = str(accelerator or "auto").lower()
    return name in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def auto_precision(accelerator: str | None = "auto") -> tuple[str, str]:
    """(Lightning precision string, reason) for a run on ``accelerator`` (a Trainer's ``accelerator`` argument)."""
    if _wants_cuda(accelerator):
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16-mixed", f"CUDA device {name} supports bf16"
        return "16-mixed", f"CUDA device {name} has no bf16: fp16 with a gradient scaler"
    name = str(accelerator or "auto").lower()
    if name not in ("auto", "cpu"):
        return "32-true", f"accelerator {accelerator!r}: no faster precision known for it"
    native, why = cpu_bf16_support()
    return ("bf16-mixed", why) if native else ("32-true", f"{why}: bf16 would be emulated, and slower than fp32")


class Chosen(str):
    """A precision that ``auto`` resolved to elsewhere (e.g. measured by the CLI), with the reason: the Trainer
    uses it as given and logs ``why`` instead of "as set"."""

    why: str

    def __new__(cls, precision: str, why: str) -> Chosen:
        obj = super().__new__(cls, precision)
        obj.why = why
        return obj


def resolve_precision(precision: str | int | None, accelerator: str | None = "auto") -> tuple[str | int | None, str]:
    """``auto`` (or None) -> ``auto_precision(accelerator)``; anything else is returned as given."""
    if isinstance(precision, Chosen):
        return str(precision), precision.why
    if precision is None or str(precision).lower() == AUTO:
        return auto_precision(accelerator)
    return precision, "set explicitly"


MARGIN = 0.10  # bf16-mixed must save at least this fraction of a step's time over fp32, else fp32 (the safe default)
REMEASURE = "LIGHTNING_SSL_REMEASURE_PRECISION"  # =1: time again, ignoring (and replacing) the cached answer
_CACHE_VERSION = 2


def _pass_seconds(net: torch.nn.Module, x: torch.Tensor, bf16: bool) -> float:
    """Seconds of one forward + backward pass of ``net`` on ``x``, in bf16 autocast or fp32."""
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = net(x)
    out.float().square().mean().backward()
    return time.perf_counter() - t


def _median_seconds(net: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(fp32, bf16) median seconds of ``repeats`` passes each, interleaved (fp32, bf16, bf16, fp32, ...) so a load
    that comes or goes meanwhile weighs on both alike; a first pass of each (kernel selection) is not counted."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(repeats + 1):
        for bf16 in (False, True) if i % 2 == 0 else (True, False):
            seconds = _pass_seconds(net, x, bf16)
            if i:
                times[bf16].append(seconds)
    return statistics.median(times[False]), statistics.median(times[True])


def _timing_batch(net: torch.nn.Module, in_channels: int, image_size: int, batch_size: int) -> int:
    """The batch timed: the training batch (at most 128: AMX gains with the batch, so a tiny one would mislead),
    fewer for a large model, chosen from its FLOPs (never from a timing, which a loaded machine would skew):
    about 4 GFLOP of forward pass per batch, a multiple of 8 (split BatchNorm's 8 groups), at least 8."""
    batch = max(8, min(batch_size, 128) // 8 * 8)
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as counter:  # one image: FLOPs scale with the batch
            net.eval()(torch.zeros(1, in_channels, image_size, image_size))
        per_image = counter.get_total_flops()
    except Exception:  # a model the counter cannot trace: the training batch
        return batch
    finally:
        net.train()
    return batch if per_image <= 0 else max(8, min(batch, int(4e9 / per_image) // 8 * 8))


def measure_cpu_precision(
    backbone: torch.nn.Module,
    in_channels: int,
    image_size: int,
    batch_size: int = 128,
    channels_last: bool = False,
    repeats: int = 5,
    margin: float = MARGIN,
) -> tuple[str, str]:
    """(precision, reason) for training ``backbone`` on this CPU.

    A copy of the backbone runs forward + backward passes on a random (batch, in_channels, image_size, image_size)
    batch, ``repeats`` times in fp32 and in bf16 autocast, interleaved; the medians decide: bf16-mixed only if it
    takes at least ``margin`` less time than fp32, else fp32. The batch comes from the training batch and the
    model's FLOPs (``_timing_batch``), not from a timing. The answer is cached (``cache_path()``) under a key naming
    the model, the input, the batch, torch's version, the CPU model and the thread count, so the same model on the
    same machine and software gets the same precision; ``LIGHTNING_SSL_REMEASURE_PRECISION=1`` times it again.
    The copy leaves the model and the random stream as they were.

    Args:
        backbone: the network to time (a copy is timed).
        in_channels: image channels (C of the (B, C, H, W) input).
        image_size: image side in pixels (H = W).
        batch_size: the training batch; the timed batch is at most this, and at most 128.
        channels_last: time in NHWC layout, as the run will train (``Performance``).
        repeats: passes per precision (>= 1); the median is kept.
        margin: the fraction of fp32's time bf16 must save to be chosen (0.10: at least 10% faster).

    Returns:
        ``("bf16-mixed" | "32-true", one line with the figures)``.
    """
    net = copy.deepcopy(backbone)
    batch = _timing_batch(net, in_channels, image_size, batch_size)
    key = _cache_key(backbone, in_channels, image_size, batch, channels_last)
    cached = _read_cache().get(key)
    if cached and os.environ.get(REMEASURE, "") in ("", "0"):
        return str(cached["precision"]), _why(cached, f"measured {cached['measured_at']}, cached in {cache_path()}")
    with torch.random.fork_rng():  # the run's random stream is left as it was
        torch.manual_seed(0)
        x = torch.randn(batch, in_channels, image_size, image_size)
        if channels_last:
            net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        fp32, bf16 = _median_seconds(net.train(), x, repeats)
    entry = {
        "precision": "bf16-mixed" if bf16 <= (1 - margin) * fp32 else "32-true",
        "model": type(backbone).__name__,
        "batch": batch,
        "repeats": repeats,
        "margin": margin,
        "fp32_ms": round(1000 * fp32, 2),
        "bf16_ms": round(1000 * bf16, 2),
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
    }
    _write_cache(key, entry)
    return str(entry["precision"]), _why(entry, f"measured now; {REMEASURE}=1 measures again")


def _why(entry: dict, source: str) -> str:
    return (
        f"{entry['model']} forward+backward at batch {entry['batch']}, median of {entry['repeats']}: "
        f"fp32 {entry['fp32_ms']:.0f} ms, bf16 {entry['bf16_ms']:.0f} ms; bf16 is kept only when at least "
        f"{100 * entry['margin']:.0f}% faster ({source})"
    )


def cache_path() -> Path:
    """Where measured precisions are kept: ``$LIGHTNING_SSL_CACHE`` or ``~/.cache/lightning_ssl``."""
    return Path(os.environ.get("LIGHTNING_SSL_CACHE") or Path.home() / ".cache" / "lightning_ssl") / "precision.json"


def _cache_key(backbone: torch.nn.Module, in_channels: int, image_size: int, batch: int, channels_last: bool) -> str:
    """A readable key: the model (its class and a digest of its structure), the input, the timed batch and layout,
    torch's version, the CPU model, the thread count and oneDNN's ISA limit."""
    digest = hashlib.sha1(repr(backbone).encode()).hexdigest()[:10]
    layout = "channels_last" if channels_last else "NCHW"
    return (
        f"{type(backbone).__name__}#{digest} {in_channels}x{image_size}x{image_size} batch {batch} {layout} | "
        f"torch {torch.__version__} | {cpu_model()} | {torch.get_num_threads()} threads | "
        f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '')}"
    )


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data.get("entries", {}) if isinstance(data, dict) and data.get("version") == _CACHE_VERSION else {}


def _write_cache(key: str, entry: dict) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_cache()
        entries[key] = entry
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": _CACHE_VERSION, "entries": entries}, indent=1))
        os.replace(tmp, path)  # atomic: parallel runs never read half a file
    except OSError:
        pass  # a read-only home: measure again next time


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs' worth of time the process's cgroup may use: the tightest ``cpu.max`` (cgroup v2) or
    ``cpu.cfs_quota_us / cpu.cfs_period_us`` (v1) of its group and the groups above it; None when unlimited."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        files: tuple[str, ...]
        if controllers == "":  # v2
            top, files = root, ("cpu.max",)
        elif "cpu" in controllers.split(","):  # v1
            top, files = root / controllers, ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        else:
            continue
        folder = top / rel.lstrip("/")
        for f in (folder, *folder.parents):
            try:
                values = " ".join((f / name).read_text() for name in files).split()
                if values[0] not in ("max", "-1"):
                    limits.append(int(values[0]) / int(values[1]))
            except (OSError, ValueError, IndexError):
                pass
            if f == top:
                break
    return min(limits) if limits else None


def usable_cpus() -> tuple[int, str]:
    """(CPUs this process may use, how that was found): its CPU affinity (``os.sched_getaffinity``), lowered to the
    cgroup's CPU quota (a container's ``--cpus``) when that is smaller."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    why = f"affinity {count}"
    quota = _cgroup_cpu_quota()
    if quota is not None:
        why += f", cgroup quota {quota:g}"
        count = min(count, max(1, int(quota)))
    return count, why


def limit_threads(workers: int = 0, processes: int = 1) -> str:
    """Lower torch's intra-op threads so that they and the data-loader ``workers`` together stay within this
    process's share of the usable CPUs (``usable_cpus`` / ``processes`` per machine); never raises them (an
    ``OMP_NUM_THREADS`` or ``torch.set_num_threads`` asking for fewer is kept). Returns the one-line account.

    Args:
        workers: data-loader worker processes of this process (>= 0).
        processes: training processes sharing the machine (DDP ranks on this node, >= 1).
    """
    cpus, why = usable_cpus()
    share = max(1, cpus // max(1, processes))
    threads = max(1, min(torch.get_num_threads(), share - workers))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    per = f" per process ({processes} processes)" if processes > 1 else ""
    return f"{threads} intra-op threads + {workers} loader workers{per} on {cpus} usable CPUs ({why})"


def _cpu_info() -> tuple[str, set[str]]:
    """(CPU model name, its feature flags) from /proc/cpuinfo (the platform's name elsewhere)."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return cpu, flags


def cpu_model() -> str:
    """The CPU's model name, e.g. ``Intel(R) Xeon(R) Platinum 8488C``."""
    return _cpu_info()[0]


def describe_machine(precision: str | None = None) -> str:
    """One line naming what a measurement ran on, for benchmark table headers: the CPU model and its relevant
    features (or the GPU), the torch version, the thread count and the precision (default: what ``auto``
    picks, with the reason)."""
    cpu, flags = _cpu_info()
    named = [
        n
        for f, n in (
            ("avx2", "AVX2"),
            ("avx512f", "AVX-512"),
            ("avx512_bf16", "AVX512-BF16"),
            ("amx_bf16", "AMX-BF16"),
            ("asimd", "NEON"),
            ("sve", "SVE"),
        )
        if f in flags
    ]
    where = f"CPU {cpu} ({', '.join(named) or 'no AVX2'}), {torch.get_num_threads()} threads"
    limited = [f"{k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if os.environ.get(k)]
    if limited:
        where += f" restricted by {' '.join(limited)}"
    if torch.cuda.is_available():
        where = f"GPU {torch.cuda.get_device_name()} + {where}"
    if precision is None:
        precision, why = auto_precision()
        precision = f"{precision} (auto: {why})"
    return f"{where}; torch {torch.__version__}; precision {precision}"
