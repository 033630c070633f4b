"""Momentum (EMA) teachers, shared by MoCo, BYOL and DINO.

    teacher <- m * teacher + (1 - m) * student        (after every optimizer step)

``make_teacher`` copies a student and freezes the copy; ``update_momentum`` applies the rule to all
parameters at once (fused ``torch._foreach_*`` kernels); ``cosine_momentum`` is the schedule of BYOL
(Grill et al., 2020, sec. 3.2) and DINO, m rising from ``base`` to ``end`` over training by optimizer step.
"""

from __future__ import annotations

import copy
import math
from typing import TypeVar

import torch
from torch import Tensor, nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def make_teacher(student: ModuleT) -> ModuleT:
    """A frozen deep copy of ``student``: same weights, ``requires_grad=False`` everywhere."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def update_momentum(student: nn.Module, teacher: nn.Module, m: float) -> None:
    """``teacher = m * teacher + (1 - m) * student`` for every parameter (buffers such as BatchNorm running
    statistics are the teacher's own, as in the MoCo and BYOL reference code).

    Args:
        student: The network trained by gradient.
        teacher: Its EMA copy, updated in place (same architecture).
        m: Momentum, in [0, 1]: 1 keeps the teacher, 0 copies the student (0.996 to 1 in BYOL and DINO).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> student, teacher = nn.Linear(2, 1, bias=False), nn.Linear(2, 1, bias=False)
        >>> _ = student.weight.data.fill_(1.0), teacher.weight.data.fill_(0.0)
        >>> update_momentum(student, teacher, m=0.9)
        >>> teacher.weight.data
        tensor([[0.1000, 0.1000]])
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {m}")
    t_params: list[Tensor] = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError(f"student and teacher differ: {len(s_params)} vs {len(t_params)} parameter tensors")
    if m == 1.0:
        return
    torch._foreach_mul_(t_params, m)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - m)


# Momentum copies are ``teacher_<part>`` in every method. Checkpoints written before that named them after the
# paper's word: MoCo's key encoder ``key_*``, MoCo v3's ``momentum_*``, BYOL's target ``target_*``.
LEGACY_TEACHER_PREFIXES = ("key_", "momentum_", "target_")


def rename_legacy_teacher_keys(state_dict: dict, prefix: str = "") -> dict:
    """Rename, in place, the momentum copies' tensors of an older checkpoint (``key_backbone.*``,
    ``momentum_projector.*``, ``target_backbone.*``) to today's ``teacher_backbone.*`` / ``teacher_projector.*``.

    Args:
        state_dict: a method's state dict (modified in place).
        prefix: the prefix under which the method's own keys start (``""`` for the method itself).

    Returns:
        The same dict, for chaining.
    """
    for key in list(state_dict):
        for old in LEGACY_TEACHER_PREFIXES:
            for part in ("backbone.", "projector."):
                if key.startswith(prefix + old + part):
                    state_dict[prefix + "teacher_" + key[len(prefix + old) :]] = state_dict.pop(key)
    return state_dict


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, end: float = 1.0) -> float:
    """``end - (end - base) * (cos(pi * step / total) + 1) / 2``: ``base`` at step 0, ``end`` at the last step."""
    if total_steps <= 1:
        return base
    progress = min(1.0, max(0.0, step / (total_steps - 1)))
    return end - (end - base) * (math.cos(math.pi * progress) + 1) / 2
