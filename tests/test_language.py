"""Language models (GPT, BERT, T5), their corruptions, tokenizers and text datamodule, on generated text."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from lightning_ssl.callbacks import TextSamples
from lightning_ssl.data import TextCorpusDataModule
from lightning_ssl.data.corpus import read_documents, split_documents, strip_gutenberg
from lightning_ssl.data.sampling import mix_seed
from lightning_ssl.losses.lm import token_cross_entropy
from lightning_ssl.methods import BERT, GPT, T5
from lightning_ssl.methods.lm import sample_logits
from lightning_ssl.modules.lm_masking import (
    compute_input_and_target_lengths,
    mlm_mask,
    random_spans_noise_mask,
    reconstruct,
    span_corruption,
    span_lengths,
)
from lightning_ssl.modules.tokenizer import TextTokenizer
from lightning_ssl.optim import param_groups
from tests.helpers import write_corpus

TEXTS = [
    "the king sat on the throne and the queen wept.",
    "O Romeo, Romeo! wherefore art thou Romeo?",
    "To be, or not to be: that is the question.",
    "naïve café — “quoted” text\twith\ttabs\n",
] * 5


def tokenizer(kind="bpe", vocab_size=300, sentinels=8, **kw):
    return TextTokenizer.train(TEXTS, kind, vocab_size, min_frequency=1, sentinels=sentinels, **kw)


def data(tmp_path, sentences=40, **kw):
    kw = {
        "source": str(write_corpus(tmp_path / "corpus", sentences=sentences)),
        "tokenizer": "bpe",
        "vocab_size": 300,
        "block_size": 16,
        "batch_size": 4,
        "sentinels": 8,
        "min_frequency": 1,
        **kw,
    }
    return TextCorpusDataModule(**kw)


def trainer(tmp_path, **kw):
    kw = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "max_steps": 2,
        "limit_val_batches": 2,
        **kw,
    }
    return L.Trainer(default_root_dir=tmp_path, **kw)


TINY = dict(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=16)


# --- tokenizers ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["byte", "char", "bpe", "wordpiece"])
def test_tokenizer_save_load_round_trip(kind, tmp_path):
    tok = tokenizer(kind, lowercase=kind == "wordpiece")
    for loaded in (
        TextTokenizer.load(str(tok.save(tmp_path / "tokenizer.json"))),
        TextTokenizer.load(str(tmp_path)),
        TextTokenizer.from_tensor(tok.to_tensor()),
    ):
        assert loaded == tok
        assert loaded.vocab_size == tok.vocab_size
        for text in TEXTS[:4]:
            assert loaded.encode(text) == tok.encode(text)
    text = TEXTS[3]
    if kind in ("byte", "bpe", "char"):  # lossless on text made of the corpus's characters
        assert tok.decode(tok.encode(text)) == text
    else:  # BERT's normalizer: lowercased, accents stripped, whitespace collapsed
        assert tok.decode(tok.encode("The King SAT.")) == "the king sat."
    assert (tok.pad_id, tok.unk_id, tok.eos_id) == (0, 1, 2)
    assert tok.mask_token == "<mask>"


def test_tokenizer_sentinels_in_t5_order_and_special_ids():
    tok = tokenizer("bpe", vocab_size=300, sentinels=8)
    assert tok.vocab_size == 300
    # <extra_id_0> is the highest id, then descending (T5's order; not the ascending ids of a known HF-example bug)
    assert tok.sentinel_ids == list(range(299, 291, -1))
    assert tok.special_ids == [0, 1, 2, 3, *list(range(292, 300))]
    assert tok.encode_documents(["a b"])[0][-1] == tok.eos_id


def test_byte_tokenizer_covers_every_string():
    tok = tokenizer("byte", sentinels=0)
    assert tok.vocab_size == 4 + 256
    s = "unseen: ☃ \x07 €"
    assert tok.decode(tok.encode(s)) == s
    assert len(tok.encode(s)) == len(s.encode("utf-8"))


def test_pretrained_tokenizer_roles_from_packaged_minilm():
    tok = TextTokenizer.load("packaged:all-MiniLM-L6-v2")
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 100, 101, 102, 103)
    doc = tok.encode_documents(["The [MASK] brown fox " * 40])[0]  # its tokenizer.json pads/truncates to 128: not here
    assert doc[0] == 101
    assert doc[-1] == 102
    assert len(doc) > 128
    assert 103 in doc


# --- BERT masking ----------------------------------------------------------------------------------------------
def test_mlm_mask_is_hugging_faces_collator_draw_for_draw():
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    from lightning_ssl.modules.backbones import resolve_weights

    hf_tok = AutoTokenizer.from_pretrained(resolve_weights("packaged:all-MiniLM-L6-v2"))
    enc = hf_tok(
        ["the quick brown fox jumps over the lazy dog"] * 6 + ["a b"] * 2,
        padding="max_length",
        max_length=24,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    collator = DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15)
    collator.generator = torch.Generator().manual_seed(3)
    want_inputs, want_labels = collator.torch_mask_tokens(enc["input_ids"].clone(), enc["special_tokens_mask"].clone())
    got_inputs, got_labels = mlm_mask(
        enc["input_ids"],
        enc["special_tokens_mask"].bool(),
        hf_tok.mask_token_id,
        len(hf_tok),
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.equal(got_inputs, want_inputs)
    assert torch.equal(got_labels, want_labels)


def test_mlm_mask_statistics_on_a_large_sample():
    g = torch.Generator().manual_seed(0)
    vocab, mask_id = 1000, 3
    ids = torch.randint(10, vocab, (400, 256), generator=g)
    ids[:, 0], ids[:, 100] = 1, 2  # special tokens ([CLS], [SEP]) at fixed places
    ids[::3, 200:] = 0  # padding at the end of every third row
    special = torch.isin(ids, torch.tensor([0, 1, 2, 3]))
    inputs, labels = mlm_mask(ids, special, mask_id, vocab, generator=g)
    selected = labels != -100
    assert not selected[special].any(), "a special token or padding was selected"
    assert torch.equal(labels[selected], ids[selected])
    assert (labels[~selected] == -100).all()
    assert torch.equal(inputs[~selected], ids[~selected]), "an unselected token changed"
    assert abs(selected.sum().item() / (~special).sum().item() - 0.15) < 0.005
    n = selected.sum().item()  # ~14,000 selected tokens: binomial std of a fraction ~0.003
    masked = (inputs[selected] == mask_id).sum().item() / n
    kept = (inputs[selected] == ids[selected]).sum().item() / n  # includes random draws that hit the same token
    randomized = 1 - masked - kept
    assert abs(masked - 0.8) < 0.015
    assert abs(kept - 0.1 - 0.1 / vocab) < 0.01
    assert abs(randomized - 0.1) < 0.01


# --- T5 span corruption -----------------------------------------------------------------------------------------
def test_compute_input_and_target_lengths_matches_t5():
    assert compute_input_and_target_lengths(512) == (568, 114)  # the values of T5 / Hugging Face's run_t5_mlm
    assert compute_input_and_target_lengths(128) == (141, 29)
    for inputs in (32, 64, 100, 256, 1000):
        raw, targets = compute_input_and_target_lengths(inputs)
        assert span_lengths(raw) == (inputs, targets)
        assert span_lengths(raw + 1)[0] > inputs


def _t5_reference_mask(length, noise_density, mean_span, rng):
    """T5's random_spans_noise_mask (t5.data.preprocessors), in numpy, for one row."""
    num_noise = min(max(int(np.round(length * noise_density)), 1), length - 1)
    num_spans = max(int(np.round(num_noise / mean_span)), 1)

    def segmentation(num_items, num_segments):
        first = np.arange(num_items - 1) < num_segments - 1
        rng.shuffle(first)
        segment_id = np.cumsum(np.pad(first, [[1, 0]]))
        return np.unique(segment_id, return_counts=True)[1]

    lengths = np.stack([segmentation(length - num_noise, num_spans), segmentation(num_noise, num_spans)], 1).reshape(-1)
    indicator = np.zeros(length, dtype=np.int64)
    indicator[np.cumsum(lengths)[:-1]] = 1
    return np.cumsum(indicator) % 2 == 1


def test_noise_mask_density_span_length_and_distribution_match_t5():
    g, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    length, rows = 568, 2000
    ours = random_spans_noise_mask(rows, length, 0.15, 3.0, generator=g).numpy()
    ref = np.stack([_t5_reference_mask(length, 0.15, 3.0, rng) for _ in range(rows)])
    assert (ours.sum(1) == round(0.15 * length)).all()  # exactly 85 noise tokens per row
    assert not ours[:, 0].any()
    assert ours[:, -1].all()
    runs = [r for row in ours for r in _noise_runs(row)]
    assert len(runs) == rows * 28
    assert abs(np.mean(runs) - 85 / 28) < 1e-9
    ref_runs = [r for row in ref for r in _noise_runs(row)]
    # the span lengths follow the same distribution as T5's own function
    for k in range(1, 8):
        assert abs(np.mean(np.array(runs) == k) - np.mean(np.array(ref_runs) == k)) < 0.01
    assert abs(ours.mean(0) - ref.mean(0)).max() < 0.06  # per-position noise rates (std ~0.008)


def _noise_runs(row):
    padded = np.concatenate([[False], row, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return edges[1::2] - edges[::2]


def test_span_corruption_round_trip_and_sentinel_order():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 500, (64, 141), generator=g)
    sentinels = list(range(599, 579, -1))  # <extra_id_0> = 599, <extra_id_1> = 598, ...
    inputs, targets = span_corruption(ids, sentinels, eos_id=2, generator=g)
    assert inputs.shape == (64, 128)
    assert targets.shape == (64, 29)
    assert (inputs[:, -1] == 2).all()
    assert (targets[:, -1] == 2).all()
    for x, y, original in zip(inputs, targets, ids, strict=True):
        assert reconstruct(x, y, sentinels, 2) == original.tolist()
        used = [t for t in x.tolist() if t in sentinels]
        assert used == sentinels[: len(used)]
        assert y[0].item() == 599
        assert [t for t in y.tolist() if t in sentinels] == used


# --- the models ------------------------------------------------------------------------------------------------
def test_gpt_is_causal():
    model = GPT(**TINY).eval()
    x = torch.randint(0, 300, (2, 12))
    y = x.clone()
    y[:, 7:] = torch.randint(0, 300, (2, 5))  # change the future from position 7 on
    with torch.no_grad():
        a, b = model.backbone(x), model.backbone(y)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_t5_decoder_is_causal_and_sees_the_encoder():
    model = T5(**TINY).eval()
    src, tgt = torch.randint(0, 300, (2, 10)), torch.randint(0, 300, (2, 8))
    tgt2 = tgt.clone()
    tgt2[:, 5:] = (tgt2[:, 5:] + 1) % 300
    with torch.no_grad():
        memory = model.backbone.encode(src)
        a, b = model.backbone.decode(tgt, memory), model.backbone.decode(tgt2, memory)
        c = model.backbone.decode(tgt, model.backbone.encode((src + 1) % 300))
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    assert not torch.allclose(a, c)


def test_weight_tying_and_decay_only_on_matrices():
    model = GPT(**TINY)
    assert model.backbone.lm_head.weight is model.backbone.wte.weight
    groups = model.optimizer_fn(param_groups(model)).param_groups
    decayed, plain = groups
    assert decayed["weight_decay"] == 0.1
    assert plain["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"])
    assert all(p.ndim < 2 for p in plain["params"])
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_top_k_1_generation_is_greedy():
    torch.manual_seed(0)
    model = GPT(**TINY).eval()
    prompt = torch.randint(0, 300, (2, 3))
    out = model.generate(prompt, 20, temperature=1.0, top_k=1)  # context runs past block_size: cropped
    idx = prompt
    with torch.no_grad():
        for _ in range(20):
            idx = torch.cat([idx, model.backbone(idx[:, -16:])[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, idx)


def test_top_k_and_top_p_keep_only_their_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]])).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_logits(logits, top_k=2, generator=g).tolist()) == {0, 1}
    assert set(sample_logits(logits, top_p=0.85, generator=g).tolist()) == {0, 1, 2}  # 0.5 + 0.3 < 0.85
    assert set(sample_logits(logits, top_p=0.1, generator=g).tolist()) == {0}
    counts = torch.bincount(sample_logits(logits, generator=g), minlength=5) / 2000
    assert abs(counts[0] - 0.5) < 0.05


def test_token_cross_entropy_matches_the_mean_over_scored_tokens():
    logits, targets = torch.randn(3, 5, 7), torch.randint(0, 7, (3, 5))
    targets[0, :2] = -100
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(token_cross_entropy(logits, targets), want)
    lp = logits.log_softmax(-1)
    keep = targets != -100
    hand = -(lp.gather(-1, targets.clamp_min(0)[..., None])[..., 0][keep]).mean()
    torch.testing.assert_close(token_cross_entropy(logits, targets), hand)


def test_gpt_from_a_local_hugging_face_gpt2(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    hf.save_pretrained(tmp_path / "gpt2")
    model = GPT(pretrained=str(tmp_path / "gpt2"), vocab_size=4096)
    assert model.vocab_size == 300
    assert model.block_size == 16
    assert model.backbone.model.training
    x = torch.randint(0, 300, (2, 16))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(x), hf.eval()(input_ids=x).logits)
    dm = data(tmp_path)
    trainer(tmp_path).fit(model.train(), dm)  # fine-tunes with the data's tokenizer (300 tokens: fits)
    assert model.tokenizer == dm.tokenizer


def test_bert_from_packaged_minilm_fills_masks(capfd):
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    capfd.readouterr()
    model = BERT(pretrained="packaged:all-MiniLM-L6-v2")
    err = capfd.readouterr().err  # loading (and so reloading) says nothing false, and no raw colour codes
    assert "seem corrupted" not in err
    assert "LOAD REPORT" not in err
    assert "\x1b[" not in err
    assert hf_logging.get_verbosity() == verbosity  # transformers' logging is left as it was
    assert model.vocab_size == 30522
    assert model.tokenizer.mask_id == 103
    assert any("predictions.transform" in k for k in model.backbone.missing)  # a sentence encoder: no MLM head
    fills = model.fill_mask("The [MASK] brown fox", top_k=3)
    assert len(fills) == 1
    assert len(fills[0]) == 3
    assert all(isinstance(t, str) and 0 <= p <= 1 for t, p in fills[0])
    assert fills[0][0][1] >= fills[0][1][1] >= fills[0][2][1]
    two = model.fill_mask(["a [MASK] b [MASK]", "[MASK]"], top_k=2)
    assert len(two) == 3


def test_models_train_on_generated_text_and_sample(tmp_path):
    for cls in (GPT, BERT, T5):
        torch.manual_seed(0)
        model, dm, samples = cls(**TINY), data(tmp_path), TextSamples(num_samples=1, max_new_tokens=5, prompts=["the"])
        t = trainer(tmp_path, max_steps=6, val_check_interval=6, callbacks=[samples])
        t.fit(model, dm)
        m = t.callback_metrics
        assert math.isfinite(m["val/loss"])
        assert m["val/ppl"] == pytest.approx(math.exp(m["val/loss"]), rel=1e-5)
        assert 0 <= m["val/accuracy"] <= 1
        assert m["train/tokens_per_s"] > 0
        assert "val/knn_top1" not in m
        assert len(samples.last) == 2
        assert all(isinstance(s, str) for row in samples.last for s in row)
        assert (tmp_path / "samples.txt").is_file()
        assert model.embed(torch.randint(0, 300, (2, 8))).shape == (2, 16)


def test_val_metrics_are_token_weighted_over_batches(tmp_path):
    torch.manual_seed(0)
    model, dm = BERT(**TINY), data(tmp_path, batch_size=3)
    t = trainer(tmp_path, max_steps=1, limit_val_batches=None)
    t.validate(model, dm)
    total, count = 0.0, 0
    for i, rows in enumerate(dm.val_dataloader()[0]):  # the same fixed masks, summed by hand
        g = torch.Generator().manual_seed(mix_seed(1234, i, 0))
        logits, targets, _ = model.eval().predict_targets(rows, g)
        total += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        count += len(targets)
    assert t.callback_metrics["val/loss"].item() == pytest.approx(total / count, rel=1e-5)


# --- data ------------------------------------------------------------------------------------------------------
def test_rows_tile_the_text_and_split_by_document(tmp_path):
    dm = data(tmp_path, val_fraction=0.34)
    dm.setup()
    assert len(dm._texts["train"]) == 4
    assert len(dm._texts["val"]) == 2
    tokens = dm.tokens("train")
    rows = dm.train_dataloader().dataset
    assert all(torch.equal(rows[i][:-1], tokens[i * 16 : (i + 1) * 16].long()) for i in range(len(rows)))
    assert torch.equal(rows[0][-1], rows[1][0])  # one shared token: the next-token target of the row's last input
    docs = dm.tokenizer.encode_documents(dm._texts["train"])
    assert tokens.tolist() == [t for d in docs for t in d]
    assert tokens.tolist().count(dm.tokenizer.eos_id) >= 4


def test_single_document_is_cut_and_gutenberg_is_stripped(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text(
        "The Project Gutenberg EBook\n*** START OF THIS PROJECT GUTENBERG EBOOK ***\nline one\nline two\n"
        "line three\n*** END OF THIS PROJECT GUTENBERG EBOOK ***\nlicence\n"
    )
    text = strip_gutenberg(f.read_text())
    assert text == "line one\nline two\nline three\n"
    train, val = split_documents(read_documents(str(f)), 0.3, 0)
    assert train[0] + val[0] == f.read_text()
    assert train[0].endswith("\n")


def test_jsonl_documents(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "first doc"}\n\n{"text": "second doc", "id": 2}\n')
    assert [t for _, t in read_documents(str(f))] == ["first doc", "second doc"]


def test_datamodule_describes_vocab_and_block_size():
    d = TextCorpusDataModule.describe({"tokenizer": "byte", "sentinels": 3, "block_size": 64})
    assert d["vocab_size"] == 263
    assert d["block_size"] == 64
    assert d["num_classes"] is None
    assert TextCorpusDataModule.describe({"tokenizer": "packaged:all-MiniLM-L6-v2"})["vocab_size"] == 30522


def test_exact_resume_mid_epoch(tmp_path):
    """12 optimizer steps straight == 5 steps, checkpoint, resume to 12 (mid-epoch, and across an epoch's end), for
    GPT with dropout (RNG) and BERT (random masks)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for cls, kw in ((GPT, {"dropout": 0.1}), (BERT, {})):
        torch.manual_seed(0)
        straight = cls(**TINY, **kw)
        ckpt = ModelCheckpoint(
            dirpath=tmp_path / cls.__name__,
            filename="step{step}",
            every_n_train_steps=5,
            save_top_k=-1,
            auto_insert_metric_name=False,
        )
        trainer(tmp_path, max_steps=12, limit_val_batches=0, enable_checkpointing=True, callbacks=[ckpt]).fit(
            straight, datamodule=data(tmp_path, sentences=5)
        )
        batches = len(data(tmp_path, sentences=5).train_dataloader())
        assert 5 < batches < 12
        assert 5 % batches != 0
        torch.manual_seed(1)  # a different init: everything must come from the checkpoint
        resumed = cls(**TINY, **kw)
        t2 = trainer(tmp_path, max_steps=12, limit_val_batches=0)
        t2.fit(
            resumed,
            datamodule=data(tmp_path, sentences=5),
            ckpt_path=tmp_path / cls.__name__ / "step5.ckpt",
            weights_only=True,
        )
        assert t2.global_step == 12
        for k, v in straight.state_dict().items():
            torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
        assert resumed.tokenizer == straight.tokenizer


@pytest.mark.parametrize("cls", [GPT, BERT, T5])
def test_compile_switch_compiles_the_training_forward(cls, tmp_path):
    """``performance.compile`` compiles the backbone's forward, which every training step goes through."""
    from lightning_ssl.callbacks.performance import Performance

    torch.manual_seed(0)
    model = cls(**TINY)
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    trainer(
        tmp_path, max_steps=1, limit_val_batches=0, callbacks=[Performance(compile=True, compile_backend="eager")]
    ).fit(model, data(tmp_path, sentences=5))
    assert calls
    assert model.backbone._compiled_call_impl is not None
