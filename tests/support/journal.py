"""One ordered journal of the calls the lifecycle's fake ports receive, and the one failure
to inject into them.

Every fake (``fake_shims``, ``fake_hosts``) calls :meth:`Journal.step` with the name of the
call ("shims.spawn", "shim.create_namespaces", "host.mount_shm", ...) before doing anything,
so a test reads RunPodSandbox or CreateContainer as the sequence of host calls it made, and
what the undo did after a failure. :meth:`Journal.fail_at` makes the next (or n-th) call of
that name raise :class:`InjectedFault`; :meth:`Journal.fail_next_write_after` makes the first
store write after a call fail (``FaultyStore``): the record write that ends a creation.
:meth:`Journal.after_failure` is what came after the injected failure (the undo).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime import errors


class InjectedFault(errors.Internal):
    """The failure a test injected (an engine error, as a real port would raise)."""


@dataclass
class Journal:
    calls: list[str] = field(default_factory=list)
    #: index in :attr:`calls` of the call that failed on purpose
    failed_at: int | None = None
    _fail_at: str = ""
    _countdown: int = 0
    _arm_store_after: str = ""
    store_armed: bool = False

    def fail_at(self, name: str, occurrence: int = 1) -> None:
        """The ``occurrence``-th call named ``name`` from now raises InjectedFault."""
        self._fail_at, self._countdown = name, occurrence

    def fail_next_write_after(self, name: str) -> None:
        """The first store write after the next call named ``name`` raises InjectedFault."""
        self._arm_store_after = name

    def step(self, name: str) -> None:
        """Record a call; raise if it is the one to fail."""
        self.calls.append(name)
        if name == self._fail_at:
            self._countdown -= 1
            if self._countdown == 0:
                self._fail_at = ""
                self.failed_at = len(self.calls) - 1
                raise InjectedFault(f"injected failure at {name}")
        if name == self._arm_store_after:
            self._arm_store_after = ""
            self.store_armed = True

    def store_write(self) -> None:
        """Called by ``FaultyStore`` before each write; raises once when armed."""
        if self.store_armed:
            self.store_armed = False
            self.calls.append("store.write")
            self.failed_at = len(self.calls) - 1
            raise InjectedFault("injected failure of a store write")

    def mark(self) -> int:
        return len(self.calls)

    def since(self, mark: int) -> list[str]:
        return self.calls[mark:]

    def after_failure(self) -> list[str]:
        """The calls after the injected failure (what the undo did)."""
        assert self.failed_at is not None, "no failure was injected"
        return self.calls[self.failed_at + 1 :]

    def after(self, name: str) -> list[str]:
        """The calls after the last call named ``name`` (a failed step: what the undo did)."""
        last = len(self.calls) - 1 - self.calls[::-1].index(name)
        return self.calls[last + 1 :]
