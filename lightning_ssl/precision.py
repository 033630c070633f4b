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
small matmuls, layer norms and attention cost more than AMX saves; ``benchmarks/precision.py``). So where the CPU
has native bf16, ``lightning-ssl fit`` with ``precision: auto`` times the model's backbone (``measure_cpu_precision``:
a forward and backward pass on a small random batch, in both precisions) and keeps bf16-mixed only where it is
faster.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
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


def _step_seconds(backbone: torch.nn.Module, x: torch.Tensor, bf16: bool, repeats: int) -> float:
    times = []
    for i in range(repeats + 1):  # the first pass (kernel selection, allocation) is not counted
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = backbone(x)
        out.float().square().mean().backward()
        if i:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def measure_cpu_precision(
    backbone: torch.nn.Module,
    in_channels: int,
    image_size: int,
    batch_size: int = 128,
    channels_last: bool = False,
    repeats: int = 3,
    margin: float = 0.05,
) -> tuple[str, str]:
    """(precision, reason) for training ``backbone`` on this CPU: the median time of ``repeats`` forward + backward
    passes of a copy of it on a random (batch, in_channels, image_size, image_size) batch in fp32 and in bf16
    autocast; bf16-mixed only if it is more than ``margin`` faster. The batch is the training batch (``batch_size``,
    at most 128: AMX gains with the batch, so a tiny one would mislead), fewer for a model so large that a pass
    would take over ~0.3 s; the measurement takes a few seconds. The copy leaves the model as it is."""
    key = _cache_key(backbone, in_channels, image_size, batch_size, channels_last)
    cache = _read_cache()
    if key in cache:  # the same model on the same machine gets the same answer: runs stay reproducible
        precision, why = cache[key]
        return precision, f"{why}; measured before on this machine, {cache_path()}"
    with torch.random.fork_rng():  # the run's random stream is left as it was
        torch.manual_seed(0)
        answer = _measure(
            copy.deepcopy(backbone).train(),
            in_channels,
            image_size,
            batch_size,
            channels_last,
            repeats,
            margin,
            type(backbone).__name__,
        )
    _write_cache(key, answer)
    return answer


def cache_path():
    """Where measured precisions are kept: ``$LIGHTNING_SSL_CACHE`` or ``~/.cache/lightning_ssl``."""
    return Path(os.environ.get("LIGHTNING_SSL_CACHE") or Path.home() / ".cache" / "lightning_ssl") / "precision.json"


def _cache_key(backbone, in_channels, image_size, batch_size, channels_last) -> str:
    parts = [
        describe_machine("-"),
        os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        repr(backbone),
        in_channels,
        image_size,
        min(batch_size, 128),
        channels_last,
    ]
    return hashlib.sha1(repr(parts).encode()).hexdigest()


def _read_cache() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, answer: tuple[str, str]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        cache = _read_cache()
        cache[key] = list(answer)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)  # atomic: parallel runs never read half a file
    except OSError:
        pass  # a read-only home: measure again next time


def _measure(net, in_channels, image_size, batch_size, channels_last, repeats, margin, name) -> tuple[str, str]:
    small = torch.randn(8, in_channels, image_size, image_size)  # batches of 8k: split BatchNorm (8 groups) works
    with torch.no_grad():
        net(small)  # first call: kernel selection, allocation
        t = time.perf_counter()
        net(small)
        per_image = (time.perf_counter() - t) / 8
    batch = max(8, min(batch_size, 128, int(0.1 / (per_image + 1e-9))) // 8 * 8)  # forward ~0.1 s, +backward ~0.3 s
    x = torch.randn(batch, in_channels, image_size, image_size)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    fp32 = _step_seconds(net, x, False, repeats)
    bf16 = _step_seconds(net, x, True, repeats)
    what = f"{name} forward+backward at batch {batch}: fp32 {1000 * fp32:.0f} ms, bf16 {1000 * bf16:.0f} ms"
    if bf16 < (1 - margin) * fp32:
        return "bf16-mixed", f"native bf16 on this CPU, measured faster here ({what})"
    return "32-true", f"native bf16 on this CPU, but fp32 measured as fast or faster here ({what})"


def describe_machine(precision: str | None = None) -> str:
    """One line naming what a measurement ran on, for benchmark table headers: the CPU model and its relevant
    features (or the GPU), the torch version, the thread count and the precision (default: what ``auto``
    picks, with the reason)."""
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
