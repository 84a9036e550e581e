"""IKT, Inter-task Knowledge Transfer: learnable prototypes + a momentum knowledge bank.

Per episode, M learnable prototypes ``P`` summarise the support frames (``P_hat = softmax(P K^T /
sqrt(C)) V + P``); a bank of G slots accumulated *across training tasks* is searched with each
prototype (cosine, top O = round(kappa G), softmax) and the retrieved knowledge is added
(``P_bar = P_hat + P'``); support frames then cross-attend to ``P_bar`` (with residual).

The bank is a buffer, never a parameter.  ``forward`` never writes it: the trainer calls
``update_bank(P_hat)`` after the step (so DDP can gather every rank's prototypes first), and
``update_bank`` refuses in eval mode, so evaluation cannot leak test classes into the bank.
"""
from __future__ import annotations

import torch
from torch import nn

from hr2g import _dispatch, ops


class IKT(nn.Module):
    def __init__(self, dim: int, n_prototypes: int = 3, bank_size: int = 50, topk: int = 35, momentum: float = 0.99,
                 temperature: float = 1.0, heads: int = 8, on_query: bool = False, backend: str = "torch"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"IKT: dim {dim} is not divisible by ikt_heads={heads}")
        self.topk, self.momentum, self.temperature = topk, momentum, temperature
        self.on_query, self.backend = on_query, backend
        self.prototypes = nn.Parameter(torch.randn(n_prototypes, dim) * dim**-0.5)  # P [M, C]
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.register_buffer("bank", torch.zeros(bank_size, dim))  # M [G, C], fp32 always
        self.register_buffer("bank_filled", torch.zeros((), dtype=torch.long))
        self._filled_seen: tuple | None = None  # (buffer identity and version, value) of the last read of bank_filled

    def task_prototypes(self, fs: torch.Tensor) -> torch.Tensor:
        """``P_hat [E, M, C]`` from the support frames ``fs [E, NS, T, C]``."""
        tokens = fs.flatten(1, 2)  # [E, NS*T, C]: all support frame tokens of the episode
        k, v = self.to_k(tokens), self.to_v(tokens)
        p = self.prototypes.to(tokens.dtype)
        attn = torch.softmax(torch.einsum("mc,enc->emn", p, k) * tokens.shape[-1] ** -0.5, dim=-1)  # [E, M, NS*T]
        return torch.einsum("emn,enc->emc", attn, v) + p

    def _buffer_state(self) -> tuple:
        b = self.bank_filled
        return b.device, b.data_ptr(), b._version  # any write to the buffer (fill_, copy_, load_state_dict) bumps _version

    def filled(self) -> int:
        """``bank_filled`` as an int.  Read from the device only when the buffer changed since the
        last read or update: on CUDA every read is a host sync, and retrieval needs the count in the
        middle of each forward (after the CLIP encoder, which the CPU would wait for)."""
        state = self._buffer_state()
        if self._filled_seen is None or self._filled_seen[0] != state:
            self._filled_seen = (state, int(self.bank_filled))
        return self._filled_seen[1]

    def retrieve(self, p_hat: torch.Tensor) -> torch.Tensor:
        """``P'`` for ``p_hat [E, M, C]``: top-k retrieval from the filled bank slots (zeros when empty)."""
        filled = self.filled()
        if filled == 0:
            return torch.zeros_like(p_hat)
        e, m, c = p_hat.shape
        # bank math in fp32 even under bf16 autocast: cosine top-k on bf16 flips near-ties
        out = ops.bank_retrieve(p_hat.reshape(e * m, c).float(), self.bank, filled, min(self.topk, filled),
                                self.temperature, backend=_dispatch.model_backend("bank_retrieve", self.backend))
        return out.view(e, m, c).to(p_hat.dtype)

    def _refine(self, f: torch.Tensor, p_bar: torch.Tensor) -> torch.Tensor:
        e, n, t, c = f.shape
        tokens = f.reshape(e, n * t, c)
        upd, _ = self.cross(self.norm(tokens), p_bar, p_bar, need_weights=False)
        return f + upd.view(e, n, t, c)

    def forward(self, fs: torch.Tensor, fq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``fs [E, NS, T, C]``, ``fq [E, L, T, C]`` -> (refined fs, fq, ``P_hat [E, M, C]``)."""
        p_hat = self.task_prototypes(fs)
        p_bar = p_hat + self.retrieve(p_hat)
        fs = self._refine(fs, p_bar)
        if self.on_query:
            fq = self._refine(fq, p_bar)
        return fs, fq, p_hat

    @torch.no_grad()
    def update_bank(self, p_hat: torch.Tensor) -> None:
        """Sequential momentum update with ``p_hat [..., C]`` (in the given order).  Training only."""
        if not self.training:
            raise RuntimeError("IKT.update_bank called in eval mode: the knowledge bank is frozen at evaluation")
        protos = p_hat.detach().reshape(-1, p_hat.shape[-1]).float()
        backend = _dispatch.model_backend("bank_update_", self.backend)
        filled = ops.bank_update_(self.bank, self.filled(), protos, self.momentum, backend=backend)
        self.bank_filled.fill_(filled)
        self._filled_seen = (self._buffer_state(), filled)  # known without reading the device back
