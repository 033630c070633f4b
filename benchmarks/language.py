"""Language models on Shakespeare, side by side in one run: our GPT against litgpt's and Hugging Face's, and what
GPT, BERT and T5 learn in a short run.

    python -m lightning_ssl.data.fetch shakespeare                  # once
    .venv/bin/pip install --no-deps litgpt==0.5.13                  # optional peer, see requirements/bench.txt
    scripts/with_jemalloc.sh .venv/bin/python benchmarks/language.py [--steps 100] [--rounds 3] [--parts peers quality]

**peers**: one GPT shape (layers, heads, width, context, vocabulary), the same byte-level BPE tokenizer, the same
batches in the same order, AdamW (weight decay on >= 2-D weights) with the same warmup + cosine schedule, the same
precision and number of steps, trained by:
  * lightning-ssl ``GPT`` through the Lightning Trainer with the callbacks ``lightning-ssl fit`` always adds;
  * the same network (``GPTNet``) in a plain PyTorch loop: what the Trainer and the callbacks cost;
  * Hugging Face ``GPT2LMHeadModel`` built from a ``GPT2Config`` of the same shape (GPT-2's architecture, as ours:
    learned positions, tied output layer, GELU MLP, pre-norm), in the same plain loop;
  * litgpt's ``GPT`` (Lightning's LLM library) with a GPT-2-like config (LayerNorm, GELU MLP, biases; litgpt has
    rotary position embeddings and an untied output layer), its own pretraining initialisation, the same loop.
Tokens/s counts training tokens from step ``--warmup`` on; runs alternate within each round; the table gives the
median over rounds and the ratio to lightning-ssl. Validation loss: next-token cross-entropy on the held-out works.

**quality**: GPT validation perplexity against a unigram model of the training tokens, and a sample; BERT
masked-token accuracy (fixed masks) from scratch and from all-MiniLM-L6-v2 (same MiniLM WordPiece tokenizer, same
steps); T5 span-token accuracy (teacher-forced tokens of the corrupted spans, sentinels excluded), and a fill-in.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import types

import lightning as L
import torch
import torch.nn.functional as F
from timing import StepTimer

from lightning_ssl.callbacks import CollapseMonitor, KNNMonitor, NonFiniteGuard, OnlineLinearProbe
from lightning_ssl.data import TextCorpusDataModule
from lightning_ssl.methods import BERT, GPT, T5
from lightning_ssl.methods.gpt import GPTNet
from lightning_ssl.optim import WarmupCosineLR, param_groups
from lightning_ssl.precision import describe_machine, resolve_precision


def corpus(a, **kw) -> TextCorpusDataModule:
    dm = TextCorpusDataModule(**{"source": "shakespeare", "root": a.root, "batch_size": a.batch_size, **kw})
    dm.setup()
    dm.tokens("train"), dm.tokens("val")
    return dm


def adamw(params):
    return torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)


def trainer(a, steps: int, callbacks=(), **kw) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        default_root_dir=a.out,
        precision=a.precision,
        accelerator="cpu" if a.cpu else "auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[*callbacks, OnlineLinearProbe(), CollapseMonitor(), NonFiniteGuard(), KNNMonitor()],
        **kw,
    )


@torch.no_grad()
def val_loss(forward, dm, a, device) -> float:
    """Mean next-token cross-entropy over the validation rows (at most --val_batches batches)."""
    total, count = 0.0, 0
    for i, rows in enumerate(dm.val_dataloader()[0]):
        if i == a.val_batches:
            break
        rows = rows.to(device)
        with autocast(a, device):
            logits = forward(rows[:, :-1])
        total += F.cross_entropy(logits.float().flatten(0, 1), rows[:, 1:].flatten(), reduction="sum").item()
        count += rows[:, 1:].numel()
    return total / count


def autocast(a, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in str(a.precision))


# -- peers ---------------------------------------------------------------------------------------------------------
def shape(a, vocab):
    return dict(vocab_size=vocab, block_size=a.block_size, n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd)


def run_ours(a, dm, vocab):
    torch.manual_seed(0)
    model = GPT(**shape(a, vocab), dropout=0.0, optimizer=adamw, scheduler=WarmupCosineLR)
    timer = StepTimer(a.warmup, count=lambda batch: batch[:, :-1].numel())
    trainer(a, a.steps, [timer], limit_val_batches=0).fit(model, datamodule=dm)
    return model, timer.rate, val_loss(model.backbone, dm, a, model.device)


def plain_loop(a, dm, model, forward):
    """The loop a user writes by hand: the same batches, optimizer groups, schedule and precision."""
    device = torch.device("cuda" if torch.cuda.is_available() and not a.cpu else "cpu")
    model.to(device).train()
    opt = adamw(param_groups(model))
    sched = WarmupCosineLR(opt, total_steps=a.steps)
    dl = dm.train_dataloader()
    tokens, t0 = 0, 0.0
    for step, rows in enumerate(dl):
        if step == a.steps:
            break
        if step == a.warmup:
            t0 = time.perf_counter()
        rows = rows.to(device, non_blocking=True)
        with autocast(a, device):
            logits = forward(rows[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), rows[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= a.warmup:
            tokens += rows[:, :-1].numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    speed = tokens / (time.perf_counter() - t0)
    model.eval()
    return speed, val_loss(forward, dm, a, device)


def build_peer(name: str, a, vocab, eos: int = 0):
    torch.manual_seed(0)
    if name == "plain":
        net = GPTNet(**shape(a, vocab), dropout=0.0)
        return net, net
    if name == "hf":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(
            vocab_size=vocab,
            n_positions=a.block_size,
            n_embd=a.n_embd,
            n_layer=a.n_layer,
            n_head=a.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=eos,
            eos_token_id=eos,
        )
        net = GPT2LMHeadModel(cfg)  # scaled_dot_product_attention, as ours
        return net, lambda idx: net(input_ids=idx).logits
    if name == "litgpt":
        from litgpt.config import Config
        from litgpt.model import GPT as LitGPT
        from litgpt.pretrain import initialize_weights

        cfg = Config(
            block_size=a.block_size,
            vocab_size=vocab,
            padded_vocab_size=vocab,
            n_layer=a.n_layer,
            n_head=a.n_head,
            n_embd=a.n_embd,
            bias=True,
            norm_class_name="LayerNorm",
            mlp_class_name="GptNeoxMLP",
            intermediate_size=4 * a.n_embd,
            parallel_residual=False,
            rotary_percentage=1.0,
        )
        net = LitGPT(cfg)
        initialize_weights(types.SimpleNamespace(strategy=None), net, a.n_layer, a.n_embd)
        return net, net
    raise ValueError(name)


def litgpt_available() -> bool:
    try:
        import litgpt.model  # noqa: F401

        return True
    except ImportError:
        return False


def peers(a):
    dm = corpus(a, tokenizer="bpe", vocab_size=a.vocab_size, block_size=a.block_size)
    vocab = dm.tokenizer.vocab_size
    names = ["ours", "plain", "hf"] + (["litgpt"] if litgpt_available() else [])
    speed = {n: [] for n in names}
    loss, params, model = {}, {}, None
    for r in range(a.rounds):
        for name in names:
            if name == "ours":
                model, s, v = run_ours(a, dm, vocab)
                params[name] = sum(p.numel() for p in model.parameters())
            else:
                net, forward = build_peer(name, a, vocab, dm.tokenizer.eos_id)
                params[name] = sum(p.numel() for p in net.parameters())
                s, v = plain_loop(a, dm, net, forward)
            speed[name].append(s)
            loss[name] = v
            print(f"round {r + 1}: {name}: {s:.0f} tokens/s, val loss {v:.4f}", flush=True)
    label = {
        "ours": "lightning-ssl GPT (Trainer + callbacks)",
        "plain": "lightning-ssl GPTNet, plain PyTorch loop",
        "hf": "Hugging Face GPT2LMHeadModel, plain loop",
        "litgpt": "litgpt GPT, plain loop",
    }
    ref = statistics.median(speed["ours"])
    print(f"\n{describe_machine(a.precision)}")
    print(
        f"Shakespeare, byte-level BPE {vocab} tokens, GPT {a.n_layer} layers x {a.n_embd} wide x {a.n_head} heads, "
        f"context {a.block_size}, batch {a.batch_size}, {a.steps} steps ({a.warmup} warm-up), AdamW lr 1e-3 + "
        f"warmup/cosine, median of {a.rounds} alternating round(s); "
        f"val loss on {a.val_batches} batches of held-out works\n"
    )
    print(
        "| implementation | parameters | tokens/s | ratio to lightning-ssl | val loss | val ppl |"
        "\n|---|---|---|---|---|---|"
    )
    for n in names:
        m = statistics.median(speed[n])
        print(
            f"| {label[n]} | {params[n] / 1e6:.2f}M | "
            f"{m:.0f} | {m / ref:.2f} | {loss[n]:.3f} | {math.exp(loss[n]):.1f} |"
        )
    if not litgpt_available():
        print("(litgpt not installed: pip install --no-deps litgpt==0.5.13 adds its row)")
    return dm, model


# -- quality -------------------------------------------------------------------------------------------------------
def unigram_loss(dm) -> float:
    """Cross-entropy of the validation tokens under the training tokens' unigram distribution (add-one)."""
    counts = torch.bincount(dm.tokens("train").long(), minlength=dm.tokenizer.vocab_size).double() + 1
    logp = (counts / counts.sum()).log()
    return -logp[dm.tokens("val").long()].mean().item()


def quality(a, gpt_dm=None, gpt=None):
    rows = []
    if gpt is None:
        gpt_dm = corpus(a, tokenizer="bpe", vocab_size=a.vocab_size, block_size=a.block_size)
        gpt, _, _ = run_ours(a, gpt_dm, gpt_dm.tokenizer.vocab_size)
    v = val_loss(gpt.backbone, gpt_dm, types.SimpleNamespace(**{**vars(a), "val_batches": -1}), gpt.device)
    u = unigram_loss(gpt_dm)
    rows.append(
        (
            "GPT",
            f"{a.steps} steps",
            f"val perplexity {math.exp(v):.1f} (loss {v:.3f})",
            f"unigram baseline {math.exp(u):.1f} (loss {u:.3f})",
        )
    )
    sample = gpt.complete(
        "ROMEO.\n",
        a.sample_tokens,
        temperature=0.8,
        top_k=50,
        generator=torch.Generator(device=gpt.device).manual_seed(0),
    )

    bert_dm = corpus(a, tokenizer="packaged:all-MiniLM-L6-v2", block_size=a.bert_block_size)
    for name, kw in (
        (
            "scratch",
            dict(n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, vocab_size=30522, block_size=a.bert_block_size),
        ),
        ("all-MiniLM-L6-v2", dict(pretrained="packaged:all-MiniLM-L6-v2")),
    ):
        for steps in (0, a.bert_steps) if name != "scratch" else (a.bert_steps,):
            torch.manual_seed(0)
            model = BERT(**kw, dropout=0.1, optimizer=lambda p: torch.optim.AdamW(p, lr=a.bert_lr, weight_decay=0.01))
            t = trainer(a, steps, limit_val_batches=a.val_batches)
            if steps:
                t.fit(model, datamodule=bert_dm)
            acc = t.validate(model, datamodule=bert_dm, verbose=False)[0]["val/accuracy"]
            rows.append(
                (
                    f"BERT, {name}",
                    f"{steps} steps",
                    f"masked-token accuracy {100 * acc:.1f}%",
                    "MLM head fresh" if name != "scratch" and steps == 0 else "",
                )
            )

    t5_dm = corpus(a, tokenizer="bpe", vocab_size=a.vocab_size, sentinels=100, block_size=a.t5_block_size)
    torch.manual_seed(0)
    t5 = T5(
        vocab_size=t5_dm.tokenizer.vocab_size,
        block_size=a.t5_block_size,
        n_layer=a.n_layer,
        n_decoder_layer=a.n_layer,
        n_head=a.n_head,
        n_embd=a.n_embd,
    )
    t = trainer(a, a.steps, limit_val_batches=a.val_batches)
    t.fit(t5, datamodule=t5_dm)
    acc = t.validate(t5, datamodule=t5_dm, verbose=False)[0]["val/accuracy"]
    rows.append(
        (
            "T5",
            f"{a.steps} steps",
            f"span-token accuracy {100 * acc:.1f}%",
            f"inputs {t5.input_length}, targets {t5.target_length} tokens",
        )
    )
    fill = t5.complete("O Romeo, Romeo! <extra_id_0> art thou Romeo?", 16, temperature=0)

    print(f"\n{describe_machine(a.precision)}\n")
    print("| model | training | result | reference |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\nGPT sample (prompt 'ROMEO.\\n', temperature 0.8, top-k 50):\n{sample}")
    print(f"\nT5 fill-in of 'O Romeo, Romeo! <extra_id_0> art thou Romeo?' (greedy): {fill!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["peers", "quality"], choices=["peers", "quality"])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--vocab_size", type=int, default=2048)
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--val_batches", type=int, default=40)
    p.add_argument("--bert_steps", type=int, default=100)
    p.add_argument("--bert_block_size", type=int, default=64)
    p.add_argument("--bert_lr", type=float, default=3e-4)
    p.add_argument("--t5_block_size", type=int, default=compute_default_t5_block())
    p.add_argument("--sample_tokens", type=int, default=80)
    p.add_argument("--precision", default="auto")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is present")
    p.add_argument("--root", default="data")
    p.add_argument("--out", default="outputs/language_benchmark", help="run folder (tokenizer.json)")
    a = p.parse_args()
    a.precision = resolve_precision(a.precision, "cpu" if a.cpu else "auto")[0]
    import transformers

    transformers.logging.set_verbosity_error()  # MiniLM's missing MLM head is reported once by lightning-ssl
    dm = model = None
    if "peers" in a.parts:
        dm, model = peers(a)
    if "quality" in a.parts:
        quality(a, dm, model)


def compute_default_t5_block() -> int:
    from lightning_ssl.modules.lm_masking import compute_input_and_target_lengths

    return compute_input_and_target_lengths(128)[0]  # 141 raw tokens -> inputs of 128


if __name__ == "__main__":
    main()
