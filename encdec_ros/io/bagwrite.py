"""Writing rosbag2 bags (sqlite3 or mcap) with standard message types, through rosbags."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from encdec_ros.errors import BagError

STORAGES = ('sqlite3', 'mcap')
# rosbag2 metadata version 8 is read by Humble, Jazzy and Kilted alike.
METADATA_VERSION = 8


class BagWriter:
    """A rosbag2 writer that takes message objects; use as a context manager.

    Messages are built with :meth:`new` (rosbags message classes) and written with
    :meth:`write`. On an exception inside the ``with`` block the partial bag is removed.
    """

    def __init__(self, path: str | Path, *, storage: str = 'sqlite3',
                 overwrite: bool = False) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(path)
        if storage not in STORAGES:
            msg = f'storage {storage!r} is not supported; use one of {", ".join(STORAGES)}'
            raise BagError(msg)
        if self.path.exists():
            if not overwrite:
                msg = f'{self.path} already exists; choose another output path or remove it first'
                raise BagError(msg)
            if self.path.is_dir():
                shutil.rmtree(self.path)
            else:
                self.path.unlink()
        if not self.path.parent.is_dir():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=METADATA_VERSION, storage_plugin=plugin)
        self._conns: dict[str, tuple[Any, str]] = {}
        self._open = False

    def __enter__(self) -> 'BagWriter':
        self._writer.open()
        self._open = True
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._writer.close()
        self._open = False
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def new(self, msgtype: str, **fields: Any) -> Any:
        """Build a message of a standard type, e.g. ``new('std_msgs/msg/String', data='x')``."""
        return self.typestore.types[msgtype](**fields)

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Declare a topic before writing to it."""
        if topic not in self._conns:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._conns[topic] = (conn, msgtype)

    def write(self, topic: str, log_ns: int, message: Any) -> None:
        """Serialise and write one message with the given log (receive) time in ns."""
        conn, msgtype = self._conns[topic]
        self._writer.write(conn, int(log_ns), self.typestore.serialize_cdr(message, msgtype))

    def write_raw(self, topic: str, log_ns: int, data: bytes) -> None:
        """Write one message already serialised as CDR."""
        self._writer.write(self._conns[topic][0], int(log_ns), data)

    def header(self, stamp_ns: int, frame_id: str = '') -> Any:
        """A std_msgs/Header for a stamp in nanoseconds."""
        time = self.new('builtin_interfaces/msg/Time', sec=int(stamp_ns // 1_000_000_000),
                        nanosec=int(stamp_ns % 1_000_000_000))
        return self.new('std_msgs/msg/Header', stamp=time, frame_id=frame_id)
