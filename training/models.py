"""Autoencoders for anomaly detection: an MLP over a flattened window, LSTM and GRU seq2seq.

Every model maps a normalised window ``x`` of shape (B, W, C) to its reconstruction of the
same shape, so the runtime scorer treats them alike. Shapes are noted in comments.
"""

from __future__ import annotations

import torch
from torch import nn

from training.family import ARCHS, AEConfig  # noqa: F401 - re-exported


class MlpAE(nn.Module):
    """Flattened window (B, W*C) -> hidden layers -> latent -> hidden layers -> (B, W, C)."""

    def __init__(self, window: int, channels: int, cfg: AEConfig) -> None:
        super().__init__()
        self.window, self.channels = window, channels
        size = window * channels

        def stack(first: int, last: int) -> list[nn.Module]:
            mods: list[nn.Module] = []
            width = first
            for _ in range(cfg.layers):
                mods += [nn.Linear(width, cfg.hidden), nn.GELU()]
                if cfg.dropout:
                    mods.append(nn.Dropout(cfg.dropout))
                width = cfg.hidden
            mods.append(nn.Linear(width, last))
            return mods

        self.encoder = nn.Sequential(*stack(size, cfg.latent))
        self.decoder = nn.Sequential(*stack(cfg.latent, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], self.window * self.channels)   # (B, W*C)
        code = self.encoder(flat)                                    # (B, latent)
        return self.decoder(code).reshape(x.shape[0], self.window, self.channels)


class SeqAE(nn.Module):
    """Encoder RNN over the window -> latent -> repeated per step -> decoder RNN -> (B, W, C)."""

    def __init__(self, window: int, channels: int, cfg: AEConfig) -> None:
        super().__init__()
        rnn = nn.LSTM if cfg.arch == 'lstm' else nn.GRU
        drop = cfg.dropout if cfg.layers > 1 else 0.0
        self.window, self.channels = window, channels
        self.is_lstm = cfg.arch == 'lstm'
        self.encoder = rnn(channels, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                           dropout=drop)
        self.to_code = nn.Linear(cfg.hidden, cfg.latent)
        self.from_code = nn.Linear(cfg.latent, cfg.hidden)
        self.decoder = rnn(cfg.hidden, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                           dropout=drop)
        self.out = nn.Linear(cfg.hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, state = self.encoder(x)                                   # (L, B, H)
        last = state[0][-1] if self.is_lstm else state[-1]           # (B, H)
        code = self.to_code(last)                                    # (B, latent)
        steps = self.from_code(code).unsqueeze(1).expand(-1, x.shape[1], -1)  # (B, W, H)
        y, _ = self.decoder(steps)                                   # (B, W, H)
        return self.out(y)                                           # (B, W, C)


def build_model(cfg: AEConfig, window: int, channels: int) -> nn.Module:
    """The autoencoder of ``cfg`` for windows of ``window`` samples and ``channels`` channels."""
    if cfg.arch == 'mlp':
        return MlpAE(window, channels, cfg)
    return SeqAE(window, channels, cfg)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))
