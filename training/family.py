"""The autoencoder family's names and configuration, importable without torch.

``encdec train anomaly`` builds an :class:`AEConfig` before it knows whether the model needs
torch at all: the classical baselines (``pca``, ``robust_z``) are fitted with numpy
(:mod:`encdec_ros.anomaly.baselines`), the networks with torch (:mod:`training.models`).

Architectures (``arch``) and regularisers (``reg``) combine freely among the networks:

=========== ===============================================================================
arch        what encodes and decodes the window
=========== ===============================================================================
mlp         the flattened window through GELU layers
lstm, gru   a recurrent encoder's last state; the code repeated per step into a decoder
conv        strided 1-D convolutions over time down; upsampling + convolution up (or
            transposed convolutions, ``upsample='transposed'``)
pca         principal components of the flattened window (numpy; Hotelling T^2 + Q)
robust_z    per-channel median / MAD; the residual is each sample's robust z-score (numpy)
=========== ===============================================================================

=========== ===============================================================================
reg         training objective
=========== ===============================================================================
none        mean squared reconstruction error
vae         Gaussian encoder, reparameterisation, KL weight ``beta`` warmed up over
            ``warmup`` epochs; the decoder predicts a mean and a log-variance per channel and
            the loss (and the anomaly score) is the Gaussian negative log-likelihood
sparse      MSE plus an L1 penalty on the code (``sparsity='l1'``) or a KL penalty towards
            a mean activation ``rho`` of sigmoid codes (``sparsity='kl'``)
contractive MSE plus the squared Frobenius norm of the encoder's Jacobian (exact for the
            MLP, a finite-difference estimate for the others)
=========== ===============================================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from encdec_ros.errors import ConfigError

NEURAL = ('mlp', 'lstm', 'gru', 'conv')
"""Architectures trained with torch."""
CLASSICAL = ('pca', 'robust_z')
"""Baselines fitted with numpy (no torch needed)."""
ARCHS = NEURAL + CLASSICAL
REGS = ('none', 'vae', 'sparse', 'contractive')
SPARSITY = ('l1', 'kl')
UPSAMPLE = ('resize', 'transposed')
DEFAULT_LAYERS = {'conv': 2}
"""Layers when none are given: strided stages for the conv AE, else 1."""
DEFAULT_LATENT = {'pca': 4}
"""Code size when none is given: 4 principal components for PCA (chosen over 8 on every
rotation of SKAB's groups and on both halves of the sim's fault flights: docs/anomaly.md,
"The family side by side"), else 8."""


@dataclass
class AEConfig:
    """Architecture of an autoencoder and its regulariser; defaults suit windows of tens of
    samples (chosen by cross-validation across experiment groups: see docs/anomaly.md).

    Attributes:
        arch: One of :data:`ARCHS`.
        hidden: Hidden width (MLP layers, RNN state size, conv feature maps).
        latent: Size of the code per window (principal components for 'pca'); None: 4 for
            pca, else 8.
        layers: Hidden layers on each side (MLP), stacked RNN layers, or strided stages
            (conv); None: 2 for conv, else 1.
        dropout: Dropout between layers during training (0: none).
        reg: One of :data:`REGS`.
        beta: VAE: weight of the KL term (per window, relative to the NLL per sample).
        warmup: VAE: epochs over which the KL weight rises linearly from 0 to ``beta``.
        sparsity: Sparse: 'l1' (mean |code|) or 'kl' (KL of rho from each sigmoid code
            unit's mean activation).
        sparsity_weight: Sparse: weight of the penalty.
        rho: Sparse with 'kl': target mean activation of each code unit.
        contractive_weight: Contractive: weight of ||d code / d x||_F^2.
        kernel: Conv: kernel size along time.
        upsample: Conv: 'resize' (nearest upsampling, then a convolution) or 'transposed'
            (transposed convolutions, which leave checkerboard artefacts when the stride does
            not divide the kernel).
    """

    arch: str = 'lstm'
    hidden: int = 32                 # MLP hidden width / RNN state size / conv feature maps
    latent: int | None = None        # code size per window (None: per arch)
    layers: int | None = None        # per side / stacked / strided stages (None: per arch)
    dropout: float = 0.0             # between layers, training only
    reg: str = 'none'                # none | vae | sparse | contractive
    beta: float = 1.0                # vae: KL weight
    warmup: int = 5                  # vae: epochs of linear KL warm-up
    sparsity: str = 'l1'             # sparse: l1 | kl
    sparsity_weight: float = 1e-2    # sparse: penalty weight
    rho: float = 0.05                # sparse kl: target mean activation
    contractive_weight: float = 1e-3  # contractive: penalty weight
    kernel: int = 5                  # conv: kernel size
    upsample: str = 'resize'         # conv: resize | transposed

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f'architecture {self.arch!r} is not one of {", ".join(ARCHS)}; '
                              'use --arch lstm, gru, mlp, conv, pca or robust_z')
        if self.layers is None:
            self.layers = DEFAULT_LAYERS.get(self.arch, 1)
        if self.latent is None:
            self.latent = DEFAULT_LATENT.get(self.arch, 8)
        for name in ('hidden', 'latent', 'layers', 'kernel'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f'{name} must be a whole number >= 1, got {value!r}')
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f'dropout must be in [0, 1), got {self.dropout!r}')
        if self.reg not in REGS:
            raise ConfigError(f'regulariser {self.reg!r} is not one of {", ".join(REGS)}; '
                              'use --reg none, vae, sparse or contractive')
        if self.arch in CLASSICAL and self.reg != 'none':
            raise ConfigError(f'--arch {self.arch} is a classical baseline fitted in closed '
                              f'form and takes no regulariser; drop --reg {self.reg} or use a '
                              'network (mlp, lstm, gru, conv)')
        if self.sparsity not in SPARSITY:
            raise ConfigError(f'sparsity {self.sparsity!r} is not one of '
                              f'{", ".join(SPARSITY)}; use --sparsity l1 or kl')
        if self.upsample not in UPSAMPLE:
            raise ConfigError(f'upsample {self.upsample!r} is not one of '
                              f'{", ".join(UPSAMPLE)}; use --upsample resize or transposed')
        for name in ('beta', 'sparsity_weight', 'contractive_weight'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not value >= 0:
                raise ConfigError(f'{name.replace("_", " ")} must be a number >= 0, got '
                                  f'{value!r}')
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or \
                self.warmup < 0:
            raise ConfigError(f'KL warm-up must be a whole number of epochs >= 0, got '
                              f'{self.warmup!r}')
        if not 0.0 < self.rho < 1.0:
            raise ConfigError(f'rho (target mean activation) must be in (0, 1), got '
                              f'{self.rho!r}; e.g. 0.05')
        if self.arch == 'conv' and self.kernel < 2:
            raise ConfigError(f'the conv kernel must span at least 2 samples, got '
                              f'{self.kernel}; e.g. --kernel 5')

    @property
    def classical(self) -> bool:
        """True for the numpy baselines (no torch, no training loop)."""
        return self.arch in CLASSICAL

    @property
    def variational(self) -> bool:
        """True when the decoder predicts a variance (the score is a likelihood)."""
        return self.reg == 'vae'

    def to_dict(self) -> dict[str, Any]:
        """Plain data for model.yaml: the options that matter for this arch and regulariser."""
        data = asdict(self)
        keep = {'arch', 'hidden', 'latent', 'layers', 'dropout', 'reg'}
        if self.arch == 'conv':
            keep |= {'kernel', 'upsample'}
        if self.reg == 'vae':
            keep |= {'beta', 'warmup'}
        elif self.reg == 'sparse':
            keep |= {'sparsity', 'sparsity_weight'} | ({'rho'} if self.sparsity == 'kl'
                                                       else set())
        elif self.reg == 'contractive':
            keep |= {'contractive_weight'}
        if self.classical:
            keep = {'arch', 'latent'} if self.arch == 'pca' else {'arch'}
        return {k: v for k, v in data.items() if k in keep}
