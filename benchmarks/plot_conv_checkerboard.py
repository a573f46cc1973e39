"""Checkerboard artefacts of transposed convolutions on a flat signal: docs/conv_checkerboard.png.

Left: the mechanism. A flat input (all ones) through one up-sampling layer with all weights
equal to one: a transposed convolution of stride 2 whose kernel (5) the stride does not
divide gives every other output one tap more (3, 2, 3, 2 ...): a ripple out of nothing.
Nearest upsampling followed by a convolution (the conv AE's default) gives every output the
same taps; a transposed convolution with kernel 4 (divisible by the stride) does too.

Right: the same in trained models. Two conv autoencoders (``encdec train anomaly --arch conv``
with ``--upsample resize``, the default, and ``--upsample transposed``), trained alike on a
normal synthetic flight, reconstruct a flat window (every channel at its training mean). The
ripple (mean |x[t] - (x[t-1] + x[t+1]) / 2| over the window's inside and all channels, in
normalised units) is printed and drawn for the channel where it is largest.

Usage::

    nice -n 10 python benchmarks/plot_conv_checkerboard.py          # writes the PNG
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def mechanism(torch, length: int = 12) -> dict[str, list[float]]:
    """Outputs of one unit-weight up-sampling layer on a flat input of ``length`` samples."""
    nn = torch.nn
    x = torch.ones(1, 1, length)
    out = {}
    with torch.no_grad():
        for name, layer in (('transposed, kernel 5, stride 2',
                             nn.ConvTranspose1d(1, 1, 5, stride=2, padding=2, bias=False)),
                            ('transposed, kernel 4, stride 2',
                             nn.ConvTranspose1d(1, 1, 4, stride=2, padding=1, bias=False))):
            layer.weight.fill_(1.0)
            out[name] = layer(x)[0, 0].tolist()
        conv = nn.Conv1d(1, 1, 5, padding=2, bias=False)
        conv.weight.fill_(1.0)
        up = nn.functional.interpolate(x, scale_factor=2.0, mode='nearest')
        out['upsample x2 + conv, kernel 5'] = conv(up)[0, 0].tolist()
    return out


def ripple(y) -> float:
    """Mean |y[t] - (y[t-1] + y[t+1]) / 2| over the inside of the window."""
    return float(abs(y[1:-1] - 0.5 * (y[:-2] + y[2:])).mean())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--work', default=str(ROOT / 'out' / 'conv_checkerboard'))
    p.add_argument('--out', default=str(ROOT / 'docs' / 'conv_checkerboard.png'))
    p.add_argument('--epochs', type=int, default=15)
    args = p.parse_args()

    import logging
    logging.disable(logging.WARNING)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from encdec_ros.anomaly.scorer import AnomalyScorer
    from training.anomaly import TrainOptions, train_anomaly
    from training.family import AEConfig
    from training.sim import SimConfig, simulate, write_bag

    work = Path(args.work)
    bag = work / 'normal_31'
    if not (bag / 'metadata.yaml').exists():
        write_bag(simulate(SimConfig(duration_s=120, seed=31)), bag)
    recon, ripples = {}, {}
    for upsample in ('resize', 'transposed'):
        model = work / f'conv_{upsample}'
        if not (model / 'model.yaml').exists():
            opts = TrainOptions(model=AEConfig(arch='conv', upsample=upsample),
                                epochs=args.epochs, seed=0, threads=1)
            train_anomaly([bag], ROOT / 'config' / 'sim_spec.yaml', model, opts,
                          overwrite=True, say=lambda s: None, show_progress=False)
        scorer = AnomalyScorer(model, device='cpu')
        flat = np.zeros((1, scorer.window, len(scorer.channels)), np.float32)
        y = scorer.engine.run_many({'x': flat})['x_hat'][0].astype(np.float64)   # [W, C]
        recon[upsample] = y
        ripples[upsample] = [ripple(y[:, c]) for c in range(y.shape[1])]
        print(f'{upsample:>10}: ripple on a flat window {np.mean(ripples[upsample]):.4f} '
              f'(normalised units, mean over {y.shape[1]} channels)')
    channel = int(np.argmax(ripples['transposed']))
    names = AnomalyScorer(work / 'conv_resize', device='cpu').channels

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), dpi=110)
    ax = axes[0]
    for (name, values), marker in zip(mechanism(torch).items(), ('o', 's', '^')):
        ax.plot(values, marker=marker, ms=4, lw=1, label=name)
    ax.set_title('one layer, unit weights, flat input of ones', fontsize=10)
    ax.set_xlabel('output sample')
    ax.set_ylabel('output')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    for upsample, colour in (('resize', 'tab:green'), ('transposed', 'tab:red')):
        ax.plot(recon[upsample][:, channel], color=colour, marker='.', ms=4, lw=1,
                label=f'{upsample} (ripple {np.mean(ripples[upsample]):.3f} mean over '
                      'channels)')
    ax.set_title(f'trained conv AEs reconstructing a flat window: {names[channel]}',
                 fontsize=10)
    ax.set_xlabel('sample in the window')
    ax.set_ylabel('reconstruction (normalised)')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle('Checkerboard artefacts: a transposed convolution whose stride does not divide '
                 'its kernel sums an uneven number of taps per output', fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    plt.close(fig)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
