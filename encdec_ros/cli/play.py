"""``encdec play``: publish a rosbag2 or a ROS 1 bag on its topics (no ros2cli needed)."""

from __future__ import annotations

import argparse


def register(groups: dict) -> None:
    """Add ``play``."""
    p = groups['top'].add_parser(
        'play', help='publish a bag on its topics over DDS',
        description='Publish the stored messages of a rosbag2 (or a ROS 1 bag, converted to '
                    'ROS 2 on the way) on their topics, paced by their log times (like '
                    '`ros2 bag play`, without needing ros2cli).')
    p.add_argument('bag', help='rosbag2 directory, .db3/.mcap file or ROS 1 .bag file')
    p.add_argument('--rate', type=float, default=1.0,
                   help='playback speed: 1 real time, 10 ten times faster, 0 as fast as possible')
    p.add_argument('--topics', help='comma-separated topics to play (default: all whose '
                   'message types are installed here)')
    p.add_argument('--remap', action='append', default=[], metavar='FROM:=TO',
                   help='publish topic FROM as TO (repeatable)')
    p.add_argument('--wait-subscribers', type=int, default=0, metavar='N',
                   help='wait up to 10 s until every topic has N subscribers before playing')
    p.set_defaults(func=_play)


def _play(args: argparse.Namespace) -> int:
    import rclpy

    from encdec_ros.errors import ConfigError
    from encdec_ros.io.player import BagPlayer

    remap = {}
    for item in args.remap:
        src, sep, dst = item.partition(':=')
        if not sep or not src or not dst:
            msg = f'--remap takes FROM:=TO, got {item!r}'
            raise ConfigError(msg)
        remap[src] = dst
    topics = [t.strip() for t in args.topics.split(',')] if args.topics else None
    rclpy.init()
    try:
        node = rclpy.create_node('encdec_player')
        with BagPlayer(node, args.bag, topics=topics, rate=args.rate, remap=remap) as player:
            if args.wait_subscribers and not player.wait_for_subscribers(args.wait_subscribers):
                print('warning: not every topic has a subscriber; playing anyway')
            stats = player.play()
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
    print(f'published {stats.messages} messages ({stats.bag_s:.1f} s of bag) in '
          f'{stats.wall_s:.1f} s, {stats.speedup:.1f}x real time')
    return 0
