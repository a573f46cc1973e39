"""ONNX export: parity with torch, dynamic batch, refusals (training.export)."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip('torch')
nn = torch.nn

from encdec_ros.errors import EncdecError  # noqa: E402
from training.export import ExportError, export_onnx  # noqa: E402


class MlpAE(nn.Module):
    """(B, D) -> (B, D) through a 3-dim latent."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d, 12), nn.Tanh(), nn.Linear(12, 3))
        self.dec = nn.Sequential(nn.Linear(3, 12), nn.Tanh(), nn.Linear(12, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(x))


class SeqAE(nn.Module):
    """(B, T, D) -> (B, T, D): encoder RNN -> latent -> repeated -> decoder RNN -> per step."""

    def __init__(self, cell: str = 'lstm', d: int = 4, h: int = 8, z: int = 3) -> None:
        super().__init__()
        rnn = nn.LSTM if cell == 'lstm' else nn.GRU
        self.enc = rnn(d, h, batch_first=True)
        self.to_z = nn.Linear(h, z)
        self.from_z = nn.Linear(z, h)
        self.dec = rnn(h, h, batch_first=True)
        self.out = nn.Linear(h, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, state = self.enc(x)
        last = state[0][-1] if isinstance(state, tuple) else state[-1]  # (B, H)
        rep = self.from_z(self.to_z(last)).unsqueeze(1).expand(-1, x.shape[1], -1)
        y, _ = self.dec(rep)  # (B, T, H)
        return self.out(y)


class Noisy(nn.Module):
    """Adds fresh noise in forward: its ONNX cannot reproduce torch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + torch.rand_like(x)


class TwoInOut(nn.Module):
    """(x, u) -> (y, z): two inputs, two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.a(x) + self.b(u)
        return y, y.sum(dim=1, keepdim=True)


def _ort_run(path: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return session.run(None, feeds)


@pytest.mark.parametrize('kind', ['mlp', 'lstm', 'gru'])
def test_export_parity_and_dynamic_batch(tmp_path, kind):
    torch.manual_seed(1)
    if kind == 'mlp':
        model, shape = MlpAE(), (8,)
    else:
        model, shape = SeqAE(kind), (10, 4)
    windows = torch.randn(64, *shape)  # the "real data" of the parity check
    path = tmp_path / f'{kind}.onnx'
    figures = export_onnx(model, windows[:2], path, input_names=['x'], output_names=['x_hat'],
                          parity_inputs=windows)
    assert figures['max_abs_diff'] <= 1e-4
    assert figures['exporter'] == 'torchscript'
    assert figures['file_bytes'] == path.stat().st_size
    assert figures['inputs'] == [{'name': 'x', 'shape': ['batch', *shape]}]
    assert figures['outputs'] == [{'name': 'x_hat', 'shape': ['batch', *shape]}]
    assert 1 in figures['batch_sizes']
    onnx.checker.check_model(onnx.load(str(path)))
    model.eval()
    for batch in (1, 7, 256):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            want = model(x).numpy()
        (got,) = _ort_run(str(path), {'x': x.numpy()})
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_example_batch_of_one_still_gives_dynamic_batch(tmp_path):
    torch.manual_seed(2)
    model = SeqAE('gru')
    path = tmp_path / 'gru.onnx'
    export_onnx(model, torch.randn(1, 6, 4), path, input_names=['x'], output_names=['y'])
    (got,) = _ort_run(str(path), {'x': np.zeros((5, 6, 4), np.float32)})
    assert got.shape == (5, 6, 4)


def test_numpy_parity_inputs_and_several_inputs_outputs(tmp_path):
    torch.manual_seed(3)
    model = TwoInOut()
    x = np.random.default_rng(0).normal(size=(9, 3))  # float64 on purpose
    u = np.random.default_rng(1).normal(size=(9, 2))
    path = tmp_path / 'two.onnx'
    figures = export_onnx(model, (torch.randn(2, 3), torch.randn(2, 2)), path,
                          input_names=['x', 'u'], output_names=['y', 'z'],
                          parity_inputs=(x, u), opset=18)
    assert figures['opset'] == 18
    assert [o['shape'] for o in figures['outputs']] == [['batch', 2], ['batch', 1]]
    y, z = _ort_run(str(path), {'x': x[:4].astype(np.float32), 'u': u[:4].astype(np.float32)})
    assert y.shape == (4, 2) and z.shape == (4, 1)


def test_random_op_fails_parity_and_leaves_no_file(tmp_path):
    path = tmp_path / 'noisy.onnx'
    with pytest.raises(ExportError, match=r"ONNX output 'y' differs from torch by .* atol"):
        export_onnx(Noisy(), torch.randn(4, 4), path, input_names=['x'], output_names=['y'])
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_tight_tolerance_is_enforced(tmp_path):
    torch.manual_seed(4)
    model = SeqAE('lstm', d=4, h=32)
    with pytest.raises(ExportError, match='differs from torch'):
        export_onnx(model, torch.randn(8, 20, 4) * 100, tmp_path / 'lstm.onnx',
                    input_names=['x'], output_names=['y'], atol=0.0)


def test_export_error_is_a_user_error_and_mode_is_restored(tmp_path):
    assert issubclass(ExportError, EncdecError)
    model = MlpAE()
    model.train()
    with pytest.raises(ExportError, match='input name'):
        export_onnx(model, torch.randn(2, 8), tmp_path / 'm.onnx', input_names=['a', 'b'],
                    output_names=['y'])
    export_onnx(model, torch.randn(2, 8), tmp_path / 'm.onnx', input_names=['x'],
                output_names=['y'])
    assert model.training


def test_wrong_output_count_and_unknown_exporter(tmp_path):
    with pytest.raises(ExportError, match='returns 1 output'):
        export_onnx(MlpAE(), torch.randn(2, 8), tmp_path / 'm.onnx', input_names=['x'],
                    output_names=['y', 'z'])
    with pytest.raises(ExportError, match="use 'torchscript'"):
        export_onnx(MlpAE(), torch.randn(2, 8), tmp_path / 'm.onnx', input_names=['x'],
                    output_names=['y'], exporter='tf')


def test_dynamo_exporter(tmp_path):
    path = tmp_path / 'mlp.onnx'
    if importlib.util.find_spec('onnxscript') is None:
        with pytest.raises(ExportError, match='needs the onnxscript package'):
            export_onnx(MlpAE(), torch.randn(2, 8), path, input_names=['x'],
                        output_names=['y'], exporter='dynamo')
        return
    figures = export_onnx(MlpAE(), torch.randn(2, 8), path, input_names=['x'],
                          output_names=['y'], exporter='dynamo')
    assert figures['max_abs_diff'] <= 1e-4
    (got,) = _ort_run(str(path), {'x': np.zeros((7, 8), np.float32)})
    assert got.shape == (7, 8)
