"""Control allocation core: configurations, validation, the exact optimum and the baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from encdec_ros.allocation.allocators import (
    AXES,
    AllocationError,
    Effectiveness,
    ExactAllocator,
    PseudoInverseAllocator,
    RateLimiter,
    RedistributionAllocator,
    make_allocator,
    method_name,
)
from encdec_ros.allocation.evaluate import held_out_wrenches, reference_figures
from encdec_ros.errors import ConfigError, EncdecError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ('quad_x', 'hexa_x', 'octo_x8', 'omnicopter', 'rov6', 'supply_vessel', 'sim_hexa')


def load(name: str) -> Effectiveness:
    return Effectiveness.load(ROOT / 'config' / f'{name}.yaml')


def write(tmp_path: Path, data: dict, name: str = 'robot.yaml') -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding='utf-8')
    return path


QUAD = {
    'frame': 'frd',
    'rotors': [{'position': [0.13, 0.22, 0.0], 'spin': 'ccw', 'ct': 6.5},
               {'position': [-0.13, -0.20, 0.0], 'spin': 'ccw', 'ct': 6.5},
               {'position': [0.13, -0.22, 0.0], 'spin': 'cw', 'ct': 6.5},
               {'position': [-0.13, 0.20, 0.0], 'spin': 'cw', 'ct': 6.5}],
    'limits': {'min': 0.0, 'max': 1.0},
}


# --------------------------------------------------------------------------- configurations


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_configs_load_and_cite_their_source(name):
    text = (ROOT / 'config' / f'{name}.yaml').read_text()
    assert text.startswith('#'), 'each shipped configuration starts with where it comes from'
    eff = load(name)
    assert np.linalg.matrix_rank(eff.matrix) == eff.n_axes
    assert eff.max_wrench > 0 and (eff.scale > 0).all()
    assert ((eff.safe_output >= eff.u_min) & (eff.safe_output <= eff.u_max)).all()


def test_px4_rotor_formula_in_flu():
    eff = Effectiveness.from_dict(QUAD, source='quad.yaml')
    assert eff.axes == ('fz', 'tx', 'ty', 'tz')
    # rotor 0: front right (PX4 FRD y = +0.22), counter-clockwise: in FLU y = -0.22, thrust up
    col = eff.matrix_full[:, 0]
    np.testing.assert_allclose(col, [0, 0, 6.5, -0.22 * 6.5, -0.13 * 6.5, -0.05 * 6.5],
                               atol=1e-12)
    # a clockwise rotor yaws the other way
    assert eff.matrix_full[5, 2] == pytest.approx(+0.05 * 6.5)
    # PX4 builds the FRD column as ct a (a = (0, 0, -1)) and ct (p x a) - ct km a; FRD -> FLU
    # flips y and z of forces and moments alike.
    p, a = np.array([0.13, 0.22, 0.0]), np.array([0.0, 0.0, -1.0])
    frd = np.concatenate([6.5 * a, 6.5 * np.cross(p, a) - 6.5 * 0.05 * a])
    np.testing.assert_allclose(col, frd * np.array([1, -1, -1, 1, -1, -1]), atol=1e-12)


def test_sim_hexa_matches_the_simulator():
    from training.sim import HexaParams

    hexa = HexaParams()
    eff = load('sim_hexa')
    np.testing.assert_allclose(eff.matrix_full, hexa.effectiveness_matrix() *
                               hexa.max_thrust_n, atol=1e-5)


def test_reference_conditioning_of_shipped_configs():
    # the data README: omnicopter rank 6, condition number about 4; supply vessel about 280
    assert np.linalg.cond(load('omnicopter').matrix) == pytest.approx(4.0, abs=0.1)
    assert np.linalg.cond(load('supply_vessel').matrix) == pytest.approx(282, rel=0.02)
    # X8: the two rotors of an arm differ only in the sign of their yaw moment
    b = load('octo_x8').matrix
    np.testing.assert_allclose(b[:3, 0], b[:3, 5])
    assert b[3, 0] == pytest.approx(-b[3, 5])


def test_direct_matrix_in_frd_is_converted(tmp_path):
    data = {'frame': 'frd', 'axes': ['fx', 'fy', 'tz'],
            'matrix': [[1, 0, 0], [0, 1, 0], [1, -1, 2]],
            'actuators': ['a', 'b', 'c'], 'limits': {'min': -1, 'max': 1}}
    eff = Effectiveness.load(write(tmp_path, data))
    np.testing.assert_allclose(eff.matrix, [[1, 0, 0], [0, -1, 0], [-1, 1, -2]])
    assert eff.actuators == ('a', 'b', 'c')


def test_to_dict_round_trips():
    for name in ('quad_x', 'rov6', 'supply_vessel'):
        eff = load(name)
        again = Effectiveness.from_dict(eff.to_dict(), source='copy')
        assert eff.compare(again) is None
        np.testing.assert_allclose(again.matrix_full, eff.matrix_full)
        assert again.actuators == eff.actuators and again.axes == eff.axes
    other = dict(load('quad_x').to_dict(), weights={'fz': 5, 'tx': 10, 'ty': 10, 'tz': 3})
    assert load('quad_x').compare(Effectiveness.from_dict(other)) == 'weights differs'


BAD = [
    ({**QUAD, 'colour': 'red'}, r"robot.yaml: has the unknown key 'colour'; the keys are"),
    ({**QUAD, 'limits': {'min': 1.0, 'max': 0.0}},
     r"robot.yaml: limits for actuator 'rotor_0' have min 1 >= max 0; make min smaller"),
    ({**QUAD, 'limits': {'min': [0, 0, 0], 'max': 1}},
     r'robot.yaml: limits.min has 3 entries but there are 4 actuators; give one per actuator'),
    ({'axes': ['fz', 'tx'], 'matrix': [[1, 1, 1]], 'limits': {'min': 0, 'max': 1}},
     r'robot.yaml: matrix has 1 rows but axes lists 2; give one row per axis'),
    ({'axes': ['fz', 'tx'], 'matrix': [[1, 1], [1, 1, 1]], 'limits': {'min': 0, 'max': 1}},
     r'robot.yaml: matrix\[1\] has 3 entries but there are 2 columns'),
    ({'axes': ['fz', 'tx', 'ty'], 'matrix': [[1, 1, 1], [1, -1, 0], [2, -2, 0]],
      'limits': {'min': 0, 'max': 1}},
     r'robot.yaml: B has rank 2 for the 3 axes fz, tx, ty .*; allocate fewer axes'),
    ({**QUAD, 'axes': ['fx', 'fz', 'tx', 'ty']},
     r'robot.yaml: axis fx has no actuator acting on it; remove fx from axes'),
    ({**QUAD, 'weights': {'roll': 2}}, r"robot.yaml: weights has the unknown axis 'roll'"),
    ({**QUAD, 'weights': {'fx': 2}},
     r'robot.yaml: weights.fx weights an axis that is not allocated; remove it'),
    ({**QUAD, 'rotors': [{'position': [0, 1, 0], 'spin': 'left'}]},
     r"robot.yaml: rotors\[0\].spin is 'left'; write spin: ccw or spin: cw"),
    ({**QUAD, 'rotors': [{**QUAD['rotors'][0], 'km': -0.05}]},
     r'robot.yaml: rotors\[0\].km is -0.05; give km as a magnitude .* spin: cw\)'),
    ({**QUAD, 'rotors': [{**QUAD['rotors'][0], 'axis': [0, 0, 2]}]},
     r'robot.yaml: rotors\[0\].axis has length 2, not 1; give a unit vector'),
    ({**QUAD, 'rotors': [{**QUAD['rotors'][0], 'size': 5}]},
     r"robot.yaml: rotors\[0\] has the unknown key 'size'"),
    ({**QUAD, 'matrix': [[1]]}, r'robot.yaml: give either matrix: .* not both'),
    ({**QUAD, 'frame': 'ned'}, r"robot.yaml: frame is 'ned'; write flu"),
    ({**QUAD, 'limits': {'min': 0, 'max': 1, 'rate': -2}},
     r'robot.yaml: limits.rate has a value <= 0'),
    ({**QUAD, 'preferred': 2.0}, r'robot.yaml: preferred lies outside the limits'),
    ({**QUAD, 'safe_output': [0, 0, 0, 3]}, r'robot.yaml: safe_output lies outside the limits'),
    ({**QUAD, 'limits': {'max': 1}}, r'robot.yaml: limits must give min and max'),
]


@pytest.mark.parametrize('data, message', BAD)
def test_invalid_configurations_give_one_sentence(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message) as info:
        Effectiveness.load(write(tmp_path, data))
    text = str(info.value)
    assert '\n' not in text and str(tmp_path / 'robot.yaml') in text


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match='does not exist or is not a file'):
        Effectiveness.load(tmp_path / 'missing.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('rotors: [\n')
    with pytest.raises(ConfigError, match=r'bad.yaml: not readable YAML .*line'):
        Effectiveness.load(bad)
    bad.write_text('- 1\n- 2\n')
    with pytest.raises(ConfigError, match='not a mapping'):
        Effectiveness.load(bad)


def test_method_names():
    assert method_name('pseudo-inverse') == 'pseudo_inverse'
    assert method_name('Exact') == 'exact'
    with pytest.raises(ConfigError, match="'magic' is not one of learned, exact"):
        method_name('magic')
    with pytest.raises(AllocationError, match='needs a model directory'):
        make_allocator('learned', load('quad_x'))
    assert issubclass(AllocationError, EncdecError)


# --------------------------------------------------------------------------- the optimum


def _objective(eff: Effectiveness, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r = (eff.achieved(u) - v) * eff.row_weight
    d = (u - eff.preferred) / eff.half_range
    return (r * r).sum(-1) + eff.effort_weight * (d * d).sum(-1)


@pytest.mark.parametrize('name', ['quad_x', 'octo_x8', 'rov6', 'supply_vessel'])
def test_active_set_equals_bvls_and_is_optimal(name):
    eff = load(name)
    v = held_out_wrenches(eff, 150, seed=3)
    fast, ref = ExactAllocator(eff), ExactAllocator(eff, solver='bvls')
    u, u_ref = fast.allocate_batch(v), ref.allocate_batch(v)
    np.testing.assert_allclose((u - u_ref) / eff.half_range, 0.0, atol=1e-7)
    assert fast.not_converged_ == 0
    # no random feasible point does better
    rng = np.random.default_rng(0)
    best = _objective(eff, u, v)
    for _ in range(20):
        other = np.clip(u + rng.normal(scale=0.05, size=u.shape) * eff.half_range,
                        eff.u_min, eff.u_max)
        assert (_objective(eff, other, v) >= best - 1e-12).all()


def test_attainable_wrenches_are_met_and_priorities_hold():
    eff = load('hexa_x')
    exact = ExactAllocator(eff)
    u_true = np.full(6, 0.5)
    v = eff.achieved(u_true)
    u = exact.allocate(v)
    assert eff.error(u, v) < 1e-3
    # ask for twice the full collective thrust and a strong roll torque: roll is met
    # (weight 10), thrust gives way (weight 1)
    v = np.array([2.0 * 39.0, 6.0, 0.0, 0.0])
    u = exact.allocate(v)
    got = eff.achieved(u)
    assert abs(got[1] - 6.0) < 0.05 * 6.0
    assert got[0] < 39.0
    assert ((u >= 0) & (u <= 1)).all()


def test_warm_start_and_bounds_give_the_same_optimum():
    eff = load('octo_x8')
    v = held_out_wrenches(eff, 60, seed=5)
    cold, warm, ref = ExactAllocator(eff), ExactAllocator(eff, warm_start=True), \
        ExactAllocator(eff, solver='bvls')
    lower, upper = np.full(8, 0.2), np.full(8, 0.7)
    for row in v:
        a, b = cold.allocate(row), warm.allocate(row)
        np.testing.assert_allclose(a, b, atol=1e-9)
        c = warm.allocate(row, lower=lower, upper=upper)
        d = ref.allocate(row, lower=lower, upper=upper)
        assert ((c >= lower - 1e-12) & (c <= upper + 1e-12)).all()
        np.testing.assert_allclose(c, d, atol=1e-7)


@pytest.mark.parametrize('cls', [PseudoInverseAllocator, RedistributionAllocator])
def test_baselines_respect_limits_and_meet_easy_wrenches(cls):
    for name in ('quad_x', 'omnicopter', 'supply_vessel'):
        eff = load(name)
        alloc = cls(eff)
        v = held_out_wrenches(eff, 300, seed=1)
        u = alloc.allocate_batch(v)
        assert eff.violations(u).sum() == 0
        np.testing.assert_allclose(u[:20], np.stack([alloc.allocate(r) for r in v[:20]]))
        mid = eff.achieved(0.5 * (eff.u_min + eff.u_max) * np.ones(eff.n_actuators)) * 0.5
        assert eff.error(alloc.allocate(mid), mid) < 1e-9


def test_redistribution_beats_clipping_on_multirotors():
    eff = load('hexa_x')
    v = held_out_wrenches(eff, 600, seed=2)
    e_pinv = eff.error(PseudoInverseAllocator(eff).allocate_batch(v), v)
    e_redis = eff.error(RedistributionAllocator(eff).allocate_batch(v), v)
    assert e_redis.mean() < e_pinv.mean()


def test_rate_limiter_moves_the_box():
    data = dict(QUAD, limits={'min': 0.0, 'max': 1.0, 'rate': 2.0})
    eff = Effectiveness.from_dict(data)
    lo, hi = RateLimiter(eff).bounds(np.array([0.0, 0.5, 0.99, 0.5]), 0.1)
    np.testing.assert_allclose(lo, [0.0, 0.3, 0.79, 0.3])
    np.testing.assert_allclose(hi, [0.2, 0.7, 1.0, 0.7])
    with pytest.raises(ConfigError, match='limits.rate is not set'):
        RateLimiter(load('quad_x'))


def test_baselines_agree_with_the_data_readme():
    """The README's reference table (pinv + clip against lsq_linear, raw units)."""
    readme = {'quad_x': (0.018, 0.34), 'hexa_x': (0.012, 0.16), 'octo_x8': (0.008, 0.08)}
    for name, (mean, infeasible) in readme.items():
        ref = reference_figures(load(name), n=800, seed=0)
        assert ref['pinv_excess_mean'] == pytest.approx(mean, rel=0.5), name
        assert ref['no_exact_solution'] == pytest.approx(infeasible, abs=0.05), name


def test_axes_order_is_the_wrench_message_order():
    assert AXES == ('fx', 'fy', 'fz', 'tx', 'ty', 'tz')
    eff = load('rov6')
    assert eff.select(np.arange(6.0)).tolist() == [0.0, 1.0, 2.0, 3.0, 5.0]
