"""The detector that has to generalise: calibration on small data (cross-fitting, refusal,
the end-of-training self-check), the Mahalanobis error, following slow drift, and
re-baselining ("this is normal now") as a core, as `encdec rebaseline` and as the live
node's ~/rebaseline service over real DDS.

One small MLP is trained for the module on a 60 s synthetic flight; the flights it is
re-baselined on change their operating point (a payload picked up, a warm-up drift) with
the sim's own scenario options.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from encdec_ros.anomaly.scorer import AnomalyScorer, DriftTracker, chi2_as_normal
from encdec_ros.errors import ConfigError
from encdec_ros.io.bag import read_bag
from encdec_ros.io.window import window_ends, windows_at
from test_anomaly import _spin_in_thread

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / 'config' / 'sim_spec.yaml'
TINY = {'window': 20, 'stride': 4}


def _train(bags, out: Path, *, spec=SPEC, arch: str = 'mlp', epochs: int = 8, **options):
    from training.anomaly import TrainOptions, train_anomaly
    from training.models import AEConfig

    opts = TrainOptions(model=AEConfig(arch=arch, hidden=32, latent=8), epochs=epochs,
                        patience=3, **options)
    lines: list[str] = []
    result = train_anomaly(bags, spec, out, opts, say=lines.append,
                           **(TINY if spec == SPEC else {}))
    return result, lines


@pytest.fixture(scope='module')
def robot(tmp_path_factory):
    """A 60 s normal flight, a model trained on it with the default calibration, and flights
    of the same trajectory with a payload picked up and with a fast warm-up drift."""
    pytest.importorskip('torch')
    from training.sim import SimConfig, simulate, write_bag

    root = tmp_path_factory.mktemp('detector')
    normal = write_bag(simulate(SimConfig(duration_s=60, seed=51)), root / 'normal')
    payload = write_bag(simulate(SimConfig(duration_s=60, seed=52, payload_kg=1.0,
                                           payload_at_s=10.0)), root / 'payload')
    result, lines = _train([normal], root / 'model', seed=1)
    return {'root': root, 'normal': normal, 'payload': payload, 'model': result.path,
            'result': result, 'lines': lines}


def _windows(scorer: AnomalyScorer, bag: Path) -> np.ndarray:
    rec = read_bag(bag, scorer.spec)
    ends = window_ends(rec.times_ns, scorer.spec.period_ns, scorer.window, scorer.spec.stride)
    return windows_at(rec.data, ends, scorer.window)


# --------------------------------------------------------------------------- calibration


def test_small_data_is_cross_fitted_and_the_model_says_so(robot):
    meta = yaml.safe_load((robot['model'] / 'model.yaml').read_text())
    fig, cal = meta['training'], meta['calibration']
    assert fig['folds'] == 5 and len(fig['fold_epochs']) == 5
    # every normal window of the flight got an error from a model that did not see it
    assert cal['heldout_decisions'] == fig['windows']['heldout'] > 1000
    assert cal['data'] == 'cross-fitted over 5 folds'
    assert cal['flagged_heldout'] < 0.05
    assert any('cross-fitted over 5 folds' in line for line in robot['lines'])
    assert np.asarray(meta['channel_errors']['precision']).shape == (22, 22)


def _csv_bag(tmp_path: Path, rows: int, name: str = 'log') -> Path:
    from encdec_ros.io.csvbag import csv_to_bag

    rng = np.random.default_rng(3)
    t = np.arange(rows)
    cols = np.stack([np.sin(t / 7), np.cos(t / 11), np.sin(t / 7) + np.cos(t / 11),
                     0.1 * t / rows], axis=1) + rng.normal(0, 0.05, (rows, 4))
    csv = tmp_path / f'{name}.csv'
    csv.write_text('time,a,b,c,d\n' + ''.join(
        f'{i},{a:.5f},{b:.5f},{c:.5f},{d:.5f}\n' for i, (a, b, c, d) in enumerate(cols)))
    bag, _ = csv_to_bag(csv, tmp_path / name, window=20)
    return bag


def test_a_few_hundred_rows_calibrate_and_too_few_are_refused(tmp_path):
    pytest.importorskip('torch')
    bag = _csv_bag(tmp_path, 400)
    result, lines = _train([bag], tmp_path / 'm', spec=bag / 'spec.yaml', epochs=4)
    meta = yaml.safe_load((result.path / 'model.yaml').read_text())
    assert meta['training']['folds'] == 5
    assert meta['calibration']['heldout_decisions'] > 250       # not 4 windows
    small = _csv_bag(tmp_path, 100, 'small')
    with pytest.raises(ConfigError, match=r'\d+ samples of normal data are too few to calibrate '
                                          r'.* give at least 105 samples'):
        _train([small], tmp_path / 'm2', spec=small / 'spec.yaml', epochs=1)


def test_a_detector_that_flags_its_own_normal_data_is_refused(robot, tmp_path):
    with pytest.raises(ConfigError, match=r'the detector flags \d+% of its own held-out normal '
                                          r'data .* useless on the robot'):
        _train([robot['normal']], tmp_path / 'bad', epochs=1, folds=0, threshold_scale=0.3)
    assert not (tmp_path / 'bad' / 'model.yaml').exists()


def test_mahalanobis_transform_matches_the_chi_square_tail():
    from scipy.stats import chi2, norm

    d2 = chi2.isf([0.5, 1e-2, 1e-4, 1e-6], 8)
    np.testing.assert_allclose(chi2_as_normal(d2, 8), norm.isf([0.5, 1e-2, 1e-4, 1e-6]),
                               atol=0.12)


# --------------------------------------------------------------------------- drift


def test_drift_tracker_integrates_the_residual_of_normal_channels_only():
    tracker = DriftTracker(2, gain=0.5, every=2, freeze=1.0, accept=3)
    for _ in range(2):
        tracker.observe(np.array([1.0, 1.0]), np.array([False, True]))
    np.testing.assert_allclose(tracker.offset, [0.5, 0.0])      # channel 1 held
    tracker.observe(None, None)                                  # an unscored window
    tracker.observe(np.array([1.0, 1.0]), np.array([False, True]))
    np.testing.assert_allclose(tracker.offset, [1.0, 0.0])
    for _ in range(2):                                          # held 4 > 3: followed again
        tracker.observe(np.array([0.0, 2.0]), np.array([False, True]))
    np.testing.assert_allclose(tracker.offset, [1.0, 1.0])
    tracker.reset()
    assert not tracker.offset.any()


def test_slow_drift_is_followed_and_a_fast_change_is_still_flagged(robot):
    scorer = AnomalyScorer(robot['model'], device='cpu', drift_s=0.0)
    wins = _windows(scorer, robot['normal']).astype(np.float64)
    c = scorer.channels.index('/motors/effort[2]')
    ramp = np.linspace(0, 1, len(wins))[:, None]
    drifted = wins.copy()
    drifted[:, :, c] += 8 * scorer.std_[c] * ramp       # eight sigma over the minute
    stepped = wins.copy()
    stepped[len(wins) // 2:, :, c] += 8 * scorer.std_[c]

    def flagged(windows, drift_s):
        s = AnomalyScorer(robot['model'], device='cpu', drift_s=drift_s)
        return s.score_windows(windows.astype(np.float32)).flags

    assert flagged(wins, 5.0).mean() < 0.02
    assert flagged(drifted, 0.0)[-50:].all()            # without it the drift is a fault
    assert flagged(drifted, 5.0).mean() < 0.05           # followed
    step = flagged(stepped, 5.0)
    mid = len(wins) // 2
    assert not step[:mid].any() and step[mid + 10:mid + 200].all()   # held, not learnt


def test_drift_following_is_the_same_window_by_window_and_batched(robot):
    a = AnomalyScorer(robot['model'], device='cpu', drift_s=3.0)
    b = AnomalyScorer(robot['model'], device='cpu', drift_s=3.0)
    wins = _windows(a, robot['payload'])
    wins[30, 4, 2] = np.nan
    batch = a.score_windows(wins)
    steps = [b.step(w) for w in wins]
    assert a.drift.active and np.abs(a.drift.offset).max() > 0.01
    np.testing.assert_array_equal(a.drift.offset, b.drift.offset)
    assert np.array_equal(batch.flags, [d.flag for d in steps])
    np.testing.assert_allclose(batch.scores, [d.score for d in steps], rtol=1e-5,
                               equal_nan=True)
    assert batch.flags[30] and steps[30].flag and not steps[30].valid     # NaN is a fault


def test_each_stream_follows_its_own_drift_in_one_batched_call(robot):
    """One scorer, three streams (one node serving three robots): decide() on their windows
    together, a stream's two windows in one call now and then, equals each stream scored alone
    step by step, drift offsets included."""
    one = AnomalyScorer(robot['model'], device='cpu', drift_s=3.0)
    wins = _windows(one, robot['payload'])[:240]
    shifted = wins + np.float32(2.0) * one.std_            # another robot's levels
    flights = [wins, shifted, wins[::-1].copy()]
    alone = []
    for w in flights:
        s = AnomalyScorer(robot['model'], device='cpu', drift_s=3.0)
        alone.append(([s.step(x) for x in w], s.drift.offset.copy()))
    states = [one.state, one.new_state(), one.new_state()]
    got: list[list] = [[], [], []]
    k = 0
    while k < len(wins):
        take = 2 if k % 7 == 3 and k + 1 < len(wins) else 1   # a stream's two windows at once
        batch, whose = [], []
        for i in range(3):
            for j in range(take if i == 1 else 1):
                if k + j < len(wins):
                    batch.append(flights[i][k + j])
                    whose.append(i)
        if take == 2:                                         # the others catch up alone
            for i in (0, 2):
                batch.append(flights[i][k + 1])
                whose.append(i)
        for i, d in zip(whose, one.decide(np.stack(batch), [states[i] for i in whose])):
            got[i].append(d)
        k += take
    for i in range(3):
        steps, offset = alone[i]
        assert np.array_equal([d.flag for d in got[i]], [d.flag for d in steps])
        np.testing.assert_allclose([d.score for d in got[i]], [d.score for d in steps],
                                   rtol=1e-5, equal_nan=True)
        np.testing.assert_allclose(states[i].drift.offset, offset, rtol=1e-5, atol=1e-9)
    assert np.abs(states[1].drift.offset - states[0].drift.offset).max() > 0.1


@pytest.mark.parametrize('drift_s', [0.0, 3.0])
def test_a_nan_channel_is_a_flagged_fault_with_the_mahalanobis_error(robot, drift_s):
    """One dead channel in otherwise normal windows: the joint distance must not come out
    finite (fmax skipping the NaN) and leave the window unflagged, batched or step by step."""
    from encdec_ros.anomaly.scorer import aggregate_errors

    a = AnomalyScorer(robot['model'], device='cpu', drift_s=drift_s)
    b = AnomalyScorer(robot['model'], device='cpu', drift_s=drift_s)
    assert a.error_kind == 'mahalanobis'
    wins = _windows(a, robot['normal'])[:60]
    wins[20:25, :, 3] = np.nan                                # 5 windows with a dead channel
    batch = a.score_windows(wins)
    steps = [b.step(w) for w in wins]
    assert batch.flags[20:25].all() and all(d.flag for d in steps[20:25])
    assert not batch.flags[:20].any()
    assert np.array_equal(batch.flags, [d.flag for d in steps])
    # the aggregate itself: a NaN in one channel's error gives NaN (flagged by the scorer),
    # an infinite error gives +inf, never a finite joint distance
    ch = a.channel_errors(_windows(a, robot['normal'])[:3])
    ch[0, 3] = np.nan
    ch[1, 3] = np.inf
    ch[2, 3], ch[2, 3 + len(a.channels)] = np.inf, np.nan  # its roughness unknown too
    err, _ = aggregate_errors(ch, 'mahalanobis', a.stats_)
    assert np.isnan(err[0]) and err[1] == np.inf and np.isnan(err[2])


# --------------------------------------------------------------------------- re-baselining


def test_rebaseline_core_and_command_on_a_bag(robot, tmp_path, capsys):
    from encdec_ros.anomaly.rebaseline import rebaseline_bag
    from encdec_ros.cli import main
    from encdec_ros.modeldir import ModelDir

    result = rebaseline_bag(robot['model'], robot['payload'], tmp_path / 'rb', span=(15, None))
    before, after = result.flagged
    assert before > 0.2 and after < 0.05, result.summary()
    parent, child = ModelDir.load(robot['model']), ModelDir.load(result.path)
    assert child.meta['onnx']['sha256'] == parent.meta['onnx']['sha256']
    section = child.section('rebaseline')
    assert section['parent'] == str(robot['model']) and section['decisions'] == result.decisions
    assert child.section('threshold') >= parent.section('threshold')       # never stricter
    moved = max(result.offsets, key=lambda k: abs(result.offsets[k]))
    assert moved.startswith('/motors/') or moved.startswith('/wrench_cmd/')
    # the command line: the same, one summary line; refusals in one sentence
    out = tmp_path / 'rb_cli'
    assert main(['rebaseline', '--model', str(robot['model']), '--bag', str(robot['payload']),
                 '--last', '40', '--out', str(out)]) == 0
    assert 're-baselined' in capsys.readouterr().out and (out / 'model.yaml').exists()
    assert main(['rebaseline', '--model', str(robot['model']), '--bag', str(robot['payload']),
                 '--last', '3', '--out', str(tmp_path / 'short')]) == 2
    err = capsys.readouterr().err
    assert 'needs at least 200 windows of recent normal data' in err and err.count('\n') == 1
    assert main(['rebaseline', '--model', str(robot['model']), '--bag', str(robot['payload']),
                 '--out', str(out)]) == 2
    assert 'already exists' in capsys.readouterr().err


def test_node_rebaseline_service_over_dds(robot, rclpy_context, tmp_path):
    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_srvs.srv import Trigger

    from encdec_ros.io.player import BagPlayer
    from encdec_ros.modeldir import ModelDir
    from encdec_ros.nodes.anomaly_detector import AnomalyDetectorNode
    from encdec_ros.nodes.common import make_executor

    node = AnomalyDetectorNode('anom_rb', context=rclpy_context, namespace='t',
                               parameter_overrides=[
                                   Parameter('model_dir', value=str(robot['model'])),
                                   Parameter('device', value='cpu'),
                                   Parameter('qos_reliability', value='reliable'),
                                   Parameter('qos_history', value='keep_all'),
                                   Parameter('rebaseline_minutes', value=0.5),
                                   Parameter('rebaseline_dir', value=str(tmp_path))])
    client = rclpy.create_node('anom_rb_client', context=rclpy_context)
    service = client.create_client(Trigger, '/t/anom_rb/rebaseline')
    executor = make_executor(rclpy_context)
    executor.add_node(node)
    executor.add_node(client)
    stop, thread = _spin_in_thread(executor)

    def call() -> object:
        future = service.call_async(Trigger.Request())
        deadline = time.monotonic() + 10
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.done()
        return future.result()

    try:
        assert service.wait_for_service(timeout_sec=10)
        early = call()                               # nothing received yet: refused
        assert not early.success and 'no input received yet' in early.message
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                         history=HistoryPolicy.KEEP_ALL)
        remap = {t: f'/t{t}' for t in node.spec.topic_names}     # the node's namespace
        with BagPlayer(client, robot['payload'], topics=node.spec.topic_names, rate=8.0,
                       qos=qos, remap=remap) as player:
            assert player.wait_for_subscribers(1, timeout_s=10)
            player.play()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and node.counts['decisions'] < 1000:
            time.sleep(0.05)
        reply = call()
        assert reply.success, reply.message
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not node.rebaselines:
            time.sleep(0.1)
        assert node.rebaselines, node._rebaseline_note
        new = node.rebaselines[-1].path
        assert str(new) in reply.message and new.parent == tmp_path
        # the node takes it at its next decision: play the rest again
        node.reset()
        with BagPlayer(client, robot['payload'], topics=node.spec.topic_names, rate=8.0,
                       qos=qos, remap=remap) as player:
            player.play()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and node.model_dir != str(new):
            time.sleep(0.05)
        assert node.model_dir == str(new)
        assert ModelDir.load(new).section('rebaseline.source').startswith('live input')
    finally:
        stop.set()
        thread.join(timeout=5)
        node.destroy_node()
        client.destroy_node()


# --------------------------------------------------------------------------- the sim


def test_sim_scenarios_change_the_operating_point_and_leave_other_flights_alone():
    from training.sim import SimConfig, simulate

    base = simulate(SimConfig(duration_s=20, seed=5))
    same = simulate(SimConfig(duration_s=20, seed=5, warmup_s=0.0, payload_kg=0.0))
    np.testing.assert_array_equal(base.imu_linear_acceleration, same.imu_linear_acceleration)
    heavy = simulate(SimConfig(duration_s=20, seed=5, payload_kg=1.0, payload_at_s=10.0))
    before, after = heavy.motor_stamp_ns < heavy.motor_stamp_ns[0] + 9 * 10**9, \
        heavy.motor_stamp_ns > heavy.motor_stamp_ns[0] + 14 * 10**9
    ratio = heavy.motor_current[after].mean() / heavy.motor_current[before].mean()
    assert 1.3 < ratio < 1.7                          # 3 kg instead of 2: about 1.5x the load
    assert not heavy.intervals                        # a normal change: no label
    warm = simulate(SimConfig(duration_s=20, seed=5, warmup_s=5.0))
    drift = warm.imu_linear_acceleration - base.imu_linear_acceleration
    np.testing.assert_allclose(np.abs(drift[-1]), 0.3 * (1 - np.exp(-4)), rtol=0.05)
    assert warm.motor_current[-1].mean() / base.motor_current[-1].mean() == \
        pytest.approx(1 + 0.06 * (1 - np.exp(-4)), rel=0.01)
    with pytest.raises(ConfigError, match='payload_kg must be within'):
        SimConfig(payload_kg=-1.0)


def test_cli_defaults_are_the_trainer_defaults():
    """`encdec train anomaly` with no options is TrainOptions(): one set of defaults, so that a
    benchmark calling either runs the same detector."""
    pytest.importorskip('torch')
    from encdec_ros.cli import build_parser
    from training.anomaly import TrainOptions

    args = build_parser().parse_args(['train', 'anomaly', '--bag', 'b', '--spec', 's',
                                      '--out', 'o'])
    opts = TrainOptions()
    renamed = {'threshold': 'threshold_rule', 'slow': 'slow_s', 'drift': 'drift_s',
               'drift_accept': 'drift_accept_s'}
    for dest in ('epochs', 'patience', 'batch_size', 'lr', 'weight_decay', 'val_fraction',
                 'calib_fraction', 'seed', 'error', 'threshold', 'risk', 'init_quantile',
                 'threshold_scale', 'margin', 'slow', 'debounce_k', 'debounce_n', 'release',
                 'drift', 'drift_freeze', 'drift_accept', 'folds', 'quantile'):
        assert getattr(args, dest) == getattr(opts, renamed.get(dest, dest)), dest
    for dest in ('arch', 'hidden', 'dropout', 'reg'):
        assert getattr(args, dest) == getattr(opts.model, dest), dest
    # --latent, --layers (and the family's options) are left to the architecture's default
    for dest in ('latent', 'layers', 'kernel', 'upsample', 'beta', 'kl_warmup', 'sparsity',
                 'sparsity_weight', 'rho', 'contractive_weight', 'noise'):
        assert getattr(args, dest) is None, dest
