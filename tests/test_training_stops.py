"""Tests for mesrgan.training.stops: the first SIGINT/SIGTERM asks, the second stops at once."""
import os
import signal

import pytest

from mesrgan.training.stops import StopNow, StopRequests


@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGTERM),
                                           (signal.SIGTERM, signal.SIGINT)])
def test_first_signal_asks_and_says_so_at_once_second_stops_now(capfd, first, second):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with StopRequests() as stops:
        assert not stops.requested
        os.kill(os.getpid(), first)  # the handler runs before the next line
        assert stops.requested and stops.signum == first
        err = capfd.readouterr().err
        name = signal.Signals(first).name
        assert f"{name}: stopping after the current iteration" in err and "again stops at once" in err
        with pytest.raises(StopNow) as e:
            os.kill(os.getpid(), second)
            for _ in range(1000):  # (the handler runs between bytecodes)
                pass
        assert e.value.signum == second
    assert {s: signal.getsignal(s) for s in before} == before  # the old handlers are back


def test_silent_on_other_processes_and_request_from_another_rank(capfd):
    with StopRequests(announce=False) as stops:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stops.signum == signal.SIGTERM
        stops.request(signal.SIGINT)  # a first request stays the one reported
        assert stops.signum == signal.SIGTERM
    assert capfd.readouterr().err == ""
    s = StopRequests()
    s.request(signal.SIGTERM)
    assert s.requested and s.signum == signal.SIGTERM


def test_a_second_signal_whose_exception_was_dropped_still_stops_at_once(capfd):
    """A handler can run inside a fork hook (the DataLoader starting its workers), where Python
    drops the exception: the loop's check raises it again before any save."""
    with StopRequests() as stops:
        os.kill(os.getpid(), signal.SIGINT)
        stops.raise_if_at_once()  # one signal: nothing to raise
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
        except StopNow:
            pass  # dropped, as a fork hook would
        with pytest.raises(StopNow) as e:
            stops.raise_if_at_once()
        assert e.value.signum == signal.SIGTERM
    capfd.readouterr()


def test_data_worker_hook_drops_only_a_lost_parent_connection():
    from mesrgan.training.stops import _drop_lost_parent_errors

    seen = []
    hook = _drop_lost_parent_errors(lambda *exc_info: seen.append(exc_info[0]))
    for exc_type in (ConnectionResetError, BrokenPipeError, EOFError, ValueError, RuntimeError):
        hook(exc_type, exc_type("x"), None)
    assert seen == [ValueError, RuntimeError]
