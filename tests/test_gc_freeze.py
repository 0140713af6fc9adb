"""The long-lived processes freeze their start-up heap, so that a full collection does not walk
it while requests wait (feed.bootstrap.freeze_heap)."""

from __future__ import annotations

import gc
import importlib


def test_freezing_takes_the_start_up_objects_out_of_the_collectors_walks():
    importlib.import_module("app")  # a process's start-up: the app's modules and their objects
    try:
        gunicorn_conf = importlib.import_module("feed.gunicorn_conf")
        gunicorn_conf.post_worker_init(worker=None)
        assert gc.get_freeze_count() > 10_000
        # What is left to walk is what was allocated since, not the start-up heap.
        assert len(gc.get_objects()) < gc.get_freeze_count() / 10
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
