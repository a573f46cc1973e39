"""Learned allocator: training through B, export, the runtime wrapper, eval and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('torch')

from encdec_ros.allocation.allocators import (  # noqa: E402
    AllocationError,
    Effectiveness,
    ExactAllocator,
    LearnedAllocator,
    PseudoInverseAllocator,
    RedistributionAllocator,
    effectiveness_of_model,
    make_allocator,
)
from encdec_ros.allocation.evaluate import evaluate, held_out_wrenches  # noqa: E402
from encdec_ros.cli import main as cli_main  # noqa: E402
from encdec_ros.errors import BagError, ModelDirError  # noqa: E402
from encdec_ros.io.bagwrite import BagWriter  # noqa: E402
from encdec_ros.modeldir import ModelDir  # noqa: E402
from training.allocator import (  # noqa: E402
    AllocatorTrainConfig,
    bag_wrenches,
    export_allocator,
    sample_wrenches,
    train_allocator,
)

ROOT = Path(__file__).resolve().parents[1]
QUAD = ROOT / 'config' / 'quad_x.yaml'
TINY = dict(hidden=(32, 32), steps=400, samples=4000, val_samples=400, batch=256,
            eval_every=200, lr=1e-2, threads=1)


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory) -> Path:
    """A small quad-X allocator trained for a few hundred steps (a few seconds)."""
    eff = Effectiveness.load(QUAD)
    result = train_allocator(eff, AllocatorTrainConfig(**TINY), show_progress=False)
    out = tmp_path_factory.mktemp('models') / 'quad'
    export_allocator(result, out)
    return out


def test_training_wrenches_cover_the_attainable_set_and_beyond():
    eff = Effectiveness.load(QUAD)
    v = sample_wrenches(eff, 4000, np.random.default_rng(0), max_scale=2.0)[::5]
    err = eff.error(ExactAllocator(eff).allocate_batch(v), v)
    assert (err < 1e-3).mean() > 0.2  # attainable ones
    assert (err > 0.05).mean() > 0.2  # far outside: saturation must be learned
    assert (v[:, 0] < 0).any()  # even wrenches no multirotor can produce


def test_model_directory_contract(tiny_model):
    model = ModelDir.load(tiny_model, task='allocator')
    eff = Effectiveness.load(QUAD)
    stored = Effectiveness.from_dict(model.section('allocator.effectiveness'))
    assert stored.compare(eff) is None
    np.testing.assert_allclose(model.array('normalization.wrench_scale', dtype=float),
                               eff.scale)
    assert model.section('training.export.max_abs_diff') <= 1e-4
    assert model.section('architecture.hidden') == [32, 32]
    assert model.inputs[0]['name'] == 'wrench_norm'
    assert effectiveness_of_model(tiny_model).compare(eff) is None


def test_learned_allocator_stays_within_limits_by_construction(tiny_model):
    eff = Effectiveness.load(QUAD)
    learned = LearnedAllocator(tiny_model, effectiveness=eff)
    rng = np.random.default_rng(1)
    wild = np.concatenate([rng.normal(size=(500, 4)) * eff.scale * 50,
                           np.zeros((1, 4)), -eff.scale[None] * 1e6, eff.scale[None] * 1e30,
                           np.array([[1e300, -1e300, 0.0, 5.0]])])
    raw = learned.raw_batch(wild)
    assert np.isfinite(raw).all()
    assert eff.violations(raw).sum() == 0
    single = np.stack([learned.allocate(r) for r in wild[:50]])
    np.testing.assert_allclose(single, learned.allocate_batch(wild[:50]), atol=1e-6)
    lower, upper = np.full(4, 0.3), np.full(4, 0.4)
    u = learned.allocate(wild[0], lower=lower, upper=upper)
    assert ((u >= 0.3) & (u <= 0.4)).all()


def test_training_learns_the_allocation(tiny_model):
    eff = Effectiveness.load(QUAD)
    report, _ = evaluate(eff, {'learned': LearnedAllocator(tiny_model),
                               'pseudo_inverse': PseudoInverseAllocator(eff),
                               'redistribution': RedistributionAllocator(eff)},
                         samples=600, timing=False)
    learned = report['methods']['learned']
    assert learned['violations'] == 0
    # the network starts as pseudo-inverse + clipping; a few hundred steps of a tiny network
    # already learn much of the saturation (about 1.5 % against 8.5 % and 3.6 %)
    assert learned['excess_mean'] < 0.5 * report['methods']['pseudo_inverse']['excess_mean']
    assert learned['excess_mean'] < report['methods']['redistribution']['excess_mean']
    assert learned['excess_mean'] < 0.04


def test_learned_allocator_refuses_another_effectiveness(tiny_model):
    hexa = Effectiveness.load(ROOT / 'config' / 'hexa_x.yaml')
    with pytest.raises(AllocationError, match='was trained for another effectiveness'):
        make_allocator('learned', hexa, model_dir=tiny_model)
    with pytest.raises(ModelDirError, match='does not exist'):
        LearnedAllocator(tiny_model.parent / 'nothing')


def _wrench_bag(path: Path, wrenches: np.ndarray) -> Path:
    with BagWriter(path) as writer:
        writer.add_topic('/controller/wrench', 'geometry_msgs/msg/WrenchStamped')
        for i, w in enumerate(wrenches):
            msg = writer.new('geometry_msgs/msg/WrenchStamped',
                             header=writer.header(1_000_000_000 + i * 10_000_000, 'base_link'),
                             wrench=writer.new('geometry_msgs/msg/Wrench',
                                               force=writer.new('geometry_msgs/msg/Vector3',
                                                                x=w[0], y=w[1], z=w[2]),
                                               torque=writer.new('geometry_msgs/msg/Vector3',
                                                                 x=w[3], y=w[4], z=w[5])))
            writer.write('/controller/wrench', 1_000_000_000 + i * 10_000_000, msg)
    return path


def test_bag_wrenches_are_read_and_mixed_in(tmp_path):
    eff = Effectiveness.load(QUAD)
    full = np.zeros((50, 6))
    full[:, 2] = np.linspace(10, 20, 50)
    full[:, 3] = 0.1
    bag = _wrench_bag(tmp_path / 'flight', full)
    v = bag_wrenches(bag, '/controller/wrench', eff)
    np.testing.assert_allclose(v, full[:, [2, 3, 4, 5]])
    with pytest.raises(BagError, match='has no topic /wrench_cmd; its wrench topics are '
                                       '/controller/wrench'):
        bag_wrenches(bag, '/wrench_cmd', eff)
    cfg = AllocatorTrainConfig(**dict(TINY, steps=20, samples=400, val_samples=50))
    result = train_allocator(eff, cfg, bag_v=v, bag_info={'topic': '/controller/wrench'},
                             show_progress=False)
    assert result.figures['bag_samples'] == 200


def test_cli_train_and_eval(tmp_path, capsys):
    out = tmp_path / 'model'
    rc = cli_main(['train', 'allocator', '--effectiveness', str(QUAD), '--out', str(out),
                   '--steps', '30', '--samples', '600', '--hidden', '16', '--batch', '128',
                   '--threads', '1'])
    assert rc == 0
    text = capsys.readouterr().out
    assert 'held-out excess error over the exact optimum' in text
    meta = ModelDir.load(out, task='allocator')
    assert meta.section('training.command').startswith('encdec train allocator')
    report_path = tmp_path / 'report.json'
    rc = cli_main(['eval', 'allocator', '--model', str(out), '--samples', '300', '--no-timing',
                   '--report', str(report_path)])
    assert rc == 0
    report = json.loads(report_path.read_text())
    assert set(report['methods']) == {'learned', 'exact', 'exact_bvls', 'pseudo_inverse',
                                      'redistribution'}
    assert report['methods']['exact']['excess_max'] < 1e-6
    assert all(m['violations'] == 0 for m in report['methods'].values())
    assert report_path.with_suffix('.png').stat().st_size > 10_000
    # user mistakes: one line, exit 2
    rc = cli_main(['train', 'allocator', '--effectiveness', str(tmp_path / 'nope.yaml'),
                   '--out', str(tmp_path / 'x')])
    err = capsys.readouterr().err
    assert rc == 2 and err.count('\n') == 1 and 'does not exist' in err
    rc = cli_main(['train', 'allocator', '--effectiveness', str(QUAD), '--out', str(out)])
    assert rc == 2 and 'already exists' in capsys.readouterr().err
    rc = cli_main(['eval', 'allocator', '--effectiveness', str(QUAD), '--methods', 'learned'])
    assert rc == 2 and 'needs --model' in capsys.readouterr().err


def test_eval_on_a_baseline_only_config(tmp_path):
    eff = Effectiveness.load(ROOT / 'config' / 'supply_vessel.yaml')
    report, curves = evaluate(eff, {'pseudo_inverse': PseudoInverseAllocator(eff)},
                              samples=300, timing=True, latency_calls=50)
    m = report['methods']['pseudo_inverse']
    assert m['latency_b1']['median_us'] > 0 and m['throughput']['per_s'] > 0
    assert len(curves['excess']['pseudo_inverse']) == 300
    assert report['samples']['attainable'] + report['samples']['unattainable'] == 300
    v = held_out_wrenches(eff, 300)
    assert np.isfinite(v).all()


@pytest.fixture(scope='module')
def flight_bag(tmp_path_factory) -> Path:
    """40 s of the synthetic hexacopter in gusty wind (about 1.5 s to make)."""
    from training.sim import SimConfig, simulate, write_bag

    path = tmp_path_factory.mktemp('flight') / 'hexa'
    write_bag(simulate(SimConfig(duration_s=40, seed=2, faults=())), path)
    return path


def test_identify_effectiveness_from_a_flight(flight_bag, tmp_path, capsys):
    from training.allocator import identify_effectiveness

    template = Effectiveness.load(ROOT / 'config' / 'sim_hexa.yaml')
    eff, figures = identify_effectiveness(flight_bag, template, mass_kg=2.0,
                                          inertia_kgm2=(0.035, 0.035, 0.06))
    assert figures['motor_time_constant_s'] == pytest.approx(0.03, abs=0.011)
    np.testing.assert_allclose(figures['full_command_speed'], 1000.0, rtol=0.01)
    assert figures['command_rank'] == 4
    assert figures['relative_difference_from_template']['fz'] < 0.1
    assert figures['relative_difference_total'] < 0.12
    # the signs and the structure are right: roll from left minus right rotors, and so on
    assert (np.sign(eff.matrix[1]) == np.sign(template.matrix[1])).all()
    out = tmp_path / 'identified.yaml'
    rc = cli_main(['train', 'effectiveness', '--bag', str(flight_bag), '--template',
                   str(ROOT / 'config' / 'sim_hexa.yaml'), '--mass', '2', '--inertia', '0.035',
                   '0.035', '0.06', '--out', str(out)])
    assert rc == 0 and 'relative difference per axis' in capsys.readouterr().out
    again = Effectiveness.load(out)
    assert out.read_text().startswith('# Effectiveness identified from the flight log')
    np.testing.assert_allclose(again.matrix, eff.matrix, atol=1e-5)
    rc = cli_main(['train', 'effectiveness', '--bag', str(flight_bag), '--template',
                   str(ROOT / 'config' / 'sim_hexa.yaml'), '--mass', '2', '--inertia', '0.035',
                   '0.035', '0.06', '--out', str(tmp_path / 'x.yaml'), '--motors-topic',
                   '/rotors'])
    assert rc == 2 and 'has no topic /rotors' in capsys.readouterr().err
