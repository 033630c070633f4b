import pickle

import pytest
import torch

from lightning_ssl.checkpoint import CheckpointError, load_state_dict_file, safe_load


class Evil:
    def __reduce__(self):
        return (print, ("executed",))


def test_safe_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        safe_load(tmp_path / "nope.ckpt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        safe_load(tmp_path / "empty.ckpt")
    torch.save({"w": torch.randn(100, 100)}, tmp_path / "ok.ckpt")
    data = (tmp_path / "ok.ckpt").read_bytes()
    (tmp_path / "trunc.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        safe_load(tmp_path / "trunc.ckpt")
    torch.save({"w": torch.zeros(1), "obj": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refusing to execute"):
        safe_load(tmp_path / "evil.ckpt")
    with open(tmp_path / "raw.pkl", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(CheckpointError):
        safe_load(tmp_path / "raw.pkl")


def test_load_state_dict_file_unwraps(tmp_path):
    sd = {"a": torch.ones(2)}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "x.ckpt")
    assert load_state_dict_file(tmp_path / "x.ckpt").keys() == {"a"}
    torch.save({"epoch": 3}, tmp_path / "y.ckpt")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_state_dict_file(tmp_path / "y.ckpt")
