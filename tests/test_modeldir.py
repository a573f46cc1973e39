"""The model directory contract: round trip and one-sentence refusals (encdec_ros.modeldir)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from encdec_ros.cli import main as cli_main
from encdec_ros.engine import InferenceEngine
from encdec_ros.errors import ModelDirError, OutputError
from encdec_ros.modeldir import (FORMAT, ModelDir, check_output_dir, check_output_file,
                                 first_difference, save_model_dir)

ROOT = Path(__file__).resolve().parents[1]

SPEC = {
    'rate_hz': 100.0,
    'window': 16,
    'stride': 4,
    'topics': {'/imu': {'type': 'sensor_msgs/msg/Imu',
                        'fields': ['linear_acceleration.x', 'angular_velocity.z']}},
}


@pytest.fixture(scope='module')
def onnx_file(tmp_path_factory) -> Path:
    torch = pytest.importorskip('torch')
    from training.export import export_onnx

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    path = tmp_path_factory.mktemp('modeldir_onnx') / 'exported.onnx'
    export_onnx(model, torch.randn(4, 2), path, input_names=['x'], output_names=['x_hat'])
    return path


def _sections() -> dict:
    return {
        'training': {'epochs': 3, 'loss': np.float32(0.125), 'command': 'encdec train anomaly',
                     'shuffle': True},
        'spec': SPEC,
        'normalization': {'mean': np.array([0.5, -1.0], np.float32),
                          'std': np.array([2.0, 0.25])},
        'threshold': np.float64(0.042),
        'architecture': {'kind': 'mlp', 'hidden': (3,)},
    }


@pytest.fixture
def model_dir(tmp_path, onnx_file) -> Path:
    return save_model_dir(tmp_path / 'model', onnx_file=onnx_file, task='anomaly',
                          sections=_sections())


def _edit_yaml(path: Path, **changes) -> None:
    meta = yaml.safe_load((path / 'model.yaml').read_text())
    meta.update(changes)
    (path / 'model.yaml').write_text(yaml.safe_dump(meta, sort_keys=False))


def test_round_trip(model_dir, onnx_file):
    model = ModelDir.load(model_dir, task='anomaly')
    assert model.task == 'anomaly' and model.path == model_dir
    assert model.onnx_path.read_bytes() == onnx_file.read_bytes()
    assert model.meta['format'] == FORMAT
    assert model.meta['created'].endswith('+00:00')
    assert model.inputs == [{'name': 'x', 'shape': ['batch', 2]}]
    assert model.outputs == [{'name': 'x_hat', 'shape': ['batch', 2]}]
    assert model.section('threshold') == pytest.approx(0.042)
    assert model.section('training')['shuffle'] is True
    assert model.section('architecture.hidden') == [3]
    assert model.section('missing', default=None) is None
    np.testing.assert_array_equal(model.array('normalization.mean'), [0.5, -1.0])
    assert model.array('normalization.std').dtype == np.float32
    assert len(model.sha256) == 64
    model.check_spec(dict(SPEC))


@pytest.mark.parametrize('umask, mode', [(0o022, 0o644), (0o027, 0o640)])
def test_model_files_are_readable_as_the_umask_allows(tmp_path, onnx_file, umask, mode):
    """Not the 0o600 of a temporary file: a node running as another user reads them."""
    old = os.umask(umask)
    try:
        path = save_model_dir(tmp_path / 'm', onnx_file=onnx_file, task='anomaly',
                              sections=_sections())
    finally:
        os.umask(old)
    for name in ('model.onnx', 'model.yaml'):
        assert (path / name).stat().st_mode & 0o777 == mode, name


def test_ctrl_c_while_saving_waits_until_the_directory_is_whole(tmp_path, onnx_file,
                                                               monkeypatch):
    import signal

    import encdec_ros.modeldir as modeldir

    real = modeldir._atomic_write
    calls = []

    def interrupted_write(path, data):      # Ctrl-C arrives while model.onnx is written
        calls.append(path.name)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        real(path, data)

    monkeypatch.setattr(modeldir, '_atomic_write', interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        save_model_dir(tmp_path / 'm', onnx_file=onnx_file, task='anomaly',
                       sections=_sections())
    assert calls == ['model.onnx', 'model.yaml']
    ModelDir.load(tmp_path / 'm', task='anomaly')   # complete and consistent
    assert modeldir.saved_model_dirs()[-1] == tmp_path / 'm'
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_cli_says_whether_an_interrupted_training_saved_its_model(tmp_path, capsys,
                                                                 monkeypatch):
    pytest.importorskip('torch')
    import training.allocator as trainer

    argv = ['train', 'allocator', '--effectiveness', str(ROOT / 'config' / 'quad_x.yaml'),
            '--steps', '5', '--samples', '200', '--hidden', '8', '--threads', '1']
    real_export = trainer.export_allocator

    def export_then_ctrl_c(*args, **kwargs):   # Ctrl-C right after the save
        real_export(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, 'export_allocator', export_then_ctrl_c)
    out = tmp_path / 'late'
    assert cli_main([*argv, '--out', str(out)]) == 130
    err = capsys.readouterr().err
    assert f'interrupted after the model directory {out} was saved' in err, err
    ModelDir.load(out, task='allocator')

    def ctrl_c(*args, **kwargs):                # Ctrl-C while training
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, 'train_allocator', ctrl_c)
    out = tmp_path / 'early'
    assert cli_main([*argv, '--out', str(out)]) == 130
    err = capsys.readouterr().err
    assert 'interrupted before the model was saved; no model directory was written' in err
    assert not out.exists()


def test_yaml_is_plain(model_dir):
    text = (model_dir / 'model.yaml').read_text()
    assert '!!' not in text and 'python' not in text
    assert 'shuffle: true' in text
    assert 'mean: [0.5, -1.0]' in text
    assert text.startswith('format: encdec_ros/model/1\ntask: anomaly\n')
    assert not [p.name for p in model_dir.iterdir() if p.name.endswith('.tmp')]


def test_bytes_input_and_engine(tmp_path, onnx_file):
    path = save_model_dir(tmp_path / 'm', onnx_file=onnx_file.read_bytes(), task='denoise',
                          sections={})
    model = ModelDir.load(path)
    eng = model.engine(device='cpu', warmup=False)
    assert isinstance(eng, InferenceEngine)
    assert eng.run(np.zeros((3, 2), np.float32)).shape == (3, 2)


def test_refuses_to_overwrite_unless_asked(model_dir, onnx_file):
    with pytest.raises(ModelDirError, match=r'already exists and is not empty; .*overwrite=True'):
        save_model_dir(model_dir, onnx_file=onnx_file, task='anomaly', sections={})
    save_model_dir(model_dir, onnx_file=onnx_file, task='denoise', sections={}, overwrite=True)
    assert ModelDir.load(model_dir).task == 'denoise'


def test_save_refusals(tmp_path, onnx_file):
    with pytest.raises(ModelDirError, match="task 'vision' is not one of anomaly, denoise"):
        save_model_dir(tmp_path / 'a', onnx_file=onnx_file, task='vision', sections={})
    with pytest.raises(ModelDirError, match='written by save_model_dir itself'):
        save_model_dir(tmp_path / 'b', onnx_file=onnx_file, task='anomaly',
                       sections={'onnx': {}})
    with pytest.raises(ModelDirError, match=r'value at training.fn is a builtin_function'):
        save_model_dir(tmp_path / 'c', onnx_file=onnx_file, task='anomaly',
                       sections={'training': {'fn': len}})
    with pytest.raises(ModelDirError, match='cannot read the ONNX file'):
        save_model_dir(tmp_path / 'd', onnx_file=tmp_path / 'none.onnx', task='anomaly')
    with pytest.raises(ModelDirError, match='cannot load the given ONNX bytes'):
        save_model_dir(tmp_path / 'e', onnx_file=b'garbage', task='anomaly')
    assert not (tmp_path / 'c').exists()


def test_missing_path_and_not_a_directory(tmp_path, model_dir):
    with pytest.raises(ModelDirError, match='does not exist; pass the directory written by'):
        ModelDir.load(tmp_path / 'nope')
    with pytest.raises(ModelDirError, match='is not a directory; pass the model directory'):
        ModelDir.load(model_dir / 'model.onnx')


def test_missing_yaml_or_onnx(model_dir):
    (model_dir / 'model.onnx').unlink()
    with pytest.raises(ModelDirError, match='has no model.onnx; copy the whole model directory'):
        ModelDir.load(model_dir)
    (model_dir / 'model.yaml').unlink()
    with pytest.raises(ModelDirError, match='has no model.yaml'):
        ModelDir.load(model_dir)


def test_unreadable_yaml(model_dir):
    (model_dir / 'model.yaml').write_text('format: [unclosed\n')
    with pytest.raises(ModelDirError, match=r'is not readable YAML \(.*line \d+\); restore'):
        ModelDir.load(model_dir)
    (model_dir / 'model.yaml').write_text('- just\n- a list\n')
    with pytest.raises(ModelDirError, match='does not hold a mapping'):
        ModelDir.load(model_dir)


def test_python_tags_are_not_loaded(model_dir):
    (model_dir / 'model.yaml').write_text('format: !!python/object/apply:os.getcwd []\n')
    with pytest.raises(ModelDirError, match='is not readable YAML'):
        ModelDir.load(model_dir)


def test_wrong_format_version(model_dir):
    _edit_yaml(model_dir, format='encdec_ros/model/2')
    with pytest.raises(ModelDirError, match=r"has format 'encdec_ros/model/2' but this "
                                            r"encdec_ros reads 'encdec_ros/model/1'; re-export"):
        ModelDir.load(model_dir)


def test_task_mismatch(tmp_path, onnx_file):
    path = save_model_dir(tmp_path / 'den', onnx_file=onnx_file, task='denoise')
    with pytest.raises(ModelDirError, match=r'is a denoise model; the anomaly_detector needs an '
                                            r'anomaly model, trained with `encdec train '
                                            r'anomaly`'):
        ModelDir.load(path, task='anomaly')
    with pytest.raises(ModelDirError, match='the allocator needs an allocator model'):
        ModelDir.load(path, task='allocator')
    anomaly = save_model_dir(tmp_path / 'an', onnx_file=onnx_file, task='anomaly')
    with pytest.raises(ModelDirError, match='is an anomaly model; the denoiser needs a denoise'):
        ModelDir.load(anomaly, task='denoise')


def test_sha256_mismatch(model_dir, onnx_file):
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    (model_dir / 'model.onnx').write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match='the ONNX file was changed after export; re-export '
                                            'the model or restore the original file'):
        ModelDir.load(model_dir)


def test_onnx_that_onnxruntime_cannot_load(model_dir):
    import hashlib

    garbage = b'\x08\x07this is not a model'
    (model_dir / 'model.onnx').write_bytes(garbage)
    meta = yaml.safe_load((model_dir / 'model.yaml').read_text())
    meta['onnx']['sha256'] = hashlib.sha256(garbage).hexdigest()
    (model_dir / 'model.yaml').write_text(yaml.safe_dump(meta))
    with pytest.raises(ModelDirError, match=r'onnxruntime .* cannot load .*model.onnx'):
        ModelDir.load(model_dir)
    ModelDir.load(model_dir, check_onnx=False)  # the cheap path skips it


def test_yaml_io_names_must_match_onnx(model_dir):
    meta = yaml.safe_load((model_dir / 'model.yaml').read_text())
    meta['onnx']['inputs'][0]['name'] = 'window'
    (model_dir / 'model.yaml').write_text(yaml.safe_dump(meta))
    with pytest.raises(ModelDirError, match='lists the inputs window but the ONNX file has x'):
        ModelDir.load(model_dir)


def test_required_section_missing(model_dir):
    model = ModelDir.load(model_dir)
    with pytest.raises(ModelDirError, match=r"has no 'calibration.quantile', which this "
                                            r'anomaly model needs'):
        model.section('calibration.quantile')


def test_check_spec_names_first_difference(model_dir):
    model = ModelDir.load(model_dir)
    changed = {**SPEC, 'window': 32}
    with pytest.raises(ModelDirError, match=r'at spec.window: the model has 16, the given spec '
                                            r'has 32'):
        model.check_spec(changed)
    fields = {**SPEC, 'topics': {'/imu': {'type': 'sensor_msgs/msg/Imu',
                                          'fields': ['linear_acceleration.x',
                                                     'angular_velocity.y']}}}
    with pytest.raises(ModelDirError, match=r"spec.topics./imu.fields\[1\]"):
        model.check_spec(fields)
    with pytest.raises(ModelDirError, match=r'spec.stride: the model has 4, the given spec has '
                                            r'nothing'):
        model.check_spec({k: v for k, v in SPEC.items() if k != 'stride'})
    model.check_spec({**SPEC, 'rate_hz': 100, 'note': 'x'}, ignore=['note'])

    class HasToDict:
        def to_dict(self) -> dict:
            return dict(SPEC)

    model.check_spec(HasToDict())


def test_first_difference_rules():
    assert first_difference({'a': [1, 2]}, {'a': [1, 2, 3]}) == ('spec.a', '2 entries',
                                                                 '3 entries')
    assert first_difference({'a': True}, {'a': 1}) == ('spec.a', 'True', '1')
    assert first_difference({'a': 0.1 + 0.2}, {'a': 0.3}) is None
    assert first_difference({'a': 'x'}, {'a': 'x', 'b': None}) == ('spec.b', 'nothing', 'None')


# --------------------------------------------------------------------------- output paths


def _no_probe_left(*folders: Path) -> bool:
    return not [p for d in folders for p in d.iterdir() if p.name.startswith('.encdec-')]


def test_check_output_dir_accepts_new_and_existing_directories(tmp_path):
    assert check_output_dir(tmp_path / 'new' / 'deep') == tmp_path / 'new' / 'deep'
    assert not (tmp_path / 'new').exists()          # nothing is created early
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'keep.txt').write_text('x')
    check_output_dir(tmp_path / 'full')             # a report directory may hold files
    check_output_dir(tmp_path / 'empty_ok', empty=True)
    assert _no_probe_left(tmp_path, tmp_path / 'full')
    assert [p.name for p in (tmp_path / 'full').iterdir()] == ['keep.txt']


def test_check_output_dir_refusals_are_one_sentence(tmp_path):
    plain = tmp_path / 'plain.txt'
    plain.write_text('precious')
    with pytest.raises(OutputError, match=r'model directory .*plain.txt is a file, not a '
                                          r'directory; choose another --out') as info:
        check_output_dir(plain, what='model directory')
    assert '\n' not in str(info.value)
    with pytest.raises(OutputError, match=r'cannot create output directory .*plain.txt/a/b: '
                                          r'.*plain.txt is a file, not a directory; choose '
                                          r'another --out whose parent folders'):
        check_output_dir(plain / 'a' / 'b')
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'x').write_text('')
    with pytest.raises(OutputError, match='already exists and is not empty; choose another '
                                          '--out or pass --force to replace it'):
        check_output_dir(tmp_path / 'full', empty=True)
    with pytest.raises(ModelDirError, match='is a file'):
        check_output_dir(plain, error=ModelDirError)
    assert plain.read_text() == 'precious'          # loses nothing
    check_output_dir(plain, file_ok=True)           # bag --overwrite replaces a file


def _sys_refuses_entries() -> bool:
    probe = Path('/sys/encdec_write_probe')
    try:
        probe.mkdir()
    except OSError:
        return Path('/sys').is_dir()
    probe.rmdir()
    return False


def test_check_output_dir_in_a_folder_that_takes_no_entries():
    if not _sys_refuses_entries():
        pytest.skip('/sys is absent or writable here')
    with pytest.raises(OutputError, match=r'cannot write output directory /sys/encdec_x/y: '
                                          r'/sys is not writable \(.*\); choose another --out'):
        check_output_dir('/sys/encdec_x/y')


def test_check_output_file(tmp_path):
    with pytest.raises(OutputError, match='is a directory; pass a file path for --report'):
        check_output_file(tmp_path, option='--report')
    (tmp_path / 'f').write_text('a')
    with pytest.raises(OutputError, match=r'f is a file, not a directory; choose another '
                                          r'--report'):
        check_output_file(tmp_path / 'f' / 'r.json', option='--report')
    assert check_output_file(tmp_path / 'sub' / 'r.json') == tmp_path / 'sub' / 'r.json'
    check_output_file(tmp_path / 'f')               # an existing file stays as it is
    assert (tmp_path / 'f').read_text() == 'a' and _no_probe_left(tmp_path)


def test_save_model_dir_refuses_a_file_or_a_file_as_parent(tmp_path, onnx_file):
    plain = tmp_path / 'plain'
    plain.write_text('precious')
    for force in (False, True):
        with pytest.raises(ModelDirError, match='model directory .*plain is a file, not a '
                                                'directory'):
            save_model_dir(plain, onnx_file=onnx_file, task='anomaly', overwrite=force)
    with pytest.raises(ModelDirError, match=r'plain/m: .*plain is a file, not a directory'):
        save_model_dir(plain / 'm', onnx_file=onnx_file, task='anomaly')
    assert plain.read_text() == 'precious'


def _commands(tmp_path: Path, out: str) -> list[list[str]]:
    """Every command that writes --out (or --report), with inputs that do not exist: the
    output must be refused before any of them is read."""
    bag, spec = str(tmp_path / 'no.bag'), str(tmp_path / 'no.yaml')
    return [
        ['train', 'anomaly', '--bag', bag, '--spec', spec, '--out', out],
        ['train', 'anomaly', '--bag', bag, '--spec', spec, '--out', out, '--force'],
        ['train', 'denoise', '--bag', bag, '--spec', spec, '--noise', 'gaussian:0.1',
         '--out', out],
        ['train', 'allocator', '--effectiveness', spec, '--out', out],
        ['eval', 'anomaly', '--model', str(tmp_path), '--bag', bag, '--out', out],
        ['eval', 'denoise', '--model', str(tmp_path), '--bag', bag, '--out', out],
        ['eval', 'allocator', '--effectiveness', str(ROOT / 'config' / 'quad_x.yaml'),
         '--samples', '10', '--report', str(Path(out) / 'r.json')],
        ['train', 'effectiveness', '--bag', bag, '--template', spec, '--mass', '1',
         '--inertia', '1', '1', '1', '--out', str(Path(out) / 'e.yaml')],
        ['sim', '--out', out, '--duration', '2'],
        ['bag', 'from-csv', str(tmp_path / 'no.csv'), '--out', out],
        ['demo', '--out', out],
    ]


@pytest.mark.parametrize('index', range(11))
def test_every_command_refuses_an_unwritable_out_before_any_work(tmp_path, capsys, index):
    plain = tmp_path / 'plain'
    plain.write_text('precious')
    argv = _commands(tmp_path, str(plain / 'sub'))[index]
    start = time.perf_counter()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 10
    assert err.startswith('encdec: error: cannot create ') and err.count('\n') == 1, err
    assert f'{plain} is a file, not a directory' in err and 'Traceback' not in err
    assert plain.read_text() == 'precious'


@pytest.mark.parametrize('kind', ['anomaly', 'denoise', 'allocator'])
def test_train_out_that_is_a_file_says_so(tmp_path, capsys, kind):
    plain = tmp_path / 'plain'
    plain.write_text('precious')
    args = {'allocator': ['--effectiveness', str(tmp_path / 'no.yaml')]}.get(
        kind, ['--bag', str(tmp_path / 'no.bag'), '--spec', str(tmp_path / 'no.yaml')])
    for force in ([], ['--force']):
        assert cli_main(['train', kind, *args, '--out', str(plain), *force]) == 2
        err = capsys.readouterr().err
        assert f'model directory {plain} is a file, not a directory' in err
        assert 'not empty' not in err and err.count('\n') == 1
    assert plain.read_text() == 'precious'


def test_train_refuses_a_full_out_before_torch(tmp_path):
    """A full --out without --force fails before torch is even imported."""
    import subprocess
    import sys

    full = tmp_path / 'full'
    full.mkdir()
    (full / 'model.yaml').write_text('x')
    argv = ['train', 'denoise', '--bag', 'b', '--spec', 's', '--out', str(full)]
    code = ('import sys\nfrom encdec_ros.cli import main\n'
            f'rc = main({argv!r})\n'
            'sys.exit(10 + rc if "torch" in sys.modules else rc)')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert 'already exists and is not empty; choose another --out or pass --force' in \
        proc.stderr
