"""ONNX export with a dynamic batch axis, ``onnx.checker`` and a parity check against torch.

Exporter choice (torch 2.13): the TorchScript exporter (``torch.onnx.export(...,
dynamo=False)``) is the default here. For our MLP, LSTM and GRU autoencoders it exports in
about 0.1 s, needs nothing beyond torch and onnx, and the files it writes run at batch 1, 7
and 256 with differences around 1e-7. The dynamo exporter (``exporter='dynamo'``) gives the
same numbers and a tidier graph, but needs the extra ``onnxscript`` package, takes about 3 s
per model and logs noisily; it is kept as an option because torch marks the TorchScript
exporter as deprecated. Whichever runs, the parity check below is what vouches for the file.

Usage::

    figures = export_onnx(model, (example,), 'out/model.onnx', input_names=['x'],
                          output_names=['x_hat'], parity_inputs=(real_windows,))
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from encdec_ros.errors import EncdecError

EXPORTERS = ('torchscript', 'dynamo')
DEFAULT_OPSET = 17
"""Opset 17 loads on every onnxruntime since 1.13, so older robot images still run it."""
BATCH_AXIS = 'batch'


class ExportError(EncdecError):
    """The module could not be exported to ONNX, or the ONNX file does not match torch."""


def export_onnx(module: Any, example_inputs: Any, path: str | Path, *,
                input_names: Sequence[str], output_names: Sequence[str],
                parity_inputs: Any = None, atol: float = 1e-4, opset: int | None = None,
                exporter: str = 'torchscript') -> dict[str, Any]:
    """Export ``module`` to ONNX with axis 0 of every input and output dynamic, then verify.

    The file is written to a temporary name beside ``path`` and moved there only after
    ``onnx.checker`` passes and onnxruntime (CPU) reproduces torch within ``atol`` on the
    parity inputs, on their first row alone (batch 1) and on a batch of a third size.

    Args:
        module: A ``torch.nn.Module``; it is put in eval mode for the export and restored.
        example_inputs: A tensor or a tuple of tensors, batch first, used to trace.
        path: Where the ``.onnx`` file goes.
        input_names: One name per input.
        output_names: One name per output.
        parity_inputs: Real data in the same structure as ``example_inputs`` (tensors or
            numpy arrays); default ``example_inputs``.
        atol: Largest allowed absolute difference between onnxruntime and torch.
        opset: ONNX opset; default :data:`DEFAULT_OPSET` (18 for the dynamo exporter).
        exporter: 'torchscript' (default) or 'dynamo' (needs onnxscript).

    Returns:
        Figures: ``path``, ``exporter``, ``opset``, ``max_abs_diff``, ``atol``,
        ``batch_sizes`` (checked), ``file_bytes``, ``sha256``, ``inputs`` and ``outputs``
        (name and shape, ``'batch'`` for the dynamic axis), ``seconds`` and ``versions``.

    Raises:
        ExportError: The export, the checker or the parity check failed.
    """
    import onnx
    import onnxruntime as ort
    import torch

    if exporter not in EXPORTERS:
        raise ExportError(f'exporter {exporter!r} is not one of {", ".join(EXPORTERS)}; '
                          "use 'torchscript'")
    t_start = time.perf_counter()
    path = Path(path)
    args = _as_tuple(example_inputs, torch)
    checks = _as_tuple(example_inputs if parity_inputs is None else parity_inputs, torch)
    input_names, output_names = list(input_names), list(output_names)
    if len(input_names) != len(args) or len(checks) != len(args):
        raise ExportError(f'the module takes {len(args)} input(s) but {len(input_names)} '
                          f'input name(s) and {len(checks)} parity input(s) were given; '
                          'pass one name and one parity array per input')
    if opset is None:
        opset = 18 if exporter == 'dynamo' else DEFAULT_OPSET
    if any(a.ndim == 0 for a in args):
        raise ExportError('every example input needs a batch axis 0; add one with unsqueeze(0)')
    # A batch of 1 lets the tracer or torch.export specialise the batch axis: use two.
    args = tuple(a.repeat(2, *([1] * (a.ndim - 1))) if a.shape[0] == 1 else a for a in args)

    was_training = module.training
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        with torch.no_grad():
            batches = _parity_batches(checks, torch)
            expected = [_torch_outputs(module, b, len(output_names), torch) for b in batches]
            _export(torch, module, args, tmp, input_names, output_names, opset, exporter)
        model = onnx.load(str(tmp))
        _name_dims(model, input_names, output_names, expected)
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as err:  # noqa: BLE001 - onnx raises its own ValidationError types
            raise ExportError(f'onnx.checker rejects the exported model ({_first_line(err)}); '
                              'report the module and the torch version') from err
        onnx.save(model, str(tmp))
        diff, batch_sizes = _parity(ort, tmp, input_names, output_names, batches, expected,
                                    atol)
        os.replace(tmp, path)
    finally:
        module.train(was_training)
        tmp.unlink(missing_ok=True)

    data = path.read_bytes()
    return {
        'path': str(path),
        'exporter': exporter,
        'opset': opset,
        'max_abs_diff': diff,
        'atol': atol,
        'batch_sizes': batch_sizes,
        'file_bytes': len(data),
        'sha256': hashlib.sha256(data).hexdigest(),
        'inputs': _io_figures(model.graph.input),
        'outputs': _io_figures(model.graph.output),
        'seconds': round(time.perf_counter() - t_start, 3),
        'versions': {'torch': torch.__version__, 'onnx': onnx.__version__,
                     'onnxruntime': ort.__version__},
    }


# --------------------------------------------------------------------------- export


def _export(torch: Any, module: Any, args: tuple, tmp: Path, input_names: list[str],
            output_names: list[str], opset: int, exporter: str) -> None:
    try:
        if exporter == 'torchscript':
            axes = {name: {0: BATCH_AXIS} for name in input_names + output_names}
            with _quiet_export():
                torch.onnx.export(module, args, str(tmp), dynamo=False,
                                  input_names=input_names, output_names=output_names,
                                  dynamic_axes=axes, opset_version=opset,
                                  do_constant_folding=True)
        else:
            try:
                import onnxscript  # noqa: F401 - the dynamo exporter needs it
            except ImportError:
                raise ExportError("the dynamo exporter needs the onnxscript package; "
                                  "pip install onnxscript or use exporter='torchscript'"
                                  ) from None
            batch = torch.export.Dim(BATCH_AXIS)
            shapes = tuple({0: batch} for _ in args)
            with _quiet_export():
                program = torch.onnx.export(module, args, dynamo=True, input_names=input_names,
                                            output_names=output_names, dynamic_shapes=shapes,
                                            opset_version=opset, external_data=False,
                                            verbose=False)
                program.save(str(tmp), external_data=False)
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - exporters raise many types
        other = 'dynamo' if exporter == 'torchscript' else 'torchscript'
        raise ExportError(f'torch could not export {type(module).__name__} with the '
                          f'{exporter} exporter ({_first_line(err)}); simplify the forward '
                          f"pass or try exporter='{other}'") from err


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Hide the exporters' deprecation notices, progress lines and registry warnings."""
    loggers = [logging.getLogger(name) for name in ('torch.onnx', 'torch.export',
                                                    'torch._dynamo', 'onnxscript')]
    levels = [lg.level for lg in loggers]
    sink = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter('ignore')
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# --------------------------------------------------------------------------- parity


def _as_tuple(inputs: Any, torch: Any) -> tuple:
    items = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    out = []
    for item in items:
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(np.ascontiguousarray(item, dtype=np.float32))
        elif not isinstance(item, torch.Tensor):
            raise ExportError(f'export inputs must be torch tensors or numpy arrays, got '
                              f'{type(item).__name__}; convert the data first')
        out.append(item.detach().cpu().float() if item.is_floating_point() else item.cpu())
    return tuple(out)


def _parity_batches(checks: tuple, torch: Any) -> list[tuple]:
    """The parity inputs as given, their first row alone, and a batch of a third size."""
    size = int(checks[0].shape[0])
    batches = [checks, tuple(c[:1] for c in checks)]
    other = 3 if size != 3 else 5
    idx = torch.arange(other) % size
    batches.append(tuple(c[idx] for c in checks))
    return batches


def _torch_outputs(module: Any, batch: tuple, n_out: int, torch: Any) -> list[np.ndarray]:
    out = module(*batch)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if len(outs) != n_out:
        raise ExportError(f'the module returns {len(outs)} output(s) but {n_out} output '
                          'name(s) were given; pass one name per output')
    return [o.detach().cpu().numpy() for o in outs]


def _name_dims(model: Any, input_names: list[str], output_names: list[str],
               expected: list[list[np.ndarray]]) -> None:
    """Name axis 0 'batch' everywhere and pin output dims that torch shows are fixed."""
    for value in model.graph.input:
        if value.name in input_names:
            value.type.tensor_type.shape.dim[0].dim_param = BATCH_AXIS
    for k, value in enumerate(model.graph.output):
        shapes = [outs[k].shape for outs in expected]
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shapes[0]) or not dims:
            continue
        dims[0].dim_param = BATCH_AXIS
        for axis in range(1, len(dims)):
            sizes = {shape[axis] for shape in shapes}
            if len(sizes) == 1:
                dims[axis].dim_value = int(sizes.pop())


def _parity(ort: Any, onnx_path: Path, input_names: list[str], output_names: list[str],
            batches: list[tuple], expected: list[list[np.ndarray]],
            atol: float) -> tuple[float, list[int]]:
    try:
        session = ort.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    except Exception as err:  # noqa: BLE001
        raise ExportError(f'onnxruntime cannot load the exported model ({_first_line(err)}); '
                          'try another opset') from err
    worst, sizes = 0.0, []
    for batch, want in zip(batches, expected):
        feeds = {name: t.numpy() for name, t in zip(input_names, batch)}
        size = int(batch[0].shape[0])
        try:
            got = session.run(output_names, feeds)
        except Exception as err:  # noqa: BLE001
            raise ExportError(f'the exported model fails at batch size {size} '
                              f'({_first_line(err)}); the batch axis is not dynamic, remove '
                              'batch-size constants from forward()') from err
        for name, g, w in zip(output_names, got, want):
            if g.shape != w.shape:
                raise ExportError(f'ONNX output {name!r} has shape {list(g.shape)} but torch '
                                  f'gives {list(w.shape)} at batch size {size}; the batch axis '
                                  'is not dynamic, remove batch-size constants from forward()')
            with np.errstate(invalid='ignore'):
                delta = np.abs(g.astype(np.float64) - w.astype(np.float64))
            diff = float(np.nanmax(delta)) if delta.size else 0.0
            if np.isnan(g).sum() != np.isnan(w).sum():
                diff = float('inf')
            if not diff <= atol:
                raise ExportError(f'ONNX output {name!r} differs from torch by {diff:.3g} '
                                  f'(more than atol {atol:g}) at batch size {size}; the module '
                                  'uses an op the exporter does not reproduce (random or '
                                  'data-dependent): remove it from forward()')
            worst = max(worst, diff)
        sizes.append(size)
    return worst, sizes


def _io_figures(values: Any) -> list[dict[str, Any]]:
    out = []
    for value in values:
        dims = [d.dim_param or (d.dim_value if d.HasField('dim_value') else None)
                for d in value.type.tensor_type.shape.dim]
        out.append({'name': value.name, 'shape': dims})
    return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
