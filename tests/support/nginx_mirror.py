"""Run nginx's proxy cache as a coalescing pull-through mirror (deploy/nginx-mirror.conf.template) for one test.

Debian's nginx, unprivileged, on 127.0.0.1 and a free port, in front of one upstream registry (plain http); its
pid file, temp files, cache and access log live under the test's directory, and it is stopped at the end. The
access log (format ``registry_mirror``: the request, its status, ``cache=HIT|MISS|...``) tells what the mirror
answered from its cache. Install it with ``bin/install-test-deps``.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .distribution import spawn_logged, start_on_a_free_port, stop, wait_for_v2

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "nginx-mirror.conf.template"
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+) '
                     r'cache=(?P<cache>\S*) range="(?P<range>[^"]*)" upstream=(?P<upstream>\S*) '
                     r'end=(?P<end>[\d.]+) took=(?P<took>[\d.]+)')


@dataclass(frozen=True)
class NginxMirror:
    host: str  # "127.0.0.1:PORT"
    root: Path  # its prefix: nginx.conf, mirror.conf (the rendered template), cache/, access.log
    log: Callable[[], str]  # what nginx wrote to stderr (its error log) so far

    def access(self) -> list[dict[str, str]]:
        """The requests it answered so far, in the order they finished: method, path, status, bytes, cache (HIT,
        MISS, ...; '-' where not cached), range, upstream (the upstream's status; '-': not asked), end (epoch
        seconds) and took (seconds)."""
        path = self.root / "access.log"
        text = path.read_text() if path.exists() else ""
        return [match.groupdict() for match in _ACCESS.finditer(text)]


def binary_path() -> str | None:
    """The nginx binary, or None when it is not installed (Debian's lives in /usr/sbin, off a user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def render(upstream: str, listen: str, cache: Path, resolver: str = "127.0.0.1") -> str:
    """deploy/nginx-mirror.conf.template with its MIRROR_* variables set, as the nginx image's envsubst does."""
    values = {"MIRROR_UPSTREAM": upstream, "MIRROR_LISTEN": listen, "MIRROR_CACHE": str(cache),
              "MIRROR_RESOLVER": resolver}
    text = TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return text


@contextmanager
def nginx_mirror(workdir: Path, upstream: str) -> Iterator[NginxMirror]:
    """``upstream``: the registry mirrored, a URL (``http://127.0.0.1:PORT``)."""
    binary = binary_path()
    if binary is None:
        raise RuntimeError("nginx is not installed: run bin/install-test-deps")
    workdir = Path(workdir)
    (workdir / "temp").mkdir(parents=True, exist_ok=True)

    def launch(port: int) -> tuple[subprocess.Popen[bytes], Callable[[], str]]:
        (workdir / "mirror.conf").write_text(render(upstream, f"127.0.0.1:{port}", workdir / "cache"))
        (workdir / "nginx.conf").write_text(_main_config(workdir))
        return spawn_logged([binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e", "stderr"])

    # GET /v2/ is passed through: the upstream answers it once nginx is up.
    port, proc, log = start_on_a_free_port(
        "nginx", launch, lambda proc, log, port: wait_for_v2(proc, log, port, name="nginx"))
    try:
        yield NginxMirror(host=f"127.0.0.1:{port}", root=workdir, log=log)
    finally:
        stop(proc)


def _main_config(workdir: Path) -> str:
    temp = workdir / "temp"
    # Everything nginx writes stays under workdir: no /var/lib/nginx, /run or /var/log. Started by root, nginx
    # would run its workers as nobody, who cannot enter the test's directory: run them as whoever started it.
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};\n"
    return f"""daemon off;
{user}pid {workdir / "nginx.pid"};
worker_processes 2;
error_log stderr notice;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    include {workdir / "mirror.conf"};
    access_log {workdir / "access.log"} registry_mirror;
}}
"""
