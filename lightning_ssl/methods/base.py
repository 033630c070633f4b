"""The small base every method shares: an injected backbone, optimizer and LR schedule, and ``embed``."""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.modules.backbones import Backbone, feature_dim
from lightning_ssl.modules.momentum import cosine_momentum, rename_legacy_teacher_keys, update_momentum
from lightning_ssl.modules.spec import plain_items
from lightning_ssl.optim import WarmupCosineLR, param_groups, with_schedule


class SSLMethod(L.LightningModule):
    """Base class for self-supervised methods.

    Subclasses implement ``training_step`` and call ``save_hyperparameters()``. ``validation_step`` returns
    ``{"features": embed(x), "labels"}`` for the kNN monitor and the online probe.

    **The monitoring rule**: the online probe and the collapse monitor see, while training, what ``embed`` gives
    at evaluation: the same network (DINO's teacher when ``embed`` uses the teacher), the same pooling, an
    unmasked input. ``training_step`` returns ``{"loss", "features"}`` with ``features`` = ``embed``'s output for
    the first view (detached) when the step computes it anyway; the only differences allowed are train-mode
    normalization layers and the view's own augmentation (Jigsaw's tile jitter). A step that does not compute
    it (masked inputs: MAE, SimMIM, BEiT; iBOT's masked student) returns ``{"loss", "embed_input": first view}``
    instead, and the callbacks run ``embed`` on it (``callbacks.features.step_features``). ``tests/test_probe_rule.py``
    checks this for every method.

    The optimizer gets two parameter groups (no weight decay on biases and norm parameters). The LR
    schedule is stepped every optimizer step; ``WarmupCosineLR`` learns its length from
    ``trainer.estimated_stepping_batches``.

    Args:
        backbone: The encoder f: images (B, C, H, W) -> features (B, D), the representation kept for downstream
            use (``embed``). A project backbone (``SmallCNN``, ``ResNet``, ``ViT``, ``TimmBackbone``, ...) or any
            ``nn.Module`` given by ``class_path``.
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    def __init__(
        self,
        backbone: Backbone,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.num_features = feature_dim(
            backbone, getattr(backbone, "in_channels", 3), getattr(backbone, "image_size", 32)
        )

    def save_hyperparameters(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``save_hyperparameters``, with what a method built in Python is given turned into plain data.

        From a config (LightningCLI) every argument is already a ``class_path``/``init_args`` dict. From Python a
        ``Buildable`` backbone (every backbone of the library) is written as the config that rebuilds it, an
        optimizer class or ``partial`` as its ``class_path``/``init_args`` (``lightning_ssl.modules.spec.plain``),
        and the same instantiator LightningCLI records is named, so ``hparams.yaml`` stays a few readable lines
        and ``<Method>.load_from_checkpoint(path)`` rebuilds the model alone. An object without a plain form
        (``torchvision.models.resnet18()``) is left out: its weights are in the checkpoint, and reloading takes it
        again (``load_from_checkpoint(path, backbone=...)``). The checkpoint always loads with ``weights_only=True``.
        """
        frame = kwargs.pop("frame", None) or _caller_frame()
        with warnings.catch_warnings():  # "Attribute 'backbone' is an instance of nn.Module": handled below
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            super().save_hyperparameters(*args, frame=frame, **kwargs)
        if "_class_path" in self._hparams:  # written by LightningCLI: plain data already
            return
        values, dropped = plain_items(dict(self._hparams))
        left_out = [k for k in dropped if isinstance(self._hparams[k], nn.Module)]  # others fall back to defaults
        self._hparams.clear()
        self._hparams.update(values)
        cls = type(self)
        self._hparams["_class_path"] = f"{cls.__module__}.{cls.__qualname__}"
        if not left_out:  # every module can be rebuilt: load_from_checkpoint goes through jsonargparse as for a CLI run
            self._hparams["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
        self._hparams_initial = copy.deepcopy(self._hparams)  # what loggers write (hparams.yaml): no pickled network

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Lightning's ``load_from_checkpoint``; a model built in Python from a module that could not be recorded
        (not ``Buildable``) says which argument to pass again instead of a bare ``TypeError``."""
        try:
            return super().load_from_checkpoint(
                checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs
            )
        except TypeError as e:
            missing = re.search(r"missing \d+ required positional arguments?: (.*)", str(e))
            if missing is None:
                raise
            from lightning_ssl.checkpoint import CheckpointError

            raise CheckpointError(
                f"{str(checkpoint_path)!r} holds the weights of {cls.__name__}'s {missing.group(1)} but not how to "
                f"build it (a module built in Python that is not Buildable): pass it again, e.g. "
                f"{cls.__name__}.load_from_checkpoint(path, backbone=torchvision.models.resnet18())"
            ) from e

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record how evaluation images were prepared (``checkpoint["preprocessing"]``: channels, size, mean, std,
        resize and interpolation, from the datamodule), which ``lightning_ssl.load`` and every export carry."""
        describe = getattr(getattr(self._trainer, "datamodule", None), "preprocessing", None)
        if callable(describe):
            checkpoint["preprocessing"] = describe().to_dict()

    def on_fit_start(self) -> None:
        self._check_input_shape()

    def _check_input_shape(self) -> None:
        """Fail before training, with a clear message, if the backbone cannot take the data's images."""
        dm = getattr(self._trainer, "datamodule", None)
        c, s = getattr(dm, "channels", None), getattr(dm, "image_size", None)
        if not isinstance(c, int) or not isinstance(s, int):
            return
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                self.embed(torch.zeros(2, c, s, s, device=self.device))
        except (RuntimeError, ValueError, AssertionError) as e:
            raise ValueError(
                f"{type(self).__name__}: the backbone cannot take the data's images ({c} channels, {s}x{s} px): {e}. "
                f"Check the backbone's in_channels / image_size / patch size against data.channels / data.image_size."
            ) from e
        finally:
            self.train(was_training)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rename_legacy_teacher_keys(checkpoint.get("state_dict", {}))
        self.preprocessing_record: dict[str, Any] | None = checkpoint.get("preprocessing")  # for lightning_ssl.load
        written_by = checkpoint.get("hyper_parameters", {}).get("_class_path")
        self._check_same_method(written_by)
        self._check_same_shapes(checkpoint.get("state_dict", {}), written_by or "the checkpoint")

    def _check_same_shapes(self, state: dict[str, Any], written_by: str) -> None:
        """A checkpoint of the same method with another architecture: say which tensors differ (and the
        backbone config it was written with), before PyTorch's bare size-mismatch error."""
        own = self.state_dict()
        wrong = [
            (k, tuple(v.shape), tuple(own[k].shape))
            for k, v in state.items()  # extra state (a tokenizer's
            if k in own
            and hasattr(v, "shape")
            and tuple(v.shape) != tuple(own[k].shape)  # bytes) has any size
            and not k.endswith("_extra_state")
        ]
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        if not wrong and not missing:
            return
        from lightning_ssl.checkpoint import CheckpointError

        lines = [f"this checkpoint ({written_by}) holds another architecture than this run builds:"]
        lines += [f"  {k}: the file has {got}, this run {want}" for k, got, want in wrong[:5]]
        if missing:
            lines.append(f"  {len(missing)} tensors of this run are not in the file, e.g. {missing[:3]}")
        lines.append("Resume with the config the checkpoint was trained with (its run directory has config.yaml).")
        raise CheckpointError("\n".join(lines))

    def _check_same_method(self, written_by: str | None) -> None:
        if not written_by:
            return
        try:
            from lightning_ssl.config import import_class

            same = import_class(written_by) is type(self)
        except (ImportError, AttributeError, ValueError):
            same = written_by.rpartition(".")[2] == type(self).__name__
        if not same:
            from lightning_ssl.checkpoint import CheckpointError

            raise CheckpointError(
                f"this checkpoint was written by {written_by}, but this run is {type(self).__name__}: resume with the "
                f"same method, or take its weights as a backbone (lightning_ssl.modules.pretrained.CheckpointBackbone)"
            )

    def on_train_start(self) -> None:
        # A resumable dataloader's position is restored by Lightning only when it sets the data up after the
        # checkpoint is loaded; ``estimated_stepping_batches`` in ``configure_optimizers`` sets it up earlier.
        loop = self.trainer.fit_loop
        if getattr(loop, "_combined_loader_states_to_load", None):
            loop._load_combined_loader_states()

    def embed(self, x: Tensor) -> Tensor:
        """Representation used downstream: backbone features (B, num_features), no projector."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(x)

    @torch.no_grad()
    def encode(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """``embed`` for use outside training: eval mode (BatchNorm running statistics, no dropout), no gradient,
        in batches on the model's device; (N, D) float features on the CPU. The model's mode is restored."""
        was_training = self.training
        self.eval()
        try:
            return torch.cat([self.embed(x.to(self.device)).float().cpu() for x in images.split(batch_size)])
        finally:
            self.train(was_training)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor] | None:
        # None: a method that scores its own validation (the language models), with nothing for the kNN monitor
        x, y = batch
        return {"features": self.embed(x), "labels": y}

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor] | None:
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.embed(x)

    def trainable_modules(self) -> list[nn.Module]:
        """Modules whose parameters the optimizer updates (teachers and frozen parts excluded)."""
        return [self]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_fn(param_groups(self.trainable_modules()))
        return with_schedule(optimizer, self.scheduler_fn, self.trainer)


class MomentumMethod(SSLMethod):
    """A method with momentum (EMA) teachers. Subclasses name each momentum copy ``teacher_<part>``
    (``teacher_backbone``, ``teacher_projector``, ...) and list ``(student, teacher)`` module pairs in
    ``momentum_pairs``; after every *optimizer* step (so once per accumulated batch under
    ``accumulate_grad_batches``) each teacher moves towards its student with momentum m, which follows
    ``cosine_momentum`` from ``momentum`` to ``momentum_end`` over ``trainer.estimated_stepping_batches``
    (``momentum_end == momentum`` keeps it constant). m depends only on the optimizer step count, so a
    resumed run continues the schedule exactly; teachers are ordinary submodules, saved in checkpoints.

    Args:
        backbone: The encoder f: images (B, C, H, W) -> features (B, D), the representation kept for downstream
            use (``embed``). A project backbone (``SmallCNN``, ``ResNet``, ``ViT``, ``TimmBackbone``, ...) or any
            ``nn.Module`` given by ``class_path``.
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
        momentum: EMA momentum of the teacher (target) network at the first optimizer step, in [0, 1]
            (0.996 for BYOL and DINO).
        momentum_end: Momentum at the last optimizer step, reached on a cosine schedule by optimizer step
            (correct under gradient accumulation and resume); equal to ``momentum`` for a constant one.
    """

    teacher_updates: Tensor  # teacher updates so far (a buffer, saved in checkpoints)

    def __init__(
        self,
        backbone: Backbone,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
        momentum: float = 0.996,
        momentum_end: float = 1.0,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        for name, m in (("momentum", momentum), ("momentum_end", momentum_end)):
            if not 0.0 <= m <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {m}")
        self.momentum, self.momentum_end = momentum, momentum_end
        self.register_buffer("teacher_updates", torch.zeros((), dtype=torch.long))
        # ``load_state_dict`` of an older checkpoint, whose momentum copies were named key_/momentum_/target_*
        self._register_load_state_dict_pre_hook(_rename_legacy_teacher_keys)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        raise NotImplementedError

    def current_momentum(self) -> float:
        """m for the update that follows the current optimizer step."""
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        return cosine_momentum(
            self.trainer.global_step if self._trainer is not None else 0, int(total), self.momentum, self.momentum_end
        )

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        m = self.current_momentum()
        for student, teacher in self.momentum_pairs():
            update_momentum(student, teacher, m)
        self.teacher_updates += 1
        self.log("train/momentum", m)


def _rename_legacy_teacher_keys(state_dict: dict, prefix: str, *_: Any) -> None:
    rename_legacy_teacher_keys(state_dict, prefix)  # a module-level function: the hook must pickle (ddp_spawn)


def forward_views(fn: Callable[[Tensor], Tensor], views: Sequence[Tensor]) -> list[Tensor]:
    """``[fn(v) for v in views]``, with the views of one size forwarded as one batch: fewer, larger forward passes,
    and BatchNorm statistics over all views of a size together (multi-crop: the global crops, then the local
    ones), as the reference implementations that concatenate their views do."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, v in enumerate(views):
        groups.setdefault(tuple(v.shape[1:]), []).append(i)
    out: dict[int, Tensor] = {}
    for idx in groups.values():
        out.update(zip(idx, fn(torch.cat([views[i] for i in idx])).chunk(len(idx)), strict=True))
    return [out[i] for i in range(len(views))]


def _caller_frame():
    import inspect

    frame = inspect.currentframe()
    return frame.f_back.f_back if frame and frame.f_back else None
