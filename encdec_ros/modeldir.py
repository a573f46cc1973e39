"""The model directory: ``model.onnx`` plus ``model.yaml``, shared by every capability.

``model.yaml`` is plain YAML (no Python tags, booleans as YAML booleans)::

    format: encdec_ros/model/1
    task: anomaly                      # anomaly | denoise | allocator
    created: '2026-11-23T11:30:00+00:00'
    onnx:
      file: model.onnx
      sha256: 9f2c...
      inputs: [{name: x, shape: [batch, 64, 6]}]
      outputs: [{name: x_hat, shape: [batch, 64, 6]}]
    training: {epochs: 30, ...}       # free figures: losses, command line, versions
    spec: {...}                       # task sections, added freely by each capability
    normalization: {mean: [...], std: [...]}
    threshold: 0.042

Everything the runtime needs travels in this directory; :class:`ModelDir` refuses a
directory that is incomplete, altered, of another format version or of another task, each
time with one sentence that says how to fix it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import math
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import numpy as np
import yaml

from encdec_ros.errors import EncdecError, ModelDirError, OutputError

if TYPE_CHECKING:
    from encdec_ros.engine import InferenceEngine

FORMAT = 'encdec_ros/model/1'
TASKS = ('anomaly', 'denoise', 'allocator')
ONNX_NAME = 'model.onnx'
YAML_NAME = 'model.yaml'
RESERVED = ('format', 'task', 'created', 'onnx')
"""Top-level keys written by :func:`save_model_dir` itself; sections may not use them."""
_TRAIN_COMMAND = {
    'anomaly': 'encdec train anomaly',
    'denoise': 'encdec train denoise',
    'allocator': 'encdec train allocator',
}
_NODE_OF = {'anomaly': 'anomaly_detector', 'denoise': 'denoiser', 'allocator': 'allocator'}
_REQUIRED = object()


# --------------------------------------------------------------------------- YAML


class _Dumper(yaml.SafeDumper):
    """Safe YAML with short lists of scalars on one line (normalisation vectors, shapes)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence('tag:yaml.org,2002:seq', data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _plain(value: Any, where: str) -> Any:
    """Turn numpy values, tuples and paths into plain YAML types; refuse anything else."""
    if value is None or type(value) in (bool, str):
        return value
    if isinstance(value, str):      # a str subclass (torch's version string) as plain str
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist(), where)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ModelDirError(f'model.yaml key {key!r} under {where} is not a string; '
                                    'use string keys in the sections')
            out[key] = _plain(item, f'{where}.{key}')
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f'{where}[{i}]') for i, item in enumerate(value)]
    raise ModelDirError(f'model.yaml value at {where} is a {type(value).__name__}, which '
                        'plain YAML cannot hold; convert it to numbers, strings, lists or dicts')


def _file_mode() -> int:
    """The mode a plain ``open()`` gives a new file: 0o666 less the process umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename.

    The file gets the mode a plain ``open()`` would give it (0o644 under the usual umask),
    not the 0o600 of a temporary file, so a node running as another user can read it.
    """
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, 'wb') as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_SAVED: list[Path] = []


def saved_model_dirs() -> list[Path]:
    """Every model directory :func:`save_model_dir` completed in this process, in order (the
    command line says, after a Ctrl-C, whether the model was saved before it)."""
    return list(_SAVED)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) back while the block runs, then deliver it as it would have
    been: model.onnx and model.yaml are written both or neither."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        signal.raise_signal(signal.SIGINT)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _onnx_io(data: bytes, source: str) -> tuple[list[dict], list[dict]]:
    """Read the input and output names and shapes with onnxruntime (no onnx package)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(data, providers=['CPUExecutionProvider'])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise ModelDirError(f'onnxruntime {ort.__version__} cannot load {source} '
                            f'({_first_line(err)}); re-export the model with a lower opset '
                            'or upgrade onnxruntime') from err

    def entry(arg: Any) -> dict:
        shape = [d if isinstance(d, int) else (d or None) for d in arg.shape]
        return {'name': arg.name, 'shape': shape}

    return [entry(i) for i in session.get_inputs()], [entry(o) for o in session.get_outputs()]


def _article(word: str) -> str:
    return 'an' if word[:1] in 'aeiou' else 'a'


def _first_line(err: BaseException) -> str:
    from encdec_ros.engine import ort_message

    return ort_message(err)


# --------------------------------------------------------------------------- output paths

_PROBE_PREFIX = '.encdec-write-probe-'
_REASONS = {errno.EACCES: 'permission denied', errno.EPERM: 'operation not permitted',
            errno.EROFS: 'read-only file system', errno.ENOSPC: 'no space left on the device',
            errno.EDQUOT: 'disk quota exceeded', errno.ENOENT: 'it accepts no new entries',
            errno.ENAMETOOLONG: 'a name is too long'}


def _reason(err: OSError) -> str:
    """A few words on why an OSError happened, without the path (the sentence names it)."""
    text = _REASONS.get(err.errno or -1) or err.strerror or type(err).__name__
    return text[:1].lower() + text[1:]


def _find_writable_dir(directory: Path, *, target: Path, what: str, option: str,
                       error: type[EncdecError]) -> Path:
    """Return the nearest existing ancestor of ``directory`` (itself included) once a probe
    showed that it takes new entries; raise ``error`` naming ``target`` otherwise."""
    for candidate in (directory, *directory.parents):
        try:
            mode = os.stat(candidate).st_mode
        except FileNotFoundError:
            if os.path.islink(candidate):
                raise error(f'cannot create {what} {target}: {candidate} is a broken symbolic '
                            f'link; remove it or choose another {option}') from None
            continue
        except NotADirectoryError:
            continue            # a parent further up is a file: found on the way up
        except OSError as err:
            raise error(f'cannot create {what} {target}: {candidate} cannot be reached '
                        f'({_reason(err)}); choose another {option} in a directory you can '
                        'write to') from None
        if not stat.S_ISDIR(mode):
            raise error(f'cannot create {what} {target}: {candidate} is a file, not a '
                        f'directory; choose another {option} whose parent folders are '
                        'directories') from None
        try:
            if candidate == directory:      # it exists: what is written goes into it
                fd, probe = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=candidate)
                os.close(fd)
                os.unlink(probe)
            else:                           # it will be created here
                os.rmdir(tempfile.mkdtemp(prefix=_PROBE_PREFIX, dir=candidate))
        except OSError as err:
            place = ('it is' if candidate == target else f'{candidate} is')
            raise error(f'cannot write {what} {target}: {place} not writable '
                        f'({_reason(err)}); choose another {option} in a directory you can '
                        'write to') from None
        return candidate
    raise error(f'cannot create {what} {target}: no folder of its path exists; choose another '
                f'{option}')  # pragma: no cover - the root always exists


def check_output_dir(path: str | Path, *, what: str = 'output directory',
                     option: str = '--out', empty: bool = False, force_flag: str = '--force',
                     file_ok: bool = False,
                     error: type[EncdecError] = OutputError) -> Path:
    """Refuse, before any work, an output directory that cannot be created or written.

    Nothing is left behind: a probe file (or directory) is created in the directory, or in
    its nearest existing parent, and removed at once; nothing that exists is changed.

    Args:
        path: The directory that will be written (created with its parents when missing).
        what: What it is, for the message ('model directory', 'report directory' ...).
        option: How the user named it, for the message ('--out').
        empty: Refuse an existing directory that holds anything (a model directory without
            ``--force``).
        force_flag: The option that allows replacing a non-empty directory, for the message.
        file_ok: An existing file at ``path`` will be replaced (``bag --overwrite``); only its
            directory must be writable then.
        error: The :class:`~encdec_ros.errors.EncdecError` subclass to raise.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        error: One sentence naming the path, why it cannot be written and what to do.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None             # missing, or a parent is missing or a file: found below
    if mode is not None and not stat.S_ISDIR(mode):
        if not file_ok:
            raise error(f'{what} {path} is a file, not a directory; choose another {option} '
                        '(a new directory, or an existing one)')
        _find_writable_dir(path.parent, target=path, what=what, option=option, error=error)
        return path
    if mode is not None and empty:
        try:
            full = any(path.iterdir())
        except OSError as err:
            raise error(f'cannot read {what} {path} ({_reason(err)}); choose another '
                        f'{option}') from None
        if full:
            raise error(f'{what} {path} already exists and is not empty; choose another '
                        f'{option} or pass {force_flag} to replace it')
    _find_writable_dir(path, target=path, what=what, option=option, error=error)
    return path


def check_output_file(path: str | Path, *, what: str = 'output file', option: str = '--out',
                      error: type[EncdecError] = OutputError) -> Path:
    """Refuse, before any work, an output file that cannot be created or written.

    A directory at ``path`` is refused; otherwise the nearest existing folder of ``path``
    must take new files (probed as in :func:`check_output_dir`), and an existing file must
    open for writing (it is opened to append nothing, so it stays as it is).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if path.is_dir():
        raise error(f'{what} {path} is a directory; pass a file path for {option}, such as '
                    'a new file inside it')
    _find_writable_dir(path.parent, target=path, what=what, option=option, error=error)
    if path.is_file():
        try:
            with open(path, 'ab'):
                pass
        except OSError as err:
            raise error(f'cannot write {what} {path}: it is not writable ({_reason(err)}); '
                        f'choose another {option} or fix its permissions') from None
    return path


# --------------------------------------------------------------------------- save


def save_model_dir(path: str | Path, *, onnx_file: str | Path | bytes, task: str,
                   sections: Mapping[str, Any] | None = None,
                   overwrite: bool = False) -> Path:
    """Write a model directory: copy the ONNX, hash it, write model.yaml atomically.

    Args:
        path: The directory; created when missing.
        onnx_file: The exported ``.onnx`` file, or its bytes.
        task: 'anomaly', 'denoise' or 'allocator'.
        sections: Further top-level sections (``training``, ``spec``, ``normalization``,
            ``threshold``, ``architecture`` ...); numpy values become plain lists and numbers.
        overwrite: Replace model.onnx and model.yaml in a directory that is not empty.

    Returns:
        The directory path.
    """
    path = Path(path)
    if task not in TASKS:
        raise ModelDirError(f'task {task!r} is not one of {", ".join(TASKS)}; '
                            'pass the capability the model was trained for')
    sections = dict(sections or {})
    clash = [key for key in sections if key in RESERVED]
    if clash:
        raise ModelDirError(f'section name(s) {", ".join(clash)} are written by save_model_dir '
                            'itself; rename the section')
    check_output_dir(path, what='model directory', option='output path', empty=not overwrite,
                     force_flag='overwrite=True (--force)', error=ModelDirError)
    if isinstance(onnx_file, (bytes, bytearray)):
        data = bytes(onnx_file)
        source = 'the given ONNX bytes'
    else:
        source = str(onnx_file)
        try:
            data = Path(onnx_file).read_bytes()
        except OSError as err:
            raise ModelDirError(f'cannot read the ONNX file {onnx_file} ({err.strerror}); '
                                'export the model first') from err
    inputs, outputs = _onnx_io(data, source)
    meta: dict[str, Any] = {
        'format': FORMAT,
        'task': task,
        'created': _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'),
        'onnx': {'file': ONNX_NAME, 'sha256': _sha256(data), 'inputs': inputs,
                 'outputs': outputs},
    }
    for key, value in sections.items():
        meta[key] = _plain(value, key)
    text = yaml.dump(meta, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)

    try:
        with _uninterrupted():      # a Ctrl-C here waits until both files are written
            path.mkdir(parents=True, exist_ok=True)
            _atomic_write(path / ONNX_NAME, data)
            _atomic_write(path / YAML_NAME, text.encode('utf-8'))  # last: present = complete
            _SAVED.append(path)
    except OSError as err:      # last line of defence; the CLI checks --out before training
        check_output_dir(path, what='model directory', option='output path',
                         error=ModelDirError)   # names a parent that is a file, and the like
        raise ModelDirError(f'cannot write model directory {path} ({_reason(err)}); free space '
                            'or choose another output path, then export again') from None
    return path


# --------------------------------------------------------------------------- load


class ModelDir:
    """A loaded and verified model directory.

    Attributes:
        path: The directory.
        task: 'anomaly', 'denoise' or 'allocator'.
        meta: The whole model.yaml as a dict.
        onnx_path: The ONNX file.
        sha256: The ONNX file's sha256, as recorded and verified.
    """

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self.task: str = meta['task']
        self.onnx_path = path / meta['onnx']['file']
        self.sha256: str = meta['onnx']['sha256']

    @classmethod
    def load(cls, path: str | Path, *, task: str | None = None,
             check_onnx: bool = True) -> 'ModelDir':
        """Load ``path`` and refuse it, with one sentence, unless it is whole and unaltered.

        Args:
            path: The model directory.
            task: The task the caller needs; another task is refused.
            check_onnx: Also load the ONNX with onnxruntime (CPU) and compare its inputs and
                outputs with model.yaml.

        Returns:
            The loaded model directory.
        """
        path = Path(path).expanduser()
        if not path.exists():
            raise ModelDirError(f'model directory {path} does not exist; pass the directory '
                                'written by `encdec train` (it holds model.onnx and model.yaml)')
        if not path.is_dir():
            raise ModelDirError(f'{path} is not a directory; pass the model directory that '
                                'holds model.onnx and model.yaml, not a file in it')
        yaml_path = path / YAML_NAME
        if not yaml_path.is_file():
            raise ModelDirError(f'{path} has no {YAML_NAME}; it is not a model directory or its '
                                'export did not finish, so train or export it again')
        meta = _read_yaml(yaml_path)
        fmt = meta.get('format')
        if fmt != FORMAT:
            raise ModelDirError(f'{yaml_path} has format {fmt!r} but this encdec_ros reads '
                                f'{FORMAT!r}; re-export the model with this version')
        found = meta.get('task')
        if found not in TASKS:
            raise ModelDirError(f'{yaml_path} has task {found!r}, not one of '
                                f'{", ".join(TASKS)}; re-export the model')
        if task is not None and found != task:
            node = _NODE_OF.get(task, task)
            command = _TRAIN_COMMAND.get(task, 'encdec train')
            raise ModelDirError(f'{path} is {_article(found)} {found} model; the {node} needs '
                                f'{_article(task)} {task} model, trained with `{command}`')
        onnx_meta = meta.get('onnx')
        if (not isinstance(onnx_meta, dict) or not isinstance(onnx_meta.get('file'), str)
                or not isinstance(onnx_meta.get('sha256'), str)):
            raise ModelDirError(f'{yaml_path} lacks onnx.file or onnx.sha256; re-export the '
                                'model')
        onnx_path = path / onnx_meta['file']
        if not onnx_path.is_file():
            raise ModelDirError(f'{path} has no {onnx_meta["file"]}; copy the whole model '
                                'directory, not only model.yaml')
        data = onnx_path.read_bytes()
        if _sha256(data) != onnx_meta['sha256']:
            raise ModelDirError(f'{onnx_path} does not match the sha256 in {YAML_NAME}: the '
                                'ONNX file was changed after export; re-export the model or '
                                'restore the original file')
        model = cls(path, meta)
        if check_onnx:
            model._check_onnx(data)
        return model

    def _check_onnx(self, data: bytes) -> None:
        inputs, outputs = _onnx_io(data, str(self.onnx_path))
        for kind, have in (('inputs', inputs), ('outputs', outputs)):
            listed = [e.get('name') for e in self.meta['onnx'].get(kind) or []
                      if isinstance(e, dict)]
            names = [e['name'] for e in have]
            if listed and listed != names:
                raise ModelDirError(f'{YAML_NAME} in {self.path} lists the {kind} '
                                    f'{", ".join(map(str, listed))} but the ONNX file has '
                                    f'{", ".join(names)}; re-export the model')

    # ------------------------------------------------------------------ accessors

    def section(self, name: str, default: Any = _REQUIRED) -> Any:
        """Return a top-level section, ``default`` when given and missing.

        ``name`` may be dotted (``'normalization.mean'``) to reach into nested dicts.
        """
        node: Any = self.meta
        for part in name.split('.'):
            if not isinstance(node, dict) or part not in node:
                if default is _REQUIRED:
                    raise ModelDirError(f'{YAML_NAME} in {self.path} has no {name!r}, which '
                                        f'this {self.task} model needs; re-train or re-export '
                                        'it with this version of encdec_ros')
                return default
            node = node[part]
        return node

    def array(self, name: str, *, dtype: Any = np.float32) -> np.ndarray:
        """Return a numeric section (e.g. ``'normalization.mean'``) as a numpy array."""
        value = self.section(name)
        try:
            return np.asarray(value, dtype=dtype)
        except (TypeError, ValueError):
            raise ModelDirError(f'{name!r} in {self.path / YAML_NAME} is not numeric; '
                                're-export the model') from None

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """The ONNX inputs as recorded: ``[{'name', 'shape'}]``."""
        return list(self.meta['onnx'].get('inputs') or [])

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """The ONNX outputs as recorded: ``[{'name', 'shape'}]``."""
        return list(self.meta['onnx'].get('outputs') or [])

    def engine(self, device: str = 'auto', **kwargs: Any) -> 'InferenceEngine':
        """Open an :class:`~encdec_ros.engine.InferenceEngine` on this model."""
        from encdec_ros.engine import InferenceEngine

        return InferenceEngine(self.onnx_path, device=device, **kwargs)

    def check_spec(self, spec: Any, *, ignore: Iterable[str] = ()) -> None:
        """Refuse a spec that differs from the stored ``spec`` section, naming the first change.

        Args:
            spec: A dict, or an object with ``to_dict()`` (e.g. ``SignalSpec``).
            ignore: Top-level spec keys that may differ (e.g. a description).
        """
        given = spec.to_dict() if hasattr(spec, 'to_dict') else spec
        stored = self.section('spec')
        skip = set(ignore)
        given = {k: v for k, v in dict(given).items() if k not in skip}
        stored = {k: v for k, v in dict(stored).items() if k not in skip}
        diff = first_difference(stored, given)
        if diff is not None:
            where, have, want = diff
            raise ModelDirError(f'the spec differs from the one {self.path} was trained with '
                                f'at {where}: the model has {have}, the given spec has {want}; '
                                'use the model\'s spec (encdec inspect) or train a new model')

    def __repr__(self) -> str:
        return f'ModelDir({str(self.path)!r}, task={self.task!r})'


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        meta = yaml.safe_load(path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        detail = getattr(err, 'problem', None) or _first_line(err)
        mark = getattr(err, 'problem_mark', None)
        at = f' at line {mark.line + 1}' if mark is not None else ''
        raise ModelDirError(f'{path} is not readable YAML ({detail}{at}); restore it from the '
                            'export or re-export the model') from err
    if not isinstance(meta, dict):
        raise ModelDirError(f'{path} does not hold a mapping of sections; restore it from the '
                            'export or re-export the model')
    return meta


def first_difference(stored: Any, given: Any, where: str = 'spec') -> tuple[str, str, str] | None:
    """Return (path, stored value, given value) of the first difference, or None.

    Numbers compare by value (``100 == 100.0``, floats within 1e-9 relative), dict keys in
    the stored order, lists element by element.
    """
    if isinstance(stored, dict) and isinstance(given, dict):
        for key in stored:
            if key not in given:
                return f'{where}.{key}', repr(stored[key]), 'nothing'
            found = first_difference(stored[key], given[key], f'{where}.{key}')
            if found:
                return found
        for key in given:
            if key not in stored:
                return f'{where}.{key}', 'nothing', repr(given[key])
        return None
    if isinstance(stored, (list, tuple)) and isinstance(given, (list, tuple)):
        for i, (a, b) in enumerate(zip(stored, given)):
            found = first_difference(a, b, f'{where}[{i}]')
            if found:
                return found
        if len(stored) != len(given):
            return f'{where}', f'{len(stored)} entries', f'{len(given)} entries'
        return None
    numbers = (int, float)
    if (isinstance(stored, numbers) and isinstance(given, numbers)
            and not isinstance(stored, bool) and not isinstance(given, bool)):
        if stored == given or math.isclose(stored, given, rel_tol=1e-9, abs_tol=0.0):
            return None
        return where, repr(stored), repr(given)
    if stored != given or type(stored) is not type(given):
        return where, repr(stored), repr(given)
    return None
