"""The monitoring rule (``SSLMethod``): the features the online probe and the collapse monitor get from a training
step are what ``embed`` gives for the step's first view - same network, same pooling, unmasked input. Checked
for every method of the DDP harness (all modules in eval mode, so train-mode normalization is not a difference)."""

from unittest import mock

import lightning as L
import pytest
import torch

import lightning_ssl.methods.jigsaw as jigsaw_module
from lightning_ssl.callbacks import OnlineLinearProbe
from lightning_ssl.callbacks.features import step_features
from lightning_ssl.methods import DINO, MAE, Colorization
from lightning_ssl.modules.vit import ViT
from tests.test_ddp_equivalence import CASES, LANGUAGE, SYNC_BN, _batch

METHODS = sorted(n for n in CASES if n not in SYNC_BN and n not in LANGUAGE and n != "classifier")


def _dino_teacher_moved():
    model = CASES["dino"][0]()
    with torch.no_grad():  # after some training the EMA teacher differs from the student
        for p in model.teacher_backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


EXTRA = {  # cases where the rule was broken before
    "dino_teacher_moved": _dino_teacher_moved,
    "dino_student_ibot": lambda: DINO(
        ViT(in_channels=1, image_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2),
        hidden_dim=16,
        bottleneck_dim=8,
        out_dim=32,
        ibot_weight=1.0,
        eval_teacher=False,
    ),
    "colorization_vit_cls": lambda: Colorization(
        ViT(in_channels=1, image_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, pool="token")
    ),
}


class _Trainer:  # what step_features needs from a Trainer
    precision_plugin = L.pytorch.plugins.precision.Precision()


def _first_view(batch):
    x = batch[0]
    return x[0] if isinstance(x, (list, tuple)) else x


def _check(model, batch):
    model.eval()
    real_tiles = jigsaw_module.extract_tiles
    # Jigsaw's tile jitter is augmentation (the one difference the rule allows): switched off to compare
    no_jitter = mock.patch.object(
        jigsaw_module, "extract_tiles", lambda x, g, t, jitter: real_tiles(x, g, t, jitter=False)
    )
    with torch.no_grad(), no_jitter:
        out = model.training_step(batch, 0)
        assert ("features" in out) != ("embed_input" in out), "return features or embed_input, not both or neither"
        got = step_features(_Trainer(), model, out)
        want = model.embed(_first_view(batch))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    return out


@pytest.mark.parametrize("name", METHODS)
def test_step_features_are_embed_of_the_first_view(name):
    torch.manual_seed(0)
    _check(CASES[name][0](), _batch(name))


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_rule_where_it_was_broken(name):
    torch.manual_seed(0)
    case = "dino" if name.startswith("dino") else "colorization"
    out = _check(EXTRA[name](), _batch(case))
    if name == "dino_student_ibot":
        assert "embed_input" in out  # the student saw masked crops: embed runs on the unmasked one


def test_mae_monitors_see_the_full_image_not_the_visible_patches():
    torch.manual_seed(0)
    model = CASES["mae"][0]()
    out = _check(model, _batch("mae"))
    assert "embed_input" in out
    assert isinstance(model, MAE)


def test_probe_every_n_steps_and_bad_interval():
    with pytest.raises(ValueError, match="every_n_steps"):
        OnlineLinearProbe(every_n_steps=0)


def test_probe_top1_is_plain_accuracy_and_macro_is_logged_beside_it():
    """val/probe_top1 counts images (as the kNN monitor does); the mean of per-class accuracies is its own key.
    9 images of class 0 all right, 1 image of class 1 wrong: plain 90%, macro 50%."""
    from types import SimpleNamespace

    probe = OnlineLinearProbe(num_classes=2)
    module = SimpleNamespace(num_features=2, device=torch.device("cpu"), logged={})
    module.log = lambda name, value, **kw: module.logged.__setitem__(name, float(value))
    trainer = SimpleNamespace(datamodule=None, sanity_checking=False)
    probe.setup(trainer, module, "fit")
    with torch.no_grad():
        probe.probe.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        probe.probe.bias.zero_()
    features = torch.tensor([[1.0, 0.0]] * 10)  # the probe says class 0 for all ten
    labels = torch.tensor([0] * 9 + [1])
    probe.on_validation_epoch_start(trainer, module)
    probe.on_validation_batch_end(trainer, module, {"features": features, "labels": labels}, None, 0)
    probe.on_validation_epoch_end(trainer, module)
    assert module.logged["val/probe_top1"] == pytest.approx(0.9)
    assert module.logged["val/probe_top1_macro"] == pytest.approx(0.5)
