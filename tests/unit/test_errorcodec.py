"""Errors across process boundaries (runtime.errorcodec): the class survives, or the nearest
runtime.errors class does; an OSError keeps its errno; anything else is Internal."""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest

from runtime import errors
from runtime.errorcodec import decode_error, encode_error, nearest_engine_class
from runtime.image.applier import LayerRejected

pytestmark = pytest.mark.timeout(30)

ENGINE_CLASSES = [c for c in vars(errors).values()
                  if isinstance(c, type) and issubclass(c, errors.EngineError)]


def across(exc: BaseException, known: tuple[type[BaseException], ...] = ()) -> BaseException:
    payload: dict[str, Any] = json.loads(json.dumps(encode_error(exc)))
    return decode_error(payload, known)


class PodGone(errors.NotFound):
    """A subclass defined outside runtime/errors.py."""


@pytest.mark.parametrize("cls", ENGINE_CLASSES, ids=lambda c: c.__name__)
def test_every_engine_error_arrives_as_itself(cls: type[errors.EngineError]) -> None:
    sent = cls("the message")
    got = across(sent)
    assert type(got) is cls
    assert str(got) == str(sent)  # SignatureValidationFailed's prefix is not added twice


def test_a_subclass_from_elsewhere_arrives_as_its_nearest_engine_class() -> None:
    got = across(LayerRejected("layer entry '../x' contains '..'"))
    assert type(got) is errors.InvalidArgument and str(got) == "layer entry '../x' contains '..'"
    assert type(across(PodGone("pod x is gone"))) is errors.NotFound


def test_a_receiver_that_knows_the_subclass_gets_it() -> None:
    got = across(LayerRejected("bad layer"), known=(LayerRejected,))
    assert type(got) is LayerRejected and str(got) == "bad layer"


@pytest.mark.parametrize(("sent", "cls"), [
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y"), FileNotFoundError),
    (PermissionError(errno.EACCES, "Permission denied"), PermissionError),
    (OSError(errno.EBUSY, "Device or resource busy", "/mnt"), OSError),
], ids=["ENOENT", "EACCES", "EBUSY"])
def test_an_os_error_keeps_its_errno(sent: OSError, cls: type[OSError]) -> None:
    got = across(sent)
    assert isinstance(got, OSError) and type(got) is cls
    assert (got.errno, got.strerror, got.filename, str(got)) == (sent.errno, sent.strerror, sent.filename, str(sent))


def test_anything_else_is_internal_and_names_its_class() -> None:
    got = across(KeyError("container_id"))
    assert type(got) is errors.Internal and str(got) == "KeyError: 'container_id'"
    got = across(OSError("no errno"))  # an OSError without errno is not one the receiver can rebuild
    assert type(got) is errors.Internal and "no errno" in str(got)


def test_the_kind_is_what_a_protocol_1_receiver_reads() -> None:
    assert encode_error(LayerRejected("x"))["kind"] == "InvalidArgument"
    assert encode_error(errors.NotFound("x"))["kind"] == "NotFound"
    assert encode_error(ValueError("x"))["kind"] == "Internal"
    assert encode_error(FileNotFoundError(2, "x"))["kind"] == "Internal"


def test_a_payload_of_protocol_1_decodes_by_its_kind() -> None:
    got = decode_error({"kind": "FailedPrecondition", "message": "not running"})
    assert type(got) is errors.FailedPrecondition and str(got) == "not running"
    assert type(decode_error({"kind": "NoSuchClass", "message": "m"})) is errors.Internal
    # names that runtime.errors has but that are no engine errors are not taken
    assert type(decode_error({"kind": "annotations", "message": "m"})) is errors.Internal
    assert type(decode_error({"mro": ["Exception", "BaseException"], "message": "m"})) is errors.Internal
    assert type(decode_error({})) is errors.Internal


def test_nearest_engine_class() -> None:
    assert nearest_engine_class(LayerRejected) is errors.InvalidArgument
    assert nearest_engine_class(errors.Unavailable) is errors.Unavailable
    assert nearest_engine_class(ValueError) is None
