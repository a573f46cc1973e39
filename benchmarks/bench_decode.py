"""Decoding serialised messages: the batch decoder's two paths against the per-message floors.

For Imu (6 fields) and JointState (velocity[0:6], effort[0:6], 6 names), times in CPU µs per
message, batch sizes from 1 (a node taking one message per tick) to 10,000 (bag ingest):

- one by one: ``MessageDecoder.decode_messages`` with ``struct`` (what a node's tick does for
  up to ``SMALL_BATCH`` messages),
- numpy batch: the same through the numpy program (bag ingest, larger ticks),
- rclpy: ``deserialize_message`` into an rclpy object plus field extraction (what a typed
  subscription does per message),
- rosbags: ``deserialize_cdr`` plus field extraction (the old bag path).

Usage::

    python benchmarks/bench_decode.py [--sizes 1 5 20 100 10000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encdec_ros.io import cdr  # noqa: E402
from encdec_ros.io.bag import standard_typestore  # noqa: E402
from encdec_ros.io.cdr import MessageDecoder, rclpy_fielddefs  # noqa: E402
from encdec_ros.io.fields import compile_path, parse_path  # noqa: E402

IMU = ['angular_velocity.x', 'angular_velocity.y', 'angular_velocity.z',
       'linear_acceleration.x', 'linear_acceleration.y', 'linear_acceleration.z']
JOINTS = ['velocity[0:6]', 'effort[0:6]']


def per_message(fn, msgs: list, budget_s: float = 0.3) -> float:
    """CPU µs per message of fn(msgs), repeated for about budget_s."""
    reps = 0
    t0 = time.process_time()
    while True:
        fn(msgs)
        reps += 1
        spent = time.process_time() - t0
        if spent >= budget_s and reps >= 3:
            return spent / reps / len(msgs) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[1, 5, 20, 100, 10_000])
    args = parser.parse_args()
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Imu, JointState

    store = standard_typestore()
    imu = Imu()
    imu.header.frame_id = 'imu_link'
    joints = JointState(name=[f'motor{i}' for i in range(6)], position=[0.0] * 6,
                        velocity=[600.0] * 6, effort=[0.5] * 6)
    print(f'{"type":10} {"batch":>6} {"one by one":>11} {"numpy":>8} {"rclpy":>8} '
          f'{"rosbags":>8}   (CPU us per message)')
    for cls, obj, fields in ((Imu, imu, IMU), (JointState, joints, JOINTS)):
        paths = [parse_path(p) for p in fields]
        defs = rclpy_fielddefs(cls)
        msgtype = next(iter(defs))
        dec = MessageDecoder(msgtype, paths, defs, header_stamp=True)
        fns = [compile_path(p) for p in paths]
        raw = bytes(serialize_message(obj))

        def rclpy_path(msgs: list) -> None:
            for data in msgs:
                msg = deserialize_message(data, cls)
                [v for fn in fns for v in fn(msg)]

        def rosbags_path(msgs: list) -> None:
            for data in msgs:
                msg = store.deserialize_cdr(data, msgtype)
                [v for fn in fns for v in fn(msg)]

        for size in args.sizes:
            msgs = [raw] * size
            figures = []
            for small in (10**9, 0):
                cdr.SMALL_BATCH = small
                figures.append(per_message(dec.decode_messages, msgs))
            figures += [per_message(rclpy_path, msgs), per_message(rosbags_path, msgs)]
            print(f'{cls.__name__:10} {size:>6} ' +
                  ' '.join(f'{f:>{w}.2f}' for f, w in zip(figures, (11, 8, 8, 8))))


if __name__ == '__main__':
    main()
