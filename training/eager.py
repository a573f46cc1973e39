"""Torch eager counterparts of the shipped models, for ``encdec bench``'s inference section.

The runtime (``encdec_ros``) never imports torch: the bench asks this module, when the
training package and torch are installed, to build each model's architecture from its
``model.yaml`` (random weights: weights do not change the speed; the parameter count is
checked against the file) and to time it in eager mode under ``torch.inference_mode`` with one
thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


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


def eager_timer(model_dir: Path, meta: dict[str, Any]
                ) -> tuple[Callable[[np.ndarray, Callable[[Callable[[], Any]], float]], float],
                           int, int | None]:
    """A timer of the model's torch module at an input (``timer(x, per_call)``: seconds per
    call as ``per_call`` measures it, inside one ``torch.inference_mode``), its parameter
    count and the count model.yaml gives."""
    torch.set_num_threads(1)
    module, expected = torch_module(model_dir, meta)
    module.eval()

    def timer(x: np.ndarray, per_call: Callable[[Callable[[], Any]], float]) -> float:
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            return per_call(lambda: module(xt))

    return timer, sum(p.numel() for p in module.parameters()), expected
