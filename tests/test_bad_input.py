"""Bad input, tried systematically: impossible hyperparameters, broken data and broken checkpoints each give an
error that names the problem, raised before training starts where possible, and leave what was already written
intact. Add a case by adding one entry to CASES: (id, function of tmp_path that must raise, exception, regex)."""

from __future__ import annotations

import pickle
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from lightning_ssl.callbacks import KNNMonitor, NonFiniteGuard, OnlineLinearProbe
from lightning_ssl.checkpoint import CheckpointError, load_method, safe_load
from lightning_ssl.data import (
    FashionMNISTDataModule,
    ImageFolderDataModule,
    ImageTextDataModule,
    MultiCropViews,
    SimCLRViews,
    SyntheticDataModule,
    TextClassificationDataModule,
    TextCorpusDataModule,
)
from lightning_ssl.data.datasets import TensorImageDataset
from lightning_ssl.data.streaming import check_chunks
from lightning_ssl.eval import Classifier, export_backbone
from lightning_ssl.losses import CLIPLoss, DINOLoss, InfoNCELoss, NTXentLoss
from lightning_ssl.methods import (
    BERT,
    BYOL,
    CLIP,
    DINO,
    GPT,
    IJEPA,
    MAE,
    NNCLR,
    T5,
    BarlowTwins,
    BEiT,
    Colorization,
    Jigsaw,
    MoCo,
    MoCoV3,
    SimCLR,
    SimMIM,
    SwAV,
    VICReg,
    VisualTokenizer,
)
from lightning_ssl.methods.lm import sample_logits
from lightning_ssl.modules.backbones import ResNet, SmallCNN
from lightning_ssl.modules.color import rgb_to_lab
from lightning_ssl.modules.heads import ProjectionHead
from lightning_ssl.modules.masking import block_masking, patchify
from lightning_ssl.modules.pretrained import CheckpointBackbone, Pixels
from lightning_ssl.modules.text import BPETokenizer, TextTransformer
from lightning_ssl.modules.tokenizer import TextTokenizer, train_tokenizer
from lightning_ssl.modules.vit import ViT
from lightning_ssl.optim import WarmupCosineLR
from tests.helpers import write_corpus


def cnn(c=1):
    return SmallCNN(c, 16, width=4)


def data(**kw):
    kw = {
        "num_samples": 32,
        "batch_size": 8,
        "num_workers": 0,
        "image_size": 16,
        "channels": 1,
        "num_classes": 4,
        "val_bank_size": 0,
        **kw,
    }
    return SyntheticDataModule(**kw)


def fit(model, dm, tmp_path, **kw):
    """Run fit and check that the error came before any optimizer step."""
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kw,
    )
    try:
        trainer.fit(model, datamodule=dm)
    finally:
        assert trainer.global_step == 0, "the error came after training had started"


def _png(path: Path, size=(12, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 30)).save(path)
    return path


def corrupt_image(tmp_path):
    _png(tmp_path / "f" / "a" / "0.png")
    (tmp_path / "f" / "a" / "2.jpg").write_bytes(b"not an image at all")
    ImageFolderDataModule(train_dir=str(tmp_path / "f"), num_workers=0).setup("fit")


def truncated_image(tmp_path):
    p = _png(tmp_path / "f" / "a" / "0.png", (64, 64))
    p.write_bytes(p.read_bytes()[:60])
    dm = ImageFolderDataModule(train_dir=str(tmp_path / "f"), num_workers=0, image_size=8)
    dm.setup("fit")
    dm.train_set[0]


def gray_data_rgb_backbone(tmp_path):
    fit(SimCLR(cnn(3), proj_hidden_dim=8, proj_dim=4), data(channels=1), tmp_path)


def rgb_checkpoint_on_gray_data(tmp_path):
    model = SimCLR(ResNet("resnet18", in_channels=3, image_size=16), proj_hidden_dim=8, proj_dim=4)
    fit(model, data(channels=1), tmp_path)


def empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    ImageFolderDataModule(train_dir=str(tmp_path / "empty"), num_workers=0).setup("fit")


def class_folders_without_images(tmp_path):
    (tmp_path / "f" / "cats").mkdir(parents=True)
    ImageFolderDataModule(train_dir=str(tmp_path / "f"), num_workers=0).setup("fit")


def missing_folder(tmp_path):
    ImageFolderDataModule(train_dir=str(tmp_path / "nope"), num_workers=0).prepare_data()


def missing_fmnist(tmp_path):
    dm = FashionMNISTDataModule(root=str(tmp_path))
    dm.system_dir = str(tmp_path / "not-installed")
    dm.prepare_data()


def fewer_images_than_a_batch(tmp_path):
    dm = data(num_samples=4, batch_size=8)
    dm.setup("fit")
    dm.train_dataloader()


def missing_caption_file(tmp_path):
    TextClassificationDataModule(source=str(tmp_path / "captions.csv")).prepare_data()


def caption_file_without_columns(tmp_path):
    (tmp_path / "t.csv").write_text("sentence,topic\nhello,a\n")
    TextClassificationDataModule(source=str(tmp_path / "t.csv")).setup()


def undecodable_caption_file(tmp_path):
    (tmp_path / "t.jsonl").write_bytes(b'{"text": "ok", "label": 1}\n\xff\xfe{broken')
    TextClassificationDataModule(source=str(tmp_path / "t.jsonl")).setup()


def vit(patch_size=4):
    return ViT(in_channels=1, image_size=16, patch_size=patch_size, embed_dim=16, depth=1, num_heads=2)


def _tokenizer(patch_size=4, **kw):
    return VisualTokenizer(
        vit(patch_size),
        **{"num_codes": 8, "code_dim": 4, "decoder_dim": 8, "decoder_depth": 1, "decoder_heads": 2, **kw},
    )


def _simclr_checkpoint(tmp_path):
    path = tmp_path / "simclr.ckpt"
    torch.save({"state_dict": SimCLR(cnn()).state_dict(), "hyper_parameters": {}}, path)
    return str(path)


def image_text_table(tmp_path, text: str | None):
    if text is not None:
        (tmp_path / "pairs.csv").write_text(text)
    ImageTextDataModule(source=str(tmp_path / "pairs.csv"), num_workers=0).setup("fit")


def missing_image_in_table(tmp_path):
    _png(tmp_path / "a.png")
    image_text_table(tmp_path, "image,caption\na.png,a green square\nb.png,a missing picture\n")


def clip_text_without_tokenizer(tmp_path):
    model = CLIP(cnn(), TextTransformer(vocab_size=64, width=8, layers=1, heads=2), embed_dim=4)
    model.text_features(["a caption"])


def colorization_on_grey_data(tmp_path):
    fit(Colorization(cnn()), data(), tmp_path)


def queue_smaller_than_batch(tmp_path):
    fit(MoCo(cnn(), proj_hidden_dim=8, proj_dim=4, queue_size=4), data(), tmp_path)


def num_classes_mismatch(tmp_path):
    fit(Classifier(cnn(), num_classes=3), data(num_classes=4), tmp_path)


def probe_num_classes_mismatch(tmp_path):
    fit(
        SimCLR(cnn(), proj_hidden_dim=8, proj_dim=4),
        data(num_classes=4),
        tmp_path,
        callbacks=[OnlineLinearProbe(num_classes=2)],
    )


def _ckpt(tmp_path, model):
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def resume_with_wrong_method(tmp_path):
    from lightning_ssl.cli import cli

    common = [
        "--model.backbone=SmallCNN",
        "--model.backbone.width=4",
        "--model.proj_hidden_dim=8",
        "--model.proj_dim=4",
        "--data=SyntheticDataModule",
        "--data.num_samples=32",
        "--data.batch_size=8",
        "--data.num_workers=0",
        "--data.image_size=16",
        "--data.channels=1",
        "--trainer.max_steps=2",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--checkpoint.dirpath={tmp_path}",
        "--knn.every_n_epochs=0",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli(["fit", "--model=MoCo", "--model.queue_size=64", *common])
    before = (tmp_path / "last.ckpt").read_bytes()
    try:
        cli(["fit", "--model=BYOL", *common, "--ckpt_path=last"])
    finally:
        assert (tmp_path / "last.ckpt").read_bytes() == before  # the checkpoint is left as it was
        assert safe_load(tmp_path / "last.ckpt")["global_step"] == 2


def truncated_checkpoint(tmp_path):
    path = _ckpt(tmp_path, SimCLR(cnn(), proj_hidden_dim=8, proj_dim=4))
    path.write_bytes(path.read_bytes()[:1000])
    load_method(path)


def pickled_code_checkpoint(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload()}}, tmp_path / "evil.ckpt")
    load_method(tmp_path / "evil.ckpt")


def raw_pickle_checkpoint(tmp_path):
    with open(tmp_path / "x.ckpt", "wb") as f:
        pickle.dump({"a": 1}, f)
    safe_load(tmp_path / "x.ckpt")


def missing_checkpoint(tmp_path):
    load_method(tmp_path / "nope.ckpt")


def empty_checkpoint(tmp_path):
    (tmp_path / "e.ckpt").write_bytes(b"")
    CheckpointBackbone(str(tmp_path / "e.ckpt"))


def not_a_lightning_checkpoint(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "w.pt")
    load_method(tmp_path / "w.pt")


def export_from_plain_state_dict(tmp_path):
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "w.pt")
    export_backbone(str(tmp_path / "w.pt"), str(tmp_path / "out.pt"))


# -- language models --------------------------------------------------------------------------------------------
LM = dict(vocab_size=300, block_size=8, n_layer=1, n_head=2, n_embd=8)


def corpus(tmp_path, content: bytes | None = None, **kw):
    source = write_corpus(tmp_path / "corpus", docs=3, sentences=10) if content is None else tmp_path / "c.txt"
    if content is not None:
        source.write_bytes(content)
    return TextCorpusDataModule(**{"source": str(source), "tokenizer": "byte", "block_size": 8, "batch_size": 2, **kw})


def lm_checkpoint(tmp_path, **data_kw) -> Path:
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(GPT(**LM), datamodule=corpus(tmp_path, **data_kw))
    trainer.save_checkpoint(tmp_path / "lm.ckpt")
    return tmp_path / "lm.ckpt"


def lm_fine_tune_with_another_tokenizer(tmp_path):
    model = GPT.load_from_checkpoint(lm_checkpoint(tmp_path), weights_only=True)
    fit(model, corpus(tmp_path, tokenizer="char", vocab_size=60), tmp_path)


def lm_resume(tmp_path, model, dm):
    ckpt = lm_checkpoint(tmp_path)
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    finally:
        assert trainer.global_step <= 1, "the error came after training had resumed"


def jsonl_without_text(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"body": "x"}\n')
    fit(GPT(**LM), TextCorpusDataModule(source=str(tmp_path / "d.jsonl")), tmp_path)


def char_tokenizer(sentinels: int = 0, specials=None) -> TextTokenizer:
    if specials is not None:
        return TextTokenizer(train_tokenizer(["some text"], "char", 64, special_tokens=specials))
    return TextTokenizer.train(["some text"], "char", 64, sentinels=sentinels)


def corrupt_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    TextTokenizer.load(str(tmp_path))


CASES = [
    # language models and text corpora
    ("text-empty-file", lambda t: fit(GPT(**LM), corpus(t, b"  \n"), t), ValueError, r"c\.txt' is empty"),
    (
        "text-binary-file",
        lambda t: fit(GPT(**LM), corpus(t, b"PK\x03\x04\x00\x00binary"), t),
        ValueError,
        r"not a text file \(it holds binary data",
    ),
    ("text-not-utf8", lambda t: fit(GPT(**LM), corpus(t, "café".encode("latin-1")), t), ValueError, r"not UTF-8 text"),
    (
        "text-missing-source",
        lambda t: TextCorpusDataModule(source=str(t / "nope")).setup(),
        FileNotFoundError,
        r"no text found at",
    ),
    ("text-jsonl-without-text", jsonl_without_text, ValueError, r"line 1 has no string field 'text'"),
    (
        "shakespeare-not-fetched",
        lambda t: TextCorpusDataModule(root=str(t)).prepare_data(),
        FileNotFoundError,
        r"python -m lightning_ssl.data.fetch shakespeare",
    ),
    (
        "text-block-larger-than-corpus",
        lambda t: fit(GPT(**{**LM, "block_size": 10000}), corpus(t, block_size=10000), t),
        ValueError,
        r"fewer than one batch.*Lower data.block_size",
    ),
    (
        "text-vocab-no-room-for-specials",
        lambda t: TextCorpusDataModule(tokenizer="bpe", vocab_size=10, sentinels=8),
        ValueError,
        r"vocab_size=10 leaves no room",
    ),
    ("tokenizer-unknown-kind", lambda t: TextTokenizer.load("sentencepiece"), FileNotFoundError, r"no tokenizer at"),
    ("tokenizer-corrupt-json", corrupt_tokenizer_json, ValueError, r"not a readable tokenizer.json"),
    (
        "tokenizer-larger-than-model",
        lambda t: fit(GPT(**{**LM, "vocab_size": 100}), corpus(t), t),
        ValueError,
        r"has 260 tokens, more than the model's embedding table \(vocab_size=100\)",
    ),
    (
        "tokenizer-differs-from-checkpoint",
        lm_fine_tune_with_another_tokenizer,
        ValueError,
        r"the data's tokenizer .* is not the model's own",
    ),
    (
        "resume-with-another-tokenizer",
        lambda t: lm_resume(t, GPT(**LM), corpus(t, tokenizer="char", vocab_size=60)),
        ValueError,
        r"checkpoint's data was tokenized by .*'byte'.* this run asks for .*'char'",
    ),
    (
        "resume-with-another-vocab-size",
        lambda t: lm_resume(t, GPT(**{**LM, "vocab_size": 400}), corpus(t)),
        ValueError,
        r"has vocab_size=300, this one 400",
    ),
    (
        "bert-tokenizer-without-mask",
        lambda t: BERT(**LM).set_tokenizer(char_tokenizer(specials=["<pad>", "<unk>"])),
        ValueError,
        r"BERT needs a tokenizer with mask tokens",
    ),
    (
        "t5-tokenizer-without-sentinels",
        lambda t: T5(**LM).set_tokenizer(char_tokenizer()),
        ValueError,
        r"T5 needs a tokenizer with sentinels tokens",
    ),
    (
        "t5-too-few-sentinels",
        lambda t: T5(**{**LM, "block_size": 141}).set_tokenizer(char_tokenizer(sentinels=3)),
        ValueError,
        r"141 tokens are corrupted in 7 spans, but .* only 3 sentinels",
    ),
    (
        "bert-mlm-probability-1",
        lambda t: BERT(**LM, mlm_probability=1.0),
        ValueError,
        r"mlm_probability must lie in \(0, 1\)",
    ),
    (
        "bert-fractions-above-1",
        lambda t: BERT(**LM, mask_fraction=0.9, random_fraction=0.2),
        ValueError,
        r"mask_fraction \(0.9\) \+ random_fraction \(0.2\)",
    ),
    ("t5-noise-density-1", lambda t: T5(**LM, noise_density=1.0), ValueError, r"noise_density must lie in \(0, 1\)"),
    ("gpt-dropout-1", lambda t: GPT(**LM, dropout=1.0), ValueError, r"dropout must lie in \[0, 1\)"),
    (
        "gpt-heads-not-dividing-width",
        lambda t: GPT(**{**LM, "n_head": 3}),
        ValueError,
        r"width \(8\) must be divisible",
    ),
    (
        "gpt-longer-than-block-size",
        lambda t: GPT(**LM).backbone(torch.zeros(1, 9, dtype=torch.long)),
        ValueError,
        r"9 tokens is longer than block_size=8",
    ),
    ("sampling-top-p-0", lambda t: sample_logits(torch.zeros(1, 4), top_p=0.0), ValueError, r"0 < top_p <= 1"),
    ("lm-text-without-tokenizer", lambda t: GPT(**LM).complete("hi"), RuntimeError, r"has no tokenizer yet"),
    # impossible hyperparameters
    ("simclr-temperature-0", lambda t: SimCLR(cnn(), temperature=0.0), ValueError, r"temperature must be > 0"),
    ("moco-temperature-negative", lambda t: MoCo(cnn(), temperature=-0.1), ValueError, r"temperature must be > 0"),
    ("mocov3-temperature-0", lambda t: MoCoV3(cnn(), temperature=0), ValueError, r"temperature must be > 0"),
    ("ntxent-temperature-0", lambda t: NTXentLoss(0.0), ValueError, r"temperature must be > 0"),
    ("infonce-temperature-0", lambda t: InfoNCELoss(0.0), ValueError, r"temperature must be > 0"),
    ("knn-temperature-0", lambda t: KNNMonitor(temperature=0), ValueError, r"temperature must be > 0"),
    ("knn-k-0", lambda t: KNNMonitor(k=0), ValueError, r"k must be a positive integer"),
    ("byol-momentum-above-1", lambda t: BYOL(cnn(), momentum=1.5), ValueError, r"momentum must lie in \[0, 1\]"),
    (
        "byol-momentum-end-negative",
        lambda t: BYOL(cnn(), momentum_end=-0.1),
        ValueError,
        r"momentum_end must lie in \[0, 1\]",
    ),
    ("moco-momentum-negative", lambda t: MoCo(cnn(), momentum=-0.5), ValueError, r"momentum must lie in \[0, 1\]"),
    ("moco-queue-size-0", lambda t: MoCo(cnn(), queue_size=0), ValueError, r"queue_size must be >= 1"),
    (
        "moco-queue-smaller-than-batch",
        queue_smaller_than_batch,
        ValueError,
        r"queue_size=4 is smaller than the global batch",
    ),
    (
        "crop-scale-above-1",
        lambda t: SimCLRViews(min_scale=1.2).build(16, 1, (0.5,), (0.5,)),
        ValueError,
        r"crop scale must satisfy 0 < min_scale <= max_scale <= 1",
    ),
    (
        "crop-scale-inverted",
        lambda t: SimCLRViews(min_scale=0.9, max_scale=0.5).build(16, 1, (0.5,), (0.5,)),
        ValueError,
        r"crop scale must satisfy",
    ),
    ("zero-views", lambda t: SimCLRViews(num_views=0), ValueError, r"num_views must be >= 1"),
    ("batch-size-0", lambda t: data(batch_size=0), ValueError, r"batch_size must be >= 1"),
    ("channels-2", lambda t: FashionMNISTDataModule(root=str(t), channels=2), ValueError, r"channels must be 1 or 3"),
    (
        "rgb-jitter-on-6-channels",
        lambda t: data(channels=6),
        ValueError,
        r"SimCLRViews applies colour jitter.*6 channels",
    ),
    (
        "negative-warmup",
        lambda t: WarmupCosineLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), -1),
        ValueError,
        r"warmup_steps and min_lr_ratio must be >= 0",
    ),
    ("head-without-layers", lambda t: ProjectionHead(4, 4, 4, num_layers=0), ValueError, r"num_layers must be >= 1"),
    ("nonfinite-action", lambda t: NonFiniteGuard("ignore"), ValueError, r"action must be 'stop' or 'skip'"),
    ("classifier-num-classes-mismatch", num_classes_mismatch, ValueError, r"head has 3 classes but the data has 4"),
    (
        "probe-num-classes-mismatch",
        probe_num_classes_mismatch,
        ValueError,
        r"OnlineLinearProbe\(num_classes=2\) but the data has 4",
    ),
    ("classifier-one-class", lambda t: Classifier(cnn(), num_classes=1), ValueError, r"num_classes must be >= 2"),
    # broken data
    ("corrupt-image", corrupt_image, ValueError, r"not a PNG/JPEG/GIF/BMP/WEBP/TIFF image"),
    ("truncated-image", truncated_image, ValueError, r"cannot decode image file .*0\.png"),
    ("grayscale-data-rgb-backbone", gray_data_rgb_backbone, ValueError, r"cannot take the data's images \(1 channels"),
    ("grayscale-data-rgb-resnet", rgb_checkpoint_on_gray_data, ValueError, r"cannot take the data's images"),
    ("empty-image-folder", empty_folder, ValueError, r"no class sub-folders"),
    ("class-folders-without-images", class_folders_without_images, ValueError, r"no images in them"),
    (
        "empty-tensor-dataset",
        lambda t: TensorImageDataset(torch.zeros(0, 1, 4, 4, dtype=torch.uint8)),
        ValueError,
        r"dataset is empty",
    ),
    ("missing-image-folder", missing_folder, FileNotFoundError, r"does not exist"),
    ("missing-fashion-mnist", missing_fmnist, FileNotFoundError, r"dataset-fashion-mnist"),
    ("fewer-images-than-a-batch", fewer_images_than_a_batch, ValueError, r"fewer than one batch"),
    ("missing-caption-file", missing_caption_file, FileNotFoundError, r"captions\.csv.*does not exist"),
    ("caption-file-without-columns", caption_file_without_columns, ValueError, r"needs 'text' and 'label' fields"),
    ("undecodable-caption-file", undecodable_caption_file, ValueError, r"cannot read .*t\.jsonl"),
    # broken checkpoints
    (
        "resume-with-another-method",
        resume_with_wrong_method,
        CheckpointError,
        r"written by lightning_ssl\.methods\.MoCo",
    ),
    ("truncated-checkpoint", truncated_checkpoint, CheckpointError, r"truncated or corrupt"),
    ("pickled-code", pickled_code_checkpoint, CheckpointError, r"refusing to execute"),
    ("raw-pickle", raw_pickle_checkpoint, CheckpointError, r"model\.ckpt|x\.ckpt"),
    ("missing-checkpoint", missing_checkpoint, CheckpointError, r"does not exist"),
    ("empty-checkpoint", empty_checkpoint, CheckpointError, r"is empty"),
    ("not-a-lightning-checkpoint", not_a_lightning_checkpoint, CheckpointError, r"not a Lightning checkpoint"),
    ("export-plain-state-dict", export_from_plain_state_dict, CheckpointError, r"not a lightning_ssl checkpoint"),
    # vision transformers, MAE, DINO / iBOT
    (
        "vit-patch-not-dividing-image",
        lambda t: ViT(image_size=28, patch_size=5),
        ValueError,
        r"28 is not a multiple of patch_size 5",
    ),
    (
        "patchify-patch-not-dividing",
        lambda t: patchify(torch.zeros(1, 1, 16, 16), 5),
        ValueError,
        r"not divisible by the patch size 5",
    ),
    ("mae-mask-ratio-1", lambda t: MAE(vit(), mask_ratio=1.0), ValueError, r"mask_ratio must lie in \[0, 1\)"),
    ("mae-mask-ratio-negative", lambda t: MAE(vit(), mask_ratio=-0.1), ValueError, r"mask_ratio must lie in \[0, 1\)"),
    ("mae-on-a-cnn", lambda t: MAE(cnn()), ValueError, r"MAE needs a ViT backbone"),
    (
        "mae-wrong-image-size",
        lambda t: MAE(vit(), decoder_dim=8, decoder_depth=1, decoder_heads=2).forward_mae(torch.zeros(2, 1, 20, 20)),
        ValueError,
        r"built for 16 px images",
    ),
    ("dino-teacher-temp-0", lambda t: DINO(vit(), teacher_temp=0.0), ValueError, r"teacher_temp must be > 0"),
    ("dino-student-temp-negative", lambda t: DINO(vit(), student_temp=-1), ValueError, r"student_temp must be > 0"),
    ("dino-loss-temp-0", lambda t: DINOLoss(out_dim=8, student_temp=0), ValueError, r"temperatures must be > 0"),
    (
        "dino-center-momentum-above-1",
        lambda t: DINOLoss(out_dim=8, center_momentum=1.5),
        ValueError,
        r"center momentum must lie in \[0, 1\]",
    ),
    ("dino-no-global-crops", lambda t: DINO(vit(), num_global_crops=0), ValueError, r"num_global_crops must be >= 1"),
    ("ibot-on-a-cnn", lambda t: DINO(cnn(), ibot_weight=1.0), ValueError, r"iBOT"),
    ("ibot-mask-ratio-above-1", lambda t: block_masking(2, (4, 4), (0.1, 1.2)), ValueError, r"mask ratio range"),
    ("multicrop-no-global-crops", lambda t: MultiCropViews(global_crops=0), ValueError, r"global_crops >= 1"),
    # BEiT and its visual tokenizer
    ("beit-mask-every-patch", lambda t: BEiT(vit(), _tokenizer(), num_masked=16), ValueError, r"num_masked must lie"),
    (
        "beit-block-above-masked",
        lambda t: BEiT(vit(), _tokenizer(), num_masked=4, min_block=5),
        ValueError,
        r"min_block must lie",
    ),
    ("beit-tokenizer-of-another-grid", lambda t: BEiT(vit(), _tokenizer(patch_size=8)), ValueError, r"grid of tokens"),
    (
        "beit-missing-tokenizer-checkpoint",
        lambda t: BEiT(vit(), str(t / "none.ckpt")),
        CheckpointError,
        r"does not exist",
    ),
    (
        "beit-tokenizer-checkpoint-of-another-method",
        lambda t: BEiT(vit(), _simclr_checkpoint(t)),
        CheckpointError,
        r"not a checkpoint of lightning_ssl.methods.VisualTokenizer",
    ),
    ("tokenizer-one-code", lambda t: _tokenizer(num_codes=1), ValueError, r"num_codes must be >= 2"),
    ("tokenizer-decay-1", lambda t: _tokenizer(decay=1.0), ValueError, r"decay must lie in \[0, 1\)"),
    ("tokenizer-encoder-not-a-vit", lambda t: VisualTokenizer(cnn()), ValueError, r"must be a ViT"),
    (
        "tokenizer-teacher-without-patches",  # a CNN teacher's feature map serves; pooled features alone do not
        lambda t: _tokenizer(teacher=Pixels(1, 16)),
        ValueError,
        r"gives no patch tokens or feature map",
    ),
    # pretext tasks
    (
        "jigsaw-too-many-permutations",
        lambda t: Jigsaw(cnn(), grid=2, num_permutations=30),
        ValueError,
        r"num_permutations must lie in \[2, 24\]",
    ),
    ("jigsaw-grid-1", lambda t: Jigsaw(cnn(), grid=1), ValueError, r"grid must be >= 2"),
    ("colorization-on-grey-data", colorization_on_grey_data, ValueError, r"needs colour images"),
    ("lab-of-a-grey-image", lambda t: rgb_to_lab(torch.zeros(1, 1, 4, 4)), ValueError, r"colour images"),
    (
        "colorization-unknown-mode",
        lambda t: Colorization(cnn(), mode="gan"),
        ValueError,
        r"mode must be 'classification' or 'regression'",
    ),
    # CLIP
    ("clip-temperature-0", lambda t: CLIPLoss(temperature=0.0), ValueError, r"temperature and max_scale must be > 0"),
    ("clip-text-without-tokenizer", clip_text_without_tokenizer, RuntimeError, r"no tokenizer"),
    ("tokenizer-on-no-text", lambda t: BPETokenizer.train([]), ValueError, r"cannot train a tokenizer on no text"),
    ("missing-image-text-table", lambda t: image_text_table(t, None), FileNotFoundError, r"does not exist"),
    (
        "image-text-table-without-caption",
        lambda t: image_text_table(t, "image,text\na.png,hi\n"),
        ValueError,
        r"needs a 'caption' column",
    ),
    (
        "image-text-table-empty-caption",
        lambda t: image_text_table(t, "image,caption\na.png,\n"),
        ValueError,
        r"empty caption",
    ),
    ("image-text-missing-image", missing_image_in_table, FileNotFoundError, r"b\.png.*does not exist"),
    # Barlow Twins, VICReg, SwAV, NNCLR, I-JEPA, SimMIM
    (
        "barlow-twins-lambda-0",
        lambda t: BarlowTwins(cnn(), proj_hidden_dim=8, proj_dim=8, lambda_offdiag=0.0),
        ValueError,
        r"lambda_offdiag must be > 0",
    ),
    (
        "vicreg-negative-weight",
        lambda t: VICReg(cnn(), proj_hidden_dim=8, proj_dim=8, cov_weight=-1.0),
        ValueError,
        r"cov_weight must be >= 0",
    ),
    (
        "vicreg-gamma-0",
        lambda t: VICReg(cnn(), proj_hidden_dim=8, proj_dim=8, gamma=0.0),
        ValueError,
        r"gamma and eps must be > 0",
    ),
    (
        "swav-epsilon-0",
        lambda t: SwAV(cnn(), proj_dim=8, num_prototypes=4, sinkhorn_epsilon=0.0),
        ValueError,
        r"sinkhorn epsilon must be > 0",
    ),
    (
        "swav-temperature-0",
        lambda t: SwAV(cnn(), proj_dim=8, num_prototypes=4, temperature=0),
        ValueError,
        r"temperature must be > 0",
    ),
    (
        "swav-one-prototype",
        lambda t: SwAV(cnn(), proj_dim=8, num_prototypes=1),
        ValueError,
        r"num_prototypes must be >= 2",
    ),
    (
        "swav-queue-smaller-than-batch",
        lambda t: fit(SwAV(cnn(), proj_hidden_dim=8, proj_dim=4, num_prototypes=4, queue_size=4), data(), t),
        ValueError,
        r"SwAV queue_size=4 is smaller than the global batch",
    ),
    (
        "nnclr-temperature-0",
        lambda t: NNCLR(cnn(), proj_dim=8, temperature=0.0, queue_size=8),
        ValueError,
        r"temperature must be > 0",
    ),
    ("nnclr-queue-size-0", lambda t: NNCLR(cnn(), proj_dim=8, queue_size=0), ValueError, r"queue_size must be >= 1"),
    (
        "nnclr-queue-smaller-than-batch",
        lambda t: fit(NNCLR(cnn(), proj_hidden_dim=8, proj_dim=4, pred_hidden_dim=8, queue_size=4), data(), t),
        ValueError,
        r"NNCLR queue_size=4 is smaller than the global batch",
    ),
    ("ijepa-on-a-cnn", lambda t: IJEPA(cnn()), ValueError, r"I-JEPA needs a ViT backbone"),
    (
        "ijepa-target-scale-above-1",
        lambda t: IJEPA(vit(), target_scale=(0.5, 1.5)),
        ValueError,
        r"target scale must satisfy 0 < min <= max <= 1",
    ),
    ("ijepa-no-targets", lambda t: IJEPA(vit(), num_targets=0), ValueError, r"num_targets must be >= 1"),
    ("ijepa-unknown-loss", lambda t: IJEPA(vit(), loss="l1"), ValueError, r"I-JEPA loss kind must be one of"),
    (
        "ijepa-predictor-heads",
        lambda t: IJEPA(vit(), predictor_dim=16, predictor_heads=3),
        ValueError,
        r"predictor_dim 16 is not divisible by predictor_heads 3",
    ),
    (
        "simmim-mask-ratio-1",
        lambda t: SimMIM(vit(), mask_patch_size=8, mask_ratio=1.0),
        ValueError,
        r"mask_ratio must lie in \(0, 1\)",
    ),
    (
        "simmim-mask-patch-not-dividing",
        lambda t: SimMIM(vit(), mask_patch_size=12),
        ValueError,
        r"mask_patch_size 12 must be a multiple of the stem's stride \(4 px\) and divide the image size \(16 px\)",
    ),
    (
        "simmim-on-a-plain-cnn",
        lambda t: SimMIM(cnn()),
        ValueError,
        r"SimMIM needs a lightning_ssl.modules.vit.ViT or a timm",
    ),
]


def _optimize(src, out, **kw):
    from lightning_ssl.data import optimize_images

    return optimize_images(str(src), str(out), num_workers=1, verbose=False, **kw)


def optimize_a_corrupt_jpeg(tmp_path):
    _png(tmp_path / "f" / "a" / "0.png")
    (tmp_path / "f" / "a" / "1.jpg").write_bytes(b"\xff\xd8\xff\xe0 and then nothing")
    _optimize(tmp_path / "f", tmp_path / "chunks")


def stream_a_missing_chunk(tmp_path):
    import json

    from lightning_ssl.data import StreamingImageDataModule

    for i in range(3):
        _png(tmp_path / "f" / "a" / f"{i}.png")
    _optimize(tmp_path / "f", tmp_path / "chunks")
    first = json.loads((tmp_path / "chunks" / "index.json").read_text())["chunks"][0]["filename"]
    (tmp_path / "chunks" / first).unlink()
    StreamingImageDataModule(input_dir=str(tmp_path / "chunks"), num_workers=0, batch_augment=True).setup("fit")


CASES += [
    (
        "batched-crop-impossible-scale",
        lambda t: SimCLRViews(min_scale=0.9, max_scale=0.5).build_batched(8, 3, (0.5,) * 3, (0.5,) * 3),
        ValueError,
        r"crop scale",
    ),
    (
        "decode-on-device-without-batch-augment",
        lambda t: ImageFolderDataModule(train_dir=str(t), decode="device"),
        ValueError,
        r"needs batch_augment",
    ),
    ("optimize-a-corrupt-jpeg", optimize_a_corrupt_jpeg, ValueError, r"1 of 2 images .* could not be read"),
    ("optimize-an-empty-folder", lambda t: _optimize(t, t / "chunks"), ValueError, r"no class sub-folders|no images"),
    ("optimize-into-a-bucket", lambda t: _optimize(t, "s3://bucket/x"), ValueError, r"writes to a local folder"),
    ("stream-a-missing-chunk", stream_a_missing_chunk, FileNotFoundError, r"chunk .* is missing"),
    ("stream-a-plain-folder", lambda t: check_chunks(str(t)), FileNotFoundError, r"not an optimized dataset"),
]


@pytest.mark.parametrize(("fn", "exc", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_named(fn, exc, pattern, tmp_path):
    with pytest.raises(exc, match=pattern):
        fn(tmp_path)


def test_case_ids_are_unique():
    assert len({c[0] for c in CASES}) == len(CASES)
