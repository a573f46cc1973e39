"""ROS 1 bags: decode the ROS 1 layout directly, or convert each message to CDR first?

Reads the messages of a real ROS 1 bag (the Husky bag beside the checkout by default) once,
then times, in interleaved rounds, on the same bytes (CPU time of this process):

- the batch decoder on the ROS 1 layout (what ``read_bag`` does),
- rosbags' ``ros1_to_cdr`` per message, then the batch decoder on CDR,
- rosbags' ``deserialize_ros1`` per message and field extraction (the floor),

and checks that the three give the same arrays.

Usage::

    python benchmarks/bench_ros1_decode.py [BAG] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from encdec_ros.io.bag import BagSource, bind_spec, standard_typestore  # noqa: E402
from encdec_ros.io.cdr import MessageDecoder, RawBatch  # noqa: E402
from encdec_ros.io.fields import compile_path  # noqa: E402
from encdec_ros.io.spec import SignalSpec  # noqa: E402

SPEC = {'rate_hz': 10, 'window': 20, 'topics': {
    '/imu/data': ['angular_velocity.x', 'angular_velocity.y', 'angular_velocity.z',
                  'linear_acceleration.x', 'linear_acceleration.y', 'linear_acceleration.z'],
    '/husky_velocity_controller/odom': ['twist.twist.linear.x', 'twist.twist.angular.z',
                                        'pose.covariance[0:6]']}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('bag', nargs='?',
                        default=str(ROOT.parent / 'shared/data/bags/robot_localization/test1.bag'))
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args()
    spec = SignalSpec.from_dict(SPEC)
    with BagSource(args.bag) as bag:
        resolved = bind_spec(spec, bag)
        print('us of CPU per message; same: the three give identical arrays')
        print(f'{"topic":34} {"msgs":>6} {"ROS 1 batch":>12} {"to CDR + batch":>15} '
              f'{"rosbags":>9}  same')
        for topic in resolved.topics:
            store = bag.typestore(topic.name)
            raws = [bytes(r) for _, _, r in bag.raw_messages([topic.name])]
            paths = [f.path for f in topic.fields]
            direct = MessageDecoder(topic.type, paths, store.fielddefs, header_stamp=True,
                                    ros1=True)
            ros2 = standard_typestore()          # rosbags converts into the ROS 2 types
            cdr = MessageDecoder(topic.type, paths, ros2.fielddefs, header_stamp=True)
            fns = [compile_path(p) for p in paths]
            batch = RawBatch.from_messages(raws)
            results: dict[str, list] = {'direct': [], 'convert': [], 'floor': []}
            outs = {}
            for _ in range(args.rounds):
                t = time.process_time()
                outs['direct'] = direct.decode(batch).values
                results['direct'].append(time.process_time() - t)
                t = time.process_time()
                converted = RawBatch.from_messages(
                    [ros2.ros1_to_cdr(r, topic.type) for r in raws])
                outs['convert'] = cdr.decode(converted).values
                results['convert'].append(time.process_time() - t)
                t = time.process_time()
                rows = []
                for raw in raws:
                    msg = store.deserialize_ros1(raw, topic.type)
                    rows.append([v for fn in fns for v in fn(msg)])
                outs['floor'] = np.asarray(rows, dtype=np.float64)
                results['floor'].append(time.process_time() - t)
            us = {k: np.median(v) / len(raws) * 1e6 for k, v in results.items()}
            same = all(np.array_equal(outs['floor'].view(np.uint64), v.view(np.uint64))
                       for v in outs.values())
            print(f'{topic.name:34} {len(raws):>6} {us["direct"]:>12.2f} {us["convert"]:>15.2f} '
                  f'{us["floor"]:>9.2f}  {"yes" if same else "NO"}')


if __name__ == '__main__':
    main()
