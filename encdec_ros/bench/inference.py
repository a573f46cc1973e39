"""Inference per model kind: ONNX Runtime (the engine the nodes use) against torch eager.

The ONNX side runs each kind's shipped model (the launch files' defaults) through
:class:`~encdec_ros.engine.InferenceEngine` on every provider usable here, with one intra-op
thread as the nodes do. The torch side, when torch is installed, runs the same architecture
built by the training code from the model's ``model.yaml`` (weights do not change the
speed; the parameter counts are checked against the file), in eager mode under
``torch.inference_mode`` with one thread. Torch is imported only here, only when asked for.
"""

from __future__ import annotations

import time
from pathlib import Path
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


def torch_module(model_dir: Path, meta: dict[str, Any]) -> tuple[Any, int | None]:
    """The model's architecture as a torch module (random weights), and the parameter count
    that model.yaml gives for it."""
    arch = meta.get('architecture', {})
    task = meta.get('task')
    shape = [d for d in arch.get('input', {}).get('shape', []) if d != 'batch']
    if task == 'anomaly':
        import dataclasses

        from training.models import AEConfig, build_model
        names = {f.name for f in dataclasses.fields(AEConfig)}
        cfg = AEConfig(**{k: v for k, v in arch.items() if k in names})
        if cfg.classical:
            raise ValueError(f'{cfg.arch} is a numpy baseline with no torch counterpart')
        return build_model(cfg, shape[0], shape[1]), arch.get('parameters')
    if task == 'denoise':
        from training.denoise import DenoiseOptions, build_net
        channels = len(meta['spec']['topics'][next(iter(meta['spec']['topics']))]['fields'])
        opts = DenoiseOptions(arch=arch['arch'], hidden=arch['hidden'], layers=arch['layers'],
                              absolute_input=bool(arch.get('absolute_input', False)))
        ones = np.ones(channels, dtype=np.float32)
        norm = {'input_mean': ones * 0, 'input_std': ones, 'residual_scale': ones,
                'residual_offset': ones * 0}
        return build_net(arch['window'], channels, opts, norm), arch.get('parameters')
    if task == 'allocator':
        from training.allocator import build_net
        alloc = meta['allocator']
        return build_net(len(alloc['axes']), len(alloc['actuators']), arch['hidden'],
                         meta['normalization']['input_clip_norm'],
                         squash=arch.get('output', 'clamp'),
                         activation=arch.get('activation', 'relu')), arch.get('parameters')
    raise ValueError(f'no torch counterpart for task {task!r}')


def run_inference(options: Any, notes: list[str]) -> list[dict[str, Any]]:
    """The inference section: µs per call at each batch size, ORT per provider vs torch."""
    from encdec_ros.engine import InferenceEngine, available_devices

    usable = available_devices()['usable']
    try:
        import torch
    except ImportError:
        torch = None
    rows: list[dict[str, Any]] = []
    for kind, relative in MODELS.items():
        model_dir = repo_path(relative)
        meta = yaml.safe_load((model_dir / 'model.yaml').read_text())
        engines = {d: InferenceEngine(model_dir / 'model.onnx', device=d, threads=1)
                   for d in usable}
        module = None
        if torch is not None:
            torch.set_num_threads(1)
            module, expected = torch_module(model_dir, meta)
            module.eval()
            count = sum(p.numel() for p in module.parameters())
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
            xt = torch.from_numpy(x) if module is not None else None
            for _ in range(options.rounds):
                for device, engine in engines.items():
                    ort[device].append(per_call(lambda: engine.run(x)))
                if module is not None:
                    with torch.inference_mode():
                        torch_runs.append(per_call(lambda: module(xt)))
            if torch_runs:
                torch_s = float(np.median(torch_runs))
            for device, engine in engines.items():
                ort_s = float(np.median(ort[device]))
                rows.append({'kind': kind, 'model': str(model_dir), 'provider':
                             engine.provider.replace('ExecutionProvider', ''), 'batch': batch,
                             'ort_us': ort_s * 1e6,
                             'torch_us': torch_s * 1e6 if torch_s is not None else None,
                             'ratio': torch_s / ort_s if torch_s is not None else None})
    if torch is None:
        notes.append('torch is not installed: ONNX Runtime figures only')
    skipped = [d for d in ('tensorrt', 'cuda') if d not in usable]
    if skipped:
        reasons = available_devices()['devices']
        notes += [f'{d} not measured: {reasons[d]["reason"]}' for d in skipped]
    return rows
