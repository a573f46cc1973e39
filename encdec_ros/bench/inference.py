"""Inference per model kind: ONNX Runtime (the engine the nodes use) against torch eager.

The ONNX side runs each kind's shipped model (the launch files' defaults) through
:class:`~encdec_ros.engine.InferenceEngine` on every provider usable here, with one intra-op
thread as the nodes do. The torch side, when torch and the training package are installed, is
:func:`training.eager.eager_timer`: the same architecture built from the model's
``model.yaml``, in eager mode with one thread. This module never imports torch.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import yaml

from encdec_ros.bench import repo_path

MODELS = {
    'anomaly (LSTM AE)': 'models/anomaly_sim_lstm',
    'denoise (MLP)': 'models/denoise_sim_imu',
    'allocator (affine+MLP)': 'models/allocator_sim_hexa',
}
CALL_SECONDS = 0.4        # timed calls per measurement (after a warm-up)


def per_call(fn: Callable[[], Any], seconds: float = CALL_SECONDS) -> float:
    """Median seconds per call of ``fn`` over about ``seconds`` of calls."""
    for _ in range(20):
        fn()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 20:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_inference(options: Any, notes: list[str]) -> list[dict[str, Any]]:
    """The inference section: µs per call at each batch size, ORT per provider vs torch."""
    from encdec_ros.engine import InferenceEngine, available_devices

    usable = available_devices()['usable']
    try:
        from training.eager import eager_timer  # torch, only where training is installed
    except ImportError:
        eager_timer = None
    rows: list[dict[str, Any]] = []
    for kind, relative in MODELS.items():
        model_dir = repo_path(relative)
        meta = yaml.safe_load((model_dir / 'model.yaml').read_text())
        engines = {d: InferenceEngine(model_dir / 'model.onnx', device=d, threads=1)
                   for d in usable}
        timer = None
        if eager_timer is not None:
            timer, count, expected = eager_timer(model_dir, meta)
            if expected is not None and count != expected:
                notes.append(f'{kind}: the torch module has {count} parameters, model.yaml '
                             f'says {expected}')
        first = next(iter(engines.values()))
        rng = np.random.default_rng(0)
        for batch in options.batches:
            shape = tuple(batch if d is None else d for d in first.input_shapes[0])
            x = rng.normal(size=shape).astype(np.float32)
            torch_s = None
            ort: dict[str, list[float]] = {d: [] for d in engines}
            torch_runs: list[float] = []
            for _ in range(options.rounds):
                for device, engine in engines.items():
                    ort[device].append(per_call(lambda: engine.run(x)))
                if timer is not None:
                    torch_runs.append(timer(x, per_call))
            if torch_runs:
                torch_s = float(np.median(torch_runs))
            for device, engine in engines.items():
                ort_s = float(np.median(ort[device]))
                rows.append({'kind': kind, 'model': str(model_dir), 'provider':
                             engine.provider.replace('ExecutionProvider', ''), 'batch': batch,
                             'ort_us': ort_s * 1e6,
                             'torch_us': torch_s * 1e6 if torch_s is not None else None,
                             'ratio': torch_s / ort_s if torch_s is not None else None})
    if eager_timer is None:
        notes.append('torch (or the training package) is not installed: ONNX Runtime figures '
                     'only')
    skipped = [d for d in ('tensorrt', 'cuda') if d not in usable]
    if skipped:
        reasons = available_devices()['devices']
        notes += [f'{d} not measured: {reasons[d]["reason"]}' for d in skipped]
    return rows
