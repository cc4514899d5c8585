"""Which child of an image index to pull: the platform's image, or the model among an artifact index's children."""

from __future__ import annotations

from ..errors import InvalidDocumentError, NotFoundError, UnsupportedFormatError
from ..oci import Descriptor, Index
from ..platforms import host_platform


def select_child(index: Index, wanted: str | None) -> Descriptor:
    """The child for ``wanted`` (os/arch[/variant]) or the host; a lone child; else, where no child names a
    platform (an artifact index), the model artifact among the children.

    Attestations (platform unknown/unknown, as buildkit writes them) are never chosen. A model artifact is a child
    whose artifactType or annotations say so (ModelPack, Docker Model Runner, KitOps); signatures, SBOMs and
    attestations are set aside; a lone remaining child without an artifactType is taken as the model."""
    if not index.manifests:
        raise InvalidDocumentError("the image index lists no manifests")
    model_types = ("application/vnd.cncf.model.", "application/vnd.cnai.model.", "application/vnd.docker.ai.",
                   "application/vnd.kitops.modelkit.")
    model_annotations = ("org.cncf.model.", "org.cnai.model.")
    not_models = ("application/vnd.dev.cosign.", "application/vnd.dev.sigstore.", "application/vnd.cncf.notary.",
                  "application/vnd.in-toto", "application/vnd.dsse.", "application/spdx", "text/spdx",
                  "application/vnd.cyclonedx", "application/vnd.syft.", "application/vnd.oci.image.signature")

    def attestation(child: Descriptor) -> bool:
        return (child.platform is not None and (child.platform.os, child.platform.architecture) == ("unknown",
                                                                                                    "unknown")
                ) or child.annotations.get("vnd.docker.reference.type") == "attestation-manifest"

    def model(child: Descriptor) -> bool:
        return (child.artifact_type or "").startswith(model_types) or any(
            key.startswith(model_annotations) for key in child.annotations)

    def describe(child: Descriptor) -> str:
        kind = str(child.platform) if child.platform else child.artifact_type or "no artifactType"
        return f"{child.digest[:19]} ({kind})"

    if len(index.manifests) == 1:
        return index.manifests[0]
    children = [child for child in index.manifests if not attestation(child)]
    target = wanted or host_platform(os="linux")  # models run in linux containers, also from macOS
    with_platform = [child for child in children if child.platform is not None]
    for child in with_platform:
        if str(child.platform) == target or (
            child.platform is not None and f"{child.platform.os}/{child.platform.architecture}" == target
        ):
            return child
    without_platform = [child for child in children if child.platform is None]
    if with_platform and (wanted is not None or not without_platform):
        available = ", ".join(str(child.platform) for child in with_platform)
        raise NotFoundError(f"the image index has no manifest for platform {target} (available: {available})",
                                   "pass --platform OS/ARCH with one of the available platforms")
    # No platform matched and the rest name none: an artifact index (a model beside its signatures, SBOMs...).
    models = [child for child in without_platform if model(child)]
    unknown = [child for child in without_platform
               if not model(child) and not (child.artifact_type or "").startswith(not_models)]
    if len(models) == 1 or (not models and len(unknown) == 1):
        return (models or unknown)[0]
    listed = ", ".join(describe(child) for child in index.manifests)
    fix = "pull the model's manifest by digest (REPOSITORY@sha256:...); `crane manifest REF` lists the children"
    if models:
        raise UnsupportedFormatError(
            f"the image index holds {len(models)} model artifacts and names no platform to choose by: {listed}", fix)
    where = f"no manifest for platform {target} and " if with_platform else ""
    raise NotFoundError(f"the image index has {where}no model artifact among its children: {listed}", fix)
