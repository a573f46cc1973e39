"""Anomaly detection end to end: calibration, scorer, training, export, eval, CLI and the live
node over real DDS.

One small MLP autoencoder is trained once for the module on a 64 s synthetic flight (window
20 at 100 Hz); the fault bag is the same flight (same seed and duration) with three faults
injected, so its normal stretches are the training flight's. How well models generalise to
other flights, and the faults too small for a 64 s model (bias drift, vibration, a worn
motor), are measured by benchmarks/bench_anomaly_sim.py, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from encdec_ros.anomaly.evaluate import (
    anomaly_metrics,
    confusion,
    data_gaps,
    evaluate_bag,
    held_values,
    in_gaps,
    parse_span,
    pooled,
)
from encdec_ros.anomaly.scorer import AnomalyScorer, Debouncer
from encdec_ros.errors import ConfigError, ModelDirError, SpecError
from encdec_ros.io.bag import read_bag
from encdec_ros.io.labels import Interval, label_mask
from encdec_ros.modeldir import save_model_dir

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / 'config' / 'sim_spec.yaml'
FAULTS = ('stuck', 'spikes', 'motor_failure')
DETECT_WITHIN_S = 1.5
TINY = {'hidden': 32, 'latent': 8, 'epochs': 20, 'window': 20, 'stride': 4}


def _train(bag: Path, out: Path, *, arch: str = 'mlp', epochs: int = TINY['epochs'],
           **options):
    from training.anomaly import TrainOptions, train_anomaly
    from training.models import AEConfig

    opts = TrainOptions(model=AEConfig(arch=arch, hidden=TINY['hidden'],
                                       latent=TINY['latent']),
                        epochs=epochs, **options)
    return train_anomaly([bag], SPEC, out, opts, window=TINY['window'],
                         stride=TINY['stride'], say=lambda s: None)


@pytest.fixture(scope='module')
def flight(tmp_path_factory):
    """A 64 s normal flight, the same flight with three faults, and a model trained on it."""
    pytest.importorskip('torch')
    from training.sim import SimConfig, simulate, write_bag

    root = tmp_path_factory.mktemp('anomaly')
    normal = write_bag(simulate(SimConfig(duration_s=64, seed=41)), root / 'normal')
    faults = write_bag(simulate(SimConfig(duration_s=64, seed=41, faults=FAULTS,
                                          fault_duration_s=4.0, first_fault_after_s=10.0,
                                          min_gap_s=8.0)), root / 'faults')
    result = _train(normal, root / 'model', seed=3, slow_s=0.0)
    return {'root': root, 'normal': normal, 'faults': faults, 'model': result.path,
            'result': result}


# --------------------------------------------------------------------------- calibration


def test_quantile_rule_on_a_gaussian():
    from encdec_ros.anomaly.calibrate import calibrate

    errors = np.random.default_rng(0).normal(size=200_000)
    cal = calibrate(errors, rule='quantile', quantile=0.99)
    assert cal.used == 'quantile'
    assert cal.threshold == pytest.approx(2.3263, abs=0.03)


def test_pot_rule_on_an_exponential_tail_extrapolates():
    from encdec_ros.anomaly.calibrate import calibrate

    errors = np.random.default_rng(1).exponential(size=100_000)
    # exceeded with probability 1e-4: -ln(1e-4) = 9.21; 1e-6 (beyond the data): 13.82
    cal = calibrate(errors, rule='pot', risk=1e-4)
    assert cal.used == 'pot' and abs(cal.details['xi']) < 0.1
    assert cal.threshold == pytest.approx(9.21, rel=0.08)
    far = calibrate(errors, rule='pot', risk=1e-6)
    assert far.threshold == pytest.approx(13.82, rel=0.15)
    assert far.threshold > errors.max()          # where a quantile cannot reach


def test_pot_falls_back_to_a_quantile_with_too_few_peaks():
    from encdec_ros.anomaly.calibrate import calibrate

    errors = np.random.default_rng(2).normal(size=200)   # 4 peaks above the 0.98 quantile
    cal = calibrate(errors, rule='pot', risk=0.01)
    assert cal.used == 'quantile' and 'only 4 errors above' in cal.details['fallback']
    assert cal.threshold == pytest.approx(np.quantile(errors, 0.99))
    with pytest.raises(ConfigError, match='risk must be between 0 and 1'):
        calibrate(errors, rule='pot', risk=2.0)
    with pytest.raises(ConfigError, match='needs at least 2 normal windows'):
        calibrate(np.array([np.nan, 1.0]))


# --------------------------------------------------------------------------- debouncing


def test_debouncer_needs_k_of_n_and_releases_with_hysteresis():
    deb = Debouncer(k=3, n=5, release=0.5)
    # isolated exceedances never raise it
    assert not deb.run(np.array([1.2, 0.1, 0.1, 1.5, 0.1, 0.1, 0.1, 2.0, 0.1])).any()
    deb.reset()
    flags = deb.run(np.array([1.1, 0.2, 1.3, 1.0, 0.9, 0.9, 0.7, 0.6, 0.6, 0.6, 0.4, 0.3,
                              0.2, 0.1, 0.1, 0.1]))
    assert flags.tolist() == [False, False, False, True,       # third of five above 1
                              True, True, True, True, True, True,   # stays up above 0.5
                              True, True, True, True,          # falls once 5 stay < 0.5
                              False, False]
    assert deb.update(float('nan')) is False                  # NaN changes nothing
    with pytest.raises(ConfigError, match='larger than debounce_n'):
        Debouncer(k=4, n=3)
    with pytest.raises(ConfigError, match='release level must be in'):
        Debouncer(release=1.5)


# --------------------------------------------------------------------------- the scorer


def test_slow_context_averages_the_last_windows_and_skips_unscored_ones():
    from encdec_ros.anomaly.scorer import SlowContext, SlowStats

    ctx = SlowContext(3, 2)
    rows = np.array([[1, 10], [2, 20], [np.nan, 0], [3, 30], [4, 40]], float)
    out = ctx.run(rows)
    assert np.isnan(out[:3]).all()                         # armed after 3 scored windows
    np.testing.assert_allclose(out[3:], [[2, 20], [3, 30]])
    ctx.reset()
    assert np.isnan(ctx.update(np.array([5.0, 5.0]))).all()
    # scaled so that normal data's 99th percentile above the median reads 2.33
    normal = np.random.default_rng(4).normal(size=(100_000, 2))
    stats = SlowStats.fit(normal, windows=3)
    z = stats.z(np.array([[2.326, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(z, [[2.326], [0.0]], atol=0.05)


@pytest.fixture(scope='module')
def slow_model(flight):
    """The fixture flight's model again with a 0.32 s slow context (8 decisions)."""
    return _train(flight['normal'], flight['root'] / 'slow', seed=3, slow_s=0.32).path


@pytest.mark.parametrize('which', ['model', 'slow'])
def test_step_by_step_equals_batch_with_debouncing(flight, slow_model, which):
    model = flight['model'] if which == 'model' else slow_model
    a, b = AnomalyScorer(model, device='cpu'), AnomalyScorer(model, device='cpu')
    assert (a.slow_context_s > 0) == (which == 'slow')
    rec = read_bag(flight['faults'], a.spec)
    from encdec_ros.io.window import window_ends, windows_at

    ends = window_ends(rec.times_ns, a.spec.period_ns, a.window, a.spec.stride)
    wins = windows_at(rec.data, ends, a.window)
    wins[40, 3, 5] = np.nan                                  # one window with a NaN
    batch = a.score_windows(wins)
    steps = [b.step(w) for w in wins]
    assert batch.flags.any() and not batch.flags.all()
    assert np.array_equal(batch.flags, [d.flag for d in steps])
    np.testing.assert_allclose(batch.scores, [d.score for d in steps], rtol=1e-5,
                               equal_nan=True)
    assert np.isnan(batch.scores[40]) and not steps[40].valid
    raised = [i for i, d in enumerate(steps) if d.raised]
    assert raised and all(steps[i].flag and not steps[i - 1].flag for i in raised)
    top = b.top_channels(steps[raised[0]].channel_z, 3)
    assert len(top) == 3 and all(name in a.channels for name, _ in top)


def test_onnx_matches_torch_for_each_architecture(flight, tmp_path):
    import torch

    from encdec_ros.anomaly.evaluate import score_recording

    rec = read_bag(flight['faults'], AnomalyScorer(flight['model'], device='cpu').spec)
    for arch in ('mlp', 'lstm', 'gru'):
        if arch == 'mlp':
            result = flight['result']
        else:
            result = _train(flight['normal'], tmp_path / arch, arch=arch, epochs=1,
                            train_stride=20)
        scorer = AnomalyScorer(result.path, device='cpu')
        assert scorer.model.section('architecture.arch') == arch
        assert result.figures['export']['max_abs_diff'] <= 1e-4
        ends, _ = score_recording(scorer, rec)
        from encdec_ros.io.window import windows_at

        x = scorer.normalize(windows_at(rec.data, ends[::10], scorer.window))  # real windows
        with torch.no_grad():
            want = result.module(torch.from_numpy(x)).numpy()
        got = scorer.engine.run(x)
        assert np.abs(got - want).max() <= 1e-4, arch


# --------------------------------------------------------------------------- training


def test_training_writes_a_complete_model_directory(flight):
    model = flight['model']
    meta = yaml.safe_load((model / 'model.yaml').read_text())
    assert meta['task'] == 'anomaly'
    for key in ('spec', 'window', 'normalization', 'architecture', 'threshold',
                'calibration', 'channel_errors', 'detector', 'training', 'score'):
        assert key in meta, key
    assert meta['window'] == {'length': 20, 'stride': 4, 'rate_hz': 100.0,
                              'channels': meta['window']['channels']}
    assert len(meta['normalization']['mean']) == 22
    assert meta['calibration']['used'] in ('pot', 'quantile')
    assert meta['calibration']['scale'] == 1.0
    factor = meta['calibration']['margin_factor']       # 1 + 16 / sqrt(held-out decisions)
    assert factor == pytest.approx(1 + 16 / meta['calibration']['heldout_decisions'] ** 0.5)
    assert meta['threshold'] == pytest.approx(factor * meta['calibration']['calibrated_threshold'])
    # trained without a slow context (the slow_model fixture has one)
    assert meta['channel_errors']['slow_windows'] == 0
    assert meta['score']['slow_context_s'] == 0
    fig = meta['training']
    assert fig['best_epoch'] >= 1 and fig['export']['max_abs_diff'] <= 1e-4
    assert set(fig['windows']) >= {'train', 'val', 'calib'}
    assert (model / 'loss.png').stat().st_size > 1000


def test_training_is_repeatable_and_the_cli_records_its_command(flight, tmp_path, capsys):
    from encdec_ros.cli import main

    args = ['train', 'anomaly', '--bag', str(flight['normal']), '--spec', str(SPEC),
            '--arch', 'mlp', '--hidden', '16', '--latent', '4', '--epochs', '2',
            '--window', '20', '--stride', '4', '--seed', '5']
    assert main(args + ['--out', str(tmp_path / 'a')]) == 0
    assert main(args + ['--out', str(tmp_path / 'b')]) == 0
    a = yaml.safe_load((tmp_path / 'a' / 'model.yaml').read_text())
    b = yaml.safe_load((tmp_path / 'b' / 'model.yaml').read_text())
    assert a['onnx']['sha256'] == b['onnx']['sha256']
    assert a['threshold'] == b['threshold']
    assert a['training']['command'].startswith('encdec train anomaly --bag ')
    assert '--seed 5' in a['training']['command']
    assert 'wrote' in capsys.readouterr().out
    # the second run refuses to overwrite without --force, in one sentence
    assert main(args + ['--out', str(tmp_path / 'a')]) == 2
    assert 'already exists and is not empty' in capsys.readouterr().err


def test_training_spans_and_labelled_windows(flight, tmp_path):
    from training.anomaly import span_rows, split_blocks

    assert parse_span(':400') == (None, 400.0) and parse_span('60:') == (60.0, None)
    with pytest.raises(ConfigError, match='ends before it starts'):
        parse_span('5:2')
    with pytest.raises(ConfigError, match='START:END'):
        parse_span('400')
    times = np.arange(1000, dtype=np.int64) * 10_000_000 + 5
    assert span_rows(times, (None, 4.0)) == (0, 400)
    assert span_rows(times, (2.0, None)) == (200, 1000)
    blocks = split_blocks(30_000, 50, 0.15, 0.15)
    sizes = {name: sum(hi - lo for n, lo, hi in blocks if n == name)
             for name in ('train', 'val', 'calib')}
    assert sizes == {'train': 21_000, 'val': 4_500, 'calib': 4_500}
    assert [b[1] for b in blocks[1:]] == [b[2] for b in blocks[:-1]]    # contiguous
    # a bag with labelled faults: the windows touching them are left out of training
    result = _train(flight['faults'], tmp_path / 'm', epochs=1,
                    train_span=(None, 60.0))
    assert result.figures['windows']['left_out'] > 0
    assert result.figures['train_span_s'] == [None, 60.0]


# --------------------------------------------------------------------------- evaluation


def test_metrics_follow_skab_definitions():
    flags = np.array([1, 1, 0, 0, 1, 0, 0, 0], bool)
    labels = np.array([1, 0, 1, 1, 1, 0, 0, 0], bool)
    c = confusion(flags, labels)
    assert (c['tp'], c['fp'], c['fn'], c['tn']) == (2, 1, 2, 3)
    assert c['f1'] == pytest.approx(2 / (2 + 1.5))
    assert c['far'] == pytest.approx(1 / 4) and c['mar'] == pytest.approx(2 / 4)
    assert pooled([{'pointwise': c}, {'pointwise': c}])['f1'] == pytest.approx(c['f1'])
    s = 1_000_000_000
    dec_t = np.arange(0, 20 * s, s // 2)
    dec_f = np.zeros(dec_t.size, bool)
    dec_f[10:14] = True                              # 5.0 .. 6.5 s: the first fault
    dec_f[30:32] = True                              # 15 s: a false alarm
    labels = [Interval(4 * s, 8 * s, 'stuck'), Interval(10 * s, 12 * s, 'spikes')]
    m = anomaly_metrics(np.zeros(1, bool), np.zeros(1, bool), dec_t, dec_f, labels,
                        grace_s=0.5)
    assert [e['detected'] for e in m['events']] == [True, False]
    assert m['events'][0]['delay_s'] == pytest.approx(1.0)
    assert m['per_kind']['stuck']['recall'] == 1.0 and m['per_kind']['spikes']['recall'] == 0
    assert m['alarms']['false_alarms'] == 1


def test_false_alarm_accounting_agrees_with_far_when_the_flag_never_falls():
    """The owner's UR3 log: the flag rose early and stayed up through every labelled fault.
    The old accounting forgave the long stretch because it touched a fault and reported one
    isolated blip, `false alarms: 1 (1.0 s flagged, 4.6 per hour)`, beside FAR 99 %."""
    s = 1_000_000_000
    t = np.arange(0, 13 * 60 * s, s)                 # 13 min of 1 Hz rows
    labels = [Interval(200 * s, 230 * s, 'protective_stop'),
              Interval(500 * s, 520 * s, 'grip_lost')]
    flags = np.ones(t.size, bool)
    flags[:60] = False                               # up after the first minute, for good
    flags[40] = True                                 # and one isolated blip before that
    plabels = label_mask(labels, t)
    m = anomaly_metrics(flags, plabels, t, flags, labels, grace_s=5.0, points=t)
    far = m['pointwise_after_grace']['far']
    assert far > 0.9
    al, tm = m['alarms'], m['time']
    # every flagged normal second outside the grace is a false-alarm second: the time shares
    # are the FAR of the same points
    assert tm['flagged_normal_share'] == pytest.approx(far)
    assert al['false_alarm_s'] == pytest.approx(tm['flagged_normal_share'] * tm['normal_s'])
    # the blip, the stretch up to the first fault, between the faults, after the second
    assert al['false_alarms'] == 4
    assert al['false_alarms_per_hour'] == pytest.approx(4 / (tm['normal_s'] / 3600))
    assert tm['normal_s'] == pytest.approx(13 * 60 - 50 - 10)     # faults and their grace
    assert m['flag_everything']['f1'] == pytest.approx(2 * 50 / (2 * 50 + 730))
    assert any('of normal time' in w and 'says nothing' in w for w in m['warnings'])


def test_gaps_hold_no_points_no_flags_and_no_normal_time():
    """Two hours without data inside a log: the gap is not normal time, holds no false alarm,
    and a flag raised before it does not carry over to the rows after it."""
    s = 1_000_000_000
    before = np.arange(0, 600 * s, s)
    after = np.arange(before[-1] + 7200 * s, before[-1] + 7800 * s, s)
    t = np.concatenate([before, after])
    gaps = data_gaps([t])
    assert len(gaps) == 1 and gaps[0][1] == after[0]
    assert not in_gaps(t, gaps).any()
    dec_f = np.zeros(t.size, bool)
    dec_f[590:600] = True                            # up in the last 10 s before the gap
    pflags = held_values(t, dec_f, t, gaps=gaps)
    np.testing.assert_array_equal(pflags, dec_f)
    # the point after the gap, where no decision was made yet, carries no flag
    late = held_values(t[:600], dec_f[:600], after[:3], gaps=gaps)
    assert not late.any()
    m = anomaly_metrics(pflags, np.zeros(t.size, bool), t, dec_f, [], grace_s=1.0, points=t,
                        gaps=gaps)
    assert m['time']['normal_s'] == pytest.approx(1200, abs=1)       # not 2 h 20 min
    assert m['time']['gap_s'] == pytest.approx(7200 - 10, abs=1)
    assert m['alarms']['false_alarms'] == 1
    assert m['alarms']['false_alarm_s'] == pytest.approx(10)
    assert m['alarms']['false_alarms_per_hour'] == pytest.approx(3.0, rel=0.01)
    assert m['time']['flagged_normal_share'] == pytest.approx(m['pointwise']['far'], rel=1e-3)
    assert m['warnings'] == []


def test_eval_cli_writes_json_and_png(flight, tmp_path, capsys):
    from encdec_ros.cli import main

    out = tmp_path / 'eval'
    assert main(['eval', 'anomaly', '--model', str(flight['model']), '--bag',
                 str(flight['faults']), '--out', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'point-wise: precision' in text and 'F1' in text and 'delay' in text
    report = json.loads((out / 'report.json').read_text())
    events = report['metrics']['events']
    assert [e['kind'] for e in events] == list(FAULTS)
    assert all(e['detected'] for e in events)
    assert report['metrics']['pointwise']['f1'] > 0.5
    assert (out / 'report.png').stat().st_size > 10_000


# --------------------------------------------------------------------------- bad input


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_model_directories_give_one_clear_sentence(flight, tmp_path, capsys):
    from encdec_ros.cli import main

    bag = str(flight['faults'])
    tampered = _copy_model(flight['model'], tmp_path / 'tampered')
    (tampered / 'model.onnx').write_bytes((tampered / 'model.onnx').read_bytes() + b'\0')
    incomplete = _copy_model(flight['model'], tmp_path / 'incomplete')
    meta = yaml.safe_load((incomplete / 'model.yaml').read_text())
    del meta['channel_errors']
    (incomplete / 'model.yaml').write_text(yaml.safe_dump(meta))
    other = save_model_dir(tmp_path / 'denoise', onnx_file=flight['model'] / 'model.onnx',
                           task='denoise', sections={})
    cases = {
        tmp_path / 'nope': 'does not exist; pass the directory written by',
        tampered: 'does not match the sha256',
        incomplete: "has no 'channel_errors.log_mean'",
        other: 'is a denoise model; the anomaly_detector needs an anomaly model',
    }
    for path, message in cases.items():
        with pytest.raises(ModelDirError, match=message):
            AnomalyScorer(path, device='cpu')
        assert main(['eval', 'anomaly', '--model', str(path), '--bag', bag]) == 2
        err = capsys.readouterr().err
        assert message.split(';')[0] in err and 'Traceback' not in err
        assert err.count('\n') == 1


def test_a_bag_without_the_models_topics_is_refused(flight, tmp_path):
    from encdec_ros.io.csvbag import csv_to_bag

    csv = tmp_path / 'log.csv'
    csv.write_text('time,a,b\n' + ''.join(f'{i},{i},{2 * i}\n' for i in range(50)))
    bag, _ = csv_to_bag(csv, tmp_path / 'csvbag')
    with pytest.raises(SpecError, match='topic /imu is not in'):
        evaluate_bag(flight['model'], bag)


def test_eval_says_what_it_could_not_score(flight, tmp_path, capsys):
    """Non-finite inputs, a bag shorter than a window and a span outside the bag: no figures
    from nothing, one sentence each; windows left unscored are counted in the summary."""
    import dataclasses

    from encdec_ros.cli import main
    from encdec_ros.errors import BagError
    from training.sim import SimConfig, simulate, write_bag

    sim = simulate(SimConfig(duration_s=20, seed=42))
    gyro = sim.imu_angular_velocity.copy()
    gyro[::10, 0] = np.nan                       # every 50 ms: every 0.2 s window holds one
    everywhere = write_bag(dataclasses.replace(sim, imu_angular_velocity=gyro), tmp_path / 'nan')
    gyro = sim.imu_angular_velocity.copy()
    gyro[1000:1400, 1] = np.inf                  # 2 s of a broken channel
    stretch = write_bag(dataclasses.replace(sim, imu_angular_velocity=gyro), tmp_path / 'inf')
    one = simulate(SimConfig(duration_s=1.0, seed=42))      # cut to its first 0.1 s:
    n, m = len(one.imu_stamp_ns), len(one.motor_stamp_ns)
    cut = {f.name: getattr(one, f.name)[:10 if len(getattr(one, f.name)) == n else 5]
           for f in dataclasses.fields(one) if isinstance(getattr(one, f.name), np.ndarray)
           and getattr(one, f.name).ndim and len(getattr(one, f.name)) in (n, m)}
    short = write_bag(dataclasses.replace(one, **cut), tmp_path / 'short')

    with pytest.raises(BagError, match=r'none of the \d+ windows of .* could be scored: each '
                                       r'holds NaN or infinite values \(in /imu/angular_vel'):
        evaluate_bag(flight['model'], everywhere)
    with pytest.raises(BagError, match='gives no complete window'):
        evaluate_bag(flight['model'], short)
    with pytest.raises(ConfigError, match=r'span 100:200 holds no sample of .* 20.0 s long'):
        evaluate_bag(flight['model'], stretch, eval_span=(100.0, 200.0))

    result = evaluate_bag(flight['model'], stretch)
    invalid = result.metrics['decisions']['invalid']
    assert 0 < invalid < result.metrics['decisions']['windows']
    assert int(np.sum(~np.isfinite(result.scores))) == invalid
    assert main(['eval', 'anomaly', '--model', str(flight['model']), '--bag', str(stretch),
                 '--no-plot', '--out', str(tmp_path / 'ev')]) == 0
    assert f'NOT SCORED: {invalid} of ' in capsys.readouterr().out
    assert main(['eval', 'anomaly', '--model', str(flight['model']), '--bag', str(everywhere),
                 '--no-plot', '--out', str(tmp_path / 'ev2')]) == 2
    err = capsys.readouterr().err
    assert 'could be scored' in err and 'Traceback' not in err


# --------------------------------------------------------------------------- the live node


def _spin_in_thread(executor):
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    return stop, thread


def _play_to_node(context, model, bags, *, name: str, rate: float = 8.0):
    """Start the node, play each bag to it over DDS; return per bag what it published."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter import Parameter
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool, Float32

    from encdec_ros.io.player import BagPlayer
    from encdec_ros.nodes.anomaly_detector import AnomalyDetectorNode
    from encdec_ros.nodes.common import make_executor

    node = AnomalyDetectorNode(name, context=context, namespace='t', record=True,
                               parameter_overrides=[
                                   Parameter('model_dir', value=str(model)),
                                   Parameter('device', value='cpu'),
                                   Parameter('qos_reliability', value='reliable'),
                                   Parameter('qos_history', value='keep_all'),
                                   Parameter('output_depth', value=100_000),
                                   Parameter('diagnostics_period', value=0.1),
                                   Parameter('stale_after', value=0.5)])
    client = rclpy.create_node(f'{name}_client', context=context)
    got = {'flags': [], 'scores': [], 'diag': []}
    qos = QoSProfile(depth=100_000, reliability=ReliabilityPolicy.RELIABLE)
    client.create_subscription(Bool, f'/t/{name}/anomaly', lambda m: got['flags'].append(m.data),
                               qos)
    client.create_subscription(Float32, f'/t/{name}/score',
                               lambda m: got['scores'].append(m.data), qos)
    client.create_subscription(DiagnosticArray, '/diagnostics',
                               lambda m: got['diag'].extend(
                                   s for s in m.status if name in s.name), 100)
    executor = make_executor(context)
    executor.add_node(node)
    executor.add_node(client)
    stop, thread = _spin_in_thread(executor)
    play_qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                          history=HistoryPolicy.KEEP_ALL)
    out = []
    try:
        for bag in bags:
            for key in got:
                got[key] = []
            node.reset()
            expected = len(evaluate_bag(model, bag).flags)
            published = [0]

            def keep_up() -> bool:
                # flow control, not a stop: on a loaded machine reliable messages get lost
                # when the player runs far ahead of the node's executor; stay 100 ahead at most
                published[0] += 1
                if published[0] % 100 == 0:
                    until = time.monotonic() + 30
                    while time.monotonic() < until and sum(
                            i.counts['received'] for i in node.monitor.inputs) < \
                            published[0] - 100:
                        time.sleep(0.002)
                return False

            with BagPlayer(client, bag, topics=node.spec.topic_names, rate=rate,
                           qos=play_qos, remap={t: f'/t{t}' for t in node.spec.topic_names}
                           ) as player:
                assert player.wait_for_subscribers(1, timeout_s=10)
                player.play(should_stop=keep_up)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(got['flags']) < expected:
                time.sleep(0.05)
            time.sleep(0.8)          # let the diagnostics turn STALE
            out.append({'flags': np.array(got['flags'], bool),
                        'scores': np.array(got['scores'], np.float32),
                        'ticks': np.array([d[0] for d in node.decisions], np.int64),
                        'diag': list(got['diag']), 'latency': node.latency_ms()})
    finally:
        stop.set()
        thread.join(timeout=5)
        node.destroy_node()
        client.destroy_node()
    return out


def test_node_over_dds_equals_eval_and_flags_each_fault(flight, rclpy_context):
    from diagnostic_msgs.msg import DiagnosticStatus

    normal, faults = _play_to_node(rclpy_context, flight['model'],
                                   [flight['normal'], flight['faults']], name='anom_live')
    # parity: the node's flags for the played bag are the offline evaluation's
    offline = evaluate_bag(flight['model'], flight['faults'])
    assert len(faults['flags']) == len(offline.flags) > 500
    assert np.array_equal(faults['flags'], offline.flags)
    np.testing.assert_allclose(faults['scores'], offline.scores, rtol=1e-4)
    assert np.array_equal(faults['ticks'], offline.decision_times_ns)
    # no flag on normal data; each fault flagged within a bounded delay
    assert len(normal['flags']) > 500 and not normal['flags'].any()
    for iv in offline.labels:
        inside = (faults['ticks'] >= iv.start_ns) & (faults['ticks'] < iv.end_ns)
        first = np.flatnonzero(inside & faults['flags'])
        assert first.size, f'{iv.kind} not flagged'
        delay = (faults['ticks'][first[0]] - iv.start_ns) * 1e-9
        assert delay <= DETECT_WITHIN_S, (iv.kind, delay)
    # diagnostics: OK on normal data, WARN while flagged, STALE when the inputs stop
    levels = {bytes(s.level) for s in faults['diag']}
    assert DiagnosticStatus.WARN in levels and DiagnosticStatus.STALE in levels
    assert DiagnosticStatus.WARN not in {bytes(s.level) for s in normal['diag']}
    keys = {kv.key for s in faults['diag'] for kv in s.values}
    assert {'score', 'threshold', 'top channels', 'provider', 'latency p50 (ms)'} <= keys
    assert faults['latency']['decision']['count'] == len(faults['flags'])


def test_node_refuses_bad_parameters_in_one_sentence(flight, rclpy_context, tmp_path):
    from rclpy.parameter import Parameter

    from encdec_ros.nodes.anomaly_detector import AnomalyDetectorNode

    def make(**params):
        return AnomalyDetectorNode('anom_bad', context=rclpy_context, parameter_overrides=[
            Parameter(k, value=v) for k, v in params.items()])

    with pytest.raises(ConfigError, match='parameter model_dir of anom_bad is empty'):
        make()
    with pytest.raises(ModelDirError, match='does not exist'):
        make(model_dir=str(tmp_path / 'none'))
    with pytest.raises(ConfigError, match='debounce_k .* is larger than debounce_n'):
        make(model_dir=str(flight['model']), device='cpu', debounce_k=9, debounce_n=4)
    with pytest.raises(ConfigError, match="parameter device is 'gpu'"):
        make(model_dir=str(flight['model']), device='gpu')
    # as an executable: exit status 1 and one line, no traceback
    proc = subprocess.run([sys.executable, '-m', 'encdec_ros.nodes.anomaly_detector',
                           '--ros-args', '-p', f'model_dir:={tmp_path / "none"}'],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    assert 'does not exist' in proc.stderr and 'Traceback' not in proc.stderr


def test_node_says_when_a_driver_leaves_header_stamps_unset(flight, rclpy_context):
    """Imu messages with a zero header stamp over DDS: counted, not aligned, and the reason
    with its fix on /diagnostics (instead of a detector that silently never decides)."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Imu

    from encdec_ros.nodes.anomaly_detector import AnomalyDetectorNode
    from encdec_ros.nodes.common import make_executor

    node = AnomalyDetectorNode('anom_unstamped', context=rclpy_context, parameter_overrides=[
        Parameter('model_dir', value=str(flight['model'])), Parameter('device', value='cpu'),
        Parameter('diagnostics_period', value=0.1)])
    client = rclpy.create_node('anom_unstamped_client', context=rclpy_context)
    pub = client.create_publisher(Imu, '/imu', 10)
    seen: list[str] = []
    client.create_subscription(DiagnosticArray, '/diagnostics', lambda m: seen.extend(
        s.message for s in m.status if bytes(s.level) == DiagnosticStatus.ERROR), 10)
    executor = make_executor(rclpy_context)
    executor.add_node(node)
    executor.add_node(client)
    stop, thread = _spin_in_thread(executor)
    try:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not any('zero header stamps' in m for m in seen):
            pub.publish(Imu())                   # header.stamp left at 0, as the driver does
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(timeout=5)
        executor.shutdown()
        client.destroy_node()
        node.destroy_node()
    assert node.counts['unstamped'] > 0 and node.counts['ticks'] == 0
    assert any('/imu arrives with zero header stamps' in m and 'stamp: receive' in m
               for m in seen), seen


def test_detectors_in_two_namespaces_read_only_their_own_topics(flight, rclpy_context):
    """/r1 and /r2 each run an anomaly_detector; a bag played into /r1 reaches only the first,
    one played into /r2 only the second, and their /diagnostics names differ."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from encdec_ros.io.player import BagPlayer
    from encdec_ros.nodes.anomaly_detector import AnomalyDetectorNode
    from encdec_ros.nodes.common import make_executor

    nodes = {ns: AnomalyDetectorNode(context=rclpy_context, namespace=ns, parameter_overrides=[
        Parameter('model_dir', value=str(flight['model'])), Parameter('device', value='cpu'),
        Parameter('qos_reliability', value='reliable'),
        Parameter('diagnostics_period', value=0.1)]) for ns in ('r1', 'r2')}
    client = rclpy.create_node('anom_ns_client', context=rclpy_context)
    names: dict[str, str] = {}
    client.create_subscription(DiagnosticArray, '/diagnostics', lambda m: names.update(
        (s.name, s.hardware_id) for s in m.status), 100)
    executor = make_executor(rclpy_context)
    for node in (*nodes.values(), client):
        executor.add_node(node)
    stop, thread = _spin_in_thread(executor)
    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    heard: dict[str, dict[str, int]] = {}
    try:
        for ns, node in nodes.items():
            topics = node.spec.topic_names
            assert node.topic_names == [f'/{ns}{t}' for t in topics]
            with BagPlayer(client, flight['normal'], topics=topics, rate=2.0, qos=qos,
                           remap={t: f'/{ns}{t}' for t in topics}) as player:
                assert player.wait_for_subscribers(1, timeout_s=10)
                player.play(should_stop=lambda: node.counts['messages'] >= 200)
            time.sleep(0.5)
            heard[ns] = {other: n.counts['messages'] for other, n in nodes.items()}
        deadline = time.monotonic() + 10
        wanted = {f'/{ns}/anomaly_detector: anomaly' for ns in nodes}
        while time.monotonic() < deadline and not wanted <= set(names):
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=5)
        executor.shutdown()
        client.destroy_node()
        for node in nodes.values():
            node.destroy_node()
    # the play into /r1 reached only r1; the play into /r2 only r2
    assert heard['r1']['r1'] >= 200 and heard['r1']['r2'] == 0, heard
    assert heard['r2']['r2'] >= 200 and heard['r2']['r1'] == heard['r1']['r1'], heard
    assert wanted <= set(names), names
    assert names['/r1/anomaly_detector: anomaly'] == '/r1/imu, /r1/motors, /r1/wrench_cmd'


def test_launch_file_compiles_and_config_matches_the_node_parameters(flight, rclpy_context):
    import py_compile

    from rclpy.parameter import Parameter

    from encdec_ros.nodes.anomaly_detector import PARAMS, AnomalyDetectorNode

    py_compile.compile(str(ROOT / 'launch' / 'anomaly_detector.launch.py'), doraise=True)
    text = (ROOT / 'launch' / 'anomaly_detector.launch.py').read_text()
    for arg in ('model_dir', 'device', 'namespace', 'params_file'):
        assert f"'{arg}'" in text
    params = yaml.safe_load((ROOT / 'config' / 'anomaly_detector.yaml').read_text())
    values = params['/**/anomaly_detector']['ros__parameters']
    declared = {p.name: p for p in PARAMS}
    for key, value in values.items():
        assert key in declared, key
        assert type(value) is type(declared[key].default), key
    node = AnomalyDetectorNode('anom_cfg', context=rclpy_context, parameter_overrides=[
        Parameter('model_dir', value=str(flight['model'])), Parameter('device', value='cpu'),
        *[Parameter(k, value=v) for k, v in values.items()]])
    try:
        for key, value in values.items():
            assert node.get_parameter(key).value == value
        assert node.stride == 4          # stride 0: the model's
    finally:
        node.destroy_node()
