"""`oci-crane login` checks the credentials with the registry before storing them, through the distribution token
flow too: /v2/ answers with a Bearer challenge and the token service is asked with the basic credentials. A
scripted registry on loopback plays both (Debian's docker-registry with htpasswd, the basic flow:
tests/test_private_registry.py)."""

from __future__ import annotations

import base64
import json

from support.commands import run_cli
from support.scripted_registry import ScriptedRegistry, serve

GOOD = "Basic " + base64.b64encode(b"alice:right-password").decode()


class TokenRegistry(ScriptedRegistry):
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        host = self.headers["Host"]
        if self.path == "/v2/":
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://{host}/token",service="scripted"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/token?") and self.headers.get("Authorization") == GOOD:
            self.send_document(json.dumps({"token": "issued"}).encode(), "application/json")
        else:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()


def test_the_token_service_is_asked_with_the_credentials(tmp_path):
    TokenRegistry.seen = []
    env = {"DOCKER_CONFIG": str(tmp_path)}
    with serve(TokenRegistry) as host:
        wrong = run_cli("login", host, "-u", "alice", "--password-stdin", env=env, input="wrong-password")
        assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
        assert wrong.stderr.startswith(f"error: {host} refused the password or token of alice (its token service "
                                       f"http://{host}/token answered 401); nothing was stored -- fix: ")
        assert "wrong-password" not in wrong.stderr and not (tmp_path / "config.json").exists()
        right = run_cli("login", host, "-u", "alice", "--password-stdin", env=env, input="right-password")
        assert right.returncode == 0, right.stderr
    assert list(json.loads((tmp_path / "config.json").read_text())["auths"]) == [host]
    token_requests = [path for path, _ in TokenRegistry.seen if path.startswith("/token?")]
    assert token_requests == ["/token?account=alice&service=scripted"] * 2
    assert all(auth is None for path, auth in TokenRegistry.seen if path == "/v2/")  # sent to the realm only
