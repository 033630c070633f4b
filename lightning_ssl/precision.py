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
"""

from __future__ import annotations

import torch

AUTO = "auto"


def cpu_bf16_support() -> tuple[bool, str]:
    """(native bf16 on this CPU, why): the CPU must have AVX512-BF16 or AMX-BF16 *and* oneDNN must be allowed to
    use them."""
    flags = [name for name, check in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
             if getattr(torch.cpu, check, lambda: False)()]
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


def resolve_precision(precision: str | int | None, accelerator: str | None = "auto") -> tuple[str | int | None, str]:
    """``auto`` (or None) -> ``auto_precision(accelerator)``; anything else is returned as given."""
    if precision is None or str(precision).lower() == AUTO:
        return auto_precision(accelerator)
    return precision, "set explicitly"


def describe_machine(precision: str | None = None) -> str:
    """One line naming what a measurement ran on, for benchmark table headers: the CPU model and its relevant
    features (or the GPU), the torch version, the thread count and the precision (default: what ``auto``
    picks, with the reason)."""
    import platform

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
    named = [n for f, n in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"),
                            ("amx_bf16", "AMX-BF16"), ("asimd", "NEON"), ("sve", "SVE")) if f in flags]
    where = f"CPU {cpu} ({', '.join(named) or 'no AVX2'}), {torch.get_num_threads()} threads"
    import os

    limited = [f"{k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if os.environ.get(k)]
    if limited:
        where += f" restricted by {' '.join(limited)}"
    if torch.cuda.is_available():
        where = f"GPU {torch.cuda.get_device_name()} + {where}"
    if precision is None:
        precision, why = auto_precision()
        precision = f"{precision} (auto: {why})"
    return f"{where}; torch {torch.__version__}; precision {precision}"
