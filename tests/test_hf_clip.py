"""A full pretrained Hugging Face CLIP (both towers, projections, logit scale) from a local folder: zero-shot,
text-to-image search, and fine-tuning with lightning_ssl's CLIP starting exactly from it. The CLIP is tiny and
made here (save_pretrained), with the WordPiece tokenizer of the packaged MiniLM as its tokenizer."""

import pytest
import torch

from lightning_ssl.methods import CLIP
from lightning_ssl.metrics import ImageIndex, index_images, zero_shot_classify
from lightning_ssl.modules.backbones import resolve_weights
from lightning_ssl.modules.pretrained import HFCLIP, HFTextEncoder, HFVisionBackbone


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    tok = AutoTokenizer.from_pretrained(resolve_weights("packaged:all-MiniLM-L6-v2"))
    text = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=tok.vocab_size,
        max_position_embeddings=32,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )
    vision = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=4
    )
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    path = tmp_path_factory.mktemp("clip") / "tiny_clip"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_hf_clip_zero_shot_and_search(tiny_clip):
    clip = HFCLIP(tiny_clip, image_size=16).eval()
    images = torch.randn(6, 3, 16, 16)
    probs = zero_shot_classify(clip, images, ["dog", "cat", "red car"])
    assert probs.shape == (6, 3)
    assert torch.allclose(probs.sum(1), torch.ones(6))
    index = index_images(clip, images, ids=[f"img{i}" for i in range(6)])
    scores, ids = index.search("a photo of a dog", k=3)
    assert scores.shape == (3,)
    assert len(ids) == 3
    assert set(ids) <= set(index.ids)
    assert (scores[:-1] >= scores[1:]).all()  # best first
    with torch.no_grad():  # the search scores are the cosine similarities of the two towers' projections
        want = clip.encode_text(["a photo of a dog"]) @ clip.encode_image(images).T
    assert scores[0] == pytest.approx(want.max().item(), abs=1e-5)
    float(clip.logit_scale)  # the pretrained temperature, clamped at 100


def test_index_save_load(tiny_clip, tmp_path):
    clip = HFCLIP(tiny_clip, image_size=16).eval()
    index = index_images(clip, [torch.randn(4, 3, 16, 16), torch.randn(2, 3, 16, 16)])
    again = ImageIndex.load(clip, index.save(tmp_path / "index.pt"))
    assert len(again) == 6
    assert torch.equal(again.embeddings, index.embeddings)


def test_our_clip_starts_as_the_pretrained_one_and_fine_tunes(tiny_clip):
    hf = HFCLIP(tiny_clip, image_size=16).eval()
    ours = CLIP(
        HFVisionBackbone(tiny_clip, pooling="pooler", image_size=16),
        HFTextEncoder(tiny_clip, pooling="pooler"),
        embed_dim=8,
        projections_from=tiny_clip,
        local_loss=False,
    ).eval()
    images, texts = torch.randn(4, 3, 16, 16), ["a dog", "a cat", "two birds", "a red car"]
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), hf.encode_image(images))
        torch.testing.assert_close(ours.encode_text(texts), hf.encode_text(texts))
    assert float(ours.logit_scale) == pytest.approx(float(hf.logit_scale))
    ours.train()
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    before = ours.image_proj.weight.detach().clone()
    loss = ours.training_step((images, torch.zeros(4, dtype=torch.long), texts), 0)["loss"]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, ours.image_proj.weight)
    with pytest.raises(ValueError, match="projection_dim"):
        CLIP(
            HFVisionBackbone(tiny_clip, pooling="pooler", image_size=16),
            HFTextEncoder(tiny_clip, pooling="pooler"),
            embed_dim=12,
            projections_from=tiny_clip,
        )
