"""The autoencoder family's names and configuration, importable without torch.

``encdec train anomaly`` builds an :class:`AEConfig` before it knows whether the model needs
torch at all; :mod:`training.models` builds the torch modules from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from encdec_ros.errors import ConfigError

ARCHS = ('mlp', 'lstm', 'gru')


@dataclass
class AEConfig:
    """Architecture of an autoencoder; the defaults suit windows of tens of samples.

    Attributes:
        arch: 'mlp', 'lstm' or 'gru'.
        hidden: Hidden width (MLP layers, or RNN state size).
        latent: Size of the bottleneck code per window.
        layers: Hidden layers on each side (MLP) or stacked RNN layers.
        dropout: Dropout between layers during training (0: none).
    """

    arch: str = 'lstm'
    hidden: int = 32      # MLP hidden width / RNN state size
    latent: int = 8       # bottleneck size per window
    layers: int = 1       # MLP hidden layers per side / stacked RNN layers
    dropout: float = 0.0  # between layers, training only

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f'architecture {self.arch!r} is not one of {", ".join(ARCHS)}; '
                              'use --arch lstm, gru or mlp')
        for name in ('hidden', 'latent', 'layers'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f'{name} must be a whole number >= 1, got {value!r}')
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f'dropout must be in [0, 1), got {self.dropout!r}')

    def to_dict(self) -> dict[str, Any]:
        """Plain data for model.yaml."""
        return asdict(self)
