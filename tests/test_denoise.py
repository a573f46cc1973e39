"""Denoising: corruption models, field setter, classical filters, training, export, eval."""

from __future__ import annotations

import array
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from encdec_ros.cli import main as cli_main
from encdec_ros.denoise.evaluate import lag, load_pairs, match_stamps, parse_span
from encdec_ros.denoise.filters import (
    BASELINES,
    ButterworthDenoiser,
    DenoiseCore,
    KalmanDenoiser,
    ModelDenoiser,
    OneEuroDenoiser,
    build_core,
    default_params,
    make_baseline,
    tune_butterworth,
    tune_kalman,
    tune_one_euro,
)
from encdec_ros.denoise.noise import NoiseSpec, parse_noise
from encdec_ros.errors import ConfigError, EncdecError, ModelDirError, SpecError
from encdec_ros.io.fields import ShortMessageError, compile_path, compile_setter, parse_path
from encdec_ros.io.spec import SignalSpec
from encdec_ros.modeldir import ModelDir
from training.sim import SimConfig, simulate, write_bag

ROOT = Path(__file__).resolve().parents[1]
IMU_FIELDS = ['linear_acceleration.x', 'linear_acceleration.y', 'linear_acceleration.z',
              'angular_velocity.x', 'angular_velocity.y', 'angular_velocity.z']


def imu_spec(window: int = 8) -> dict:
    return {'rate_hz': 200, 'window': window, 'stride': 1,
            'topics': {'/imu': {'type': 'sensor_msgs/msg/Imu', 'fields': IMU_FIELDS}}}


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    """8 s of the synthetic robot (1600 /imu and /imu/clean messages)."""
    path = tmp_path_factory.mktemp('denoise') / 'flight'
    return write_bag(simulate(SimConfig(duration_s=8.0, seed=3)), path)


@pytest.fixture(scope='module')
def model_dir(bag, tmp_path_factory):
    """A tiny MLP trained through the command line on the bag's /imu vs /imu/clean."""
    pytest.importorskip('torch')   # training is offline; the runtime tests run without it
    root = tmp_path_factory.mktemp('denoise_model')
    spec = root / 'spec.yaml'
    spec.write_text(yaml.safe_dump(imu_spec()))
    out = root / 'mlp'
    rc = cli_main(['train', 'denoise', '--bag', str(bag), '--spec', str(spec), '--out',
                   str(out), '--hidden', '16', '--layers', '1', '--epochs', '2',
                   '--threads', '1'])
    assert rc == 0
    return out


# --------------------------------------------------------------------------- noise


def test_noise_spec_string_yaml_and_mapping_agree(tmp_path):
    text = 'gaussian:0.05,spikes:0.01:2.0,quant:0.01,bias_walk:1e-4,drop:0.02'
    spec = NoiseSpec.parse(text)
    assert [c.kind for c in spec.components] == ['gaussian', 'spikes', 'quant', 'bias_walk',
                                                 'drop']
    assert spec.get('bias_walk') == (1e-4, 0.0) and spec.get('drop') == (0.02, 1.0)
    path = tmp_path / 'noise.yaml'
    path.write_text(yaml.safe_dump(spec.to_dict()))
    assert NoiseSpec.from_value(str(path)) == spec
    assert NoiseSpec.from_value(spec.to_dict()) == spec
    assert NoiseSpec.parse(spec.text) == spec
    assert parse_noise('none') is None and parse_noise(None) is None
    assert NoiseSpec.parse('relative,gaussian:0.1').relative


@pytest.mark.parametrize('text, match', [
    ('gauss:0.1', "unknown noise kind 'gauss'"),
    ('gaussian:abc', "non-number 'abc'"),
    ('gaussian', r'takes gaussian:SIGMA'),
    ('spikes:1.5:2', 'probability .* must be below 1'),
    ('quant:0', 'quantisation step .* must be positive'),
    ('gaussian:0.1,gaussian:0.2', 'appears twice'),
    ('drop:0.1:0.5', 'mean burst length'),
    ('gaussian:-1', 'non-negative'),
    ('', 'non-empty string'),
])
def test_noise_spec_errors_name_the_problem(text, match):
    with pytest.raises(ConfigError, match=match):
        NoiseSpec.parse(text)


def test_noise_components_do_what_they_say():
    rng = np.random.default_rng(0)
    clean = np.cumsum(rng.normal(0, 0.01, (40_000, 2)), axis=0) + [0.0, 5.0]
    g = NoiseSpec.parse('gaussian:0.1').apply(clean, rate_hz=100, rng=1)
    assert np.std(g - clean, axis=0) == pytest.approx([0.1, 0.1], rel=0.03)
    same = NoiseSpec.parse('gaussian:0.1').apply(clean, rate_hz=100, rng=1)
    assert np.array_equal(g, same)                                  # seeded
    q = NoiseSpec.parse('quant:0.25').apply(clean, rate_hz=100, rng=0)
    assert np.allclose(q / 0.25, np.round(q / 0.25)) and np.abs(q - clean).max() <= 0.125 + 1e-12
    s = NoiseSpec.parse('spikes:0.01:3').apply(clean, rate_hz=100, rng=0)
    hits = np.abs(s - clean) > 0
    assert hits.mean() == pytest.approx(0.01, rel=0.15)
    assert np.abs(s - clean)[hits].min() >= 3.0                     # |jump| >= SCALE
    d = NoiseSpec.parse('drop:0.05:3').apply(clean, rate_hz=100, rng=0)
    held = np.all(d[1:] == d[:-1], axis=1)
    assert 0.08 < held.mean() < 0.2                                 # 5 % starts x 3 samples
    assert np.array_equal(d[~np.r_[False, held]], clean[~np.r_[False, held]])
    b = NoiseSpec.parse('bias_walk:0.1').apply(clean, rate_hz=100, rng=0)
    steps = np.diff(b - clean, axis=0)
    assert np.std(steps) == pytest.approx(0.1 / 10, rel=0.03)       # sigma per sqrt(s)
    rel = NoiseSpec.parse('relative,gaussian:0.5').apply(clean, rate_hz=100, rng=0)
    assert np.std(rel - clean, axis=0) == pytest.approx(0.5 * clean.std(axis=0), rel=0.03)


# --------------------------------------------------------------------------- field setter


def test_setter_writes_numbers_back_into_rclpy_messages():
    from geometry_msgs.msg import Point, Pose, PoseArray
    from sensor_msgs.msg import Imu, JointState
    from std_msgs.msg import Int32MultiArray

    imu = Imu()
    imu.header.frame_id = 'imu_link'
    imu.angular_velocity_covariance[4] = 0.5
    for text, values in (('linear_acceleration.z', [9.81]),
                         ('angular_velocity_covariance[0]', [0.25]),
                         ('orientation_covariance[0:3]', [1.0, 2.0, 3.0])):
        path = parse_path(text)
        compile_setter(path)(imu, np.asarray(values))
        assert list(compile_path(path)(imu)) == values
    assert imu.header.frame_id == 'imu_link' and imu.angular_velocity_covariance[4] == 0.5
    assert imu.linear_acceleration.x == 0.0

    joints = JointState(name=['a', 'b', 'c'], position=[1.0, 2.0, 3.0], velocity=[4.0, 5.0, 6.0])
    compile_setter(parse_path('position[0:3]').with_size(3))(joints, np.array([7.0, 8.0, 9.0]))
    compile_setter(parse_path('velocity[1]'))(joints, [0.5])
    assert list(joints.position) == [7.0, 8.0, 9.0] and list(joints.velocity) == [4.0, 0.5, 6.0]
    assert isinstance(joints.position, array.array) and joints.name == ['a', 'b', 'c']
    with pytest.raises(ShortMessageError, match='needs 5'):
        compile_setter(parse_path('position[2:5]'))(joints, [1.0, 2.0, 3.0])

    ints = Int32MultiArray(data=[1, 2, 3])
    compile_setter(parse_path('data[*]'))(ints, np.array([1.6, -2.4, 3.0]))
    assert list(ints.data) == [2, -2, 3]

    poses = PoseArray(poses=[Pose(position=Point(x=1.0)), Pose(position=Point(x=2.0))])
    compile_setter(parse_path('poses[0:2].position.x'))(poses, [3.0, 4.0])
    assert [p.position.x for p in poses.poses] == [3.0, 4.0]


def test_setter_works_on_rosbags_messages(bag):
    from encdec_ros.io.bag import BagSource

    with BagSource(bag) as src:
        _, _, msg = next(src.messages(['/motors']))
    path = parse_path('effort[0:6]')
    compile_setter(path)(msg, np.arange(6.0))
    assert list(compile_path(path)(msg)) == list(range(6))


# --------------------------------------------------------------------------- filters


def noisy_sine(n: int = 3000, rate: float = 200.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    clean = np.stack([np.sin(2 * np.pi * 1.5 * t), 3 + 0.5 * np.cos(2 * np.pi * 0.7 * t)], 1)
    return clean + rng.normal(0, 0.1, clean.shape), clean


@pytest.mark.parametrize('method, params', [
    ('butterworth', {'order': [1, 4], 'cutoff_hz': [5.0, 20.0]}),
    ('one_euro', {'min_cutoff': [2.0, 5.0], 'beta': [0.5, 0.0], 'd_cutoff': 1.0}),
    ('kalman', {'q': [10.0, 1.0], 'r': [0.01, 0.02]}),
])
def test_batched_run_equals_stepping_and_keeps_state(method, params):
    noisy, _ = noisy_sine(1000)
    noisy[100, 1] = np.nan                              # held at the last finite value
    filt = make_baseline(method, 2, 200.0, params)
    stepped = np.array([filt.step(x) for x in noisy])
    filt.reset()
    batched = np.vstack([filt.run(noisy[:400]), filt.run(noisy[400:])])
    assert np.allclose(batched, stepped, rtol=0, atol=1e-12)
    assert np.isfinite(batched).all() and filt.nonfinite_ == 1


def test_butterworth_is_scipy_sosfilt_from_the_first_sample_steady_state():
    from scipy.signal import butter, sosfilt, sosfilt_zi

    noisy, _ = noisy_sine(500)
    filt = ButterworthDenoiser(2, 200.0, order=3, cutoff_hz=10.0)
    sos = butter(3, 10.0, fs=200.0, output='sos')
    want = np.stack([sosfilt(sos, noisy[:, c], zi=sosfilt_zi(sos) * noisy[0, c])[0]
                     for c in range(2)], 1)
    assert np.allclose(filt.run(noisy), want, atol=1e-12)
    const = ButterworthDenoiser(1, 100.0, order=2, cutoff_hz=5.0).run(np.full((50, 1), 2.5))
    assert np.allclose(const, 2.5)                       # no start-up transient


def test_one_euro_and_kalman_behave_as_documented():
    rate = 100.0
    ramp = (np.arange(400) * 0.05)[:, None]              # 5 units/s
    one = OneEuroDenoiser(1, rate, min_cutoff=2.0, beta=0.0).run(ramp)
    alpha = 1 / (1 + rate / (2 * np.pi * 2.0))           # beta 0: exponential smoothing
    want = [ramp[0, 0]]
    for x in ramp[1:, 0]:
        want.append(want[-1] + alpha * (x - want[-1]))
    assert np.allclose(one[:, 0], want)
    fast = OneEuroDenoiser(1, rate, min_cutoff=2.0, beta=5.0).run(ramp)
    assert abs(ramp[-1, 0] - fast[-1, 0]) < abs(ramp[-1, 0] - one[-1, 0])  # speed cuts lag
    kal = KalmanDenoiser(1, rate, q=1.0, r=0.01).run(ramp)
    assert abs(kal[-1, 0] - ramp[-1, 0]) < 1e-6          # constant velocity: no lag at all
    with pytest.raises(ConfigError, match='below the Nyquist'):
        ButterworthDenoiser(1, 100.0, cutoff_hz=60.0)
    with pytest.raises(ConfigError, match='one per channel'):
        KalmanDenoiser(3, 100.0, q=[1.0, 2.0])
    with pytest.raises(ConfigError, match='has no parameter'):
        make_baseline('kalman', 1, 100.0, {'cutoff_hz': 3})


def test_tuning_picks_the_best_parameters_on_validation_data():
    noisy, clean = noisy_sine(2000)
    for tune, method in ((tune_butterworth, 'butterworth'), (tune_one_euro, 'one_euro'),
                         (tune_kalman, 'kalman')):
        tuned = tune(noisy, clean, rate_hz=200.0, skip=20)
        filt = make_baseline(method, 2, 200.0, tuned)
        err = filt.run(noisy)[20:] - clean[20:]
        rmse = np.sqrt(np.mean(err ** 2, axis=0))
        assert np.allclose(rmse, tuned['rmse'], rtol=1e-9)
        default = make_baseline(method, 2, 200.0, default_params(method, 200.0))
        worse = np.sqrt(np.mean((default.run(noisy)[20:] - clean[20:]) ** 2, axis=0))
        assert np.all(rmse <= worse + 1e-12) and np.all(rmse < 0.07)   # noise was 0.1
    assert tune_kalman(noisy, clean, rate_hz=200.0)['r'] == pytest.approx([0.01, 0.01],
                                                                            rel=0.1)


def test_lag_finds_the_delay_of_a_shifted_signal():
    noisy, clean = noisy_sine(4000)
    for shift in (0, 3, 7):
        delayed = np.r_[np.full(shift, clean[0, 0]), clean[:len(clean) - shift, 0]]
        assert lag(delayed, clean[:, 0], 20)[0] == pytest.approx(shift, abs=0.05)
    late = ButterworthDenoiser(1, 200.0, order=2, cutoff_hz=4.0).run(noisy[:, :1])[:, 0]
    assert lag(late, clean[:, 0], 40)[0] > 5     # a 4 Hz low-pass delays a 1.5 Hz sine


def test_match_stamps_and_spans():
    a, b = match_stamps(np.array([0, 10, 20, 31, 100]), np.array([1, 11, 30, 60]), 10)
    assert a.tolist() == [0, 1, 3] and b.tolist() == [0, 1, 2]
    assert parse_span(':300') == (None, 300.0) and parse_span('10:') == (10.0, None)
    with pytest.raises(ConfigError, match='ends before it starts'):
        parse_span('5:1')


# --------------------------------------------------------------------------- model


def test_model_directory_holds_spec_model_and_tuned_baselines(model_dir):
    model = ModelDir.load(model_dir, task='denoise')
    assert model.section('denoise.window') == 8
    assert model.section('denoise.reference') == ['ground truth /imu/clean']
    assert model.section('training.export.max_abs_diff') <= 1e-4
    for method in BASELINES:
        tuned = model.section(f'baselines.{method}')
        assert all(len(v) == 6 for v in tuned.values())
    val = model.section('validation.rmse')
    assert set(val) == {'noisy', 'model', *BASELINES}
    assert np.all(np.asarray(val['model']) < np.asarray(val['noisy']))
    assert (model_dir / 'loss.png').stat().st_size > 1000
    with pytest.raises(ModelDirError, match='is a denoise model; the anomaly_detector needs'):
        ModelDir.load(model_dir, task='anomaly')


def test_model_batched_run_equals_stepping(model_dir, bag):
    spec = SignalSpec.from_dict(ModelDir.load(model_dir).section('spec'))
    _, pairs = load_pairs([bag], spec)
    noisy = pairs[0].noisy[:300]
    den = ModelDenoiser(model_dir, device='cpu')
    stepped = np.array([den.step(x) for x in noisy])
    den.reset()
    batched = np.vstack([den.run(noisy[:5]), den.run(noisy[5:200]),
                         np.array([den.step(x) for x in noisy[200:210]]), den.run(noisy[210:])])
    assert np.allclose(batched, stepped, rtol=0, atol=1e-5)
    assert den.describe()['provider'] == 'CPUExecutionProvider'


def test_core_denoises_a_message_in_place_and_keeps_the_rest(model_dir, bag):
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Imu

    from encdec_ros.io.bag import BagSource

    with BagSource(bag) as src:
        raws = [bytes(r) for _, _, r in src.raw_messages(['/imu'])][:50]
    core = build_core('model', model_dir=model_dir, device='cpu')
    offline = core.run(np.array([core.extract(deserialize_message(r, Imu)) for r in raws]))
    core.denoiser.reset()
    for raw, want in zip(raws, offline):
        msg = deserialize_message(raw, Imu)
        before = deserialize_message(raw, Imu)
        assert core.process(msg)
        assert np.allclose(core.extract(msg), want, atol=1e-5)
        assert msg.header == before.header and msg.orientation == before.orientation
        assert np.array_equal(msg.linear_acceleration_covariance,
                              before.linear_acceleration_covariance)


def test_eval_command_reports_rmse_lag_and_plots(model_dir, bag, tmp_path, capsys):
    out = tmp_path / 'eval'
    assert cli_main(['eval', 'denoise', '--model', str(model_dir), '--bag', str(bag),
                     '--out', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'model / best baseline' in text and 'lag' in text
    report = json.loads((out / 'denoise_report.json').read_text())
    assert report['reference'] == 'ground truth /imu/clean' and report['samples'] == 1600
    assert set(report['methods']) == {'noisy', 'model', *BASELINES}
    for figures in report['methods'].values():
        assert len(figures['rmse']) == 6 and len(figures['lag_ms']) == 6
    assert report['comparison']['best_baseline'] in BASELINES
    assert (out / 'denoise_overlay.png').stat().st_size > 10_000


def test_train_and_eval_on_the_recorded_signal_with_added_noise(bag, tmp_path):
    pytest.importorskip('torch')
    spec = tmp_path / 'spec.yaml'
    spec.write_text(yaml.safe_dump(imu_spec(window=6)))
    out = tmp_path / 'gru'
    noise = 'relative,gaussian:0.3,spikes:0.01:3,drop:0.02'
    assert cli_main(['train', 'denoise', '--bag', str(bag), '--spec', str(spec), '--out',
                     str(out), '--arch', 'gru', '--hidden', '8', '--layers', '1', '--epochs',
                     '1', '--clean-topic', 'none', '--noise', noise]) == 0
    model = ModelDir.load(out, task='denoise')
    assert model.section('denoise.reference')[0].startswith('the recorded signal, input +')
    assert model.section('architecture.arch') == 'gru'
    assert cli_main(['eval', 'denoise', '--model', str(out), '--bag', str(bag), '--add-noise',
                     noise, '--methods', 'model,kalman', '--out', str(tmp_path / 'ev'),
                     '--no-plot', '--eval-span', '2:']) == 0
    report = json.loads((tmp_path / 'ev' / 'denoise_report.json').read_text())
    assert set(report['methods']) == {'noisy', 'model', 'kalman'}
    assert report['samples'] == 1200 and report['span'] == [2.0, None]


def test_also_uncorrupted_trains_on_each_bag_with_and_without_the_noise(bag, model_dir,
                                                                         tmp_path):
    spec = tmp_path / 'spec.yaml'
    spec.write_text(yaml.safe_dump(imu_spec()))
    out = tmp_path / 'mixed'
    assert cli_main(['train', 'denoise', '--bag', str(bag), '--spec', str(spec), '--out',
                     str(out), '--hidden', '16', '--layers', '1', '--epochs', '1',
                     '--threads', '1', '--noise', 'relative,spikes:0.01:3',
                     '--also-uncorrupted']) == 0
    mixed, plain = ModelDir.load(out, task='denoise'), ModelDir.load(model_dir)
    assert mixed.section('denoise.reference') == [
        'ground truth /imu/clean', 'ground truth /imu/clean, input + relative,spikes:0.01:3']
    assert mixed.section('denoise.also_uncorrupted') is True
    samples = mixed.section('training.samples')
    assert samples == {k: 2 * v for k, v in plain.section('training.samples').items()}


def test_user_mistakes_get_one_clear_sentence(bag, model_dir, tmp_path, capsys):
    two = imu_spec()
    two['topics']['/motors'] = {'fields': ['velocity[0:6]']}
    (tmp_path / 'two.yaml').write_text(yaml.safe_dump(two))
    (tmp_path / 'one.yaml').write_text(yaml.safe_dump(imu_spec()))
    cases = [
        (['train', 'denoise', '--bag', str(bag), '--spec', str(tmp_path / 'two.yaml'),
          '--out', str(tmp_path / 'x')], 'names exactly one topic'),
        (['train', 'denoise', '--bag', str(bag), '--spec', str(tmp_path / 'two.yaml'),
          '--out', str(model_dir)], 'already exists and is not empty'),
        (['eval', 'denoise', '--model', str(model_dir), '--bag', str(bag), '--clean-topic',
          '/nope', '--out', str(tmp_path / 'e')], 'clean topic /nope is not in'),
        (['eval', 'denoise', '--model', str(model_dir), '--bag', str(bag), '--add-noise',
          'gauss:1', '--out', str(tmp_path / 'e')], "unknown noise kind 'gauss'"),
        (['eval', 'denoise', '--model', str(model_dir), '--bag', str(bag), '--methods',
          'median'], '--methods takes'),
        (['train', 'denoise', '--bag', str(bag), '--spec', str(tmp_path / 'one.yaml'),
          '--out', str(tmp_path / 'y'), '--also-uncorrupted'], 'needs --noise'),
        (['train', 'denoise', '--bag', str(bag), '--spec', str(tmp_path / 'one.yaml'),
          '--out', str(tmp_path / 'y'), '--also-uncorrupted', '--noise', 'gaussian:0.1',
          '--clean-topic', 'none'], 'needs ground truth'),
        (['eval', 'denoise', '--model', str(model_dir), '--bag', str(bag), '--eval-span',
          '100:200', '--out', str(tmp_path / 'e')], 'holds no /imu message of'),
        (['eval', 'denoise', '--model', str(model_dir), '--bag', str(bag), '--clean-topic',
          '/imu', '--out', str(tmp_path / 'e')], 'is the input topic itself'),
    ]
    for argv, match in cases:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert match in err and 'Traceback' not in err and err.count('\n') == 1, err
    spec = SignalSpec.from_dict(imu_spec())
    with pytest.raises(ConfigError, match='has no clean reference topic'):
        load_pairs([bag], SignalSpec.from_dict({**imu_spec(), 'topics': {
            '/wrench_cmd': {'fields': ['wrench.force.z']}}}), clean_topic='auto')
    with pytest.raises(ConfigError, match="method 'model' needs a model directory"):
        build_core('model', spec=spec)
    with pytest.raises(ConfigError, match='give a model directory'):
        build_core('kalman')
    with pytest.raises(SpecError, match="give the topic's type"):
        build_core('kalman', spec=SignalSpec.from_dict(
            {**imu_spec(), 'topics': {'/imu': {'fields': IMU_FIELDS}}}))
    with pytest.raises(ModelDirError, match=r'differs from the one .* \(window 8 vs 16\)'):
        build_core('kalman', model_dir=model_dir, spec=SignalSpec.from_dict(imu_spec(16)))
    assert issubclass(ShortMessageError, ValueError) and issubclass(ConfigError, EncdecError)


def test_eval_of_odd_recordings_names_the_problem(model_dir, tmp_path, caplog):
    """Repeated header stamps are refused in one sentence (not a division by zero); a channel
    with nothing to remove gets no ratio instead of a huge one, and the rest still count."""
    import dataclasses

    from encdec_ros.denoise.evaluate import evaluate_denoise
    from encdec_ros.errors import BagError

    sim = simulate(SimConfig(duration_s=4.0, seed=5))
    stamps = sim.imu_stamp_ns.copy()
    stamps[1::2] = stamps[::2][:len(stamps[1::2])]          # every stamp twice
    repeated = write_bag(dataclasses.replace(sim, imu_stamp_ns=stamps), tmp_path / 'repeat')
    with pytest.raises(BagError, match=r'header stamps? .*stamp: receive'):
        evaluate_denoise(model_dir, repeated)

    gyro, clean = sim.imu_angular_velocity.copy(), sim.clean_angular_velocity.copy()
    gyro[:, 0] = clean[:, 0] = 0.0                          # a channel without noise
    flat = write_bag(dataclasses.replace(sim, imu_angular_velocity=gyro,
                                         clean_angular_velocity=clean), tmp_path / 'flat')
    report = evaluate_denoise(model_dir, flat, out_dir=tmp_path / 'ev', plot=False)
    comp = report['comparison']
    assert comp['ratio_per_channel'][3] is None and report['methods']['model'][
        'rmse_relative'][3] is None
    assert all(0.1 < r < 10 for i, r in enumerate(comp['ratio_per_channel']) if i != 3)
    assert 0.1 < comp['ratio_overall'] < 10
    assert 'the input equals the reference' in caplog.text
    json.loads((tmp_path / 'ev' / 'denoise_report.json').read_text())   # strict JSON


def test_standalone_core_from_a_spec_for_joint_states():
    from sensor_msgs.msg import JointState

    spec = SignalSpec.from_dict({'rate_hz': 100, 'window': 4, 'topics': {'/joints': {
        'type': 'sensor_msgs/msg/JointState', 'fields': ['position[0:2]']}}})
    core = build_core('kalman', spec=spec, params={'q': 5.0, 'r': None})
    assert isinstance(core, DenoiseCore) and core.channels == ['/joints/position[0]',
                                                               '/joints/position[1]']
    msg = JointState(name=['a', 'b', 'c'], position=[1.0, 2.0, 3.0])
    assert core.process(msg) and list(msg.position) == [1.0, 2.0, 3.0]   # first sample as is
    assert core.denoiser.params() == {'q': [5.0, 5.0], 'r': [1.0, 1.0]}
    short = JointState(position=[1.0])
    assert not core.process(short) and core.short_ == 1 and list(short.position) == [1.0]


def test_shipped_model_fits_the_sim_spec_and_cleans_its_imu():
    spec = ROOT / 'config' / 'sim_imu_denoise_spec.yaml'
    core = build_core('model', model_dir=ROOT / 'models' / 'denoise_sim_imu', spec=spec,
                      device='cpu')
    assert core.topic.name == '/imu' and core.denoiser.window == 32
    val = ModelDir.load(ROOT / 'models' / 'denoise_sim_imu').section('validation.rmse')
    assert np.all(np.asarray(val['model']) < 0.6 * np.asarray(val['noisy']))


def test_runtime_side_never_imports_torch():
    import subprocess
    import sys

    code = ('import sys\n'
            'import encdec_ros.nodes.denoiser, encdec_ros.denoise.evaluate\n'
            'import encdec_ros.cli.denoise\n'
            'from encdec_ros.denoise.filters import build_core\n'
            "build_core('kalman', model_dir='models/denoise_sim_imu')\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'False'
