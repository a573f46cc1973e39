"""Ctrl-C under load, as a terminal sends it: SIGINT to the whole process group, in a loop.

Each try starts the three nodes in one process group (directly, or with ``--launch`` through
the real ``ros2 launch`` of one launch file that includes the package's three launch files),
floods their inputs (``imu``, ``motors``, ``wrench_cmd``) from a publisher in another process,
lets them work 1.5-2 s after each printed its start-up line (the inputs each counted, as its
/diagnostics last said, are kept for the record), then sends SIGINT to the group (twice,
20 ms apart in the direct mode, as ``ros2 launch`` forwards its own SIGINT to its nodes
right after the terminal's) and checks that every node exits with status 0 and prints no
traceback, no abort and no error.

Usage::

    .venv/bin/python benchmarks/ctrl_c_loop.py                 # 20 tries, nodes run directly
    .venv/bin/python benchmarks/ctrl_c_loop.py --launch        # through ros2 launch (needs it)
    .venv/bin/python benchmarks/ctrl_c_loop.py --tries 5 --no-load

``tests/test_shutdown.py`` runs a few tries of the same loop.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODES = ('anomaly_detector', 'denoiser', 'control_allocator')
NODE_ARGS = {
    'anomaly_detector': ['-p', 'model_dir:=models/anomaly_sim_lstm', '-p', 'device:=cpu'],
    'denoiser': ['-p', 'model_dir:=models/denoise_sim_imu'],
    'control_allocator': ['-p', 'model_dir:=models/allocator_sim_hexa',
                          '-p', 'effectiveness:=config/sim_hexa.yaml'],
}
STARTED = {'anomaly_detector': '[anomaly_detector]: model ',
           'denoiser': '[denoiser]: denoising ',
           'control_allocator': '[control_allocator]: allocating '}
PROBLEM = re.compile(r'Traceback|Fatal Python|terminate called|error_already_set|Exception in|'
                     r'Aborted|context is invalid|Unable to convert|\[ERROR\]|Error:')
LAUNCH_EXIT = re.compile(r'\[(?:INFO|ERROR)\] \[(\w+?)-\d+\]: process (?:has finished cleanly|'
                         r'has died) \[pid \d+(?:, exit code (-?\d+))?')
COMBINED_LAUNCH = '''
from launch import LaunchDescription
from launch.actions import GroupAction, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    share = FindPackageShare('encdec_ros')
    return LaunchDescription([
        GroupAction([IncludeLaunchDescription(PythonLaunchDescriptionSource(
            PathJoinSubstitution([share, 'launch', name + '.launch.py'])))], scoped=True)
        for name in NODES])
'''


@dataclass
class Try:
    """One try: per node its exit status and the problem lines it printed."""

    returncodes: dict[str, int | None] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)
    inputs: dict[str, int] = field(default_factory=dict)
    stop_s: float = 0.0
    output: str = ''

    @property
    def clean(self) -> bool:
        return all(rc == 0 for rc in self.returncodes.values()) and not any(
            self.problems.values())


def flood(namespace: str = '') -> None:
    """Publish Imu, JointState and WrenchStamped as fast as possible until killed."""
    import rclpy
    from geometry_msgs.msg import WrenchStamped
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Imu, JointState

    rclpy.init()
    node = rclpy.create_node('flood', namespace=namespace or None)
    pubs = [(node.create_publisher(Imu, 'imu', qos_profile_sensor_data), Imu()),
            (node.create_publisher(JointState, 'motors', qos_profile_sensor_data),
             JointState(name=[f'm{i}' for i in range(6)], velocity=[400.0] * 6,
                        effort=[2.0] * 6)),
            (node.create_publisher(WrenchStamped, 'wrench_cmd', qos_profile_sensor_data),
             WrenchStamped())]
    pubs[0][1].linear_acceleration.z = 9.81
    pubs[2][1].wrench.force.z = 15.0
    i = 0
    while True:
        stamp = node.get_clock().now().to_msg()
        for pub, msg in pubs:
            msg.header.stamp = stamp
            pub.publish(msg)
        i += 1
        if i % 1000 == 0:
            time.sleep(0)


class DiagnosticsWatch:
    """Inputs counted by each node, from /diagnostics (a spinning thread in this process)."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self._node = rclpy.create_node('ctrl_c_watch', context=self._context)
        self.inputs: dict[str, int] = {}
        self._lock = threading.Lock()
        self._node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 100)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self._executor.spin_once(timeout_sec=0.05)

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            node = status.name.split(':')[0].strip().rsplit('/', 1)[-1]
            values = {kv.key: kv.value for kv in status.values}
            count = values.get('inputs') or values.get('messages') or '0'
            with self._lock:
                self.inputs[node] = max(self.inputs.get(node, 0), int(float(count)))

    def reset(self) -> None:
        with self._lock:
            self.inputs.clear()

    def close(self) -> None:
        import rclpy

        self._stop.set()
        self._thread.join()
        self._executor.shutdown()
        self._node.destroy_node()
        rclpy.try_shutdown(context=self._context)


def _start_direct(nodes, log) -> list[subprocess.Popen]:
    procs: list[subprocess.Popen] = []
    for name in nodes:
        cmd = [sys.executable, '-m', f'encdec_ros.nodes.{name}', '--ros-args',
               '--params-file', f'config/{name}.yaml', *NODE_ARGS[name]]
        group = {'process_group': procs[0].pid if procs else 0}
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                      **group))
    return procs


def _start_launch(nodes, log, launch_file: Path) -> list[subprocess.Popen]:
    cmd = [shutil.which('ros2') or 'ros2', 'launch', str(launch_file)]
    return [subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)]


def _started(path: str, nodes) -> bool:
    text = Path(path).read_text(errors='replace')
    return all(STARTED[n] in text for n in nodes)


def one_try(nodes, watch: DiagnosticsWatch | None, *, launch_file: Path | None = None,
            load_s: float = 1.5, timeout_s: float = 60.0) -> Try:
    """Start the nodes in one process group, let them work under load for ``load_s`` after
    each printed its start-up line, SIGINT the group, check exit statuses and output."""
    result = Try()
    with tempfile.NamedTemporaryFile(mode='w+') as log:
        if watch is not None:
            watch.reset()
        procs = (_start_launch(nodes, log, launch_file) if launch_file is not None
                 else _start_direct(nodes, log))
        pgid = procs[0].pid
        try:
            deadline = time.monotonic() + timeout_s
            while not _started(log.name, nodes) and time.monotonic() < deadline:
                if any(p.poll() is not None for p in procs):
                    break
                time.sleep(0.05)
            if not _started(log.name, nodes):
                result.problems['harness'] = ['a node did not start']
            time.sleep(load_s + random.uniform(0.0, 0.5))
            if watch is not None:
                result.inputs = dict(watch.inputs)
            t0 = time.monotonic()
            os.killpg(pgid, signal.SIGINT)
            if launch_file is None:
                time.sleep(0.02)
                os.killpg(pgid, signal.SIGINT)
            for proc in procs:
                proc.wait(timeout=30)
            result.stop_s = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            result.problems['harness'] = ['a process did not exit within 30 s of SIGINT']
            os.killpg(pgid, signal.SIGKILL)
            for proc in procs:
                proc.wait()
        log.seek(0)
        result.output = log.read()
    lines = result.output.splitlines()
    if launch_file is None:
        for name, proc in zip(nodes, procs):
            result.returncodes[name] = proc.returncode
    else:
        result.returncodes['ros2 launch'] = procs[0].returncode
        for match in LAUNCH_EXIT.finditer(result.output):
            result.returncodes[match.group(1)] = int(match.group(2) or 0)
        for name in nodes:
            result.returncodes.setdefault(name, None)
    for name in nodes:
        tag = f'[{name}-' if launch_file is not None else f'[{name}]'
        mine = [ln for ln in lines if tag in ln] if launch_file is not None else lines
        result.problems.setdefault(name, [ln for ln in mine if PROBLEM.search(ln)])
    if launch_file is None:       # output is shared: blame once, not per node
        shared = result.problems.pop(nodes[0])
        for name in nodes:
            result.problems[name] = []
        result.problems['output'] = shared
    return result


def start_flood() -> subprocess.Popen:
    """The flood publisher in its own session (never hit by the SIGINT of a try)."""
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), '--flood'],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def run_tries(tries: int, *, nodes=NODES, load: bool = True, launch: bool = False,
              load_s: float = 1.5, verbose: bool = False) -> list[Try]:
    """Run ``tries`` tries; return them (the flood publisher is stopped afterwards)."""
    flooder = start_flood() if load else None
    watch = DiagnosticsWatch()
    results: list[Try] = []
    with tempfile.TemporaryDirectory() as tmp:
        launch_file = None
        if launch:
            launch_file = Path(tmp) / 'encdec_all.launch.py'
            launch_file.write_text(f'NODES = {tuple(nodes)!r}\n' + COMBINED_LAUNCH)
        try:
            for i in range(tries):
                result = one_try(nodes, watch, launch_file=launch_file, load_s=load_s)
                results.append(result)
                if verbose:
                    print(f'try {i + 1}: {"clean" if result.clean else "NOT CLEAN"} '
                          f'exit {result.returncodes} stop {result.stop_s:.2f} s inputs '
                          f'{result.inputs}', flush=True)
                    for key, problems in result.problems.items():
                        for line in problems[:5]:
                            print(f'    {key}: {line}')
                    if not result.clean and os.environ.get('CTRL_C_LOOP_DUMP'):
                        dump = Path(os.environ['CTRL_C_LOOP_DUMP']) / f'try{i + 1}.log'
                        dump.write_text(result.output)
        finally:
            watch.close()
            if flooder is not None:
                flooder.kill()
                flooder.wait()
    return results


def summary(results: list[Try]) -> str:
    """A table: per process, tries, exit statuses, tries with problem lines."""
    names = sorted({n for r in results for n in r.returncodes})
    rows = ['process              tries  exit codes            tries with problem lines']
    for name in names:
        codes: dict[str, int] = {}
        for r in results:
            key = str(r.returncodes.get(name))
            codes[key] = codes.get(key, 0) + 1
        bad = sum(1 for r in results if r.problems.get(name))
        text = ', '.join(f'{k}: {v}' for k, v in sorted(codes.items()))
        rows.append(f'{name:<20} {len(results):>5}  {text:<21} {bad}')
    for extra in ('output', 'harness'):
        bad = sum(1 for r in results if r.problems.get(extra))
        if any(extra in r.problems for r in results):
            rows.append(f'{"(" + extra + ")":<20} {len(results):>5}  {"":<21} {bad}')
    stops = [r.stop_s for r in results if r.stop_s]
    if stops:
        rows.append(f'SIGINT to all exited: median {sorted(stops)[len(stops) // 2]:.2f} s, '
                    f'max {max(stops):.2f} s')
    rows.append(f'clean tries: {sum(r.clean for r in results)} of {len(results)}')
    return '\n'.join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--tries', type=int, default=20)
    parser.add_argument('--launch', action='store_true', help='through the real ros2 launch')
    parser.add_argument('--no-load', action='store_true', help='no flood publisher')
    parser.add_argument('--nodes', default=','.join(NODES))
    parser.add_argument('--flood', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood:
        flood()
        return 0
    if args.launch and not shutil.which('ros2'):
        print('ros2 is not on PATH; see ../shared/tools/README.md (ros2cli-env.sh)')
        return 2
    os.environ.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 100 + 1))
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    results = run_tries(args.tries, nodes=tuple(args.nodes.split(',')),
                        load=not args.no_load, launch=args.launch, verbose=True)
    print(summary(results))
    return 0 if all(r.clean for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())
