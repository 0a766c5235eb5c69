"""Open files, sockets and threads counted from /proc, and blkio device names from sysfs."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from runtime.stats.cadvisor import block_device_name
from runtime.stats.procfds import ProcessCounts, count_processes

pytestmark = pytest.mark.timeout(10)


def test_counts_files_sockets_and_threads_of_this_process() -> None:
    before = count_processes([os.getpid()])
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    with socket.socket() as s1, socket.socket() as s2, open(os.devnull) as f:
        t.start()
        try:
            during = count_processes([os.getpid()])
        finally:
            stop.set()
            t.join()
        assert f.fileno() >= 0 and s1.fileno() >= 0 and s2.fileno() >= 0
    assert during.file_descriptors == before.file_descriptors + 3
    assert during.sockets == before.sockets + 2
    assert during.threads == before.threads + 1


def test_processes_that_are_gone_are_skipped(tmp_path: Path) -> None:
    assert count_processes([2**22 + 7], proc=tmp_path) == ProcessCounts(0, 0, 0)


def test_block_device_name_from_uevent(tmp_path: Path) -> None:
    d = tmp_path / "dev" / "block" / "254:0"
    d.mkdir(parents=True)
    (d / "uevent").write_text("MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n")
    assert block_device_name(254, 0, str(tmp_path)) == "/dev/vda"
    assert block_device_name(254, 1, str(tmp_path)) == ""
