"""Anomaly detection on the synthetic hexacopter with the CLI defaults, on three vehicles,
and the operating-point scenarios before and after re-baselining. A benchmark, not a test.

For each vehicle (the default 2 kg hexa, a heavy 3.2 kg one with larger arms, slower
motors and bigger propellers, a light 1.3 kg one with smaller arms and faster motors) this
runs exactly what a user types, in-process through ``encdec_ros.cli.main``:

    encdec train anomaly --bag normal_21 --bag normal_22 --spec config/sim_spec.yaml --out M
    encdec eval anomaly --model M --bag faults_S            (S = 2 .. 6, held-out flights)

(the flights are written with training.sim, the code of ``encdec sim``, with the vehicle's
constants; every training option is the CLI default). Each fault flight carries the six
fault kinds once. Figures per vehicle:

- detected / injected per fault kind and the worst detection delay (detected = the
  debounced flag up inside the fault or within the grace after it);
- alarms in the 5 s before a fault's onset (a flag that "predicts" a fault is a false
  alarm that happens to come early);
- FAR* = point-wise false alarm rate outside the grace after each fault, and false alarm
  events per hour of flight.

Then, on the default vehicle, normal flights that change their operating point: a warm-up
drift (IMU biases and motor currents, time constant 300 s) and a 0.6 kg payload picked up
at 200 s: false alarms per hour and the share of time flagged with the defaults, and, for
the payload, after ``encdec rebaseline --span 280:400`` at 400 s ("this is normal now"),
also on a payload flight with the six faults after it.

Usage::

    nice -n 10 python benchmarks/bench_anomaly_sim.py                     # all vehicles
    nice -n 10 python benchmarks/bench_anomaly_sim.py --vehicle default --json out/sim.json

Bags and models are cached under ``--work`` (``--retrain`` trains again).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ('stuck', 'bias_drift', 'spikes', 'vibration', 'motor_degradation', 'motor_failure')
PRE_ONSET_S = 5.0
AFTERMATH_S = 5.0


def vehicles() -> dict:
    """The vehicles flown: the default hexa and two others nobody tuned on."""
    from training.sim import HexaParams

    return {
        'default': HexaParams(),
        'heavy': HexaParams(mass_kg=3.2, inertia_kgm2=(0.06, 0.06, 0.1), arm_length_m=0.35,
                            thrust_coeff=1.5e-5, motor_time_constant_s=0.045,
                            torque_constant_nm_per_a=0.02),
        'light': HexaParams(mass_kg=1.3, inertia_kgm2=(0.02, 0.02, 0.035), arm_length_m=0.22,
                            thrust_coeff=0.8e-5, motor_time_constant_s=0.02,
                            torque_constant_nm_per_a=0.01),
    }


def flight(work: Path, vehicle: str, name: str, seed: int, duration: float,
           faults: str = 'none', **scenario: float) -> Path:
    """A cached simulated bag of one vehicle."""
    from training.sim import SimConfig, simulate, write_bag

    path = work / vehicle / 'bags' / name
    if not (path / 'metadata.yaml').exists():
        if path.exists():
            shutil.rmtree(path)
        write_bag(simulate(SimConfig(duration_s=duration, seed=seed, faults=faults,
                                     params=vehicles()[vehicle], **scenario)), path)
    return path


def encdec(args: list[str], log) -> None:
    """Run one ``encdec`` command in-process; its output goes to ``log``."""
    from encdec_ros.cli import main

    print('$ encdec ' + ' '.join(shlex.quote(a) for a in args), file=log, flush=True)
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = main(args)
    if code != 0:
        raise SystemExit(f'encdec {" ".join(args[:2])} failed (exit {code}); see {log.name}')


def pre_onset_alarms(result) -> int:
    """Faults with the flag up at some decision in the PRE_ONSET_S seconds before onset."""
    t, flags = result.decision_times_ns, result.flags
    out = 0
    for iv in result.labels:
        near = (t >= iv.start_ns - int(PRE_ONSET_S * 1e9)) & (t < iv.start_ns)
        out += bool(flags[near].any())
    return out


def aftermath_alarms(result) -> int:
    """False alarms that start within AFTERMATH_S after a fault's grace: the vehicle still
    recovering (a restored motor spinning up, the attitude settling), not normal flight."""
    grace = int(result.metrics['grace_s'] * 1e9)
    out = 0
    for lo, _ in result.metrics['alarms'].get('false_alarm_intervals_ns', []):
        out += any(0 <= lo - (iv.end_ns + grace) < int(AFTERMATH_S * 1e9)
                   for iv in result.labels)
    return out


def flagged_after(result, start_s: float) -> tuple[float, int, float]:
    """Share of decisions flagged, alarm count and alarms per hour from ``start_s`` on."""
    from encdec_ros.io.labels import intervals_from_mask

    t = (result.decision_times_ns - result.times_ns[0]) * 1e-9
    keep = t >= start_s
    alarms = intervals_from_mask(result.decision_times_ns[keep], result.flags[keep], kind='f')
    hours = (t[keep][-1] - t[keep][0]) / 3600 if keep.sum() > 1 else 0.0
    return float(result.flags[keep].mean()), len(alarms), len(alarms) / hours if hours else 0.0


def main() -> int:
    """Train per vehicle with the CLI defaults, evaluate, run the scenarios, print tables."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--work', default=str(ROOT / 'out' / 'bench_anomaly_sim'))
    p.add_argument('--vehicle', action='append', choices=tuple(vehicles()))
    p.add_argument('--train-seeds', default='21,22')
    p.add_argument('--test-seeds', default='2,3,4,5,6')
    p.add_argument('--retrain', action='store_true', help='train even if a model exists')
    p.add_argument('--no-scenarios', action='store_true', help='skip the drift scenarios')
    p.add_argument('--json', help='write the figures here')
    args = p.parse_args()

    import logging
    logging.disable(logging.WARNING)
    import numpy as np

    from encdec_ros.anomaly.evaluate import evaluate_bag, pooled

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    spec = ROOT / 'config' / 'sim_spec.yaml'
    table, scenarios = {}, {}
    log = open(work / 'commands.log', 'a')
    for vehicle in args.vehicle or list(vehicles()):
        t0 = time.perf_counter()
        train = [flight(work, vehicle, f'normal_{s}', int(s), 300.0)
                 for s in args.train_seeds.split(',')]
        tests = [flight(work, vehicle, f'faults_{s}', int(s), 180.0, 'all')
                 for s in args.test_seeds.split(',')]
        model = work / vehicle / 'model'
        if args.retrain or not (model / 'model.yaml').exists():
            encdec(['train', 'anomaly', *[a for b in train for a in ('--bag', str(b))],
                    '--spec', str(spec), '--out', str(model), '--force'], log)
        results = [evaluate_bag(model, b) for b in tests]
        events = [e for r in results for e in r.metrics['events']]
        per_kind = {}
        for kind in KINDS:
            evs = [e for e in events if e['kind'] == kind]
            delays = [e['delay_s'] for e in evs if e['detected']]
            per_kind[kind] = {'detected': len(delays), 'events': len(evs),
                              'max_delay_s': max(delays) if delays else None,
                              'mean_delay_s': float(np.mean(delays)) if delays else None,
                              'missed': [e['detail'] for e in evs if not e['detected']]}
        outside = pooled([{'pointwise': r.metrics['pointwise_after_grace']} for r in results])
        hours = sum(float(r.times_ns[-1] - r.times_ns[0]) * 1e-9 / 3600 for r in results)
        false = sum(r.metrics['alarms']['false_alarms'] for r in results)
        after = sum(aftermath_alarms(r) for r in results)
        table[vehicle] = {'per_kind': per_kind, 'far_after_grace': outside['far'],
                          'false_alarms_per_hour': false / hours,
                          'aftermath_alarms': after,
                          'other_false_alarms_per_hour': (false - after) / hours,
                          'pre_onset_alarms': sum(pre_onset_alarms(r) for r in results),
                          'faults': len(events), 'grace_s': results[0].metrics['grace_s'],
                          'seconds': round(time.perf_counter() - t0, 1)}
        print(f'{vehicle}: done ({table[vehicle]["seconds"]:.0f} s)', flush=True)

    if not args.no_scenarios:
        model = work / 'default' / 'model'
        warm = flight(work, 'default', 'warmup_33', 33, 900.0, warmup_s=300.0)
        payload = flight(work, 'default', 'payload_34', 34, 600.0, payload_kg=0.6,
                         payload_at_s=200.0)
        r = evaluate_bag(model, warm)
        share, count, rate = flagged_after(r, 0.0)
        r0 = evaluate_bag(model, warm, drift_s=0.0)
        share0, count0, rate0 = flagged_after(r0, 0.0)
        scenarios['warmup'] = {'defaults': [share, count, rate],
                               'without_drift_following': [share0, count0, rate0]}
        rebased = work / 'default' / 'model_rebaselined'
        encdec(['rebaseline', '--model', str(model), '--bag', str(payload), '--span', '280:400',
                '--out', str(rebased), '--force'], log)
        before = flagged_after(evaluate_bag(model, payload), 400.0)
        after = flagged_after(evaluate_bag(rebased, payload), 400.0)
        scenarios['payload'] = {'before': list(before), 'after': list(after),
                                'before_payload': list(flagged_after(
                                    evaluate_bag(model, payload, eval_span=(0, 200)), 0.0))}
        # the same with faults after the re-baseline: still detected?
        pf = flight(work, 'default', 'payload_faults_37', 37, 600.0, 'all', payload_kg=0.6,
                    payload_at_s=200.0, first_fault_after_s=420.0)
        rebased_f = work / 'default' / 'model_rebaselined_37'
        encdec(['rebaseline', '--model', str(model), '--bag', str(pf), '--span', '280:400',
                '--out', str(rebased_f), '--force'], log)
        rf = evaluate_bag(rebased_f, pf, eval_span=(400.0, None))
        ev = rf.metrics['events']
        scenarios['payload']['rebaselined_faults'] = {
            k: [sum(e['detected'] for e in ev if e['kind'] == k),
                max([e['delay_s'] for e in ev if e['kind'] == k and e['detected']] or [0])]
            for k in KINDS}
        scenarios['payload']['rebaselined_faults_false_alarms'] = \
            rf.metrics['alarms']['false_alarms']
    log.close()

    print(f'\nsynthetic hexacopter, CLI defaults: trained on 2 x 300 s of normal flight (seeds '
          f'{args.train_seeds}) per vehicle, evaluated on 5 x 180 s held-out fault flights '
          f'(seeds {args.test_seeds}); detected/injected and worst delay in s')
    head = ''.join(f'{k[:12]:>14}' for k in KINDS)
    print(f'  {"vehicle":<8}{head}  {"FAR*":>6} {"FA/h":>5} {"after":>5} {"other/h":>7} '
          f'{"pre-onset":>9}')
    for vehicle, row in table.items():
        cells = ''.join(
            f'{row["per_kind"][k]["detected"]:>5}/{row["per_kind"][k]["events"]}'
            f' {row["per_kind"][k]["max_delay_s"] or 0:>5.2f}s' for k in KINDS)
        print(f'  {vehicle:<8}{cells}  {100 * row["far_after_grace"]:>5.2f}% '
              f'{row["false_alarms_per_hour"]:>5.1f} {row["aftermath_alarms"]:>5} '
              f'{row["other_false_alarms_per_hour"]:>7.1f} {row["pre_onset_alarms"]:>5}/'
              f'{row["faults"]}')
    print(f'  FAR*: point-wise false alarm rate outside the grace after each fault; FA/h: false '
          f'alarm events per hour; after: of those, alarms starting within {AFTERMATH_S:g} s '
          f'after a fault\'s grace (the vehicle still recovering); other/h: the rest per hour; '
          f'pre-onset: faults with an alarm in the {PRE_ONSET_S:g} s before them')
    if scenarios:
        w, pl = scenarios['warmup'], scenarios['payload']
        print('normal flights that change their operating point (default vehicle):')
        print(f'  warm-up drift, 900 s: defaults {w["defaults"][1]} alarms '
              f'({w["defaults"][2]:.1f}/h, {100 * w["defaults"][0]:.1f} % flagged); without '
              f'drift following (--drift 0) {w["without_drift_following"][1]} alarms '
              f'({w["without_drift_following"][2]:.1f}/h, '
              f'{100 * w["without_drift_following"][0]:.1f} % flagged)')
        print(f'  0.6 kg payload at 200 s, 400-600 s: {100 * pl["before"][0]:.0f} % flagged '
              f'({pl["before"][1]} alarms) before re-baselining; {100 * pl["after"][0]:.1f} % '
              f'({pl["after"][1]} alarms) after `encdec rebaseline --span 280:400`')
        print('  the same flight with the six faults after 420 s, re-baselined at 400 s: '
              + ', '.join(f'{k} {d}/1 ({t:.2f} s)' for k, (d, t) in
                          pl['rebaselined_faults'].items())
              + f'; {pl["rebaselined_faults_false_alarms"]} false alarms')
    if args.json:
        Path(args.json).write_text(json.dumps({'vehicles': table, 'scenarios': scenarios},
                                              indent=1, default=float))
    return 0


if __name__ == '__main__':
    sys.exit(main())
