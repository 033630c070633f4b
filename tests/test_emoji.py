import torch

from lightning_ssl.data.emoji import EmojiDataModule, load_emoji, read_emoji_list, render_emoji, stratified_split


def test_emoji_list_and_rendering():
    items = read_emoji_list()
    assert len(items) > 1500
    assert {"char", "name", "group", "subgroup"} <= set(items[0])
    assert items[0]["name"] == "grinning face"
    assert items[0]["group"] == "Smileys & Emotion"
    assert not any("skin tone" in e["name"] for e in items)
    assert len(read_emoji_list(variants=True)) > len(items)
    img = render_emoji("\U0001f436", 32)  # dog face
    assert img.shape == (3, 32, 32)
    assert img.dtype == torch.uint8
    assert img.float().std() > 20  # a picture, not a blank square


def test_load_emoji_caches(tmp_path):
    a = load_emoji(str(tmp_path), 16)
    assert (tmp_path / "emoji" / "emoji_16.pt").exists()
    b = load_emoji(str(tmp_path), 16)
    assert torch.equal(a["images"], b["images"])
    assert a["names"] == b["names"]
    assert a["images"].shape[1:] == (3, 16, 16)
    assert len(a["names"]) == len(a["groups"]) == len(a["images"])


def test_stratified_split_and_datamodule(tmp_path):
    y = torch.tensor([0] * 10 + [1] * 5 + [2])
    test = stratified_split(y, 0.2, 0)
    assert test[:10].sum() == 2
    assert test[10:15].sum() == 1
    assert test[15] == 0
    dm = EmojiDataModule(root=str(tmp_path), image_size=16, batch_size=8, num_workers=0)
    dm.native_size = 16
    dm.setup("fit")
    assert dm.num_classes == 9
    assert len(dm.class_names) == 9
    assert len(dm.val_set) + len(dm.bank_set) == len(load_emoji(str(tmp_path), 16)["names"])
    views, _labels = next(iter(dm.train_dataloader()))
    assert views[0].shape == (8, 3, 16, 16)
