"""Typed errors. Every error carries a one-line cause and a fix, because the command line prints exactly that.

Classes also inherit from the matching standard exception (as huggingface_hub does), so callers can catch
broadly (``except LookupError``) or narrowly (``except ManifestNotFound``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class OciCraneError(Exception):
    """Base class: ``cause`` says what went wrong, ``fix`` what the user can do about it."""

    default_fix = "run again with --debug for details"

    def __init__(self, cause: str, fix: str | None = None) -> None:
        self.cause = cause
        self.fix = fix or self.default_fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The single line shown to users on stderr."""
        # A hostile manifest can name a megabyte-long media type or path, which cause and fix may quote.
        cause, fix = _shortened(self.cause, MAX_CAUSE), _shortened(self.fix, MAX_FIX)
        return printable(f"{cause} -- fix: {fix}" if fix else cause)


MAX_CAUSE = 2000
MAX_FIX = 500


def _shortened(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return f"{text[:limit]}... ({len(text) - limit} more characters)" if len(text) > limit else text


def printable(text: str) -> str:
    """Control and format characters (terminal escapes, bidi overrides) and lone surrogates escaped: text from a
    manifest or from crane's stderr cannot drive the user's terminal, and the line can always be encoded."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class UsageError(OciCraneError, ValueError):
    """The command line asks for something that cannot be done as written."""

    default_fix = "see oci-crane --help"


class SettingsError(OciCraneError, ValueError):
    """An OCI_CRANE_* environment variable holds a value we cannot use."""

    default_fix = "set the variable as the message says, or unset it for its default"


class InvalidReferenceError(OciCraneError, ValueError):
    """The reference cannot be parsed, or names something no registry serves (uppercase repository, credentials in
    it, a component starting with `-`, a scheme other than `oci://`)."""

    default_fix = "write it as [registry[:port]/]repository[:tag][@sha256:<64 hex>], e.g. ghcr.io/acme/llama:v1"


class InvalidDocumentError(OciCraneError, ValueError):
    """A manifest, index or config that does not validate; the message names the field.

    ``raw`` keeps the document's first bytes (MAX_RAW_DOCUMENT), shown in the traceback that --debug prints, so a
    report holds what the registry served."""

    default_fix = "the artifact is malformed: re-push it with a tool that writes valid OCI documents"

    def __init__(self, cause: str, fix: str | None = None, *, raw: bytes | None = None) -> None:
        super().__init__(cause, fix)
        self.raw = raw[:MAX_RAW_DOCUMENT] if raw is not None else None
        self.note: str | None = None
        if raw is not None:
            part = f"its first {MAX_RAW_DOCUMENT} of {len(raw)} bytes" if len(raw) > MAX_RAW_DOCUMENT else "as served"
            self.note = f"the document, {part}: {self.raw!r}"
            if hasattr(self, "add_note"):  # Python >= 3.11 prints notes under the traceback; cli.py does it on 3.10
                self.add_note(self.note)


MAX_RAW_DOCUMENT = 4096


def describe_validation_error(exc: ValidationError) -> str:
    """'layers.0.size: Input should be a valid integer' for the first problem, plus a count of the others.
    A validator's own ValueError reads on from the field's name ('weight_map is empty'), without pydantic's
    "Value error, " prefix."""
    problems = exc.errors(include_url=False)
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"]) or "(document)"
    context = first.get("ctx") or {}
    own = first["type"] == "value_error" and "error" in context
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where} {context['error']}{more}" if own else f"{where}: {first['msg']}{more}"


class UnsupportedFormatError(OciCraneError, ValueError):
    """The artifact is not a model this package can serve: GGUF-only, Ollama, or media types no format claims."""

    default_fix = "push the model as a Docker Model Runner or ModelPack artifact (oci-crane push DIR REF)"


class InvalidModelError(OciCraneError, ValueError):
    """The files themselves are unusable (bad safetensors header, escaping path, no weights)."""

    default_fix = "re-export the model with the safetensors library and push it again"


class AdapterRefusedError(OciCraneError, PermissionError):
    """A request named a LoRA adapter this vLLM server may not load: not under OCI_CRANE_LORA_REPOSITORIES."""

    default_fix = "ask the server's operator to add the repository to OCI_CRANE_LORA_REPOSITORIES"


class AdapterTimeoutError(OciCraneError, TimeoutError):
    """A request waited OCI_CRANE_LORA_TIMEOUT for its LoRA adapter's download; the download goes on."""

    default_fix = "try again in a while: the download goes on (OCI_CRANE_LORA_TIMEOUT bounds a request's wait)"


class IntegrityError(OciCraneError, ValueError):
    """Bytes do not match their digest or size: a blob from the registry, or a damaged file in the cache."""

    default_fix = (
        "the registry served bytes that do not match the manifest: retry, and if it persists re-push the artifact"
    )


class OfflineError(OciCraneError, LookupError):
    """--offline (or OCI_CRANE_OFFLINE) is on and the model, or part of it, is not in the cache."""

    default_fix = "run once without --offline (and without OCI_CRANE_OFFLINE=1) so the model is cached"


class CacheError(OciCraneError, OSError):
    """The cache cannot be written or locked: disk full, no permission, read-only, a file in the way, a lock held
    too long. Raised from a file error, the fix fits its errno."""

    default_fix = "check that the cache directory is writable and has free space (--cache-dir, OCI_CRANE_LOADER_CACHE)"


def cache_os_error(exc: OSError, doing: str, cache: object) -> CacheError:
    """One CacheError for a failed file operation in the cache, with the fix that fits its errno."""
    import errno

    where = exc.filename or cache
    fixes = {
        errno.ENOSPC: f"free disk space on the disk of {cache}, or point --cache-dir at a larger disk",
        errno.EDQUOT: f"free space within your disk quota on {cache}, or point --cache-dir elsewhere",
        errno.EACCES: f"give your user write access to {cache}, or point --cache-dir at a directory you own",
        errno.EPERM: f"give your user write access to {cache}, or point --cache-dir at a directory you own",
        errno.EROFS: f"{cache} is on a read-only file system: point --cache-dir at a writable directory",
        errno.ENAMETOOLONG: "use a shorter --cache-dir path (each name at most 255 bytes)",
        errno.EEXIST: f"{where} is in the way: move it, or point --cache-dir elsewhere",
        errno.ENOTDIR: f"a file is in the way of {where}: move it, or point --cache-dir at a directory",
        errno.EISDIR: f"a directory is in the way of {where}: move it, or run `oci-crane cache prune`",
        errno.ELOOP: f"{where} is a symlink loop: fix the link, or point --cache-dir elsewhere",
    }
    fix = fixes.get(exc.errno or 0, CacheError.default_fix)
    return CacheError(f"cannot {doing} ({exc.strerror or exc}: {where})", fix)


class CraneError(OciCraneError, RuntimeError):
    """crane failed. Carries the argv (never holding secrets), exit code and stderr."""

    def __init__(
        self,
        cause: str,
        fix: str | None = None,
        *,
        command: list[str] | None = None,
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        self.command = list(command or [])
        self.returncode = returncode
        self.stderr = stderr
        self.retry_after: float | None = None  # seconds a 429 or 503 answer asked us to wait (HTTP road)
        super().__init__(cause, fix)


class CancelledError(CraneError):
    """Another download of the same fetch failed, or the user interrupted: this crane was stopped."""


class CraneMissingError(CraneError, FileNotFoundError):
    """No usable crane: none found, or the one found cannot start on this machine."""

    default_fix = (
        "install crane >= 0.21.8: reinstall oci-crane-loader from the wheel for this platform (it carries crane), "
        "`bash bin/install-crane` in a checkout, `go install "
        "github.com/google/go-containerregistry/cmd/crane@v0.21.9`, or `brew install crane` on macOS; "
        "or point OCI_CRANE_BINARY at it"
    )


class CraneTooOldError(CraneMissingError):
    """The crane found is older than 0.21.8."""


class NotFoundError(CraneError, LookupError):
    """The registry has no such repository, tag or digest (or an index has no child for this platform)."""

    default_fix = "check the repository, tag or digest (`oci-crane ls REPOSITORY` lists the tags)"


class UnauthorizedError(CraneError, PermissionError):
    """The registry refused the request: no credentials, wrong ones, or no access to this repository."""

    default_fix = "log in with `oci-crane login REGISTRY -u USER --password-stdin` (or `docker login REGISTRY`)"


class RateLimitedError(CraneError):
    """The registry answered 429 Too Many Requests (Docker Hub limits anonymous pulls), or 503 with a Retry-After
    (busy), and went on answering so for every retry."""

    default_fix = ("wait and retry (--retries and OCI_CRANE_RETRY_WINDOW let a fetch wait longer), log in to raise "
                   "the registry's rate limit, or pull through a mirror (docs/mirrors.md)")


class NetworkError(CraneError, ConnectionError):
    """The registry cannot be reached: connection refused, unknown host, reset, or a proxy in the way."""

    default_fix = "check that the registry address is right and reachable (proxy settings: HTTPS_PROXY, NO_PROXY)"


class CraneTimeoutError(NetworkError, TimeoutError):
    """The registry stopped answering: a manifest request ran past OCI_CRANE_TIMEOUT, or a download made no
    progress for OCI_CRANE_STALL_TIMEOUT seconds, after every retry."""

    default_fix = "the registry stopped answering: retry, or raise OCI_CRANE_TIMEOUT / OCI_CRANE_STALL_TIMEOUT"


class TLSError(CraneError, ConnectionError):
    """The TLS handshake failed: an untrusted or self-signed certificate, or a plain-http registry asked over https."""

    default_fix = (
        "trust the registry's CA with --ca-file /path/ca.pem (or SSL_CERT_FILE=/path/ca.pem); a registry that "
        "speaks plain http: --plain-http; a registry you control on a trusted network: --insecure"
    )


class LocalDirError(OciCraneError, OSError):
    """The --local-dir directory cannot take the model as asked."""

    default_fix = "choose another --local-dir, or move what is in the way"


class CredentialHelperError(CraneError, PermissionError):
    """A docker credential helper (credsStore / credHelpers) failed or is not installed; what it printed is never
    shown, since it may hold the secret."""

    default_fix = "fix or remove the credential helper named in the docker config (credHelpers / credsStore)"


class CraneIntegrityError(CraneError, IntegrityError):
    """crane saw bytes that do not match their digest, or a download grew past the size its descriptor promises."""

    default_fix = IntegrityError.default_fix


class VllmIncompatibleError(OciCraneError, ImportError):
    """The installed vLLM lacks a name the plugin needs, or has it with other parameters."""

    default_fix = "install a vLLM in the supported range (docs/vllm.md, Compatibility), or a newer oci-crane-loader"


class MirrorConfigError(OciCraneError, ValueError):
    """A mirror configuration file the node has (containers-registries.conf and its registries.conf.d drop-ins, or
    containerd's hosts.toml under /etc/containerd/certs.d or OCI_CRANE_HOSTS_DIR) cannot be read or used; the
    message names the file and the entry."""

    default_fix = "fix the file the message names (docs/mirrors.md shows both formats), or move it away"


class RegistryBlockedError(OciCraneError, PermissionError):
    """The node's containers-registries.conf blocks the registry (`blocked = true`) and no mirror may serve it."""

    default_fix = "pull from a registry the configuration allows, or ask whoever manages the file to unblock it"


class SignatureError(OciCraneError):
    """A signature policy is in force (--verify-key, OCI_CRANE_VERIFY_KEYS, verify_key) and the model has no valid
    signature by a trusted key for its manifest digest (nor a model-signing bundle by one over its files); or a key
    cannot be read. Nothing of the model was downloaded, except where a model-signing bundle's files were found
    wrong once made: then nothing was recorded, placed or handed to vLLM. (Not a PermissionError: that is an
    OSError, and no handler of OSErrors may swallow a refusal.)"""

    default_fix = ("sign the model (cosign sign --key cosign.key REF@DIGEST, or oci-crane push --sign-key), or trust "
                   "the key it was signed with (--verify-key); docs/security.md, Signatures")
