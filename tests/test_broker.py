"""The embedded broker (scheduler_project/broker.py): a message file is never seen half written."""

from __future__ import annotations

import os

import pytest
from kombu import Connection

from scheduler_project import broker


@pytest.fixture
def channel(tmp_path):
    folders = {name: tmp_path / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir()
    options = {
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "processed_folder": str(folders["processed"]),
        "control_folder": str(folders["control"]),
        "store_processed": False,
    }
    connection = Connection("filesystem://localhost/", transport=broker.FilesystemTransport, transport_options=options)
    chan = connection.channel()
    yield chan
    connection.release()


def test_put__the_message_appears_only_once_written(channel, monkeypatch):
    """While the payload is being serialised and written, a reader finds no message for the queue
    (kombu's own transport had created the .msg file by then, and a reader took it empty)."""
    seen_while_writing = []
    real_dumps = broker.dumps

    def dumps_and_look(payload):
        seen_while_writing.append(channel._size("jobs"))
        seen_while_writing.append([name for name in os.listdir(channel.data_folder_in) if name.endswith(".msg")])
        return real_dumps(payload)

    monkeypatch.setattr(broker, "dumps", dumps_and_look)
    channel._put("jobs", {"body": "x"})
    assert seen_while_writing == [0, []]
    assert channel._size("jobs") == 1
    assert channel._get("jobs") == {"body": "x"}


def test_put__a_reader_never_gets_a_partial_message(channel, monkeypatch):
    """A reader polling while a message is written between its first and last byte gets nothing
    then, and the whole message after."""
    real_dumps = broker.dumps
    read_during_write = []

    def dumps_then_poll(payload):
        text = real_dumps(payload)
        try:
            read_during_write.append(channel._get("jobs"))
        except Exception as exc:  # noqa: BLE001 - what the reader would have seen
            read_during_write.append(type(exc).__name__)
        return text

    monkeypatch.setattr(broker, "dumps", dumps_then_poll)
    channel._put("jobs", {"n": 1})
    assert read_during_write == ["Empty"]
    assert channel._get("jobs") == {"n": 1}


def test_settings__the_embedded_broker_uses_this_transport(settings):
    """With a filesystem:// broker URL, Celery connects through our transport."""
    from scheduler_project.celery import app

    if not settings.CELERY_BROKER_URL.startswith("filesystem://"):
        pytest.skip("the suite runs against another broker")
    with app.connection_for_write() as connection:
        assert connection.transport_cls == "scheduler_project.broker:FilesystemTransport"
