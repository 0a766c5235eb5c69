"""What the daemon does about KSM for its pod shims (``pods.ksm``), once, when it starts.

ksmd is one host-wide switch (runtime.linux.ksm) that also serves virtual machines and other
software on the node, so starting it is the operator's choice:

- ``"auto"`` (the default): the shims offer their memory only when ksmd already runs; it is
  never started;
- ``"start"``: ksmd is started when it is stopped (and left running), the shims offer their memory;
- ``"off"``: neither.

The choice is logged and shown in Status verbose info (``ksm``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from runtime.config import KSM_SETTINGS
from runtime.linux.ksm import KSM, ksm_state, start_ksm


@dataclass(frozen=True, slots=True)
class KsmChoice:
    """What the daemon found and did about KSM at start (for the log and Status)."""

    setting: str
    #: ksmd's state when the daemon started: running, stopped or unavailable
    ksmd: str
    #: the daemon started ksmd (setting "start", ksmd was stopped)
    started: bool
    #: pod shims offer their memory to KSM
    merge: bool
    #: one sentence for the log and Status
    summary: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def apply_ksm_setting(setting: str, root: Path = KSM) -> KsmChoice:
    """Look at ksmd under ``root`` (the sysfs directory, injectable for tests) and act on
    ``setting`` (one of :data:`KSM_SETTINGS`): only "start" writes to ``root``. Never raises
    for the host's state: a ksmd that cannot be started is reported in the summary, and the
    shims then do not offer their memory. Raises ValueError for an unknown setting."""
    if setting not in KSM_SETTINGS:
        raise ValueError(f"pods.ksm: {setting!r} is not one of {', '.join(KSM_SETTINGS)}")
    state = ksm_state(root)
    if state == "unavailable":
        return KsmChoice(setting, state, False, False,
                         "this kernel has no KSM: pod shims' identical pages are not merged")
    if setting == "off":
        return KsmChoice(setting, state, False, False,
                         f"pods.ksm = off: pod shims do not offer their memory to KSM (ksmd is {state}, left alone)")
    if setting == "auto" and state != "running":
        return KsmChoice(setting, state, False, False,
                         "pods.ksm = auto: ksmd is stopped, so pod shims do not offer their memory to it "
                         "(pods.ksm = start would start it)")
    if state == "running":
        return KsmChoice(setting, state, False, True,
                         f"pods.ksm = {setting}: ksmd runs; pod shims offer their memory to it")
    try:
        start_ksm(root)
    except OSError as exc:
        return KsmChoice(setting, state, False, False,
                         f"pods.ksm = start: cannot start ksmd ({exc}); pod shims' pages are not merged")
    return KsmChoice(setting, state, True, True,
                     "pods.ksm = start: started ksmd (host-wide, left running); pod shims offer their memory to it")
