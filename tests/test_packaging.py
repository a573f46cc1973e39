"""`colcon build` installs the package as `ros2 run` and `ros2 launch` expect it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def console_scripts() -> list[tuple[str, str]]:
    text = (ROOT / 'setup.py').read_text()
    return re.findall(r"'([a-z_]+) = ([a-z_.]+):main'", text)


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    colcon = shutil.which('colcon') or str(Path(sys.executable).parent / 'colcon')
    if not Path(colcon).exists():
        pytest.skip('colcon is not installed (pip install colcon-common-extensions)')
    ws = tmp_path_factory.mktemp('ws')
    src = ws / 'src' / 'encdec_ros'
    ignore = shutil.ignore_patterns('.git', '.venv', 'out', 'build', 'install', 'log',
                                    '__pycache__', '.pytest_cache', '*.egg-info')
    shutil.copytree(ROOT, src, ignore=ignore)
    proc = subprocess.run([colcon, 'build', '--packages-select', 'encdec_ros'], cwd=ws,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ws / 'install' / 'encdec_ros'


def test_executables_and_share_files_are_where_ros2_looks(installed):
    scripts = console_scripts()
    assert ('encdec', 'encdec_ros.cli') in scripts
    for name, _ in scripts:
        assert (installed / 'lib' / 'encdec_ros' / name).is_file(), name
    share = installed / 'share' / 'encdec_ros'
    assert (share / 'package.xml').is_file()
    assert (installed / 'share' / 'ament_index' / 'resource_index' / 'packages' /
            'encdec_ros').is_file()
    for sub in ('launch', 'config'):
        shipped = sorted(p.name for p in (ROOT / sub).glob('*') if p.is_file())
        assert sorted(p.name for p in (share / sub).glob('*')) == shipped
    for model in (ROOT / 'models').glob('*/model.yaml'):
        assert (share / 'models' / model.parent.name / 'model.onnx').is_file()


def test_installed_command_line_runs(installed):
    site = next(installed.glob('lib/python3*/site-packages'))
    env = dict(os.environ, PYTHONPATH=f'{site}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
    proc = subprocess.run([sys.executable, str(installed / 'lib' / 'encdec_ros' / 'encdec'),
                           '--help'], capture_output=True, text=True, env=env, timeout=60,
                          cwd=installed)
    assert proc.returncode == 0, proc.stderr
    assert 'inspect' in proc.stdout and 'sim' in proc.stdout


@pytest.mark.parametrize('launch', sorted((ROOT / 'launch').glob('*.launch.py')),
                         ids=lambda p: p.name)
def test_launch_default_models_are_shipped_and_load(launch):
    """A launch file's default model_dir names a model directory in models/ of its task."""
    from encdec_ros.modeldir import ModelDir

    task = {'anomaly_detector': 'anomaly', 'denoiser': 'denoise',
            'control_allocator': 'allocator'}[launch.name.split('.')[0]]
    names = re.findall(r"\[share, 'models', '([A-Za-z0-9_]+)'\]", launch.read_text())
    assert names, f'{launch.name} names no default model'
    for name in names:
        ModelDir.load(ROOT / 'models' / name, task=task)


def test_the_makefile_install_puts_the_commands_in_the_venv_bin(tmp_path):
    """`make` installs the package editable (PEP 660): the console scripts land in bin/ of the
    environment (not in lib/encdec_ros, where setup.cfg sends them for colcon) and run."""
    pytest.importorskip('setuptools')
    makefile = (ROOT / 'Makefile').read_text()
    assert '--no-deps --no-build-isolation -e .' in makefile
    prefix = tmp_path / 'prefix'
    proc = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q',
                           '--disable-pip-version-check', '--no-deps', '--no-build-isolation',
                           '--ignore-installed',     # leave the .venv's own install alone
                           '--no-index', '-e', str(ROOT), '--prefix', str(prefix)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name, _ in console_scripts():
        assert (prefix / 'bin' / name).is_file(), name
    assert not (prefix / 'lib' / 'encdec_ros').exists()
    site = next(prefix.glob('lib/python3*/site-packages'))   # its .pth finds the sources
    run = (f'import runpy, site, sys; site.addsitedir({str(site)!r}); '
           f'sys.argv = ["encdec", "--help"]; '
           f'runpy.run_path({str(prefix / "bin" / "encdec")!r}, run_name="__main__")')
    proc = subprocess.run([sys.executable, '-c', run], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0 and 'inspect' in proc.stdout, proc.stderr
