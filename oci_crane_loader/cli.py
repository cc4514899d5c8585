"""The command line: `oci-crane` and `python -m oci_crane_loader`.

Exit 0 on success; otherwise one line on stderr naming the cause and the fix (a traceback only with --debug), and
the exit status of EXIT_CODES.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__, errors
from .options import (
    LOCAL_DIR_MODES,
    MAX_JOBS,
    check_cache_dir,
    check_jobs,
    check_retries,
    fetch_options,
    normalise_subpath,
)
from .registry.access import check_authfile, check_connection
from .registry.crane import Crane
from .settings import environment_help, settings

if TYPE_CHECKING:  # the pull machinery (pydantic, filelock) is imported by the commands that use it: --help is fast
    from .fetching import FetchResult
    from .options import FetchOptions
    from .progress import Progress
    from .pull import Puller

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SIGNATURE = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILURE: "failure: the error line on stderr names the cause and the fix",
    EXIT_USAGE: "usage: an unknown option or a value that cannot be used; nothing was done",
    EXIT_SIGNATURE: "not signed: a signature policy is in force (--verify-key, OCI_CRANE_VERIFY_KEYS) and no trusted "
                    "key signed the model's digest (nor a model-signing bundle its files match); its weights were "
                    "not downloaded, or, where its files proved wrong only once made, not recorded or placed",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGINT); partial downloads were kept for the next fetch to continue",
    EXIT_TERMINATED: "terminated (SIGTERM); partial downloads were kept for the next fetch to continue",
}


def epilog() -> str:
    codes = "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())
    return (f"exit status:\n{codes}\n\n{environment_help()}\n\ncrane also reads DOCKER_CONFIG, REGISTRY_AUTH_FILE, "
            "XDG_RUNTIME_DIR (credentials), SSL_CERT_FILE, SSL_CERT_DIR and HTTPS_PROXY / NO_PROXY.")


def _common(parser: argparse.ArgumentParser, *, subpath: bool = True) -> None:
    parser.add_argument("--cache-dir",
                        help="cache root (default: $OCI_CRANE_LOADER_CACHE or ~/.cache/oci-crane-loader)")
    parser.add_argument("--platform", help="os/arch[/variant] to pick from a multi-platform index (default: host)")
    parser.add_argument("--offline", action="store_true",
                        help="use the cache only, never the network (also OCI_CRANE_OFFLINE=1)")
    if subpath:  # not for inspect, which lists the whole artifact: a --subpath there would be silently ignored
        parser.add_argument("--subpath", metavar="DIR",
                            help="the model directory inside an image or artifact, from its root: /models/b/ and "
                                 "models/b are one (default: where config.json is)")
    _verify_key(parser)
    _connection(parser)
    parser.add_argument("--debug", action="store_true", help="log every step and show tracebacks")


def _verify_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verify-key", action="append", default=[], metavar="FILE",
                        help="serve the model only if this public key (PEM, e.g. cosign.pub) signed its digest "
                             "(repeatable: any one of them; also OCI_CRANE_VERIFY_KEYS)")


def _connection(parser: argparse.ArgumentParser) -> None:
    """How to reach and authenticate to the registry (fetch, inspect, push): see crane.check_connection."""
    parser.add_argument("--insecure", action="store_true",
                        help="skip TLS certificate verification (and allow http) for this registry (crane --insecure)")
    parser.add_argument("--plain-http", action="store_true",
                        help="the registry speaks plain http (passed to crane as --insecure, crane's only switch; "
                             "not needed for localhost, 127.0.0.1 or private 10/172.16/192.168 addresses)")
    parser.add_argument("--ca-file", metavar="PATH",
                        help="also trust this CA (PEM) for the registry's TLS certificate (Linux; not on macOS)")
    parser.add_argument("--authfile", metavar="PATH",
                        help="read credentials from this file (podman's auth.json or a docker config.json) instead "
                             "of where crane looks (`oci-crane doctor` shows which)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oci-crane", description="Fetch models from OCI registries with crane.",
                                     epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fetch = commands.add_parser("fetch", help="download a model into the cache and print its directory")
    fetch.add_argument("reference", metavar="REF", help="e.g. ghcr.io/acme/llama:v1 or oci://127.0.0.1:5000/m:v1")
    fetch.add_argument("--jobs", type=_jobs, default=4, help=f"blobs downloaded at once, 1 to {MAX_JOBS} (default 4)")
    fetch.add_argument("--json", action="store_true", help="print one JSON object instead of the path")
    fetch.add_argument("--quiet", "-q", action="store_true",
                       help="no progress on stderr (also OCI_CRANE_DISABLE_PROGRESS=1); errors still show")
    fetch.add_argument("--include", action="append", default=[], metavar="PATTERN",
                       help="fetch only the files whose path matches this glob (repeatable; e.g. '*.json')")
    fetch.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                       help="do not fetch the files whose path matches this glob (repeatable; e.g. '*.safetensors')")
    fetch.add_argument("--retries", metavar="N", type=_retries,
                       help="new tries of a download whose stream broke, 0 to 20 (default: OCI_CRANE_RETRIES or 2)")
    fetch.add_argument("--local-dir", metavar="DIR",
                       help="also place the model's files in DIR (outside the cache), as --local-dir-mode says, "
                            "and print DIR")
    fetch.add_argument("--local-dir-mode", choices=LOCAL_DIR_MODES, metavar="MODE",
                       help="copy (default): files of DIR's own, which you may edit (reflinks where the file system "
                            "has them, else copies); link: hard links to the cache's read-only files, no second "
                            "copy on disk, for a DIR served read-only")
    _common(fetch)

    inspect = commands.add_parser("inspect", help="show digest, format, files and sizes without downloading weights")
    inspect.add_argument("reference", metavar="REF")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    _common(inspect, subpath=False)

    demo = commands.add_parser("demo", help="pack a tiny model, push it to a loopback registry, fetch it back")
    demo.add_argument("--cache-dir", help="cache root to fetch into, kept afterwards (default: a cache of the demo's "
                                          "own, removed at the end)")
    demo.add_argument("--debug", action="store_true")

    cache = commands.add_parser("cache", help="list, verify and prune the cache")
    actions = cache.add_subparsers(dest="action", required=True, metavar="ACTION")
    _local(actions.add_parser("ls", help="cached references and models, with their sizes"))
    _local(actions.add_parser("verify", help="re-hash every blob and manifest; exit 1 if any is damaged"))
    prune = _local(actions.add_parser("prune", help="delete what no ref reaches, and stale tmp/ files"))
    prune.add_argument("--dry-run", action="store_true", help="only show what would be deleted")
    prune.add_argument("--damaged", action="store_true",
                       help="instead: delete what `cache verify` reports, and the model directories linking it")
    remove = _local(actions.add_parser("rm", help="forget a tag (the data goes at the next prune)"))
    remove.add_argument("reference", metavar="REF", help="registry/repository:tag as `cache ls` shows it")
    remove.add_argument("--prune", action="store_true", help="then run `cache prune`")

    doctor = _local(commands.add_parser("doctor", help="check crane, the cache, credentials, mirrors and vLLM"))
    doctor.add_argument("--authfile", metavar="PATH", help="check this credentials file, as fetch --authfile reads it")
    which = doctor.add_mutually_exclusive_group()
    which.add_argument("reference", metavar="REF", nargs="?",
                       help="also list the mirrors in force for REF, in the order they are tried, and their files")
    which.add_argument("--ref", metavar="REF", dest="ref_option", help="the same as REF")
    _push_parser(commands)
    _registry_parsers(commands)
    _deploy_parsers(commands)
    return parser


def _deploy_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """serve and kserve-init: the entry points of container images and Kubernetes recipes (docs/deploy.md)."""
    serve = commands.add_parser(
        "serve", help="exec `vllm serve`, configured by VLLM_MODEL, VLLM_ARGS and USE_ALL_GPUS",
        description="Start `vllm serve` for REF (default: $VLLM_MODEL) with $VLLM_ARGS, then the arguments after --. "
                    "An OCI reference (oci://..., or one naming its registry host) gets --load-format oci-crane and "
                    "--download-dir <cache> unless given; USE_ALL_GPUS=1 adds --tensor-parallel-size <GPUs>.")
    serve.add_argument("reference", metavar="REF", nargs="?",
                       help="an OCI reference, Hugging Face id or directory (default: $VLLM_MODEL)")
    serve.add_argument("--dry-run", action="store_true", help="print the vllm command line instead of running it")
    _verify_key(serve)
    serve.add_argument("--debug", action="store_true", help="show tracebacks")
    kserve = commands.add_parser("kserve-init", help="KServe storage initializer: fetch URI into DEST, as pairs",
                                 description="Run by KServe as the storage initializer of a ClusterStorageContainer: "
                                             "fetch each oci-artifact://REF into its DEST directory.")
    kserve.add_argument("pairs", metavar="URI DEST", nargs="+", help="oci-artifact://REF and the model directory")
    kserve.add_argument("--cache-dir",
                        help="cache root (default: $OCI_CRANE_LOADER_CACHE, else a scratch cache inside DEST, "
                             "removed at the end)")
    kserve.add_argument("--platform", help="os/arch[/variant] to pick from a multi-platform index (default: host)")
    kserve.add_argument("--insecure", action="store_true",
                        help="allow plain http and unverified TLS for this registry (crane --insecure)")
    kserve.add_argument("--debug", action="store_true", help="log every step and show tracebacks")


def _registry_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """login, logout and ls: crane's own commands, run with the crane this package uses."""
    login = commands.add_parser("login", help="store credentials for a registry where crane reads them")
    login.add_argument("registry", metavar="REGISTRY", help="e.g. ghcr.io, docker.io, localhost:5000")
    login.add_argument("-u", "--username", required=True, help="user name (for tokens, what the registry expects)")
    login.add_argument("--password-stdin", action="store_true",
                       help="read the password or token from standard input (without it: asked on a terminal)")
    login.add_argument("--insecure", action="store_true",
                       help="skip TLS certificate verification (and allow http) when checking the credentials")
    login.add_argument("--plain-http", action="store_true", help="the registry speaks plain http")
    login.add_argument("--ca-file", metavar="PATH", help="also trust this CA (PEM) for the registry's TLS certificate")
    login.add_argument("--authfile", metavar="PATH",
                       help="store them in this file instead (podman's auth.json or a docker config.json; made 0600 "
                            "if missing); fetch, inspect and push read it with the same --authfile")
    login.add_argument("--debug", action="store_true", help="show tracebacks")
    logout = commands.add_parser("logout", help="remove the stored credentials for a registry")
    logout.add_argument("registry", metavar="REGISTRY")
    logout.add_argument("--authfile", metavar="PATH", help="remove them from this file (as login --authfile)")
    logout.add_argument("--debug", action="store_true", help="show tracebacks")
    tags = commands.add_parser("ls", help="list the tags of a repository")
    tags.add_argument("repository", metavar="REPOSITORY", help="e.g. ghcr.io/acme/llama")
    tags.add_argument("--json", action="store_true", help="print a JSON list")
    tags.add_argument("--insecure", action="store_true", help="the registry is plain http or has untrusted TLS")
    tags.add_argument("--authfile", metavar="PATH", help="read credentials from this file (as fetch --authfile)")
    tags.add_argument("--debug", action="store_true", help="show tracebacks")


def _push_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    push = commands.add_parser("push", help="pack a local model directory and push it to a registry")
    push.add_argument("directory", metavar="DIR", help="the model directory (config.json, *.safetensors, tokenizer), "
                      "or a PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors)")
    push.add_argument("reference", metavar="REF", help="a tag to push to, e.g. ghcr.io/acme/llama:v1")
    push.add_argument("--format", choices=("modelpack", "dmr"), default="modelpack",
                      help="CNCF ModelPack (default) or Docker Model Runner (config v0.2)")
    _connection(push)
    push.add_argument("--cache-dir", help="where the temporary layout goes (default: the cache's tmp/)")
    push.add_argument("--sign-key", metavar="KEY",
                      help="then sign the pushed digest with this private key, as `cosign sign --key` does: cosign.key "
                           "from `cosign generate-key-pair` (its password in COSIGN_PASSWORD, else asked on the "
                           "terminal) or an unencrypted PEM key; read before anything is pushed (docs/security.md)")
    push.add_argument("--json", action="store_true", help="print one JSON object instead of the pinned reference")
    push.add_argument("--quiet", "-q", action="store_true",
                      help="no progress on stderr (also OCI_CRANE_DISABLE_PROGRESS=1)")
    push.add_argument("--debug", action="store_true", help="log every step and show tracebacks")


def _jobs(text: str) -> int:
    try:
        return check_jobs(int(text))
    except (ValueError, errors.UsageError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to {MAX_JOBS}") from None


def _retries(text: str) -> int:
    try:
        return check_retries(text)
    except errors.UsageError as exc:
        raise argparse.ArgumentTypeError(exc.cause) from None


def _local(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of the commands that never touch the network."""
    parser.add_argument("--cache-dir",
                        help="cache root (default: $OCI_CRANE_LOADER_CACHE or ~/.cache/oci-crane-loader)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _options(args: argparse.Namespace, jobs: int = 4) -> FetchOptions:
    return fetch_options(cache_dir=args.cache_dir, platform=args.platform, offline=args.offline,
                         insecure=args.insecure, jobs=jobs, subpath=getattr(args, "subpath", None),
                         plain_http=args.plain_http, ca_file=args.ca_file, authfile=args.authfile,
                         retries=getattr(args, "retries", None), include=getattr(args, "include", ()),
                         exclude=getattr(args, "exclude", ()), verify_keys=getattr(args, "verify_key", ()))


def _puller(args: argparse.Namespace) -> Puller:
    from .pull import open_puller

    return open_puller(_options(args))


def _progress(args: argparse.Namespace) -> Progress:
    from .progress import Progress

    return Progress(enabled=not (args.quiet or settings().disable_progress))


def _run(args: argparse.Namespace) -> int:
    if args.command in ("fetch", "inspect"):
        _not_a_directory(args.reference)
    if args.command == "fetch":
        from .fetching import fetch

        result = fetch(_options(args, args.jobs), args.reference, _progress(args))
        if args.local_dir is not None:
            _fetch_into(result, args, args.local_dir)
        else:
            print(json.dumps(result.to_json(), indent=2) if args.json else result.path)
    elif args.command == "inspect":
        from .progress import human

        info = _puller(args).inspect(args.reference)
        if args.json:
            print(json.dumps(info.to_json(), indent=2))
        else:
            print(f"reference  {info.reference}\ndigest     {info.digest}\nformat     {info.format}\n"
                  f"size       {human(info.bytes)}\nconfig     {human(int(str(info.config['size'])))}")
            for entry in info.files:
                name = entry["path"] or ("(archive, listed once fetched)" if entry.get("archive")
                                         else f"(unnamed shard {entry['shard']})" if entry.get("shard")
                                         else "(layer, listed once fetched)")
                # The names come from the artifact: escaped, so that they cannot drive the terminal.
                print(f"  {human(int(str(entry['size']))):>10}  {errors.printable(str(name))}")
    elif args.command == "demo":
        from .demo import run_demo

        print(run_demo(args.cache_dir))
    elif args.command == "cache":
        _cache(args)
    elif args.command == "doctor":
        from .doctor import run_doctor

        report = run_doctor(args.cache_dir, args.authfile, args.reference or args.ref_option)
        print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
        if not report.ok:
            raise report.error()
    elif args.command in ("serve", "kserve-init"):
        _deploy_command(args)
    elif args.command in ("login", "logout", "ls"):
        _registry_command(args)
    elif args.command == "push":
        from .push import push

        crane = Crane(insecure=args.insecure, plain_http=args.plain_http, ca_file=args.ca_file,
                      authfile=args.authfile)
        pushed = push(args.directory, args.reference, format=args.format, cache_dir=args.cache_dir, crane=crane,
                      progress=_progress(args), sign_key=args.sign_key)
        print(json.dumps(pushed.to_json(), indent=2) if args.json else pushed.pinned)
    return 0


def _not_a_directory(reference: str) -> None:
    """A directory here given as REF that also parses as a reference (`fetch models/tiny`) would go to Docker Hub
    as docker.io/models/tiny: said instead, with what to do (oci://models/tiny still means the registry). One that
    does not parse (./models/tiny) gets the same advice from parse_reference."""
    from .reference import misread, parse_reference

    try:
        parse_reference(reference)
    except errors.InvalidReferenceError:
        return
    taken = misread(reference)
    if taken is not None and os.path.isdir(reference) and reference[:6].lower() != "oci://":
        raise errors.InvalidReferenceError(f"{reference!r} is a directory here: {taken[0]}",
                                           f"{taken[1]}; for the registry's repository of that name, write "
                                           f"oci://{reference}")


def _deploy_command(args: argparse.Namespace) -> None:
    if args.command == "serve":
        from .serve import build_argv, exec_vllm, shown

        if args.verify_key:  # the vLLM loader reads it there, as a container sets it
            from .options import check_verify_keys

            check_verify_keys(args.verify_key, settings())  # a bad key file is refused before vLLM starts
            keys = [*settings().verify_keys, *(os.path.abspath(path) for path in args.verify_key)]
            os.environ["OCI_CRANE_VERIFY_KEYS"] = ":".join(keys)
        argv = build_argv(args.reference, args.vllm_args, os.environ)
        if args.dry_run:  # secrets masked: a dry run's output lands in CI logs (exec_vllm gets them unchanged)
            print(shown(argv))
            return
        print(f"exec {shown(argv)}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        exec_vllm(argv)
    else:
        from .kserve import initialize

        for report in initialize(args.pairs, args.cache_dir, insecure=args.insecure, platform=args.platform):
            for line in report.warnings():
                print(f"warning: {errors.printable(line)}", file=sys.stderr)
            print(report.path)


def _fetch_into(result: FetchResult, args: argparse.Namespace, local_dir: str) -> None:
    from .cache.store import Store
    from .local_dir import place_model

    placed = place_model(result.path, result.files, local_dir, store=Store(args.cache_dir),
                         mode=args.local_dir_mode or LOCAL_DIR_MODES[0])
    for line in placed.warnings():
        print(f"warning: {errors.printable(line)}", file=sys.stderr)
    if args.json:
        print(json.dumps({**result.to_json(), "path": str(placed.path), "cache_path": str(result.path),
                          "local_dir": placed.to_json()}, indent=2))
    else:
        print(placed.path)


def _registry_command(args: argparse.Namespace) -> None:
    from . import auth

    if args.command == "login":
        config = auth.login(args.registry, args.username, auth.read_password(args.password_stdin),
                            insecure=args.insecure, plain_http=args.plain_http, ca_file=args.ca_file,
                            authfile=args.authfile)
        print(f"logged in to {args.registry} as {args.username} (credentials in {config}, or the helper it names)",
              file=sys.stderr)
    elif args.command == "logout":
        config = auth.logout(args.registry, authfile=args.authfile)
        print(f"logged out of {args.registry} ({config})", file=sys.stderr)
    else:
        found = auth.list_tags(args.repository, insecure=args.insecure, authfile=args.authfile)
        print(json.dumps(found) if args.json else "\n".join(found))


def _cache(args: argparse.Namespace) -> None:
    # imported here: `fetch` starts faster without them
    from .cache import listing, prune, verify
    from .cache.store import Store
    from .cli_format import format_info, format_prune, format_verify
    from .reference import parse_reference

    store = Store(args.cache_dir)
    if args.action == "ls":
        info = listing.scan_cache(store)
        print(json.dumps(info.to_json(), indent=2) if args.json else format_info(info))
    elif args.action == "verify":
        verified = verify.verify_cache(store)
        print(json.dumps(verified.to_json(), indent=2) if args.json else format_verify(verified))
        if not verified.ok:
            raise verified.error()
    elif args.action == "prune":
        report = prune.prune_cache(store, dry_run=args.dry_run, damaged=args.damaged)
        print(json.dumps(report.to_json(), indent=2) if args.json else format_prune(report))
    elif args.action == "rm":
        reference = parse_reference(args.reference)
        digest = prune.remove_ref(store, reference)
        pruned = prune.prune_cache(store) if args.prune else None
        if args.json:
            print(json.dumps({"removed": reference.name, "digest": digest,
                              "prune": pruned.to_json() if pruned else None}, indent=2))
        else:
            print(f"removed {reference.name} ({digest[:19]})")
            if pruned:
                print(format_prune(pruned))


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that downloads are cancelled and reaped as on Ctrl-C."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if words[:1] == ["serve"] and "--" in words:  # what follows -- is vLLM's, unseen by our parser
        cut = words.index("--")
        words, passthrough = words[:cut], words[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(words)
    args.vllm_args = passthrough
    try:  # the options of a fetch are checked again, in the same place, when its Puller is built
        check_cache_dir(getattr(args, "cache_dir", None))
        if getattr(args, "subpath", None) is not None:
            normalise_subpath(args.subpath)
        if hasattr(args, "plain_http"):  # fetch, inspect, push, login: what crane cannot honour is refused here
            check_connection(insecure=args.insecure, plain_http=args.plain_http, ca_file=args.ca_file)
            if args.command != "login":  # login makes a missing --authfile
                check_authfile(args.authfile)
        if getattr(args, "local_dir", None) is not None:
            if not args.local_dir.strip():
                raise errors.UsageError("--local-dir is empty: name the directory the model should go to")
            from .local_dir import cache_root, check_local_dir

            try:  # before anything is downloaded
                check_local_dir(args.local_dir, cache_root(args.cache_dir),
                                mode=args.local_dir_mode or LOCAL_DIR_MODES[0])
            except errors.UsageError as exc:
                raise errors.UsageError(f"{exc.cause} -- fix: {exc.fix}") from None
        elif getattr(args, "local_dir_mode", None) is not None:
            raise errors.UsageError("--local-dir-mode applies to --local-dir DIR: name the directory too")
    except errors.UsageError as exc:
        parser.error(exc.cause)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
        # Ctrl-C and `kill -INT` interrupt, even where SIGINT came ignored (a shell starts background jobs with it
        # ignored, and Python then installs no handler): partial downloads are kept either way.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except errors.SignatureError as exc:
        if args.debug:
            raise
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return EXIT_SIGNATURE
    except errors.OciCraneError as exc:
        if args.debug:
            note = getattr(exc, "note", None)
            if note and not hasattr(exc, "add_note"):  # Python 3.10: no exception notes in tracebacks
                print(note, file=sys.stderr)
            raise
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt as exc:
        print("interrupted; partial downloads were kept: the next fetch continues them", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, _Terminated) else EXIT_INTERRUPTED
    except OSError as exc:  # disk full, permissions: still one line, with the fix that fits the errno
        if args.debug:
            raise
        cache = getattr(args, "cache_dir", None) or "the cache directory"
        print(f"error: {errors.cache_os_error(exc, 'write to the cache', cache).one_line()}", file=sys.stderr)
        return EXIT_FAILURE
