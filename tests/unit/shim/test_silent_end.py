"""The error of a container create whose set-up process ended without saying why names how
it ended (a CI run in the node VM failed with only 'setup process ended without reporting')."""

from __future__ import annotations

import asyncio
import signal

from runtime.shim.procs import _silent_end


def done(status: int) -> asyncio.Future[int]:
    loop = asyncio.new_event_loop()
    try:
        fut: asyncio.Future[int] = loop.create_future()
        fut.set_result(status)
        return fut
    finally:
        loop.close()


def test_a_kill_names_the_signal() -> None:
    msg = _silent_end([], done(signal.SIGKILL))  # wait status of a SIGKILLed child
    assert msg == "setup process ended without reporting ready (reported nothing; killed by signal 9 (SIGKILL))"


def test_an_exit_after_ready_names_the_status_and_what_was_said() -> None:
    msg = _silent_end(["ready"], done(3 << 8))
    assert msg == "setup process ended before the start (reported 'ready'; exit status 3)"


def test_a_pipe_closed_by_a_live_process() -> None:
    loop = asyncio.new_event_loop()
    try:
        pending: asyncio.Future[int] = loop.create_future()
        assert _silent_end(["pid 7"], pending) == "setup process ended without reporting ready (reported 'pid 7')"
    finally:
        loop.close()
