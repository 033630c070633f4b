"""Multi-node training, for real, on this machine: two torchrun launches, one per "node" (--nnodes 2,
--node_rank 0/1, rendezvous on 127.0.0.1), each with one process, run the same `lightning-ssl fit` of a tiny
SimCLR with --trainer.num_nodes 2. Both ranks must have trained on disjoint halves of each epoch and end with
identical weights (parameters and, with synchronized BatchNorm, the running statistics)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_nodes_one_process_each_see_disjoint_data_and_end_identical(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        textwrap.dedent(f"""
        seed_everything: 3
        model:
          class_path: lightning_ssl.methods.SimCLR
          init_args:
            backbone: {{class_path: lightning_ssl.modules.backbones.SmallCNN, init_args: {{width: 4}}}}
            proj_hidden_dim: 16
            proj_dim: 8
        data:
          class_path: lightning_ssl.data.SyntheticDataModule
          init_args: {{num_samples: 32, num_classes: 32, batch_size: 4, num_workers: 0, image_size: 16,
                      channels: 1, batch_augment: true, val_bank_size: 0}}
        trainer:
          max_epochs: 2
          accelerator: cpu
          devices: 1
          num_nodes: 2
          strategy: ddp
          sync_batchnorm: true
          limit_val_batches: 0
          logger: false
          enable_progress_bar: false
          enable_model_summary: false
          default_root_dir: {tmp_path}
          callbacks:
            - class_path: tests.helpers.RecordSamples
              init_args: {{out_dir: {tmp_path / "record"}}}
        knn: {{every_n_epochs: 0}}
        checkpoint: {{dirpath: {tmp_path / "ckpt"}}}
        """)
    )
    port = free_port()
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    procs = []
    for node in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc_per_node",
            "1",
            "--node_rank",
            str(node),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            "-m",
            "lightning_ssl.cli",
            "fit",
            "--config",
            str(cfg),
        ]
        procs.append(
            subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    try:
        outs = [p.communicate(timeout=400)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for q in procs:
            q.kill()
        raise
    for node, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"node {node} failed:\n{out[-4000:]}"
    wall = time.perf_counter() - t0

    r0, r1 = (torch.load(tmp_path / "record" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert (r0["node_rank"], r1["node_rank"]) == (0, 1)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["num_nodes"] == 2
    # 32 samples, 2 ranks x batch 4: 4 steps per epoch, 2 epochs; labels are the sample indices
    assert len(r0["labels"]) == len(r1["labels"]) == 32
    for epoch in range(2):
        a = set(r0["labels"][16 * epoch : 16 * (epoch + 1)])
        b = set(r1["labels"][16 * epoch : 16 * (epoch + 1)])
        assert len(a) == len(b) == 16, f"epoch {epoch}"
        assert not a & b, f"epoch {epoch}"
        assert a | b == set(range(32)), f"epoch {epoch}"
    assert r0["labels"][:16] != r0["labels"][16:]  # reshuffled for the second epoch
    a, b = r0["state_dict"], r1["state_dict"]
    assert a.keys() == b.keys()
    assert any("running_mean" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k} differs between the nodes: {m}")
    print(f"2-node run: {wall:.1f} s wall")


def test_fsdp_config_builds_its_sharding_strategy():
    """The FSDP config's strategy section instantiates (without a GPU): one FSDP unit and one activation
    checkpoint per transformer block, full sharding, original parameters kept for the frozen/trainable mix."""
    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy, Strategy
    from timm.models.vision_transformer import Block
    from torch.distributed.fsdp import ShardingStrategy

    cfg = yaml.safe_load((ROOT / "configs/mae/imagenet_vit_gigantic_fsdp.yaml").read_text())
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    strategy = parser.instantiate(parser.parse_object({"strategy": cfg["trainer"]["strategy"]})).strategy
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {Block}
    vit = cfg["model"]["init_args"]["backbone"]["init_args"]
    d, depth, hidden = vit["embed_dim"], vit["depth"], int(vit["embed_dim"] * vit["mlp_ratio"])
    assert hidden == 8192
    assert 1.8e9 < depth * (4 * d * d + 2 * d * hidden) < 1.9e9
