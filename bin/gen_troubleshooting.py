"""Write docs/troubleshooting.md from the code: every OciCraneError subclass in oci_crane_loader/errors.py (its
docstring says when it happens, its default_fix what to do) and the exit codes in cli.py.

    python bin/gen_troubleshooting.py           # rewrite docs/troubleshooting.md
    python bin/gen_troubleshooting.py --check   # exit 1 if the committed page differs (tests/test_docs.py does this)

A new error class or exit code without a docstring, an example or a meaning below stops the script, naming it.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "troubleshooting.md"
sys.path.insert(0, str(ROOT))

from oci_crane_loader import cli, errors  # noqa: E402  (the checkout's package, not an installed one)

# One typical cause per class, as the code words it (the fix shown is the class's own unless given here).
EXAMPLES: dict[str, tuple[str, str | None]] = {
    "OciCraneError": ("(the base class: every error below is one)", None),
    "UsageError": ("no password: standard input is not a terminal", "pipe the password in and pass --password-stdin"),
    "SettingsError": ("OCI_CRANE_TIMEOUT='abc' is not a number of seconds",
                      "set OCI_CRANE_TIMEOUT to a positive number of seconds (default 120) or unset it"),
    "AdapterRefusedError": ("ghcr.io/other/sql is not under the repositories this server loads LoRA adapters from "
                            "(OCI_CRANE_LORA_REPOSITORIES)", None),
    "AdapterTimeoutError": ("the LoRA adapter ghcr.io/acme/adapters/sql:v1 is still downloading after 300 s", None),
    "InvalidReferenceError": ("invalid reference 'Bad/Ref': repository 'Bad/Ref' must be lowercase", None),
    "InvalidDocumentError": ("invalid manifest: layers.0.size: Input should be a valid integer", None),
    "UnsupportedFormatError": (
        "this Docker Model Runner artifact holds GGUF weights, which vLLM's safetensors loader cannot serve",
        "run it with `docker model run` or llama.cpp, or push a safetensors build of the model"),
    "InvalidModelError": ("layer sha256:5b2a53a7e879: unsafe path '/etc/passwd' (absolute, empty or with backslashes)",
                          "re-push the artifact with relative file paths"),
    "LocalDirError": ("--local-dir /models/llama exists and is not a directory",
                      "choose another --local-dir, or move what is in the way"),
    "VllmIncompatibleError": ("oci-crane: the installed vLLM 0.9.2 has no vllm.engine.arg_utils.EngineArgs."
                              "model_weights; the plugin needs it as vLLM >=0.14.0 and <0.34 define it",
                              "install a vLLM in the supported range: pip install 'vllm>=0.14.0,<0.34'"),
    "IntegrityError": ("1 damaged cache entry: blobs/sha256/0913dc526325...",
                       "run `oci-crane cache prune --damaged`, then fetch the model again"),
    "OfflineError": ("127.0.0.1:5000/acme/tiny:v1 is not in the cache at /home/me/.cache/oci-crane-loader", None),
    "CacheError": ("cannot write to the cache ([Errno 28] No space left on device: /home/me/.cache/oci-crane-loader)",
                   "free disk space on the disk of /home/me/.cache/oci-crane-loader, or point --cache-dir at a "
                   "larger disk"),
    "CraneError": ("crane failed: unexpected status code 500 Internal Server Error", None),
    "CancelledError": ("download of 127.0.0.1:5000/acme/tiny@sha256:0913dc526325... was cancelled", None),
    "CraneMissingError": ("crane at /usr/local/bin/crane cannot be started (Exec format error)", None),
    "CraneTooOldError": ("crane 0.21.6 at /usr/local/bin/crane is too old (need >= 0.21.8; 0.21.6 hangs)", None),
    "NotFoundError": ("not found in the registry: fetching manifest 127.0.0.1:5000/acme/nope:v1: GET "
                      "http://127.0.0.1:5000/v2/acme/nope/manifests/v1: NAME_UNKNOWN: Unknown name", None),
    "UnauthorizedError": ("the registry refused our credentials: GET https://ghcr.io/token?***: DENIED: denied", None),
    "RateLimitedError": ("the registry is rate limiting us: TOOMANYREQUESTS: You have reached your unauthenticated "
                         "pull rate limit", None),
    "NetworkError": ("cannot reach the registry: fetching manifest 127.0.0.1:1/acme/x:v1: Get "
                     "\"https://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused", None),
    "CraneTimeoutError": ("`crane manifest` got no answer within 120s", None),
    "TLSError": ("TLS handshake with the registry failed: tls: failed to verify certificate: x509: certificate "
                 "signed by unknown authority", None),
    "CredentialHelperError": ("the docker credential helper failed: error getting credentials - err: exec: "
                              "\"docker-credential-desktop\": executable file not found in $PATH", None),
    "CraneIntegrityError": ("the registry sent more than the 144 bytes the descriptor of "
                            "127.0.0.1:5000/acme/tiny@sha256:0913dc526325... promises; download stopped", None),
    "MirrorConfigError": ("/etc/containers/registries.conf: [[registry]] docker.io: unsupported pull-from-mirror "
                          "'sometimes' for mirror mirror.example.com",
                          "use one of all, digest-only, tag-only in /etc/containers/registries.conf"),
    "RegistryBlockedError": ("index.docker.io/library/ubuntu is blocked (blocked = true) in "
                             "/etc/containers/registries.conf.d/50-airgap.conf, and no mirror that is not blocked "
                             "serves it", None),
    "SignatureError": ("ghcr.io/acme/llama:v1 (sha256:0913dc526325...) is not signed by a trusted key (cosign.pub): "
                       "no valid signature in ghcr.io/acme/llama: cosign's tag sha256-0913dc526325....sig is "
                       "missing; no sigstore bundle among its referrers",
                       "sign exactly this digest with the key whose public half you trust (cosign sign --key "
                       "cosign.key ghcr.io/acme/llama@sha256:0913dc526325..., or oci-crane push --sign-key), or pass "
                       "the right --verify-key"),
}

HEADER = """\
# Troubleshooting

<!-- Generated by bin/gen_troubleshooting.py from oci_crane_loader/errors.py and cli.py: edit those, then run
     `python bin/gen_troubleshooting.py`. tests/test_docs.py fails when this page is out of date. -->

Every failure of `oci-crane`, of `fetch()` and of vLLM's `--load-format oci-crane` is one line,
`error: <cause> -- fix: <what to do>`, from one of the error classes below (all subclasses of
`oci_crane_loader.OciCraneError`, importable from `oci_crane_loader.errors`). `--debug` adds the traceback and
logs each crane command (never a credential). Each class also inherits the standard exception named under it, so
Python callers can catch broadly (`except LookupError`) or narrowly (`except NotFoundError`).
`oci-crane doctor` checks crane, the cache, the docker config's credential helpers and vLLM in one go.
"""


def _import_every_module() -> None:
    """The classes found are those loaded: load them all (a module that needs vLLM, absent here, is passed over),
    so that the page does not depend on what else the process imported."""
    import contextlib
    import importlib
    import pkgutil

    import oci_crane_loader

    for module in pkgutil.walk_packages(oci_crane_loader.__path__, "oci_crane_loader."):
        if not module.name.endswith("__main__"):  # that one runs the command line
            with contextlib.suppress(ImportError):
                importlib.import_module(module.name)


def error_classes() -> list[type[errors.OciCraneError]]:
    """OciCraneError and every subclass the package defines, in the order errors.py defines them (then any
    defined elsewhere in the package, by module)."""
    _import_every_module()
    found: list[type[errors.OciCraneError]] = []
    pending = [errors.OciCraneError]
    while pending:
        cls = pending.pop()
        if cls not in found and cls.__module__.startswith("oci_crane_loader"):
            found.append(cls)
            pending.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: (cls.__module__ != errors.__name__, cls.__module__,
                                          inspect.getsourcelines(cls)[1]))


def exit_codes() -> dict[str, int]:
    return {name: value for name, value in vars(cli).items() if name.startswith("EXIT_") and isinstance(value, int)}


def _kinds(cls: type) -> str:
    """'subclass of `CraneError`; also a `LookupError`': where it sits, and what else catches it."""
    parents = [base.__name__ for base in cls.__bases__ if issubclass(base, errors.OciCraneError)]
    standard = [base.__name__ for base in cls.__mro__[1:]
                if not issubclass(base, errors.OciCraneError) and base not in (Exception, BaseException, object)]
    parts = [f"subclass of {', '.join(f'`{name}`' for name in parents)}"] if parents else ["the base class"]
    if standard:
        parts.append("also catchable as " + ", ".join(f"`{name}`" for name in dict.fromkeys(standard)))
    return "; ".join(parts)


def _markdown(text: str) -> str:
    """Plain text as Markdown: `<` outside code spans escaped, so that `<64 hex>` is not read as an HTML tag."""
    pieces = text.split("`")
    return "`".join(piece if index % 2 else piece.replace("<", "&lt;") for index, piece in enumerate(pieces))


def render() -> str:
    problems: list[str] = []
    lines = [HEADER, "## Exit codes", "", "| code | meaning |", "| --- | --- |"]
    names = {value: name for name, value in exit_codes().items()}
    for value, meaning in sorted(cli.EXIT_CODES.items()):  # the table `oci-crane --help` prints, one source
        lines.append(f"| {value} | {_markdown(meaning)} (`cli.{names[value]}`) |")
    problems += [f"cli.{name} is missing from cli.EXIT_CODES" for name, value in exit_codes().items()
                 if value not in cli.EXIT_CODES]
    lines += ["", "## Errors", ""]
    for cls in error_classes():
        doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
        if not doc:
            problems.append(f"errors.{cls.__name__} has no docstring")
        if cls.__name__ not in EXAMPLES:
            problems.append(f"errors.{cls.__name__} has no example in bin/gen_troubleshooting.py")
        cause, fix = EXAMPLES.get(cls.__name__, ("?", None))
        summary = " ".join(doc.split("\n\n")[0].split())
        lines += [f"### {cls.__name__}", "", f"*{_kinds(cls)}*", "", _markdown(summary), "",
                  f"**Fix** (unless the message names a more precise one): {_markdown(cls.default_fix)}", ""]
        if cls is not errors.OciCraneError:
            lines += ["Example:", "", "```text", f"error: {cls(cause, fix).one_line()}", "```", ""]
    if problems:
        raise ValueError("bin/gen_troubleshooting.py cannot document:\n  " + "\n  ".join(problems))
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/troubleshooting.md is out of date")
    args = parser.parse_args()
    try:
        page = render()
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.check:
        if not PAGE.is_file() or PAGE.read_text() != page:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python bin/gen_troubleshooting.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
