"""The image policy at pull time: containers-policy.json(5) rules applied to a pull.

:meth:`ImagePolicy.before_pull` runs before any network traffic: a ``reject`` rule (or an
unsupported requirement) for the image's scope ends the pull there. :meth:`ImagePolicy.after_resolve`
runs once the top-level manifest is known and before any layer is downloaded: each
``sigstoreSigned`` requirement needs one of the signatures stored next to the image in the
registry it is pulled from (:mod:`runtime.image.sigstore`) to be accepted.

Errors: SignatureValidationFailed (kubelet's reason) for an image the policy refuses, naming
the file, the scope that decided and the rule; FailedPrecondition for a policy cri-shim
cannot apply (malformed file, ``signedBy``, Fulcio/Rekor/PKI, a bad key), never an accept.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from runtime.errors import FailedPrecondition, SignatureValidationFailed
from runtime.image.policy import REJECT, SIGSTORE, UNSUPPORTED, PolicyCache, Requirement
from runtime.image.reference import Reference
from runtime.image.registry import FetchedManifest, RegistrySession

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decision:
    """The requirements that apply to one pull: ``scope`` decided them (empty: no policy)."""

    scope: str = ""
    requirements: tuple[Requirement, ...] = ()


class ImagePolicy:
    """``cache`` None means no policy (every image is accepted)."""

    def __init__(self, cache: PolicyCache | None) -> None:
        self._cache = cache

    def _where(self, scope: str) -> str:
        assert self._cache is not None
        return f"signature policy {self._cache.path} (scope {scope!r})"

    async def before_pull(self, ref: Reference) -> Decision:
        """The requirements for ``ref``; raises when one refuses it without looking at it."""
        if self._cache is None:
            return Decision()
        policy = await asyncio.to_thread(self._cache.get)
        if policy is None:
            return Decision()
        scope, requirements = policy.requirements_for(ref)
        for req in requirements:
            if req.type == UNSUPPORTED:
                raise FailedPrecondition(f"{self._where(scope)}: {req.why}")
            if req.type == REJECT:
                raise SignatureValidationFailed(f"image {ref} is rejected by {self._where(scope)}: reject")
        return Decision(scope, requirements)

    async def after_resolve(self, decision: Decision, ref: Reference, session: RegistrySession,
                            top: FetchedManifest) -> None:
        """Check the signature requirements of ``decision`` against the registry's signatures
        of ``top`` (the manifest ``ref`` resolved to)."""
        signed = [r for r in decision.requirements if r.type == SIGSTORE]
        if not signed:
            return
        try:
            # Imported here: only signature rules need the cryptography package.
            from runtime.image import sigstore
        except ImportError as exc:
            raise FailedPrecondition(
                f"{self._where(decision.scope)}: sigstoreSigned needs the Python package "
                f"cryptography ({exc})"
            ) from None
        signatures = await sigstore.fetch(session, top.digest)
        where = self._where(decision.scope)
        for req in signed:
            reason = await asyncio.to_thread(sigstore.check, req, ref, top.data, signatures, where)
            if reason:
                raise SignatureValidationFailed(
                    f"image {ref} ({top.digest}) is rejected by {where}: sigstoreSigned: {reason}"
                )
        log.info("image %s (%s): signature accepted by %s", ref, top.digest, where)
