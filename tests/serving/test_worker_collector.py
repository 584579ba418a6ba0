"""The serve worker's cyclic collector: the young generation's threshold raised, start-up frozen."""

import gc

from gateway_project import worker


def test_the_worker_raises_the_young_threshold_and_freezes_start_up_once_the_reactor_runs(monkeypatch):
    from twisted.internet import reactor

    scheduled = []
    monkeypatch.setattr(reactor, "callWhenRunning", lambda function, *args: scheduled.append((function, args)))
    before = gc.get_threshold()
    try:
        worker.tune_collector()
        assert gc.get_threshold() == (worker.YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.set_threshold(*before)
    assert scheduled == [(gc.freeze, ())]  # not now: the application is imported by then


def test_cyclic_garbage_is_still_collected_under_the_raised_threshold():
    class Node:
        def __init__(self) -> None:
            self.me = self

    before = gc.get_threshold()
    gc.collect()
    try:
        gc.set_threshold(worker.YOUNG_THRESHOLD, before[1], before[2])
        freed = []
        gc.callbacks.append(cb := lambda phase, info: phase == "stop" and freed.append(info["collected"]))
        try:
            for _ in range(worker.YOUNG_THRESHOLD + 10):
                Node()
        finally:
            gc.callbacks.remove(cb)
        assert sum(freed) > 0  # a pass came by itself, within the threshold's allocations
    finally:
        gc.set_threshold(*before)
