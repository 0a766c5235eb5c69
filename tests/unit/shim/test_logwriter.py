"""The CRI log records the pod shim writes (runtime.shim.logwriter), read back as kubelet reads
them (k8s.io/cri-client pkg/logs parseCRILog: the text of a ``P`` record loses the record's
newline, an ``F`` record keeps it)."""

from __future__ import annotations

from runtime.shim.logwriter import LineSplitter

NOW = 1_700_000_000_123_456_789


def read_back(records: list[bytes]) -> bytes:
    """What kubelet makes of the records (kubectl logs, the FallbackToLogsOnError message)."""
    out = b""
    for rec in records:
        _ts, stream, tag, text = rec.split(b" ", 3)
        assert stream in (b"stdout", b"stderr") and text.endswith(b"\n")
        out += text[:-1] if tag == b"P" else text
    return out


def test_complete_lines_are_full_records() -> None:
    s = LineSplitter(b"stdout")
    recs = s.feed(b"one\ntwo\n", NOW) + s.flush(NOW)
    assert [r.split(b" ", 3)[2:] for r in recs] == [[b"F", b"one\n"], [b"F", b"two\n"]]
    assert recs[0].startswith(b"2023-11-14T22:13:20.123456789Z stdout F ")


def test_unterminated_last_line_is_partial_and_reads_back_without_a_newline() -> None:
    # e2e conformance "should report termination message from log output if
    # TerminationMessagePolicy FallbackToLogsOnError is set": `echo -n DONE; false` must give
    # the message "DONE" (with an F record kubelet read "DONE\n")
    s = LineSplitter(b"stdout")
    recs = s.feed(b"DONE", NOW) + s.flush(NOW)
    assert recs == [b"2023-11-14T22:13:20.123456789Z stdout P DONE\n"]
    assert read_back(recs) == b"DONE"


def test_output_reads_back_byte_for_byte() -> None:
    s = LineSplitter(b"stderr", max_line=8)
    data = b"a\n" + b"x" * 20 + b"\nlast"
    recs = s.feed(data[:7], NOW) + s.feed(data[7:], NOW) + s.flush(NOW)
    assert read_back(recs) == data
    assert s.flush(NOW) == []  # nothing left twice
