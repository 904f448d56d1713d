"""scheduler_project.collector.paused: the cyclic collector is off inside, and as it was after."""

from __future__ import annotations

import gc

import pytest

from scheduler_project import collector


@pytest.fixture(autouse=True)
def _collector_restored():
    was_enabled = gc.isenabled()
    yield
    (gc.enable if was_enabled else gc.disable)()


def test_paused__off_inside_and_on_again_after():
    gc.enable()
    with collector.paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_paused__on_again_after_an_error():
    gc.enable()
    with pytest.raises(ZeroDivisionError), collector.paused():
        1 / 0  # noqa: B018
    assert gc.isenabled()


def test_paused__leaves_it_off_when_it_was_off_and_nested_blocks_keep_it_off():
    gc.enable()
    with collector.paused():
        with collector.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer block still runs
    assert gc.isenabled()
    gc.disable()
    with collector.paused():
        pass
    assert not gc.isenabled()


def test_paused__cyclic_garbage_made_inside_is_collected_after():
    class Node:
        pass

    gc.enable()
    gc.collect()
    with collector.paused():
        for _ in range(1000):
            node = Node()
            node.me = node  # a cycle: reference counting alone never frees it
        del node
        assert sum(type(obj) is Node for obj in gc.get_objects()) == 1000
    gc.collect()
    assert not any(type(obj) is Node for obj in gc.get_objects())
