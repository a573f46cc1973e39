"""Autoencoders for anomaly detection: MLP, LSTM / GRU seq2seq and 1-D convolutional, each
plain, variational, sparse or contractive (:class:`~training.family.AEConfig`).

Every model maps a normalised window ``x`` of shape (B, W, C) to its reconstruction of the
same shape (``forward``), so the runtime scorer treats them alike. For export,
:meth:`FamilyAE.export_outputs` gives the deterministic path with the code as an extra output:

- plain, sparse, contractive: ``(x_hat (B, W, C), code (B, Z))``;
- variational: ``(x_hat (B, W, C), log_var (B, W, C), code (B, Z))``, the encoder's mean as
  the code and as the decoder's input.

:func:`training_loss` is the training objective of each regulariser and
:func:`validation_loss` the deterministic reconstruction loss used for early stopping; the
training loop calls only these two, whatever the model. Shapes are noted in comments.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.family import ARCHS, AEConfig  # noqa: F401 - re-exported

LOGVAR_BOUND = 7.0
"""Log-variances (decoder and encoder) are bounded softly to +-7 (tanh): sigma in normalised
units stays within [0.03, 33], so a flat channel cannot drive the likelihood to infinity."""
FD_STEP = 1e-2
"""Finite-difference step (normalised units) of the contractive penalty's estimate."""
OUTPUT_NAMES = ('x_hat', 'code')
VAE_OUTPUT_NAMES = ('x_hat', 'log_var', 'code')


class FamilyAE(nn.Module):
    """What every autoencoder of the family shares: encode, decode, the export path.

    Subclasses set ``encoder_out`` / ``decoder_out`` sizes from :meth:`_code_width` and
    :meth:`_step_width` and implement ``_encode(x) -> (B, code width)`` and
    ``_decode(z) -> (B, W, step width)``.
    """

    def __init__(self, window: int, channels: int, cfg: AEConfig) -> None:
        super().__init__()
        self.window, self.channels, self.cfg = window, channels, cfg
        self.variational = cfg.reg == 'vae'
        self.sigmoid_code = cfg.reg == 'sparse' and cfg.sparsity == 'kl'

    def _code_width(self) -> int:
        return self.cfg.latent * (2 if self.variational else 1)    # mean and log-variance

    def _step_width(self) -> int:
        return self.channels * (2 if self.variational else 1)      # mean and log-variance

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(code or its mean (B, Z), log-variance (B, Z) for a VAE else None)."""
        h = self._encode(x)
        if self.variational:
            mu, raw = h.chunk(2, dim=-1)
            return mu, _bound(raw)
        if self.sigmoid_code:
            h = torch.sigmoid(h)
        return h, None

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(reconstruction (B, W, C), log-variance (B, W, C) for a VAE else None)."""
        y = self._decode(z)
        if self.variational:
            c = self.channels
            return y[..., :c], _bound(y[..., c:])
        return y, None

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None, *,
                epoch: int = 1) -> torch.Tensor:
        """The deterministic reconstruction (B, W, C); with ``target``, the training loss of
        reconstructing it from ``x`` instead (:func:`training_loss`), so that a wrapper such as
        DistributedDataParallel sees the whole training computation as one forward pass."""
        if target is not None:
            return self._loss(x, target, epoch)
        return self.decode(self.encode(x)[0])[0]

    def _loss(self, x: torch.Tensor, target: torch.Tensor, epoch: int) -> torch.Tensor:
        cfg = self.cfg
        if cfg.reg == 'vae':
            mu, logvar = self.encode(x)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            mean, log_var = self.decode(z)
            nll = gaussian_nll(mean, log_var, target).mean()
            kl = -0.5 * torch.sum(1.0 + logvar - mu ** 2 - torch.exp(logvar), dim=1).mean()
            return nll + kl_weight(cfg, epoch) * kl / (self.window * self.channels)
        if cfg.reg == 'contractive':
            code, norm2 = code_and_jacobian_norm2(self, x)
        else:
            code, _ = self.encode(x)
        loss = torch.mean((self.decode(code)[0] - target) ** 2)
        if cfg.reg == 'sparse':
            if cfg.sparsity == 'l1':
                term = code.abs().mean()
            else:
                rho = cfg.rho
                mean = code.mean(dim=0).clamp(1e-6, 1 - 1e-6)
                term = torch.sum(rho * torch.log(rho / mean)
                                 + (1 - rho) * torch.log((1 - rho) / (1 - mean)))
            loss = loss + cfg.sparsity_weight * term
        elif cfg.reg == 'contractive':
            loss = loss + cfg.contractive_weight * norm2.mean()
        return loss

    def export_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What the ONNX graph returns, in :attr:`output_names` order."""
        code, _ = self.encode(x)
        mean, log_var = self.decode(code)
        if self.variational:
            return mean, log_var, code
        return mean, code

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of :meth:`export_outputs`, as the scorer looks them up."""
        return VAE_OUTPUT_NAMES if self.variational else OUTPUT_NAMES


class ExportModule(nn.Module):
    """A family model whose ``forward`` is its export path (for ``export_onnx``)."""

    def __init__(self, model: FamilyAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.export_outputs(x)


def _bound(raw: torch.Tensor) -> torch.Tensor:
    return LOGVAR_BOUND * torch.tanh(raw / LOGVAR_BOUND)


class MlpAE(FamilyAE):
    """Flattened window (B, W*C) -> hidden layers -> latent -> hidden layers -> (B, W, C)."""

    def __init__(self, window: int, channels: int, cfg: AEConfig) -> None:
        super().__init__(window, channels, cfg)
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

        self.encoder = nn.Sequential(*stack(size, self._code_width()))
        self.decoder = nn.Sequential(*stack(cfg.latent, window * self._step_width()))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.reshape(x.shape[0], self.window * self.channels))  # (B, Z')

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).reshape(z.shape[0], self.window, self._step_width())


class SeqAE(FamilyAE):
    """Encoder RNN over the window -> latent -> repeated per step -> decoder RNN -> (B, W, C)."""

    def __init__(self, window: int, channels: int, cfg: AEConfig) -> None:
        super().__init__(window, channels, cfg)
        rnn = nn.LSTM if cfg.arch == 'lstm' else nn.GRU
        drop = cfg.dropout if cfg.layers > 1 else 0.0
        self.is_lstm = cfg.arch == 'lstm'
        self.encoder = rnn(channels, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                           dropout=drop)
        self.to_code = nn.Linear(cfg.hidden, self._code_width())
        self.from_code = nn.Linear(cfg.latent, cfg.hidden)
        self.decoder = rnn(cfg.hidden, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                           dropout=drop)
        self.out = nn.Linear(cfg.hidden, self._step_width())

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        _, state = self.encoder(x)                                   # (L, B, H)
        last = state[0][-1] if self.is_lstm else state[-1]           # (B, H)
        return self.to_code(last)                                    # (B, Z')

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        steps = self.from_code(z).unsqueeze(1).expand(-1, self.window, -1)  # (B, W, H)
        y, _ = self.decoder(steps)                                   # (B, W, H)
        return self.out(y)                                           # (B, W, C')


def conv_lengths(window: int, kernel: int, stages: int) -> list[int]:
    """Sequence lengths after each strided stage (stride 2, padding kernel // 2)."""
    lengths = [window]
    for _ in range(stages):
        lengths.append((lengths[-1] + 2 * (kernel // 2) - kernel) // 2 + 1)
    return lengths


class ConvAE(FamilyAE):
    """1-D convolutional autoencoder over time.

    Down: ``layers`` stages of Conv1d(kernel, stride 2) + GELU, then a linear map of the last
    feature map to the code. Up: a linear map back to that feature map, then per stage either
    nearest upsampling by 2 followed by Conv1d(kernel, stride 1) (``upsample='resize'``, the
    default) or ConvTranspose1d(kernel, stride 2) (``'transposed'``), cropped or padded to the
    encoder's lengths, and a 1x1 convolution to the channels.

    Why resize: a transposed convolution of stride s with a kernel that s does not divide lets
    neighbouring outputs sum different numbers of kernel taps, so even a flat input comes out
    with a period-s ripple (checkerboard artefacts, Odena et al. 2016); upsampling first gives
    every output the same taps. ``benchmarks/plot_conv_checkerboard.py`` draws the difference.
    """

    def __init__(self, window: int, channels: int, cfg: AEConfig) -> None:
        super().__init__(window, channels, cfg)
        k, h, pad = cfg.kernel, cfg.hidden, cfg.kernel // 2
        self.lengths = conv_lengths(window, k, cfg.layers)
        if self.lengths[-1] < 1:
            raise ValueError(f'window {window} is too short for {cfg.layers} strided stages')
        down: list[nn.Module] = []
        width = channels
        for _ in range(cfg.layers):
            down += [nn.Conv1d(width, h, k, stride=2, padding=pad), nn.GELU()]
            width = h
        self.down = nn.Sequential(*down)
        flat = h * self.lengths[-1]
        self.to_code = nn.Linear(flat, self._code_width())
        self.from_code = nn.Linear(cfg.latent, flat)
        up: list[nn.Module] = []
        for stage in reversed(range(cfg.layers)):
            target, short = self.lengths[stage], self.lengths[stage + 1]
            if cfg.upsample == 'resize':
                up += [_Upsample2(target), nn.Conv1d(h, h, k, padding=pad), nn.GELU()]
            else:
                base = (short - 1) * 2 - 2 * pad + k
                extra = target - base
                up += [nn.ConvTranspose1d(h, h, k, stride=2, padding=pad,
                                          output_padding=max(0, min(extra, 1))),
                       _Crop(target), nn.GELU()]
        self.up = nn.Sequential(*up)
        self.out = nn.Conv1d(h, self._step_width(), 1)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        f = self.down(x.transpose(1, 2))                             # (B, H, L)
        return self.to_code(f.flatten(1))                            # (B, Z')

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        f = self.from_code(z).reshape(z.shape[0], self.cfg.hidden, self.lengths[-1])
        return self.out(self.up(f)).transpose(1, 2)                  # (B, W, C')


class _Upsample2(nn.Module):
    """Nearest upsampling by 2 along time, cropped to ``length``."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(f, scale_factor=2.0, mode='nearest')[..., :self.length]


class _Crop(nn.Module):
    """Crop (or zero-pad on the right) along time to ``length``."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if f.shape[-1] < self.length:
            return nn.functional.pad(f, (0, self.length - f.shape[-1]))
        return f[..., :self.length]


def build_model(cfg: AEConfig, window: int, channels: int) -> FamilyAE:
    """The autoencoder of ``cfg`` for windows of ``window`` samples and ``channels`` channels."""
    if cfg.classical:
        raise ValueError(f'{cfg.arch} is fitted with numpy (encdec_ros.anomaly.baselines)')
    if cfg.arch == 'mlp':
        return MlpAE(window, channels, cfg)
    if cfg.arch == 'conv':
        return ConvAE(window, channels, cfg)
    return SeqAE(window, channels, cfg)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


# --------------------------------------------------------------------------- losses


def gaussian_nll(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor
                 ) -> torch.Tensor:
    """Elementwise Gaussian negative log-likelihood without the constant 0.5 log 2 pi."""
    return 0.5 * (log_var + (target - mean) ** 2 * torch.exp(-log_var))


def kl_weight(cfg: AEConfig, epoch: int) -> float:
    """The VAE's KL weight in ``epoch`` (1-based): beta, warmed up linearly."""
    if cfg.reg != 'vae':
        return 0.0
    if cfg.warmup <= 0:
        return cfg.beta
    return cfg.beta * min(1.0, (epoch - 1) / cfg.warmup)


def training_loss(model: Any, x: torch.Tensor, target: torch.Tensor | None = None, *,
                  epoch: int = 1) -> torch.Tensor:
    """The training objective on a batch: reconstruct ``target`` (default ``x``; the clean
    window when ``x`` is corrupted) plus the regulariser's term. ``model`` is a
    :class:`FamilyAE` or a wrapper around one (DistributedDataParallel): the loss is computed
    in the model's forward pass.

    - none: mean squared error;
    - vae: Gaussian NLL per sample of a decoded draw z = mu + sigma * eps, plus the KL of
      q(z|x) from N(0, I) per window divided by the window's samples, times
      :func:`kl_weight` (beta after the warm-up);
    - sparse: MSE + weight * mean |code| ('l1'), or + weight * sum_j KL(rho || mean_j) over
      the code units' mean sigmoid activations in the batch ('kl');
    - contractive: MSE + weight * ||d code / d x||_F^2 per window (:func:`jacobian_norm2`).
    """
    return model(x, x if target is None else target, epoch=epoch)


def jacobian_norm2(model: FamilyAE, x: torch.Tensor, *, exact: bool | None = None
                   ) -> torch.Tensor:
    """||d code / d x||_F^2 per window (B,); see :func:`code_and_jacobian_norm2`."""
    return code_and_jacobian_norm2(model, x, exact=exact)[1]


def code_and_jacobian_norm2(model: FamilyAE, x: torch.Tensor, *, exact: bool | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The code of ``x`` (B, Z) and ||d code / d x||_F^2 per window (B,), in one pass.

    Exact for the MLP (default there): one vector-Jacobian product per code unit (Z backward
    passes, kept in the graph). For the recurrent and convolutional encoders, whose exact
    Jacobian costs as many passes through a sequence, an unbiased estimate: for e ~ N(0, I),
    E ||J e||^2 = ||J||_F^2, with J e taken by a forward finite difference of step
    :data:`FD_STEP`; x and x + h e go through the encoder as one batch.
    """
    exact = model.cfg.arch == 'mlp' if exact is None else exact
    if exact:
        xr = x.detach().requires_grad_(True)
        code, _ = model.encode(xr)
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for j in range(code.shape[1]):
            (g,) = torch.autograd.grad(code[:, j].sum(), xr, create_graph=True)
            total = total + (g ** 2).flatten(1).sum(dim=1)
        return code, total
    b = x.shape[0]
    both, _ = model.encode(torch.cat([x, x + FD_STEP * torch.randn_like(x)]))
    code = both[:b]
    return code, (((both[b:] - code) / FD_STEP) ** 2).sum(dim=1)


def validation_loss(model: FamilyAE, x: torch.Tensor) -> torch.Tensor:
    """The deterministic reconstruction loss the scorer sees: MSE, or the Gaussian NLL of the
    decoded encoder mean for a VAE (mean over elements, constant left out)."""
    code, _ = model.encode(x)
    mean, log_var = model.decode(code)
    if log_var is not None:
        return gaussian_nll(mean, log_var, x).mean()
    return torch.mean((mean - x) ** 2)


__all__ = ['ARCHS', 'AEConfig', 'ConvAE', 'ExportModule', 'FamilyAE', 'MlpAE', 'SeqAE',
           'build_model', 'code_and_jacobian_norm2', 'conv_lengths', 'count_parameters',
           'gaussian_nll', 'jacobian_norm2', 'kl_weight', 'training_loss', 'validation_loss']
