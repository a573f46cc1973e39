"""``encdec demo``: the main job end to end on the synthetic robot (what `make demo` runs).

1. fly the synthetic hexacopter twice: a normal flight to learn from, and a held-out flight
   (another seed) with six injected faults;
2. train an LSTM autoencoder on the normal flight, calibrate its threshold, export ONNX;
3. evaluate it offline on the fault flight (``encdec eval anomaly``: JSON report and PNG);
4. start the ``anomaly_detector`` node in this process over real DDS, play the fault bag to
   it faster than real time, collect its ``~/anomaly`` and ``~/score`` messages;
5. print F1, per-fault detection delays and per-message latency from the node's flags, and
   check that they equal the offline evaluation's.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

DEMO_TRAIN = {'arch': 'lstm', 'hidden': 32, 'latent': 8, 'epochs': 40, 'patience': 6,
              'train_stride': 5}
ROOT = Path(__file__).resolve().parents[2]


def register(groups: dict) -> None:
    """Add ``demo``."""
    p = groups['top'].add_parser(
        'demo', help='run the main job end to end on a synthetic robot',
        description='Simulate two normal flights and a flight with six kinds of faults, train an '
                    'LSTM autoencoder on the first, start the anomaly_detector node over real '
                    'DDS, play the fault flight to it faster than real time and print F1, '
                    'detection delays and latency. Takes a few minutes on 2 CPU cores.')
    p.add_argument('--out', default='out/demo', help='output directory (default out/demo)')
    p.add_argument('--train-duration', type=float, default=300.0,
                   help='seconds of each of the two normal flights to train on (300)')
    p.add_argument('--duration', type=float, default=180.0,
                   help='seconds of the fault flight (180; six faults need at least 165)')
    p.add_argument('--seed', type=int, default=1, help='seed of the fault flight (1); the '
                   'training flights use seed + 100 and seed + 101')
    p.add_argument('--rate', type=float, default=10.0,
                   help='playback speed for the node, times real time (10)')
    p.add_argument('--model', help='use this model directory instead of training one')
    p.add_argument('--time-limit', type=float, default=150.0,
                   help='most seconds of training (150)')
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import shutil

    from encdec_ros.errors import ConfigError

    if args.duration < 165:
        raise ConfigError(f'--duration {args.duration:g} is too short for six faults; give at '
                          'least 165 s')
    from encdec_ros.modeldir import check_output_dir

    out = check_output_dir(args.out)   # before four minutes of flights and training
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    spec = ROOT / 'config' / 'sim_spec.yaml'

    # 1. two normal flights to learn from, one held-out flight with faults
    from training.sim import SimConfig, simulate, write_bag

    flights = [(f'normal_{i + 1}', SimConfig(duration_s=args.train_duration,
                                            seed=args.seed + 100 + i)) for i in range(2)]
    flights.append(('faults_bag', SimConfig(duration_s=args.duration, seed=args.seed,
                                            faults='all')))
    bags = {}
    for name, cfg in flights:
        path = out / name
        if path.exists():
            shutil.rmtree(path)
        result = simulate(cfg)
        bags[name] = write_bag(result, path)
        print(f'[1] wrote {path}: {cfg.duration_s:g} s of flight, seed {cfg.seed}, '
              + (f'{len(result.intervals)} faults: '
                 + ', '.join(iv.kind for iv in result.intervals) if result.intervals
                 else 'no faults'))
    train_bags = [bags['normal_1'], bags['normal_2']]
    faults_bag = bags['faults_bag']

    # 2. train
    if args.model:
        model = Path(args.model)
        print(f'[2] using the model in {model}')
    else:
        model = out / 'model'
        from training.anomaly import TrainOptions, train_anomaly
        from training.models import AEConfig

        t = DEMO_TRAIN
        opts = TrainOptions(model=AEConfig(arch=t['arch'], hidden=t['hidden'],
                                           latent=t['latent']),
                            epochs=t['epochs'], patience=t['patience'],
                            train_stride=t['train_stride'], time_limit_s=args.time_limit)
        command = (f'encdec train anomaly --bag {train_bags[0]} --bag {train_bags[1]} --spec '
                   f'{spec} --arch {t["arch"]} --hidden {t["hidden"]} --latent {t["latent"]} '
                   f'--epochs {t["epochs"]} --patience {t["patience"]} --train-stride '
                   f'{t["train_stride"]} --time-limit {args.time_limit:g} --out {model} --force')
        print(f'[2] training: {command}')
        t0 = time.perf_counter()
        train_anomaly(train_bags, spec, model, opts, command=command,
                      overwrite=True, say=lambda s: print(f'    {s}'))
        print(f'    trained and exported in {time.perf_counter() - t0:.0f} s: {model}')

    # 3. offline evaluation
    from encdec_ros.anomaly.evaluate import evaluate_bag, summary_lines, write_report

    offline = evaluate_bag(model, faults_bag, device='cpu')
    report, png = write_report(offline, out / 'eval', model=str(model))
    print(f'[3] offline evaluation (encdec eval anomaly --model {model} --bag {faults_bag}):')
    for line in summary_lines(offline):
        print(f'    {line}')

    # 4. the node over DDS
    print(f'[4] node anomaly_detector over DDS, fault bag played at {args.rate:g}x real time')
    live = _run_node(model, faults_bag, args.rate, len(offline.flags))

    # 5. figures from the node's own flags
    import numpy as np

    from encdec_ros.anomaly.evaluate import anomaly_metrics, held_values
    from encdec_ros.io.labels import label_mask

    ticks = np.array([d[0] for d in live['decisions']], dtype=np.int64)
    flags = np.array(live['flags'], dtype=bool)
    n = min(len(ticks), len(flags))
    ticks, flags = ticks[:n], flags[:n]
    pflags = held_values(ticks, flags, offline.times_ns)
    plabels = label_mask(offline.labels, offline.times_ns)
    metrics = anomaly_metrics(pflags, plabels, ticks, flags, offline.labels,
                              grace_s=offline.metrics['grace_s'], points=offline.times_ns)
    same = n == len(offline.flags) and bool(np.array_equal(flags, offline.flags))
    pw = metrics['pointwise']
    print(f'[5] the node published {live["received"]} decisions ({live["messages"]} input '
          f'messages in {live["wall_s"]:.1f} s); its flags '
          + ('equal the offline evaluation\'s' if same else 'DIFFER from the offline evaluation'))
    after = metrics['pointwise_after_grace']
    print(f'    point-wise F1 {_f(pw["f1"])}  precision {_f(pw["precision"])}  recall '
          f'{_f(pw["recall"])}  missed alarm rate {_p(pw["mar"])}')
    print(f'    false alarm rate {_p(pw["far"])} of normal samples; {_p(after["far"])} outside '
          f'the {metrics["grace_s"]:.2f} s after each fault, while the window still holds '
          'faulty samples')
    t0 = int(offline.times_ns[0])
    for ev in metrics['events']:
        delay = f'detected after {ev["delay_s"]:.2f} s' if ev['detected'] else 'MISSED'
        print(f'    {(ev["start_ns"] - t0) * 1e-9:6.1f} s  {ev["kind"]:<18} '
              f'{ev["detail"]:<24} {delay}')
    al = metrics['alarms']
    print(f'    false alarms: {al["false_alarms"]} ({al["false_alarm_s"]:.1f} s flagged)')
    lat = live['latency']
    print(f'    latency, message received -> decision published: p50 '
          f'{lat["decision"]["p50"]:.2f} ms, p99 {lat["decision"]["p99"]:.2f} ms '
          f'({lat["decision"]["count"]} decisions); handling of every message: p50 '
          f'{lat["message"]["p50"]:.3f} ms, p99 {lat["message"]["p99"]:.3f} ms')
    print(f'    plot: {png}')
    print(f'    report: {report}')
    print(f'done in {time.perf_counter() - start:.0f} s; run the node yourself with: ros2 run '
          f'encdec_ros anomaly_detector --ros-args -p model_dir:={model.resolve()}')
    return 0 if same else 1


def _run_node(model: Path, bag: Path, rate: float, expected: int) -> dict[str, Any]:
    """Run the node in this process, play the bag to it, return what it published."""
    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool, Float32

    from encdec_ros.io.player import BagPlayer
    from encdec_ros.nodes.anomaly_detector import AnomalyDetectorNode
    from encdec_ros.nodes.common import make_executor

    context = rclpy.Context()
    rclpy.init(context=context)
    got: dict[str, list] = {'flags': [], 'scores': []}
    stop = threading.Event()
    nodes = []
    try:
        # reliable KEEP_ALL on both sides: a replayed bag loses no message
        node = AnomalyDetectorNode(
            'anomaly_detector', context=context, namespace='demo', record=True,
            parameter_overrides=[
                Parameter('model_dir', value=str(model)), Parameter('device', value='cpu'),
                Parameter('qos_reliability', value='reliable'),
                Parameter('qos_history', value='keep_all'),
                Parameter('output_depth', value=100_000)])
        nodes.append(node)
        listener = rclpy.create_node('demo_listener', context=context)
        nodes.append(listener)
        out_qos = QoSProfile(depth=100_000, reliability=ReliabilityPolicy.RELIABLE)
        listener.create_subscription(Bool, '/demo/anomaly_detector/anomaly',
                                     lambda m: got['flags'].append(m.data), out_qos)
        listener.create_subscription(Float32, '/demo/anomaly_detector/score',
                                     lambda m: got['scores'].append(m.data), out_qos)
        executor = make_executor(context)
        executor.add_node(node)
        executor.add_node(listener)

        def spin() -> None:
            while not stop.is_set():
                executor.spin_once(timeout_sec=0.05)

        thread = threading.Thread(target=spin, daemon=True)
        thread.start()
        player_node = rclpy.create_node('demo_player', context=context)
        nodes.append(player_node)
        play_qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                              history=HistoryPolicy.KEEP_ALL)
        t0 = time.perf_counter()
        # the node reads its topics relative to its namespace: play them there
        with BagPlayer(player_node, bag, topics=node.spec.topic_names, rate=rate,
                       qos=play_qos, remap=dict(zip(node.spec.topic_names, node.topic_names))
                       ) as player:
            player.wait_for_subscribers(1, timeout_s=10.0)
            stats = player.play()
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and len(got['flags']) < expected:
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        stop.set()
        thread.join(timeout=5.0)
        return {'flags': list(got['flags']), 'scores': list(got['scores']),
                'decisions': list(node.decisions), 'received': len(got['flags']),
                'messages': stats.messages, 'wall_s': wall, 'latency': node.latency_ms()}
    finally:
        stop.set()
        for n in nodes:
            n.destroy_node()
        rclpy.try_shutdown(context=context)


def _f(value: float | None) -> str:
    return 'n/a' if value is None else f'{value:.3f}'


def _p(value: float | None) -> str:
    return 'n/a' if value is None else f'{100 * value:.2f} %'
