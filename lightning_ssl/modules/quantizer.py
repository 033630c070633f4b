"""Vector quantization with an EMA codebook, as used by visual tokenizers, with two codebook updates:
``ema`` (the default), the classic VQ-VAE EMA of cluster counts and sums (van den Oord et al., 2017, app. A.1;
Razavi et al., 2019, VQ-VAE-2), and ``norm_ema``, BEiT v2's (Peng et al., 2022; microsoft/unilm
beit2/norm_ema_quantizer.py), which moves each code used by the batch towards the normalized mean of its vectors.

For encoder outputs z (M, D) and a codebook e (K, D):
    k_i   = argmin_k ||z_i - e_k||           (with ``cosine``: z and e l2-normalised, k_i = argmax_k <z_i, e_k>)
    z_q_i = e_{k_i};  straight-through: the decoder sees z_q, the gradient flows to z unchanged
    loss  = beta * ||z - sg(z_q)||^2          (commitment; the codebook gets no gradient)
While training, the codebook follows exponential moving averages of its clusters (decay gamma):
    N_k <- gamma N_k + (1 - gamma) n_k,      n_k = #{i : k_i = k}
    ema:       m_k <- gamma m_k + (1 - gamma) sum_{i : k_i = k} z_i
               e_k  = m_k / N~_k   (N~: Laplace-smoothed N),  l2-normalised with ``cosine``
    norm_ema:  e_k <- normalize(gamma e_k + (1 - gamma) normalize(mean_{i : k_i = k} z_i))   for codes with n_k > 0
               (the others keep their code; needs ``cosine``)
The two differ in what a code remembers: ``ema`` the count-weighted history of its cluster (a code that won many
vectors long ago moves slowly), ``norm_ema`` only the direction of recent batches' means, one step of size
1 - gamma per batch that uses it, whatever the counts.
Under DDP n_k and the sums are all-reduced, so every process holds the codebook one process would compute with
the whole global batch. Also:
- **k-means initialisation** (BEiT v2): the first training batch (gathered from all processes) is clustered
  (``kmeans_iters`` Lloyd iterations, spherical with ``cosine``) and the centroids become the codebook;
- **dead-code restart** (Dhariwal et al., 2020, Jukebox): a code whose EMA count N_k falls below
  ``dead_threshold``, or that no vector of the last ``dead_steps`` global batches picked, is moved onto a random
  encoder output of the current global batch. (The EMA count alone reacts slowly: after k-means init every code
  holds ~M/K vectors, and an abandoned code needs ln(M/K) / (1 - decay) steps to fall below 1 - an epoch here -
  while the encoder moves fast early on and a few codes take everything.)
The random draws (k-means seeds, restart picks) come from a generator seeded by (``seed``, update count), the
same on every process, so runs are reproducible, resume exactly and stay identical across processes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ssl.modules.distributed import gather, is_distributed


class Quantized(NamedTuple):
    z_q: Tensor  # (..., D) quantized vectors, straight-through towards z
    indices: Tensor  # (...,) code ids
    loss: Tensor  # () commitment loss
    counts: Tensor  # (K,) how often each code was picked (the global batch while the codebook updates)


def codebook_usage(counts: Tensor) -> tuple[float, float]:
    """(fraction of codes used at least once, perplexity exp(H(p)) of the code frequencies p = counts / sum)."""
    counts = counts.double()
    total = counts.sum()
    if total == 0:
        return 0.0, 0.0
    p = counts[counts > 0] / total
    return (counts > 0).double().mean().item(), torch.exp(-(p * p.log()).sum()).item()


def _nearest(z: Tensor, codebook: Tensor, cosine: bool, chunk: int = 16384) -> Tensor:
    """Index of the nearest code for each row of z (M, D), in chunks of rows to bound memory."""
    out = []
    sq = None if cosine else codebook.pow(2).sum(1)
    for part in z.split(chunk):
        scores = part @ codebook.t()  # (m, K)
        if not cosine:  # -||z - e||^2 up to the constant ||z||^2
            scores = 2 * scores - sq
        out.append(scores.argmax(1))
    return torch.cat(out) if out else z.new_zeros(0, dtype=torch.long)


def kmeans(
    x: Tensor, k: int, iters: int = 10, cosine: bool = False, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on x (M, D): (centroids (k, D), cluster sizes (k,)). Seeds: k distinct rows of x (drawn with
    replacement when M < k). A cluster that empties keeps its previous centroid. ``cosine``: spherical k-means
    (rows and centroids on the unit sphere)."""
    m = x.shape[0]
    pick = torch.randperm(m, generator=generator)[:k] if m >= k else torch.randint(0, m, (k,), generator=generator)
    centroids = x[pick.to(x.device)].clone()
    counts = torch.zeros(k, device=x.device)
    for _ in range(max(1, iters)):
        assign = _nearest(x, centroids, cosine)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        new = sums / counts.clamp(min=1).unsqueeze(1)
        if cosine:
            new = F.normalize(new, dim=1)
        centroids = torch.where((counts > 0).unsqueeze(1), new, centroids)
    return centroids, counts


def _all_reduce(x: Tensor) -> Tensor:
    if is_distributed():
        dist.all_reduce(x)
    return x


class VectorQuantizer(nn.Module):
    """EMA vector quantizer (see the module docstring). ``forward(z, update=None)``: z (..., D) -> ``Quantized``;
    the codebook is updated when ``update`` (default: in training mode).

    Args:
        num_codes: Vocabulary size K of the codebook, >= 2 (8192 in BEiT v2).
        code_dim: Width D of a code (32 in BEiT v2).
        decay: EMA decay of the codebook statistics, in [0, 1) (0.99 in BEiT v2).
        commitment: Weight beta of the commitment loss (0.25 in VQ-VAE; 1.0 in BEiT v2).
        cosine: L2-normalize codes and inputs (cosine-similarity lookup, as BEiT v2).
        kmeans_init: Initialize the codebook by k-means on the first batch seen in training.
        kmeans_iters: Lloyd iterations of that k-means.
        kmeans_samples: Rows drawn for the k-means (None: all of the first batch's).
        dead_threshold: A code whose EMA count per step falls below this is dead.
        restart: Restart dead codes from random inputs of the current batch.
        dead_steps: Steps a code may go unused before it is restarted.
        eps: Laplace smoothing of the EMA counts.
        seed: Seed of the k-means and the restarts (the same on every process).
        update_rule: The codebook update: ``ema`` (VQ-VAE's EMA of counts and sums) or ``norm_ema`` (BEiT v2's
            normalize(gamma * code + (1 - gamma) * normalize(mean of its vectors)); needs ``cosine``).
    """

    # buffers: the EMA state, in the checkpoint
    codebook: Tensor  # (K, D)
    cluster_size: Tensor  # (K,) EMA count of each code
    embed_sum: Tensor  # (K, D) EMA sum of the vectors assigned to each code
    initialized: Tensor  # () bool: the k-means initialization is done
    updates: Tensor  # () codebook updates so far
    last_used: Tensor  # (K,) the update that last picked each code
    restarted: Tensor  # () codes restarted so far

    def __init__(
        self,
        num_codes: int = 8192,
        code_dim: int = 32,
        decay: float = 0.99,
        commitment: float = 0.25,
        cosine: bool = True,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        kmeans_samples: int | None = 65536,
        dead_threshold: float = 1.0,
        restart: bool = True,
        dead_steps: int = 10,
        eps: float = 1e-5,
        seed: int = 0,
        update_rule: str = "ema",
    ) -> None:
        super().__init__()
        if update_rule not in ("ema", "norm_ema"):
            raise ValueError(f"update_rule must be 'ema' (VQ-VAE) or 'norm_ema' (BEiT v2), got {update_rule!r}")
        if update_rule == "norm_ema" and not cosine:
            raise ValueError("update_rule 'norm_ema' keeps codes on the unit sphere: it needs cosine=True")
        if num_codes < 2:
            raise ValueError(f"num_codes must be >= 2, got {num_codes}")
        if code_dim < 1:
            raise ValueError(f"code_dim must be >= 1, got {code_dim}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        if commitment < 0:
            raise ValueError(f"commitment (beta) must be >= 0, got {commitment}")
        if dead_threshold < 0:
            raise ValueError(f"dead_threshold must be >= 0, got {dead_threshold}")
        if dead_steps < 1:
            raise ValueError(f"dead_steps must be >= 1, got {dead_steps}")
        if kmeans_samples is not None and kmeans_samples < num_codes:
            raise ValueError(f"kmeans_samples ({kmeans_samples}) must be >= num_codes ({num_codes}) or None")
        self.num_codes, self.code_dim, self.decay, self.commitment = num_codes, code_dim, decay, commitment
        self.cosine, self.kmeans_init, self.kmeans_iters = cosine, kmeans_init, kmeans_iters
        self.kmeans_samples = kmeans_samples
        self.dead_threshold, self.restart, self.dead_steps = dead_threshold, restart, dead_steps
        self.eps, self.seed, self.update_rule = eps, seed, update_rule
        codebook = torch.randn(num_codes, code_dim, generator=torch.Generator().manual_seed(seed))
        if cosine:
            codebook = F.normalize(codebook, dim=1)
        # the EMA state is in the checkpoint (buffers): a resumed run continues it exactly
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_sum", codebook.clone())
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_used", torch.zeros(num_codes, dtype=torch.long))  # update that last picked it
        self.register_buffer("restarted", torch.zeros((), dtype=torch.long))  # codes restarted so far

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.updates))

    def dead_codes(self) -> Tensor:
        """(K,) bool: codes whose EMA count is below ``dead_threshold`` or unused for ``dead_steps`` updates."""
        return (self.cluster_size < self.dead_threshold) | (self.updates - self.last_used >= self.dead_steps)

    def forward(self, z: Tensor, update: bool | None = None) -> Quantized:
        update = self.training if update is None else update
        shape = z.shape
        if shape[-1] != self.code_dim:
            raise ValueError(f"the quantizer takes {self.code_dim}-d vectors, got shape {tuple(shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):  # distances and EMA sums in float32
            z = z.float()
            if self.cosine:
                z = F.normalize(z, dim=-1)
            flat = z.reshape(-1, self.code_dim)
            if update and not bool(self.initialized):
                self._kmeans_init(flat.detach())
            indices = _nearest(flat.detach(), self.codebook, self.cosine)
            z_q = self.codebook[indices]
            counts = torch.bincount(indices, minlength=self.num_codes).float()
            if update:
                counts = self._update(flat.detach(), indices, counts)
            loss = self.commitment * F.mse_loss(flat, z_q.detach())
            z_q = flat + (z_q - flat).detach()
        return Quantized(z_q.view(shape), indices.view(shape[:-1]), loss, counts)

    @torch.no_grad()
    def _kmeans_init(self, flat: Tensor) -> None:
        everything = gather(flat.contiguous(), with_grad=False)  # the global batch, rank order
        g = self._generator()
        sample = everything
        if self.kmeans_samples is not None and len(everything) > self.kmeans_samples:
            sample = everything[torch.randperm(len(everything), generator=g)[: self.kmeans_samples].to(flat.device)]
        centroids, counts = kmeans(sample, self.num_codes, self.kmeans_iters, self.cosine, g)
        counts = counts * (len(everything) / len(sample))  # per-step counts of the global batch
        if is_distributed():  # identical inputs give identical centroids; rank 0's copy settles any doubt
            dist.broadcast(centroids, 0)
            dist.broadcast(counts, 0)
        self.codebook.copy_(centroids)
        self.cluster_size.copy_(counts)
        self.embed_sum.copy_(centroids * counts.unsqueeze(1))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, flat: Tensor, indices: Tensor, counts: Tensor) -> Tensor:
        sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, flat)
        counts, sums = _all_reduce(counts), _all_reduce(sums)  # statistics of the global batch
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.update_rule == "norm_ema":  # BEiT v2: used codes step towards their batch mean's direction
            used = counts > 0
            mean = F.normalize(sums[used] / counts[used].unsqueeze(1), dim=1)
            self.codebook[used] = F.normalize(self.decay * self.codebook[used] + (1 - self.decay) * mean, dim=1)
            self.embed_sum.copy_(self.codebook * self.cluster_size.unsqueeze(1))
        else:
            self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
            codebook = self.embed_sum / smoothed.unsqueeze(1)
            self.codebook.copy_(F.normalize(codebook, dim=1) if self.cosine else codebook)
        self.updates += 1
        self.last_used[counts > 0] = self.updates
        if self.restart:
            self._restart_dead(flat)
        return counts

    @torch.no_grad()
    def _restart_dead(self, flat: Tensor) -> None:
        dead = self.dead_codes().nonzero().squeeze(1)
        if len(dead) == 0:
            return
        # pick rows of the global batch with a generator every process shares; each process fills in the rows it
        # holds and a sum gives everyone the same new codes, without gathering the batch
        local = torch.tensor([len(flat)], device=flat.device)
        sizes = gather(local, with_grad=False) if is_distributed() else local
        offset = int(sizes[: dist.get_rank()].sum()) if is_distributed() else 0
        picks = torch.randint(0, int(sizes.sum()), (len(dead),), generator=self._generator()).to(flat.device)
        mine = (picks >= offset) & (picks < offset + len(flat))
        new = torch.zeros(len(dead), self.code_dim, device=flat.device)
        new[mine] = flat[picks[mine] - offset]
        new = _all_reduce(new)
        self.codebook[dead] = F.normalize(new, dim=1) if self.cosine else new
        self.cluster_size[dead] = max(self.dead_threshold, 1.0)
        self.embed_sum[dead] = self.codebook[dead] * max(self.dead_threshold, 1.0)
        self.last_used[dead] = self.updates
        self.restarted += len(dead)
