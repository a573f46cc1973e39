"""The autoencoder family (issue 12): conv, variational, sparse, contractive and denoising
training, the PCA and robust z baselines, codes as a second ONNX output, ~/latent over DDS.

Each member trains two epochs on a 64 s synthetic flight (window 20 at 100 Hz), exports,
passes ONNX parity on every output, loads in the runtime's scorer and flags the faults
injected into the same flight. How well each generalises is measured by
benchmarks/bench_family.py, not here.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from encdec_ros.anomaly.evaluate import evaluate_bag
from encdec_ros.anomaly.scorer import AnomalyScorer, residual_statistics
from encdec_ros.errors import ConfigError

from test_anomaly import _spin_in_thread  # noqa: I001 - a test helper beside this file

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / 'config' / 'sim_spec.yaml'
SHIPPED = ROOT / 'models' / 'anomaly_sim_lstm'      # single output: trained before codes
FAULTS = ('stuck', 'spikes', 'motor_failure')
WINDOW, STRIDE = 20, 4

# every architecture and every regulariser at least once; baselines without torch below
MEMBERS = {
    'conv': {'arch': 'conv', 'reg': 'contractive'},                 # estimated Jacobian
    'conv_transposed': {'arch': 'conv', 'upsample': 'transposed'},
    'lstm_vae': {'arch': 'lstm', 'reg': 'vae'},
    'mlp_vae': {'arch': 'mlp', 'reg': 'vae', 'warmup': 1},
    'mlp_contractive': {'arch': 'mlp', 'reg': 'contractive'},       # exact Jacobian
    'gru_sparse_kl': {'arch': 'gru', 'reg': 'sparse', 'sparsity': 'kl'},
    'mlp_sparse_denoising': {'arch': 'mlp', 'reg': 'sparse', 'noise': 'relative,gaussian:0.2'},
}


def _train(bag: Path, out: Path, *, noise: str | None = None, epochs: int = 2, **model):
    from training.anomaly import TrainOptions, train_anomaly
    from training.family import AEConfig

    cfg = AEConfig(**{'hidden': 16, 'latent': 4, **model})
    opts = TrainOptions(model=cfg, epochs=epochs, train_stride=8, noise=noise, seed=1,
                        threads=1)
    return train_anomaly([bag], SPEC, out, opts, window=WINDOW, stride=STRIDE,
                         say=lambda s: None)


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    """A 64 s normal flight and the same flight with three faults."""
    from training.sim import SimConfig, simulate, write_bag

    root = tmp_path_factory.mktemp('family')
    normal = write_bag(simulate(SimConfig(duration_s=64, seed=41)), root / 'normal')
    faults = write_bag(simulate(SimConfig(duration_s=64, seed=41, faults=FAULTS,
                                          fault_duration_s=4.0, first_fault_after_s=10.0,
                                          min_gap_s=8.0)), root / 'faults')
    return {'root': root, 'normal': normal, 'faults': faults}


@pytest.fixture(scope='module')
def baselines(bags):
    """PCA and robust z fitted by the CLI in a Python where torch cannot be imported."""
    root = bags['root']
    code = (
        'import importlib.abc, sys\n'
        'class NoTorch(importlib.abc.MetaPathFinder):   # any import of torch now fails\n'
        '    def find_spec(self, name, path, target=None):\n'
        '        if name.split(".")[0] == "torch":\n'
        '            raise ImportError("torch is hidden")\n'
        'sys.meta_path.insert(0, NoTorch())\n'
        'from encdec_ros.cli import main\n'
        f'for arch in ("pca", "robust_z"):\n'
        f'    rc = main(["train", "anomaly", "--bag", {str(bags["normal"])!r}, "--spec",\n'
        f'               {str(SPEC)!r}, "--arch", arch, "--latent", "6", "--window", "20",\n'
        f'               "--stride", "4", "--out", {str(root)!r} + "/" + arch])\n'
        '    assert rc == 0, arch\n'
        f'rc = main(["eval", "anomaly", "--model", {str(root)!r} + "/pca", "--bag",\n'
        f'           {str(bags["faults"])!r}, "--out", {str(root)!r} + "/pca_eval",\n'
        f'           "--latent-plot", {str(root)!r} + "/latent.png"])\n'
        'assert rc == 0\n'
        "print('torch loaded:', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    return {'proc': out, 'pca': root / 'pca', 'robust_z': root / 'robust_z',
            'plot': root / 'latent.png'}


# --------------------------------------------------------------------------- each member


@pytest.mark.parametrize('name', list(MEMBERS))
def test_member_trains_exports_with_parity_and_flags_faults(bags, tmp_path, name):
    torch = pytest.importorskip('torch')
    options = dict(MEMBERS[name])
    result = _train(bags['normal'], tmp_path / name, **options)
    meta = yaml.safe_load((result.path / 'model.yaml').read_text())
    variational = options.get('reg') == 'vae'
    names = ['x_hat', 'log_var', 'code'] if variational else ['x_hat', 'code']
    assert [o['name'] for o in meta['onnx']['outputs']] == names
    assert meta['architecture']['arch'] == options['arch']
    assert meta['architecture']['reg'] == options.get('reg', 'none')
    assert meta['score']['likelihood'] is variational
    assert result.figures['export']['max_abs_diff'] <= 1e-4
    if 'noise' in options:
        assert meta['training']['options']['noise'] == options['noise']

    scorer = AnomalyScorer(result.path, device='cpu')
    assert scorer.code_size == 4 and scorer.likelihood is variational
    # every output of the runtime's engine against torch, on real windows
    from encdec_ros.io.bag import read_bag
    from encdec_ros.io.window import window_ends, windows_at

    rec = read_bag(bags['faults'], scorer.spec)
    ends = window_ends(rec.times_ns, scorer.spec.period_ns, WINDOW, STRIDE)[::25]
    x = scorer.normalize(windows_at(rec.data, ends, WINDOW))
    got = scorer.engine.run_many({'x': x})
    with torch.no_grad():
        want = [t.numpy() for t in result.module.export_outputs(torch.from_numpy(x))]
    for key, w in zip(names, want):
        assert np.abs(got[key] - w).max() <= 1e-4, key

    res = evaluate_bag(scorer, bags['faults'])
    assert res.codes is not None and res.codes.shape == (len(res.flags), 4)
    detected = {e['kind'] for e in res.metrics['events'] if e['detected']}
    assert {'stuck', 'motor_failure'} <= detected, (name, res.metrics['events'])
    # two epochs make no good detector (the benchmark measures that), but one that flags most
    # of a normal flight would mean a broken error or calibration
    clean = evaluate_bag(result.path, bags['normal'])
    assert clean.flags.mean() < 0.2, name


def test_baselines_are_fitted_and_served_without_torch(bags, baselines):
    proc = baselines['proc']
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'torch loaded: False' in proc.stdout
    assert 'latent plot:' in proc.stdout and baselines['plot'].stat().st_size > 10_000
    pca = yaml.safe_load((baselines['pca'] / 'model.yaml').read_text())
    assert pca['architecture']['components'] == 6
    assert 0 < pca['architecture']['explained_variance'] < 1
    assert set(pca['score']['t2']) == {'center', 'scale', 'log_mean', 'log_std'}
    assert pca['training']['export']['max_abs_diff'] <= 1e-4
    assert not (baselines['pca'] / 'loss.png').exists()
    for arch in ('pca', 'robust_z'):
        res = evaluate_bag(baselines[arch], bags['faults'])
        detected = {e['kind'] for e in res.metrics['events'] if e['detected']}
        assert {'stuck', 'motor_failure'} <= detected, arch
        assert evaluate_bag(baselines[arch], bags['normal']).flags.mean() < 0.05, arch


def test_pca_graph_is_hotellings_t2_and_q(bags, baselines):
    """The served PCA is the textbook one: orthonormal components, a residual (Q) orthogonal
    to them, eigenvalues in decreasing order, T^2 the codes scaled by them; and
    T^2 joins the score, so a window far along a component (small Q) still stands out."""
    scorer = AnomalyScorer(baselines['pca'], device='cpu')
    from encdec_ros.io.bag import read_bag
    from encdec_ros.io.window import window_ends, windows_at

    c = len(scorer.channels)
    d = WINDOW * c
    probes = np.concatenate([np.zeros((1, d)), np.eye(d)]).reshape(-1, WINDOW, c)
    codes = scorer.engine.run_many({'x': probes.astype(np.float32)})['code'].astype(np.float64)
    comps = codes[1:] - codes[0]                         # [D, 6]: the graph is affine
    np.testing.assert_allclose(comps.T @ comps, np.eye(6), atol=1e-4)

    rec = read_bag(bags['normal'], scorer.spec)
    ends = window_ends(rec.times_ns, scorer.spec.period_ns, WINDOW, STRIDE)
    xn = scorer.normalize(windows_at(rec.data, ends, WINDOW))
    out = scorer.engine.run_many({'x': xn})
    resid = (xn - out['x_hat']).reshape(len(xn), d).astype(np.float64)
    assert np.abs(resid @ comps).max() < 1e-3 * np.abs(resid).max() * np.sqrt(d)
    lam = np.asarray(yaml.safe_load((baselines['pca'] / 'model.yaml').read_text())
                     ['score']['t2']['scale']) ** 2
    assert np.all(np.diff(lam) <= 0)
    # the eigenvalues are the training windows' code variances (this flight holds them and
    # its held-out blocks)
    assert out['code'].var(axis=0).sum() == pytest.approx(lam.sum(), rel=0.25)
    t2 = scorer.stats_.t2.t2(out['code'])
    np.testing.assert_allclose(t2, np.sum(out['code'].astype(np.float64) ** 2 / lam, axis=1),
                               rtol=1e-6)
    far = xn[100:101].astype(np.float64) + (20 * np.sqrt(lam[0]) * comps[:, 0]).reshape(
        1, WINDOW, c)
    raw = far * scorer.std_ + scorer.mean_
    ch, far_codes = scorer.window_statistics(raw)
    assert scorer.stats_.t2.t2(far_codes)[0] > 100
    with_t2, _ = scorer.aggregate(ch, far_codes)
    scorer.reset()
    without, _ = scorer.aggregate(ch)
    assert with_t2[0] > without[0] + 2


def test_pca_t2_is_cross_fitted_and_rebaselined_with_its_q(bags, baselines, tmp_path):
    """Little data: PCA's T^2 statistics come from the same cross-fitted folds as its Q and
    the threshold counts both; re-baselining refits T^2 on the recent codes, never stricter."""
    from encdec_ros.anomaly.rebaseline import rebaseline_bag
    from encdec_ros.modeldir import ModelDir

    meta = yaml.safe_load((baselines['pca'] / 'model.yaml').read_text())
    assert meta['training']['folds'] == 5
    assert meta['calibration']['data'] == 'cross-fitted over 5 folds'
    assert meta['calibration']['flagged_heldout'] < 0.05
    # "this is normal now" on the flight with its faults: T^2 is refitted (wider), not kept
    result = rebaseline_bag(baselines['pca'], bags['faults'], tmp_path / 'rb')
    old, new = (ModelDir.load(p).section('score.t2') for p in (baselines['pca'], result.path))
    assert new['center'] == old['center'] and new['scale'] == old['scale']
    assert new['log_mean'] >= old['log_mean'] and new['log_std'] >= old['log_std']
    assert new['log_mean'] + new['log_std'] > old['log_mean'] + old['log_std']
    assert result.flagged[1] < result.flagged[0], result.summary()
    assert evaluate_bag(result.path, bags['normal']).flags.mean() < 0.05


def test_robust_z_residual_is_the_robust_z_score(baselines):
    scorer = AnomalyScorer(baselines['robust_z'], device='cpu')
    arch = yaml.safe_load((baselines['robust_z'] / 'model.yaml').read_text())['architecture']
    assert arch == {'arch': 'robust_z', 'parameters': 44, 'input': arch['input'],
                    'output': arch['output'], 'outputs': ['x_hat', 'code']}
    x = np.random.default_rng(0).normal(size=(3, WINDOW, 22)).astype(np.float32)
    out = scorer.engine.run_many({'x': x})
    z = x - out['x_hat']
    # z is an affine map of x per channel, constant over samples and windows
    slope = (z[0, 1] - z[0, 0]) / (x[0, 1] - x[0, 0])
    np.testing.assert_allclose((z - z[0, 0]) / slope, x - x[0, 0], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out['code'], z.mean(axis=1), atol=1e-5)


# --------------------------------------------------------------------------- losses


def test_vae_error_holds_both_terms_of_the_gaussian_nll_per_channel():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 7, 3))
    recon = x + rng.normal(scale=0.3, size=x.shape)
    log_var = rng.normal(scale=0.5, size=x.shape)
    stats = residual_statistics(recon, x, log_var)
    # log e_c = mean_t 0.5 log s^2 + log mean_t r^2 / s^2: the NLL's terms, the residual's in log
    want = 0.5 * np.mean(log_var, axis=1) + np.log(
        np.mean((recon - x) ** 2 / np.exp(log_var), axis=1))
    np.testing.assert_allclose(np.log(stats[:, :3]), want, rtol=1e-10)
    # more variance claimed for the same residual raises the first term, lowers the second
    wider = residual_statistics(recon, x, log_var + 1.0)[:, :3]
    np.testing.assert_allclose(np.log(wider), np.log(stats[:, :3]) - 0.5, rtol=1e-10)
    # a huge fault scores huge but finite, so the debouncer does not skip it
    assert np.isfinite(residual_statistics(recon + 1e6, x, log_var)).all()
    np.testing.assert_allclose(residual_statistics(recon, x)[:, :3],
                               np.mean((recon - x) ** 2, axis=1))


def test_contractive_estimate_matches_the_exact_jacobian_norm():
    torch = pytest.importorskip('torch')
    from training.family import AEConfig
    from training.models import build_model, jacobian_norm2

    torch.manual_seed(0)
    model = build_model(AEConfig(arch='mlp', hidden=16, latent=4, reg='contractive'), 6, 3)
    x = torch.randn(4, 6, 3)
    exact = jacobian_norm2(model, x, exact=True).detach()
    jac = torch.autograd.functional.jacobian(lambda v: model.encode(v)[0], x)  # (4,4,4,6,3)
    direct = torch.stack([(jac[i, :, i] ** 2).sum() for i in range(4)])
    torch.testing.assert_close(exact, direct, rtol=1e-4, atol=1e-6)
    draws = jacobian_norm2(model, x.repeat(4000, 1, 1), exact=False).detach()
    estimate = draws.reshape(4000, 4).mean(dim=0)
    torch.testing.assert_close(estimate, exact, rtol=0.08, atol=1e-4)


def test_sparse_and_vae_losses_add_their_terms():
    torch = pytest.importorskip('torch')
    from training.family import AEConfig
    from training.models import build_model, kl_weight, training_loss, validation_loss

    torch.manual_seed(0)
    x = torch.randn(8, 10, 3)
    plain = build_model(AEConfig(arch='mlp', hidden=8, latent=4), 10, 3)
    sparse = build_model(AEConfig(arch='mlp', hidden=8, latent=4, reg='sparse',
                                  sparsity_weight=0.5), 10, 3)
    sparse.load_state_dict(plain.state_dict())
    code = plain.encode(x)[0]
    torch.testing.assert_close(training_loss(sparse, x) - training_loss(plain, x),
                               0.5 * code.abs().mean())
    kl = build_model(AEConfig(arch='mlp', hidden=8, latent=4, reg='sparse', sparsity='kl',
                              rho=0.1), 10, 3)
    assert ((kl.encode(x)[0] > 0) & (kl.encode(x)[0] < 1)).all()      # sigmoid codes
    cfg = AEConfig(arch='lstm', hidden=8, latent=4, reg='vae', beta=2.0, warmup=4)
    assert [kl_weight(cfg, e) for e in (1, 3, 5, 9)] == [0.0, 1.0, 2.0, 2.0]
    vae = build_model(cfg, 10, 3)
    mean, log_var = vae.decode(vae.encode(x)[0])
    assert mean.shape == log_var.shape == x.shape and log_var.abs().max() <= 7
    assert torch.isfinite(training_loss(vae, x, epoch=5))
    torch.testing.assert_close(validation_loss(vae, x),
                               (0.5 * (log_var + (x - mean) ** 2 / log_var.exp())).mean())


def test_conv_transposed_decoder_leaves_a_checkerboard_on_a_flat_code():
    """Uniform positive weights and a flat feature map: with upsampling + convolution every
    output sums the same taps (flat inside), the transposed convolution of stride 2 and
    kernel 5 alternates between 3 and 2 taps per output (a period-2 ripple)."""
    torch = pytest.importorskip('torch')
    from training.family import AEConfig
    from training.models import build_model

    ripple = {}
    for upsample in ('resize', 'transposed'):
        model = build_model(AEConfig(arch='conv', hidden=4, latent=2, layers=2, kernel=5,
                                     upsample=upsample), 64, 1)
        with torch.no_grad():
            for mod in model.modules():
                if isinstance(mod, (torch.nn.Conv1d, torch.nn.ConvTranspose1d,
                                    torch.nn.Linear)):
                    mod.weight.fill_(0.1 if mod is not model.from_code else 0.0)
                    mod.bias.fill_(1.0 if mod is model.from_code else 0.0)
            y = model.decode(torch.zeros(1, 2))[0][0, 8:-8, 0].numpy()   # away from edges
        ripple[upsample] = np.abs(np.diff(y)).max() / np.abs(y).mean()
    assert ripple['resize'] < 1e-6
    assert ripple['transposed'] > 0.1


def test_config_refuses_what_does_not_fit_in_one_sentence():
    from training.anomaly import TrainOptions
    from training.family import AEConfig

    with pytest.raises(ConfigError, match='takes no regulariser'):
        AEConfig(arch='pca', reg='vae')
    with pytest.raises(ConfigError, match="regulariser 'dropout' is not one of"):
        AEConfig(reg='dropout')
    with pytest.raises(ConfigError, match=r'rho .* must be in \(0, 1\)'):
        AEConfig(reg='sparse', sparsity='kl', rho=1.5)
    with pytest.raises(ConfigError, match='takes no denoising corruption'):
        TrainOptions(model=AEConfig(arch='robust_z'), noise='gaussian:0.1').check()
    with pytest.raises(ConfigError, match='unknown noise kind'):
        TrainOptions(noise='hiss:0.1').check()
    assert AEConfig(arch='conv').layers == 2 and AEConfig(arch='mlp').layers == 1


# --------------------------------------------------------------------------- old models


def test_single_output_models_still_load_and_refuse_latent_requests(bags, tmp_path,
                                                                     rclpy_context, capsys):
    from rclpy.parameter import Parameter

    from encdec_ros.cli import main
    from encdec_ros.nodes.anomaly_detector import AnomalyDetectorNode

    scorer = AnomalyScorer(SHIPPED, device='cpu')
    assert scorer.engine.output_names == ['x_hat'] and scorer.code_size == 0
    assert not scorer.likelihood
    window = np.zeros((scorer.window, len(scorer.channels)), np.float32) + scorer.mean_
    assert scorer.step(window).code is None
    with pytest.raises(ConfigError, match='has no code output .*re-train it, or set '
                                          'publish_latent to false'):
        AnomalyDetectorNode('fam_old', context=rclpy_context, parameter_overrides=[
            Parameter('model_dir', value=str(SHIPPED)), Parameter('device', value='cpu'),
            Parameter('publish_latent', value=True)])
    assert main(['eval', 'anomaly', '--model', str(SHIPPED), '--bag', str(bags['faults']),
                 '--out', str(tmp_path / 'ev'), '--latent-plot', str(tmp_path / 'l.png')]) == 2
    err = capsys.readouterr().err
    assert 'has no code output' in err and 'Traceback' not in err and err.count('\n') == 1


# --------------------------------------------------------------------------- ~/latent


def test_node_publishes_each_windows_code_over_dds(bags, baselines, rclpy_context):
    """~/latent carries the code of every decided window, equal to the offline codes, with a
    layout naming its size; the node's other outputs are unchanged."""
    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool, Float32MultiArray

    from encdec_ros.io.player import BagPlayer
    from encdec_ros.nodes.anomaly_detector import AnomalyDetectorNode
    from encdec_ros.nodes.common import make_executor

    model = baselines['pca']
    node = AnomalyDetectorNode('fam_latent', context=rclpy_context, namespace='f',
                               parameter_overrides=[
                                   Parameter('model_dir', value=str(model)),
                                   Parameter('device', value='cpu'),
                                   Parameter('publish_latent', value=True),
                                   Parameter('qos_reliability', value='reliable'),
                                   Parameter('qos_history', value='keep_all'),
                                   Parameter('output_depth', value=100_000)])
    client = rclpy.create_node('fam_latent_client', context=rclpy_context)
    got: dict[str, list] = {'latent': [], 'flags': []}
    qos = QoSProfile(depth=100_000, reliability=ReliabilityPolicy.RELIABLE)
    client.create_subscription(Float32MultiArray, '/f/fam_latent/latent',
                               lambda m: got['latent'].append(m), qos)
    client.create_subscription(Bool, '/f/fam_latent/anomaly',
                               lambda m: got['flags'].append(m.data), qos)
    executor = make_executor(rclpy_context)
    executor.add_node(node)
    executor.add_node(client)
    stop, thread = _spin_in_thread(executor)
    offline = evaluate_bag(model, bags['faults'])
    try:
        play_qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                              history=HistoryPolicy.KEEP_ALL)
        with BagPlayer(client, bags['faults'], topics=node.spec.topic_names, rate=8.0,
                       qos=play_qos, remap={t: f'/f{t}' for t in node.spec.topic_names}
                       ) as player:
            assert player.wait_for_subscribers(1, timeout_s=10)
            player.play()
        # on a loaded machine the node lags behind the player: wait while it still decides
        last, seen, cap = time.monotonic(), -1, time.monotonic() + 120
        while len(got['latent']) < len(offline.flags) and time.monotonic() < cap and \
                time.monotonic() - last < 10:
            if len(got['latent']) != seen:
                last, seen = time.monotonic(), len(got['latent'])
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=5)
        node.destroy_node()
        client.destroy_node()
    assert len(got['latent']) == len(got['flags']) == len(offline.flags) > 500
    dim = got['latent'][0].layout.dim
    assert [(d.label, d.size, d.stride) for d in dim] == [('latent', 6, 6)]
    live = np.array([m.data for m in got['latent']], np.float32)
    np.testing.assert_allclose(live, offline.codes, rtol=1e-4, atol=1e-4)
    assert np.array_equal(np.array(got['flags']), offline.flags)
