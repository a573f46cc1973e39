"""Inference engine over ONNX Runtime: provider choice, warm-up, I/O binding, CPU fallback.

The engine runs one exported model (``model.onnx``) on the best usable device:

- ``device='auto'`` tries TensorRT, then CUDA, then the CPU. It probes quietly: a GPU is
  only asked for when the NVIDIA driver loads and reports a device (and, for TensorRT, when
  ``libnvinfer`` loads), and ONNX Runtime's logger is silenced while a GPU provider is being
  created, so a machine without a GPU prints nothing.
- ``device='cuda'`` or ``'tensorrt'`` asks for that provider; where it cannot be had (no GPU,
  no driver, libraries missing) the engine runs on the next one (TensorRT ▸ CUDA ▸ CPU),
  logs a warning and keeps the reason in :attr:`InferenceEngine.fallback`, so a robot
  launched with ``device:=cuda`` still runs (and its node says so in /diagnostics).
- ``device='cuda_strict'`` or ``'tensorrt_strict'`` must get exactly that provider, else
  :class:`EngineError`.
- ``device='cpu'`` never touches the GPU libraries.

The hot path (:meth:`InferenceEngine.run`) is one ONNX Runtime call plus a latency sample in
a ring buffer; it is meant for per-message use in ROS callbacks at up to about 1 kHz.

This module never imports torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import io
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from encdec_ros.errors import ConfigError, EngineError

DEVICES = ('auto', 'tensorrt', 'cuda', 'cpu', 'tensorrt_strict', 'cuda_strict')
"""Device names: ``auto``; ``tensorrt`` and ``cuda`` (fall back, with a warning, when the
provider cannot be had); their ``_strict`` forms (fail instead); ``cpu``."""
PROVIDERS = {
    'tensorrt': 'TensorrtExecutionProvider',
    'cuda': 'CUDAExecutionProvider',
    'cpu': 'CPUExecutionProvider',
}
DEFAULT_THREADS = 1
"""Intra-op threads on the CPU: one is fastest for tiny models at batch 1 (see bench)."""
DEFAULT_MAX_BATCH = 1024
"""Largest batch the TensorRT optimisation profile covers (offline evaluation batches)."""
WARMUP_RUNS = 3
LATENCY_WINDOW = 1024  # recent calls kept for latency_ms(); a power of two

_ORT_DEFAULT_SEVERITY = 2  # ONNX Runtime's own default (warning)
_FALLBACK_ORDER = {'tensorrt': ('tensorrt', 'cuda', 'cpu'), 'cuda': ('cuda', 'cpu')}
log = logging.getLogger(__name__)
_TRT_LIBS = ('libnvinfer.so.10', 'libnvinfer.so.11', 'libnvinfer.so')
_NP_DTYPES = {
    'tensor(float)': np.float32,
    'tensor(double)': np.float64,
    'tensor(float16)': np.float16,
    'tensor(int64)': np.int64,
    'tensor(int32)': np.int32,
    'tensor(bool)': np.bool_,
    'tensor(uint8)': np.uint8,
    'tensor(int8)': np.int8,
}
# A 75-byte ONNX model (y = Relu(x), x: float[1, 4], opset 13) used to check that a provider
# can really be created, without needing the onnx package on the robot.
_PROBE_MODEL = (
    b'\x08\x07\x12\x00:?\n\x0c\n\x01x\x12\x01y"\x04Relu\x12\x05probeZ\x13\n\x01x\x12\x0e'
    b'\n\x0c\x08\x01\x12\x08\n\x02\x08\x01\n\x02\x08\x04b\x13\n\x01y\x12\x0e\n\x0c\x08\x01'
    b'\x12\x08\n\x02\x08\x01\n\x02\x08\x04B\x04\n\x00\x10\r'
)


# --------------------------------------------------------------------------- probing


@functools.lru_cache(maxsize=1)
def _cuda_driver() -> tuple[int, str, str]:
    """Ask the NVIDIA driver directly (no ONNX Runtime involved).

    Returns:
        (number of CUDA devices, driver version text, reason when there are none).
    """
    try:
        lib = ctypes.CDLL('libcuda.so.1')
    except OSError:
        return 0, '', 'no NVIDIA driver (libcuda.so.1 cannot be loaded)'
    try:
        rc = lib.cuInit(0)
        if rc != 0:
            return 0, '', f'the NVIDIA driver failed to initialise (cuInit error {rc})'
        version = ctypes.c_int(0)
        text = ''
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value:
            text = f'{version.value // 1000}.{version.value % 1000 // 10}'
        count = ctypes.c_int(0)
        rc = lib.cuDeviceGetCount(ctypes.byref(count))
    except AttributeError:  # a stub libcuda without the driver API
        return 0, '', 'libcuda.so.1 is not a usable NVIDIA driver'
    if rc != 0 or count.value < 1:
        return 0, text, 'the NVIDIA driver sees no CUDA device (check CUDA_VISIBLE_DEVICES)'
    return count.value, text, ''


@functools.lru_cache(maxsize=1)
def _tensorrt_library() -> str:
    """Return '' when a TensorRT runtime library loads, else the reason it does not."""
    for name in _TRT_LIBS:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return ''
    return f'TensorRT is not installed ({_TRT_LIBS[0]} cannot be loaded)'


@functools.lru_cache(maxsize=1)
def _preload_gpu_libraries() -> None:
    """Let onnxruntime-gpu find CUDA/cuDNN installed as pip packages (quietly, once)."""
    preload = getattr(ort, 'preload_dlls', None)
    if preload is None:
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        try:
            preload()
        except Exception:  # noqa: BLE001 - a failed preload shows up as an unusable provider
            pass


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """Silence ONNX Runtime's default logger (it prints provider load failures on fd 2)."""
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)


def _gpu_reason(device: str) -> str:
    """Return '' when the driver side of ``device`` looks usable, else why not."""
    if PROVIDERS[device] not in ort.get_available_providers():
        return (f'this onnxruntime build has no {PROVIDERS[device]} '
                '(install onnxruntime-gpu)')
    count, _, reason = _cuda_driver()
    if count < 1:
        return reason
    if device == 'tensorrt':
        return _tensorrt_library()
    return ''


@functools.lru_cache(maxsize=None)
def _provider_usable(device: str) -> str:
    """Create a session for a tiny model on ``device``; '' when it works, else the reason."""
    if device == 'cpu':
        return ''
    reason = _gpu_reason(device)
    if reason:
        return reason
    _preload_gpu_libraries()
    providers = [PROVIDERS['cuda']]
    if device == 'tensorrt':
        providers.insert(0, PROVIDERS['tensorrt'])
    try:
        with _quiet_ort():
            sess = ort.InferenceSession(_PROBE_MODEL, _session_options(1, quiet=True),
                                        providers=providers + ['CPUExecutionProvider'],
                                        enable_fallback=0)
    except Exception as err:  # noqa: BLE001 - any failure means "not usable"
        return f'onnxruntime cannot create {PROVIDERS[device]} ({_first_line(err)})'
    if PROVIDERS[device] not in sess.get_providers():
        return (f'onnxruntime cannot create {PROVIDERS[device]} (its CUDA, cuDNN or TensorRT '
                'libraries are missing or do not match this onnxruntime-gpu)')
    return ''


def available_devices() -> dict[str, Any]:
    """Report which devices the engine can use here, for ``encdec inspect`` and diagnostics.

    Returns:
        A plain dict: ``usable`` (device names in the order 'auto' would try them),
        ``devices`` ({name: {'usable': bool, 'reason': str}}), ``auto`` (the device 'auto'
        picks), ``cuda_devices``, ``cuda_driver``, ``onnxruntime`` (version) and
        ``providers`` (what this onnxruntime build contains).
    """
    count, driver, _ = _cuda_driver()
    devices = {}
    for name in ('tensorrt', 'cuda', 'cpu'):
        reason = _provider_usable(name)
        devices[name] = {'usable': not reason, 'reason': reason}
    usable = [name for name, d in devices.items() if d['usable']]
    return {
        'usable': usable,
        'auto': usable[0],
        'devices': devices,
        'cuda_devices': count,
        'cuda_driver': driver,
        'onnxruntime': ort.__version__,
        'providers': list(ort.get_available_providers()),
    }


# --------------------------------------------------------------------------- session set-up


_ORT_NOISE = (
    re.compile(r'^(?:Error in execution: )?/\S+:\d+\s+.*?\)\s+'),  # source file:line fn()
    re.compile(r'^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*'),  # [..] : 7 : KIND :
)


def ort_message(err: BaseException) -> str:
    """The first line of an onnxruntime error without its source location and code."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    for pattern in _ORT_NOISE:
        text = pattern.sub('', text)
    return text.strip() or type(err).__name__


_first_line = ort_message


def _session_options(threads: int, *, quiet: bool = False) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Worker threads that spin between calls burn a core on the robot for no gain at 1 kHz.
    opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
    # Warnings such as "some nodes were not assigned to the preferred provider" are expected
    # for shape ops under CUDA/TensorRT; keep errors.
    opts.log_severity_level = 4 if quiet else 3
    return opts


def _dims(shape: Sequence[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


def _model_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open('rb') as fh:
        for block in iter(lambda: fh.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _writable_dir(preferred: Path, fallback: Path) -> Path:
    for candidate in (preferred, fallback):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    return fallback


class _BoundRunner:
    """Run through an IOBinding that keeps input buffers on the device between calls.

    Inputs are copied into a persistent device OrtValue (reallocated only when the shape
    changes), outputs are bound on the device and copied back after the run. Works with
    ``device_type='cpu'`` too, which is how it is tested without a GPU. Not thread-safe.
    """

    def __init__(self, session: ort.InferenceSession, output_names: Sequence[str],
                 device_type: str, device_id: int) -> None:
        self._session = session
        self._device = (device_type, device_id)
        self._binding = session.io_binding()
        self._output_names = list(output_names)
        self._inputs: dict[str, ort.OrtValue] = {}

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        binding = self._binding
        reshaped = False
        for name, array in feeds.items():
            value = self._inputs.get(name)
            if value is None or value.shape() != list(array.shape):
                # A buffer of our own: on the CPU, ortvalue_from_numpy would alias the
                # caller's array and update_inplace would then overwrite it.
                value = ort.OrtValue.ortvalue_from_shape_and_type(
                    array.shape, array.dtype.type, *self._device)
                self._inputs[name] = value
                binding.bind_ortvalue_input(name, value)
                reshaped = True
            value.update_inplace(array)
        if reshaped:
            # Outputs stay allocated after a run and are reused while the shapes hold.
            binding.clear_binding_outputs()
            for name in self._output_names:
                binding.bind_output(name, *self._device)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


# --------------------------------------------------------------------------- engine


class InferenceEngine:
    """One ONNX model on one ONNX Runtime session, with provider choice and warm-up.

    Args:
        onnx_path: The ``.onnx`` file.
        device: 'auto' (TensorRT ▸ CUDA ▸ CPU, probed quietly); 'tensorrt' or 'cuda' (that
            provider, else the next one down with a warning, see :attr:`fallback`);
            'tensorrt_strict' or 'cuda_strict' (that provider or :class:`EngineError`); 'cpu'.
        threads: Intra-op threads; default :data:`DEFAULT_THREADS`.
        warmup: Run the model this many times (True: :data:`WARMUP_RUNS`) at batch 1 with
            zeros of its static dims before returning.
        device_id: CUDA device index for 'cuda' and 'tensorrt'.
        trt_cache_dir: Where TensorRT keeps built engines; default ``trt_cache/<sha256[:16]>``
            beside the model (or under ``~/.cache/encdec_ros`` when that is read-only).
        trt_fp16: Let TensorRT use fp16 kernels (off: results stay comparable with the CPU).
        max_batch: Largest batch in the TensorRT optimisation profile.
        io_binding: Use a persistent IOBinding; default on for GPU providers, off on the CPU
            (plain ``run`` is as fast there).
    """

    def __init__(self, onnx_path: str | Path, *, device: str = 'auto',
                 threads: int | None = None, warmup: bool | int = True, device_id: int = 0,
                 trt_cache_dir: str | Path | None = None, trt_fp16: bool = False,
                 max_batch: int = DEFAULT_MAX_BATCH, io_binding: bool | None = None) -> None:
        if device not in DEVICES:
            raise ConfigError(f'device {device!r} is not one of {", ".join(DEVICES)}; '
                              "use 'auto' unless you need to force one")
        self.fallback = ''
        """Why the engine does not run on the device asked for ('' when it does)."""
        threads = DEFAULT_THREADS if threads is None else threads
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
            raise ConfigError(f'threads must be a whole number >= 0 (0: one per core), '
                              f'got {threads!r}')
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise EngineError(f'ONNX model {self.path} does not exist; pass the model.onnx '
                              'of an exported model directory')
        self.device = device
        self.threads = threads
        self.device_id = device_id
        self._trt_fp16 = trt_fp16
        self._max_batch = max_batch
        self._trt_cache_dir = Path(trt_cache_dir) if trt_cache_dir else None
        self.trt_cache_dir: Path | None = None  # set when TensorRT is tried

        self._session = self._open(device)
        self.providers: list[str] = list(self._session.get_providers())
        self.provider: str = self.providers[0]

        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        self.input_names: list[str] = [i.name for i in inputs]
        self.output_names: list[str] = [o.name for o in outputs]
        self.input_shapes: list[tuple[int | None, ...]] = [_dims(i.shape) for i in inputs]
        self.output_shapes: list[tuple[int | None, ...]] = [_dims(o.shape) for o in outputs]
        self.input_dtypes: list[np.dtype] = [np.dtype(_NP_DTYPES.get(i.type, np.float32))
                                             for i in inputs]
        self._in0 = self.input_names[0]
        self._dtype0 = self.input_dtypes[0]
        self._first_out = self.output_names[:1]

        on_gpu = self.provider != 'CPUExecutionProvider'
        use_binding = on_gpu if io_binding is None else io_binding
        self.io_binding = bool(use_binding)
        self._bound_first = self._bound_all = None
        if use_binding:
            device_type = 'cuda' if on_gpu else 'cpu'
            self._bound_first = _BoundRunner(self._session, self._first_out, device_type,
                                             device_id)
            self._bound_all = _BoundRunner(self._session, self.output_names, device_type,
                                           device_id)

        self._lat = np.zeros(LATENCY_WINDOW, dtype=np.float64)
        self._lat_n = 0
        runs = WARMUP_RUNS if warmup is True else int(warmup)
        if runs > 0:
            self.warmup(runs)

    # ------------------------------------------------------------------ construction

    def _open(self, device: str) -> ort.InferenceSession:
        if device == 'auto':
            for candidate in ('tensorrt', 'cuda'):
                if _gpu_reason(candidate):
                    continue
                try:
                    return self._create(candidate)
                except EngineError:
                    continue
            return self._create('cpu')
        if device == 'cpu':
            return self._create('cpu')
        if device.endswith('_strict'):
            wanted = device.removesuffix('_strict')
            reason = _gpu_reason(wanted)
            if reason:
                raise EngineError(f"device {device!r} is not usable here: {reason}; "
                                  f"use device {wanted!r} to fall back, 'auto' or 'cpu'")
            return self._create(wanted)
        reason = ''
        for candidate in _FALLBACK_ORDER[device]:
            problem = _gpu_reason(candidate) if candidate != 'cpu' else ''
            if not problem:
                try:
                    session = self._create(candidate)
                except EngineError as err:
                    if candidate == 'cpu':
                        raise
                    problem = str(err).split('; use device')[0]
                else:
                    if candidate != device:
                        self.fallback = (f'device {device!r} is not usable here ({reason}); '
                                         f'running on {PROVIDERS[candidate]} instead (device '
                                         f"'{device}_strict' fails instead)")
                        log.warning('%s', self.fallback)
                    return session
            reason = reason or problem
        raise AssertionError('the CPU provider is always tried last')  # pragma: no cover

    def _providers(self, device: str) -> list[Any]:
        cuda = ('CUDAExecutionProvider', {'device_id': self.device_id})
        if device == 'cpu':
            return ['CPUExecutionProvider']
        if device == 'cuda':
            return [cuda, 'CPUExecutionProvider']
        return [('TensorrtExecutionProvider', self._trt_options()), cuda, 'CPUExecutionProvider']

    def _trt_options(self) -> dict[str, Any]:
        cache = self._trt_cache_dir
        if cache is None:
            # TensorRT does not notice a changed model on its own: key the cache by content.
            key = _model_sha256(self.path)[:16]
            cache = _writable_dir(self.path.parent / 'trt_cache' / key,
                                  Path.home() / '.cache' / 'encdec_ros' / 'trt' / key)
        else:
            cache.mkdir(parents=True, exist_ok=True)
        opts: dict[str, Any] = {
            'device_id': self.device_id,
            'trt_fp16_enable': self._trt_fp16,
            'trt_engine_cache_enable': True,
            'trt_engine_cache_path': str(cache),
            'trt_timing_cache_enable': True,
            'trt_timing_cache_path': str(cache),
        }
        profile = self._trt_profile()
        if profile:
            opts.update(profile)
        self.trt_cache_dir = cache
        return opts

    def _trt_profile(self) -> dict[str, str]:
        """One optimisation profile from batch 1 to max_batch, so no rebuild mid-run."""
        try:
            probe = ort.InferenceSession(str(self.path), providers=['CPUExecutionProvider'])
        except Exception:  # noqa: BLE001 - the real session creation reports it
            return {}
        low, opt, high = [], [], []
        for item in probe.get_inputs():
            dims = _dims(item.shape)
            if not dims or any(d is None for d in dims[1:]):
                return {}  # only a dynamic batch axis is described here
            rest = ''.join(f'x{d}' for d in dims[1:])
            low.append(f'{item.name}:1{rest}')
            opt.append(f'{item.name}:1{rest}')
            high.append(f'{item.name}:{self._max_batch}{rest}')
        return {'trt_profile_min_shapes': ','.join(low), 'trt_profile_opt_shapes': ','.join(opt),
                'trt_profile_max_shapes': ','.join(high)}

    def _create(self, device: str) -> ort.InferenceSession:
        providers = self._providers(device)
        gpu = device != 'cpu'
        if gpu:
            _preload_gpu_libraries()
        options = _session_options(self.threads, quiet=gpu)
        try:
            with _quiet_ort() if gpu else contextlib.nullcontext():
                session = ort.InferenceSession(str(self.path), options, providers=providers,
                                               enable_fallback=0)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises several unrelated types
            if gpu:
                raise EngineError(f'onnxruntime cannot run {self.path.name} on {device!r} '
                                  f"({_first_line(err)}); use device 'auto' or 'cpu'") from err
            raise EngineError(f'onnxruntime cannot load {self.path} ({_first_line(err)}); '
                              're-export the model with this version of encdec_ros') from err
        wanted = PROVIDERS[device]
        if wanted not in session.get_providers():
            raise EngineError(f'onnxruntime could not create {wanted} for {self.path.name} '
                              '(CUDA, cuDNN or TensorRT libraries missing or mismatched); '
                              "use device 'auto' or 'cpu'")
        return session

    def warmup(self, runs: int = WARMUP_RUNS) -> None:
        """Run the model ``runs`` times at batch 1 on zeros (dynamic dims taken as 1)."""
        feeds = {name: np.zeros(tuple(1 if d is None else d for d in shape), dtype=dtype)
                 for name, shape, dtype in zip(self.input_names, self.input_shapes,
                                               self.input_dtypes)}
        for _ in range(runs):
            self.run_many(feeds)
        self.reset_latency()  # warm-up calls do not count in the statistics

    # ------------------------------------------------------------------ hot path

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run a single-input model on ``x`` and return its first output.

        Args:
            x: The input batch, e.g. (B, D) or (B, T, D); converted to the model's dtype
                (float32) only when it is not already.

        Returns:
            The first output as a numpy array.
        """
        t0 = time.perf_counter()
        if x.dtype != self._dtype0 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=self._dtype0)
        try:
            if self._bound_first is not None:
                out = self._bound_first({self._in0: x})[0]
            else:
                out = self._session.run(self._first_out, {self._in0: x})[0]
        except Exception as err:  # noqa: BLE001
            raise self._run_error(err, {self._in0: x}) from err
        self._lat[self._lat_n & (LATENCY_WINDOW - 1)] = time.perf_counter() - t0
        self._lat_n += 1
        return out

    def run_many(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run with named inputs and return every output by name."""
        t0 = time.perf_counter()
        feeds = {name: np.ascontiguousarray(arr, dtype=self._dtype_of(name))
                 for name, arr in feeds.items()}
        try:
            if self._bound_all is not None:
                outs = self._bound_all(feeds)
            else:
                outs = self._session.run(self.output_names, feeds)
        except Exception as err:  # noqa: BLE001
            raise self._run_error(err, feeds) from err
        self._lat[self._lat_n & (LATENCY_WINDOW - 1)] = time.perf_counter() - t0
        self._lat_n += 1
        return dict(zip(self.output_names, outs))

    def _dtype_of(self, name: str) -> np.dtype:
        try:
            return self.input_dtypes[self.input_names.index(name)]
        except ValueError:
            raise EngineError(f'{self.path.name} has no input {name!r}; its inputs are '
                              f'{", ".join(self.input_names)}') from None

    def _run_error(self, err: Exception, feeds: Mapping[str, np.ndarray]) -> EngineError:
        if len(self.input_names) != 1 and set(feeds) != set(self.input_names):
            return EngineError(f'{self.path.name} has the inputs {", ".join(self.input_names)};'
                               ' feed all of them with run_many()')
        for name, shape in zip(self.input_names, self.input_shapes):
            arr = feeds.get(name)
            if arr is None:
                continue
            fits = arr.ndim == len(shape) and all(
                want is None or want == got for want, got in zip(shape, arr.shape))
            if not fits:
                want = '[' + ', '.join('batch' if d is None else str(d) for d in shape) + ']'
                return EngineError(f'{self.path.name} expects input {name!r} of shape {want}, '
                                   f'got {list(arr.shape)}; check that the spec\'s window and '
                                   'channels match the model')
        return EngineError(f'onnxruntime failed to run {self.path.name} '
                           f'({_first_line(err)}); check the input values and shapes')

    # ------------------------------------------------------------------ diagnostics

    def latency_ms(self) -> dict[str, float]:
        """Latency of the recent calls (up to :data:`LATENCY_WINDOW`) in milliseconds.

        Returns:
            ``{'count', 'mean', 'p50', 'p99', 'max'}``; zeros before the first call.
        """
        n = min(self._lat_n, LATENCY_WINDOW)
        if n == 0:
            return {'count': 0, 'mean': 0.0, 'p50': 0.0, 'p99': 0.0, 'max': 0.0}
        recent = self._lat[:n] * 1e3
        p50, p99 = np.percentile(recent, (50, 99))
        return {'count': int(self._lat_n), 'mean': float(recent.mean()), 'p50': float(p50),
                'p99': float(p99), 'max': float(recent.max())}

    def reset_latency(self) -> None:
        """Forget the recorded call latencies."""
        self._lat_n = 0

    def describe(self) -> dict[str, Any]:
        """A plain dict for diagnostics and ``encdec inspect``."""
        return {
            'model': str(self.path),
            'device': self.device,
            'provider': self.provider,
            'fallback': self.fallback,
            'threads': self.threads,
            'io_binding': self.io_binding,
            'inputs': [{'name': n, 'shape': list(s)} for n, s in
                       zip(self.input_names, self.input_shapes)],
            'outputs': [{'name': n, 'shape': list(s)} for n, s in
                        zip(self.output_names, self.output_shapes)],
        }

    def __repr__(self) -> str:
        return (f'InferenceEngine({str(self.path)!r}, device={self.device!r}, '
                f'provider={self.provider!r})')
