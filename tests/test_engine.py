"""InferenceEngine on real torch-exported models: CPU path, probing, fallback, refusals."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip('torch')
nn = torch.nn

from encdec_ros import engine as engine_mod  # noqa: E402
from encdec_ros.engine import InferenceEngine, available_devices  # noqa: E402
from encdec_ros.errors import ConfigError, EngineError  # noqa: E402
from training.export import export_onnx  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HAS_CUDA = available_devices()['devices']['cuda']['usable']


class MlpAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2), nn.Linear(2, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LstmAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.LSTM(3, 6, batch_first=True)
        self.dec = nn.LSTM(6, 6, batch_first=True)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.enc(x)
        y, _ = self.dec(h[-1].unsqueeze(1).expand(-1, x.shape[1], -1))
        return self.out(y)


class TwoIn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.a(x) * u
        return y, y.mean(dim=1, keepdim=True)


@pytest.fixture(scope='module')
def models(tmp_path_factory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp('engine_models')
    out = {}
    for name, module, example, ins, outs in (
            ('mlp', MlpAE(), (torch.randn(4, 6),), ['x'], ['x_hat']),
            ('lstm', LstmAE(), (torch.randn(4, 12, 3),), ['x'], ['x_hat']),
            ('two', TwoIn(), (torch.randn(4, 3), torch.randn(4, 2)), ['x', 'u'], ['y', 'm'])):
        export_onnx(module, example, root / f'{name}.onnx', input_names=ins, output_names=outs)
        out[name] = root / f'{name}.onnx'
    return out


def _direct(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return session.run(None, feeds)


@pytest.mark.parametrize('name,shape', [('mlp', (6,)), ('lstm', (12, 3))])
@pytest.mark.parametrize('io_binding', [False, True])
def test_cpu_run_equals_onnxruntime(models, name, shape, io_binding):
    eng = InferenceEngine(models[name], device='cpu', io_binding=io_binding)
    assert eng.provider == 'CPUExecutionProvider'
    assert eng.input_names == ['x'] and eng.output_names == ['x_hat']
    assert eng.input_shapes == [(None, *shape)]
    rng = np.random.default_rng(0)
    for batch in (1, 7, 1, 256):
        x = rng.normal(size=(batch, *shape)).astype(np.float32)
        keep = x.copy()
        got = eng.run(x)
        (want,) = _direct(models[name], {'x': x})
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(x, keep)  # the caller's array is never written


def test_run_converts_dtype_and_layout(models):
    eng = InferenceEngine(models['mlp'], device='cpu')
    x64 = np.random.default_rng(1).normal(size=(6, 3)).T  # float64, not C-contiguous
    (want,) = _direct(models['mlp'], {'x': np.ascontiguousarray(x64, dtype=np.float32)})
    np.testing.assert_array_equal(eng.run(x64), want)


@pytest.mark.parametrize('io_binding', [False, True])
def test_run_many_with_two_inputs(models, io_binding):
    eng = InferenceEngine(models['two'], io_binding=io_binding)
    feeds = {'x': np.ones((5, 3), np.float32), 'u': np.full((5, 2), 2.0, np.float32)}
    out = eng.run_many(feeds)
    want = _direct(models['two'], feeds)
    assert list(out) == ['y', 'm']
    np.testing.assert_array_equal(out['y'], want[0])
    np.testing.assert_array_equal(out['m'], want[1])
    with pytest.raises(EngineError, match='feed all of them with run_many'):
        eng.run(feeds['x'])
    with pytest.raises(EngineError, match="has no input 'v'"):
        eng.run_many({'v': feeds['x']})


def test_auto_gives_cpu_here_and_latency_figures(models):
    eng = InferenceEngine(models['lstm'])
    if not HAS_CUDA:
        assert eng.provider == 'CPUExecutionProvider'
        assert eng.providers == ['CPUExecutionProvider']
    assert eng.latency_ms()['count'] == 0  # warm-up does not count
    x = np.zeros((1, 12, 3), np.float32)
    for _ in range(50):
        eng.run(x)
    lat = eng.latency_ms()
    assert lat['count'] == 50
    assert 0 < lat['p50'] <= lat['p99'] <= lat['max']
    info = eng.describe()
    assert info['inputs'] == [{'name': 'x', 'shape': [None, 12, 3]}]


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_auto_is_quiet_on_stderr(models):
    proc = _run_python(f"""
        import sys
        from encdec_ros.engine import InferenceEngine, available_devices
        from encdec_ros.modeldir import ModelDir
        eng = InferenceEngine({str(models['mlp'])!r})
        print(eng.provider, available_devices()['auto'], 'torch' in sys.modules)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[2] == 'False'  # the runtime never imports torch
    if not HAS_CUDA:
        assert proc.stdout.split()[:2] == ['CPUExecutionProvider', 'cpu']
    assert 'CUDA' not in proc.stderr and 'TensorRT' not in proc.stderr
    assert proc.stderr == ''


@pytest.mark.skipif(HAS_CUDA, reason='a usable GPU is present')
def test_naive_cuda_request_is_loud_which_is_why_we_probe(models):
    proc = _run_python(f"""
        import onnxruntime as ort
        ort.InferenceSession({str(models['mlp'])!r},
                             providers=['CUDAExecutionProvider', 'CPUExecutionProvider'])
    """)
    assert 'CUDA' in proc.stderr


@pytest.mark.skipif(HAS_CUDA, reason='a usable GPU is present')
@pytest.mark.parametrize('device', ['cuda_strict', 'tensorrt_strict'])
def test_strict_gpu_request_without_gpu_is_refused(models, device, capfd):
    with pytest.raises(EngineError, match=f"device '{device}' is not usable here: .*; use "
                                          f"device '{device[:-7]}' to fall back, 'auto' or "
                                          "'cpu'"):
        InferenceEngine(models['mlp'], device=device)
    assert 'CUDA' not in capfd.readouterr().err


@pytest.mark.skipif(HAS_CUDA, reason='a usable GPU is present')
@pytest.mark.parametrize('device', ['cuda', 'tensorrt'])
def test_gpu_request_without_gpu_runs_on_the_cpu_and_says_so(models, device, capfd, caplog):
    with caplog.at_level('WARNING', logger='encdec_ros.engine'):
        eng = InferenceEngine(models['mlp'], device=device)
    assert eng.provider == 'CPUExecutionProvider' and eng.device == device
    assert eng.fallback.startswith(f"device '{device}' is not usable here (")
    assert 'running on CPUExecutionProvider instead' in eng.fallback
    assert f"'{device}_strict' fails instead" in eng.fallback
    assert eng.describe()['fallback'] == eng.fallback
    assert [r.getMessage() for r in caplog.records] == [eng.fallback]
    assert 'CUDA' not in capfd.readouterr().err
    assert InferenceEngine(models['mlp'], device='cpu').fallback == ''


@pytest.mark.skipif(HAS_CUDA, reason='a usable GPU is present')
def test_driver_present_but_provider_broken_falls_back_quietly(models, monkeypatch, capfd):
    """Pretend the driver sees a GPU: onnxruntime then really fails to load its CUDA
    libraries, which 'auto' must survive silently and 'cuda' must refuse in one sentence."""
    monkeypatch.setattr(engine_mod, '_cuda_driver', lambda: (1, '13.0', ''))
    monkeypatch.setattr(engine_mod, '_tensorrt_library', lambda: '')
    eng = InferenceEngine(models['mlp'])
    assert eng.provider == 'CPUExecutionProvider'
    with pytest.raises(EngineError, match="use device 'auto' or 'cpu'"):
        InferenceEngine(models['mlp'], device='cuda_strict')
    with pytest.raises(EngineError, match="on 'tensorrt'.*use device 'auto' or 'cpu'"):
        InferenceEngine(models['mlp'], device='tensorrt_strict')
    fell = InferenceEngine(models['mlp'], device='tensorrt')
    assert fell.provider == 'CPUExecutionProvider'
    assert "device 'tensorrt' is not usable here (onnxruntime cannot run" in fell.fallback
    engine_mod._provider_usable.cache_clear()
    try:
        report = available_devices()
    finally:
        engine_mod._provider_usable.cache_clear()
    assert report['usable'] == ['cpu']
    assert 'onnxruntime cannot create' in report['devices']['cuda']['reason']
    err = capfd.readouterr().err
    assert 'CUDA' not in err and 'EP Error' not in err


def test_available_devices_report():
    report = available_devices()
    assert report['devices']['cpu'] == {'usable': True, 'reason': ''}
    assert report['auto'] == report['usable'][0]
    assert report['onnxruntime'] == ort.__version__
    if not HAS_CUDA:
        assert report['usable'] == ['cpu']
        assert report['devices']['cuda']['reason']


def test_trt_options_have_cache_profile_and_fp16_off(models, tmp_path):
    eng = InferenceEngine(models['lstm'], device='cpu', max_batch=64, trt_cache_dir=tmp_path)
    opts = eng._trt_options()
    assert opts['trt_fp16_enable'] is False
    assert opts['trt_engine_cache_enable'] is True
    assert opts['trt_engine_cache_path'] == str(tmp_path)
    assert opts['trt_profile_min_shapes'] == 'x:1x12x3'
    assert opts['trt_profile_max_shapes'] == 'x:64x12x3'
    default = InferenceEngine(models['mlp'], device='cpu', warmup=False)._trt_options()
    assert Path(default['trt_engine_cache_path']).parent == models['mlp'].parent / 'trt_cache'


def test_bad_device_threads_and_shapes(models, tmp_path):
    with pytest.raises(ConfigError, match="device 'gpu' is not one of auto, tensorrt, cuda"):
        InferenceEngine(models['mlp'], device='gpu')
    with pytest.raises(ConfigError, match='threads must be a whole number'):
        InferenceEngine(models['mlp'], threads=-1)
    eng = InferenceEngine(models['lstm'], threads=2, warmup=1)
    with pytest.raises(EngineError, match=r"expects input 'x' of shape \[batch, 12, 3\], got "
                                          r"\[1, 11, 3\]"):
        eng.run(np.zeros((1, 11, 3), np.float32))


def test_missing_and_corrupt_model(tmp_path):
    with pytest.raises(EngineError, match='does not exist'):
        InferenceEngine(tmp_path / 'nope.onnx')
    bad = tmp_path / 'bad.onnx'
    bad.write_bytes(b'not an onnx model')
    with pytest.raises(EngineError, match='onnxruntime cannot load .*re-export'):
        InferenceEngine(bad, device='cpu')
