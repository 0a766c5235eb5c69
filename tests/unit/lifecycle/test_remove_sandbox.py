"""RemovePodSandbox releases the pod's cgroup and its directories together (independent once
its shim has stopped): when one fails the other still goes, the record stays for the
kubelet's retry, and the retry finishes what is left."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.journal import InjectedFault
from tests.unit.lifecycle.rig import lifecycle_rig

pytestmark = pytest.mark.timeout(30)


def any_exists(*paths: str) -> bool:
    return any(Path(p).exists() for p in paths)


async def test_a_failed_cgroup_release_still_removes_the_directories_and_the_retry_finishes(tmp_path: Path) -> None:
    async with lifecycle_rig(tmp_path) as rig:
        sid = await rig.sandboxes.run(rig.pod_config())
        await rig.sandboxes.stop(sid)
        rec = rig.sandboxes.get(sid)
        rig.journal.fail_at("cgroups.remove")
        with pytest.raises(InjectedFault):
            await rig.sandboxes.remove(sid)
        assert [r.id for r in rig.sandboxes.records.all()] == [sid], "the record stays for the retry"
        assert not any_exists(rec.state_dir, rec.files_dir), "the directories went"
        assert rig.cgroups.own_sandbox_cgroups(), "the cgroup whose removal failed is still there"
        await rig.sandboxes.remove(sid)
        assert await rig.pod_leftovers() == []
