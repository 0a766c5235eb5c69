"""Errors across process boundaries: the pod shim and the unpack workers to the daemon.

An exception raised in another process travels as a plain dict (:func:`encode_error`) and is
raised again in the daemon (:func:`decode_error`) as the same class or the nearest one the
daemon knows, so the CRI edge's table (``cri_shim.api.errors``) picks the right gRPC code and
the services' ``except errors.NotFound`` still match:

- ``mro``: the names of the exception's classes, most derived first (``LayerRejected``,
  ``InvalidArgument``, ``EngineError``, ``Exception``, ``BaseException``). The receiver
  takes the first name that is one of the classes it was given (``known``) or an
  :class:`runtime.errors.EngineError` subclass in :mod:`runtime.errors`; a subclass defined
  elsewhere (``runtime.image.applier.LayerRejected``) arrives as its nearest base there
  (InvalidArgument) unless the receiver names it.
- ``errno`` (and ``strerror``, ``filename``): an :class:`OSError` is raised again as an
  OSError with the same errno (Python picks the subclass: ENOENT gives FileNotFoundError).
- ``kind``: the nearest runtime.errors class name ("Internal" when there is none), all that
  receivers of shim protocol 1 read (runtime.shim.protocol).
- ``message``: ``str(exc)``; the error is rebuilt with exactly this message (no class's own
  ``__init__`` runs again: SignatureValidationFailed does not get its prefix twice).

Anything else (a ValueError, a KeyError: a bug on the other side) arrives as Internal with
the original class name in its message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from runtime import errors


def nearest_engine_class(cls: type[BaseException]) -> type[errors.EngineError] | None:
    """The first class of ``cls.__mro__`` that :mod:`runtime.errors` defines, if any."""
    for base in cls.__mro__:
        engine = _engine_class(base.__name__)
        if engine is base:
            return engine
    return None


def _engine_class(name: str) -> type[errors.EngineError] | None:
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.EngineError):
        return cls
    return None


def encode_error(exc: BaseException) -> dict[str, Any]:
    """The JSON-ready payload of ``exc`` (see the module docstring)."""
    nearest = nearest_engine_class(type(exc))
    payload: dict[str, Any] = {
        "kind": nearest.__name__ if nearest is not None else "Internal",
        "message": str(exc) or type(exc).__name__,
        "mro": [c.__name__ for c in type(exc).__mro__ if c is not object],
    }
    if isinstance(exc, OSError) and exc.errno:
        payload["errno"] = exc.errno
        payload["strerror"] = exc.strerror or ""
        if exc.filename is not None:
            payload["filename"] = str(exc.filename)
    return payload


def decode_error(payload: Mapping[str, Any], known: Iterable[type[BaseException]] = ()) -> BaseException:
    """The exception ``payload`` describes, to raise in this process (see the module
    docstring). ``known``: classes outside runtime.errors that this receiver rebuilds as
    themselves (the unpack pool names LayerRejected). A payload of an older sender (only
    ``kind`` and ``message``) gives the ``kind`` class. Never raises."""
    message = str(payload.get("message", ""))
    names = payload.get("mro")
    if not isinstance(names, list) or not names:
        names = [str(payload.get("kind", "Internal"))]
    by_name = {cls.__name__: cls for cls in known}
    for name in map(str, names):
        cls = by_name.get(name) or _engine_class(name)
        if cls is not None:
            return _rebuild(cls, message)
        if name == "OSError" and isinstance(payload.get("errno"), int):
            return _os_error(payload, message)
    return errors.Internal(f"{names[0]}: {message}" if names[0] != "Internal" else message)


def raise_error(payload: Mapping[str, Any], known: Iterable[type[BaseException]] = ()) -> NoReturn:
    """Raise :func:`decode_error` of ``payload``."""
    raise decode_error(payload, known)


def _rebuild(cls: type[BaseException], message: str) -> BaseException:
    """An instance of ``cls`` whose ``str()`` is ``message``, whatever its ``__init__`` takes."""
    exc = cls.__new__(cls)
    BaseException.__init__(exc, message)
    return exc


def _os_error(payload: Mapping[str, Any], message: str) -> OSError:
    code = int(payload["errno"])
    strerror = str(payload.get("strerror") or message)
    filename = payload.get("filename")
    if filename is not None:
        return OSError(code, strerror, str(filename))
    return OSError(code, strerror)
