"""Benchmark the inference engine on small autoencoders (figures only, no assertions).

Exports an MLP AE and an LSTM AE of the sizes the demo uses (random weights: speed does not
depend on them), then prints, per model and thread count, the per-call latency of
``InferenceEngine.run`` at batch 1 and the throughput at batch 1024.

Usage::

    python benchmarks/bench_engine.py [--device cpu] [--threads 1 2] [--calls 5000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encdec_ros.engine import InferenceEngine, available_devices  # noqa: E402


def _export_models(root: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    import torch
    from torch import nn

    from training.export import export_onnx

    class MlpAE(nn.Module):
        def __init__(self, d: int = 6 * 32) -> None:  # 6 channels x 32 samples, flattened
            super().__init__()
            self.net = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 16),
                                     nn.ReLU(), nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    class LstmAE(nn.Module):
        def __init__(self, d: int = 6, h: int = 32, z: int = 8) -> None:
            super().__init__()
            self.enc = nn.LSTM(d, h, batch_first=True)
            self.to_z, self.from_z = nn.Linear(h, z), nn.Linear(z, h)
            self.dec = nn.LSTM(h, h, batch_first=True)
            self.out = nn.Linear(h, d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
            _, (hid, _) = self.enc(x)
            rep = self.from_z(self.to_z(hid[-1])).unsqueeze(1).expand(-1, x.shape[1], -1)
            y, _ = self.dec(rep)
            return self.out(y)

    torch.manual_seed(0)
    models = {'mlp_ae': (MlpAE(), (192,)), 'lstm_ae': (LstmAE(), (32, 6))}
    out = {}
    for name, (module, shape) in models.items():
        path = root / f'{name}.onnx'
        figures = export_onnx(module, torch.randn(2, *shape), path, input_names=['x'],
                              output_names=['x_hat'])
        params = sum(p.numel() for p in module.parameters())
        print(f'{name}: {params} parameters, input (B, {", ".join(map(str, shape))}), '
              f'{figures["file_bytes"]} bytes, parity {figures["max_abs_diff"]:.1e}')
        out[name] = (path, shape)
    return out


def _bench(path: Path, shape: tuple[int, ...], *, device: str, threads: int, calls: int,
           io_binding: bool | None) -> tuple[dict, float]:
    engine = InferenceEngine(path, device=device, threads=threads, io_binding=io_binding)
    rng = np.random.default_rng(0)
    one = rng.normal(size=(1, *shape)).astype(np.float32)
    for _ in range(200):
        engine.run(one)
    engine.reset_latency()
    for _ in range(calls):
        engine.run(one)
    latency = engine.latency_ms()
    big = rng.normal(size=(1024, *shape)).astype(np.float32)
    engine.run(big)
    reps = max(3, calls // 500)
    t0 = time.perf_counter()
    for _ in range(reps):
        engine.run(big)
    throughput = 1024 * reps / (time.perf_counter() - t0)
    return latency, throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu', help="engine device (default 'cpu')")
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--calls', type=int, default=5000, help='batch-1 calls per case')
    parser.add_argument('--io-binding', action='store_true', help='force IOBinding')
    args = parser.parse_args()

    print(f'devices: {available_devices()["usable"]}')
    with tempfile.TemporaryDirectory() as tmp:
        models = _export_models(Path(tmp))
        print(f'\n{"model":8} {"thr":>3} {"provider":>22} {"b1 mean":>9} {"b1 p50":>8} '
              f'{"b1 p99":>8} {"b1024 windows/s":>16}')
        for name, (path, shape) in models.items():
            for threads in args.threads:
                lat, tput = _bench(path, shape, device=args.device, threads=threads,
                                   calls=args.calls, io_binding=args.io_binding or None)
                provider = InferenceEngine(path, device=args.device, warmup=False).provider
                print(f'{name:8} {threads:>3} {provider:>22} {lat["mean"] * 1e3:7.1f}us '
                      f'{lat["p50"] * 1e3:6.1f}us {lat["p99"] * 1e3:6.1f}us {tput:16,.0f}')


if __name__ == '__main__':
    main()
