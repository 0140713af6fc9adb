"""One-off broker maintenance: ``python -m workers.queues move-classic``.

Before quorum queues, the queues were classic ones named ``projections``, ``sagas`` and
``fanout`` (with their ``.DQ`` delay and ``.XQ`` dead-letter queues). RabbitMQ refuses to
redeclare a queue with another type, so the quorum queues have new names (``projections.q``,
...) and a deployment upgraded in place starts on them at once. This command moves what the old
queues still hold into the new ones, each message confirmed by the broker before the old copy
is acknowledged (so a crash in between duplicates a message at worst; every handler is safe to
run twice), and deletes each old queue once it is empty. Run it after every process is on the
new version; running it again finds nothing to move.
"""

from __future__ import annotations

import argparse
import json
import sys

import pika
import pika.exceptions

from feed.config import Settings, broker_urls
from workers.broker import QUEUES, QUORUM_SUFFIX, QuorumRabbitmqBroker, is_rabbitmq


def classic_to_quorum(prefix: str) -> dict[str, str]:
    """Each old classic queue's name, and the quorum queue that takes its messages."""
    moves = {}
    for base in QUEUES:
        for suffix in ("", ".DQ", ".XQ"):
            moves[f"{prefix}{base}{suffix}"] = f"{prefix}{base}{QUORUM_SUFFIX}{suffix}"
    return moves


def _renamed(body: bytes, old: str, new: str) -> bytes:
    """A Dramatiq message names its queue; retries go to that name, so it moves too."""
    message = json.loads(body)
    if message.get("queue_name") == old.removesuffix(".XQ"):
        message["queue_name"] = new.removesuffix(".XQ")
    return json.dumps(message, separators=(",", ":")).encode()


def move_classic(broker_url: str, prefix: str = "") -> dict[str, int]:
    """Move every message of the classic queues into the quorum ones; how many per queue."""
    quorum = QuorumRabbitmqBroker(url=broker_urls(broker_url))
    for base in QUEUES:  # the new queues exist before anything is moved into them
        quorum.declare_queue(f"{prefix}{base}{QUORUM_SUFFIX}", ensure=True)
    quorum.close()
    connection = pika.BlockingConnection([pika.URLParameters(u) for u in broker_urls(broker_url)])
    moved: dict[str, int] = {}
    try:
        for old, new in classic_to_quorum(prefix).items():
            channel = connection.channel()
            try:
                channel.queue_declare(queue=old, passive=True)
            except pika.exceptions.ChannelClosedByBroker:  # 404: never there, or moved already
                continue
            channel.confirm_delivery()
            count = 0
            while True:
                method, properties, body = channel.basic_get(queue=old)
                if method is None:
                    break
                # mandatory: a message no queue takes raises instead of being confirmed
                channel.basic_publish("", new, _renamed(body, old, new), properties, mandatory=True)
                channel.basic_ack(method.delivery_tag)
                count += 1
            channel.queue_delete(queue=old, if_empty=True)
            channel.close()
            moved[old] = count
    finally:
        connection.close()
    return moved


def delete_queues(broker_url: str, prefix: str) -> None:
    """Delete every queue of the deployment named by ``prefix`` (a test's or a benchmark's
    own): the quorum queues, the old classic ones, and their delay and dead-letter queues."""
    connection = pika.BlockingConnection([pika.URLParameters(u) for u in broker_urls(broker_url)])
    try:
        channel = connection.channel()
        for old, new in classic_to_quorum(prefix).items():
            channel.queue_delete(queue=old)
            channel.queue_delete(queue=new)
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.queues", description=__doc__)
    parser.add_argument("command", choices=["move-classic"])
    parser.parse_args(argv)
    settings = Settings.from_env()
    if not settings.broker_url or not is_rabbitmq(settings.broker_url):
        print("BROKER_URL is not RabbitMQ: nothing to move", file=sys.stderr)
        return 2
    for old, count in move_classic(settings.broker_url, settings.queue_prefix).items():
        print(f"{old}: {count} messages moved, queue deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
