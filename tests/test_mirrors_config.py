"""registry/mirrors.py: containers-registries.conf (v2, drop-ins) and containerd's hosts.toml, read from real files
in a temporary root, with the rules of containers/image's sysregistriesv2 and containerd's remotes/docker/config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.commands import run_cli

from oci_crane_loader.doctor import check_mirrors
from oci_crane_loader.errors import MirrorConfigError, RegistryBlockedError
from oci_crane_loader.registry.access import registry_access
from oci_crane_loader.registry.mirror_files import locate
from oci_crane_loader.registry.mirrors import load_config, plan_sources
from oci_crane_loader.settings import Settings

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Stands for / : etc/containers and etc/containerd/certs.d live under it; HOME is tmp_path/home."""
    (tmp_path / "home").mkdir()
    return tmp_path


def env(root: Path, **more: str) -> dict[str, str]:
    return {"HOME": str(root / "home"), **more}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def system_conf(root: Path, text: str) -> Path:
    return write(root / "etc/containers/registries.conf", text)


def drop_in(root: Path, name: str, text: str) -> Path:
    return write(root / "etc/containers/registries.conf.d" / name, text)


def hosts(root: Path, host_dir: str, text: str) -> Path:
    return write(root / "etc/containerd/certs.d" / host_dir / "hosts.toml", text)


def one_mirror(registry: str, mirror: str) -> str:
    return f'[[registry]]\nlocation = "{registry}"\n[[registry.mirror]]\nlocation = "{mirror}"\n'


def plan(root: Path, reference: str, **environ: str):
    return plan_sources(reference, environ=env(root, **environ), root=root)


def urls(found) -> list[str]:
    return [e.url_base for e in found.endpoints]


# --- no configuration ----------------------------------------------------------------------------------------------

def test_without_any_file_the_upstream_alone(root):
    found = plan(root, "ghcr.io/acme/llama:v1")
    assert urls(found) == ["https://ghcr.io/v2/acme/llama"]
    upstream = found.upstream
    assert upstream is not None and upstream.is_upstream and upstream.source is None and upstream.crane_usable
    assert found.mirrors == () and found.files == ()
    assert urls(plan(root, "127.0.0.1:5000/acme/llama:v1")) == ["http://127.0.0.1:5000/v2/acme/llama"]
    assert urls(plan(root, "localhost:5000/acme/llama:v1")) == ["http://localhost:5000/v2/acme/llama"]


# --- registries.conf -------------------------------------------------------------------------------------------

def test_docker_hub_mirror_from_registries_conf(root):
    conf = system_conf(root, """
unqualified-search-registries = ["docker.io"]
[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "mirror.gcr.io"
[[registry.mirror]]
location = "10.0.0.5:5000"
insecure = true
""")
    found = plan(root, "ubuntu:24.04")  # docker.io/library/ubuntu for containers/image, index.docker.io for crane
    # a private address is asked over http, as crane (go-containerregistry's Registry.Scheme) asks it
    assert urls(found) == ["https://mirror.gcr.io/v2/library/ubuntu", "http://10.0.0.5:5000/v2/library/ubuntu",
                           "https://index.docker.io/v2/library/ubuntu"]
    assert [e.insecure for e in found.endpoints] == [False, True, False]
    assert [e.is_upstream for e in found.endpoints] == [False, False, True]
    assert all(e.source == conf and e.ns is None for e in found.endpoints)
    assert found.mirrors[0].crane_reference("24.04") == "mirror.gcr.io/library/ubuntu:24.04"
    assert found.upstream.crane_reference(DIGEST) == f"index.docker.io/library/ubuntu@{DIGEST}"
    assert found.files == (conf,)


def test_a_path_prefixed_mirror_rewrites_the_repository_under_its_prefix(root):
    system_conf(root, """
[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "harbor.example.com/dockerhub-proxy"
""")
    mirror = plan(root, "docker.io/acme/llama:v1").mirrors[0]
    assert (mirror.host, mirror.repository) == ("harbor.example.com", "dockerhub-proxy/acme/llama")
    assert mirror.manifest_url("v1") == "https://harbor.example.com/v2/dockerhub-proxy/acme/llama/manifests/v1"


def test_location_relocates_the_namespace_under_the_prefix(root):
    system_conf(root, """
[[registry]]
prefix = "example.com/foo"
location = "internal.example.net/bar"
""")
    found = plan(root, "example.com/foo/myimage:latest")
    assert urls(found) == ["https://internal.example.net/v2/bar/myimage"]
    # "example.com/foobar" does not match the prefix "example.com/foo": a prefix ends at / : or @
    assert urls(plan(root, "example.com/foobar/x:1")) == ["https://example.com/v2/foobar/x"]


def test_the_longest_prefix_wins(root):
    system_conf(root, """
[[registry]]
location = "quay.io"
[[registry.mirror]]
location = "mirror-all.example.com"
[[registry]]
prefix = "quay.io/acme"
location = "quay.io/acme"
[[registry.mirror]]
location = "mirror-acme.example.com/acme"
""")
    assert plan(root, "quay.io/acme/llama:v1").mirrors[0].url_base == "https://mirror-acme.example.com/v2/acme/llama"
    assert plan(root, "quay.io/other/llama:v1").mirrors[0].url_base == "https://mirror-all.example.com/v2/other/llama"


def test_wildcard_prefix_matches_subdomains_only(root):
    system_conf(root, """
[[registry]]
prefix = "*.example.com"
[[registry.mirror]]
location = "cache.internal"
""")
    assert plan(root, "a.example.com/m/x:1").mirrors[0].url_base == "https://cache.internal/v2/m/x"
    assert plan(root, "b.c.example.com/m/x:1").mirrors[0].url_base == "https://cache.internal/v2/m/x"
    # the wildcard without a location keeps the registry itself as the upstream
    assert plan(root, "a.example.com/m/x:1").upstream.url_base == "https://a.example.com/v2/m/x"
    assert plan(root, "example.com/m/x:1").mirrors == ()
    assert plan(root, "notexample.com/m/x:1").mirrors == ()


def test_a_more_specific_host_beats_the_wildcard(root):
    system_conf(root, """
[[registry]]
prefix = "*.example.com"
[[registry.mirror]]
location = "wild.internal"
[[registry]]
location = "models.example.com"
[[registry.mirror]]
location = "exact.internal"
""")
    assert plan(root, "models.example.com/m/x:1").mirrors[0].host == "exact.internal"
    assert plan(root, "other.example.com/m/x:1").mirrors[0].host == "wild.internal"


@pytest.mark.parametrize(("pull_from", "tag_resolves", "tag_listed", "digest_listed"), [
    ("all", True, True, True),
    ("digest-only", False, True, True),  # a tag is never resolved there; after pinning, a digest pull may use it
    ("tag-only", True, True, False),  # containers/image: not used for a digest reference
])
def test_pull_from_mirror(root, pull_from, tag_resolves, tag_listed, digest_listed):
    system_conf(root, f"""
[[registry]]
location = "ghcr.io"
[[registry.mirror]]
location = "mirror.internal"
pull-from-mirror = "{pull_from}"
""")
    by_tag = plan(root, "ghcr.io/acme/llama:v1")
    assert (by_tag.mirrors != ()) is tag_listed
    mirror = by_tag.mirrors[0]
    assert mirror.can_resolve_tags is tag_resolves and mirror.can_pull
    assert (mirror in by_tag.resolvers()) is tag_resolves and mirror in by_tag.pullers()
    assert by_tag.resolvers()[-1].is_upstream  # the upstream always resolves
    by_digest = plan(root, f"ghcr.io/acme/llama@{DIGEST}")
    assert (by_digest.mirrors != ()) is digest_listed


def test_mirror_by_digest_only_on_the_registry_applies_to_every_mirror(root):
    system_conf(root, """
[[registry]]
location = "ghcr.io"
mirror-by-digest-only = true
[[registry.mirror]]
location = "one.internal"
[[registry.mirror]]
location = "two.internal"
""")
    found = plan(root, "ghcr.io/acme/llama:v1")
    assert [e.host for e in found.resolvers()] == ["ghcr.io"]
    assert [e.host for e in found.pullers()] == ["one.internal", "two.internal", "ghcr.io"]


def test_a_drop_in_replaces_the_entry_of_its_prefix_and_later_names_win(root):
    system_conf(root, """
[[registry]]
location = "ghcr.io"
[[registry.mirror]]
location = "from-main.internal"
[[registry]]
location = "quay.io"
[[registry.mirror]]
location = "quay-main.internal"
""")
    drop_in(root, "10-first.conf", one_mirror("ghcr.io", "first.internal"))
    last = drop_in(root, "20-second.conf",
                   one_mirror("ghcr.io", "second.internal"))
    drop_in(root, "30-ignored.conf.disabled", '[[registry]]\nlocation = "ghcr.io"\nblocked = true\n')
    found = plan(root, "ghcr.io/acme/llama:v1")
    assert [e.host for e in found.mirrors] == ["second.internal"] and found.mirrors[0].source == last
    assert [e.host for e in plan(root, "quay.io/a/b:1").mirrors] == ["quay-main.internal"]  # untouched prefix


def test_user_drop_ins_come_after_the_system_ones(root):
    drop_in(root, "50-system.conf", one_mirror("ghcr.io", "sys.internal"))
    user = write(root / "home/.config/containers/registries.conf.d/00-user.conf",
                 one_mirror("ghcr.io", "user.internal"))
    found = plan(root, "ghcr.io/acme/llama:v1")
    assert [e.host for e in found.mirrors] == ["user.internal"] and found.mirrors[0].source == user


def test_lookup_order_variable_then_user_file_then_system_file(root):
    system_conf(root, one_mirror("ghcr.io", "system.internal"))
    assert plan(root, "ghcr.io/a/b:1").mirrors[0].host == "system.internal"
    user = write(root / "home/.config/containers/registries.conf",
                 one_mirror("ghcr.io", "user.internal"))
    assert plan(root, "ghcr.io/a/b:1").mirrors[0].host == "user.internal"
    # with the user's main file, the system drop-ins are not read (containers/image newConfigWrapper)
    drop_in(root, "50-system.conf", '[[registry]]\nlocation = "ghcr.io"\nblocked = true\n')
    assert plan(root, "ghcr.io/a/b:1").files == (user,)
    chosen = write(root / "elsewhere.conf",
                   one_mirror("quay.io", "env.internal"))
    found = plan(root, "quay.io/a/b:1", CONTAINERS_REGISTRIES_CONF=str(chosen))
    assert found.mirrors[0].host == "env.internal" and found.files[0] == chosen


def test_a_missing_file_named_by_the_variable_is_an_error(root):
    with pytest.raises(MirrorConfigError) as caught:
        plan(root, "ghcr.io/a/b:1", CONTAINERS_REGISTRIES_CONF=str(root / "nope.conf"))
    assert "nope.conf" in caught.value.cause and "does not exist" in caught.value.cause


def test_v1_format_in_the_main_file_blocks_and_marks_insecure(root):
    system_conf(root, """
[registries.search]
registries = ["docker.io"]
[registries.insecure]
registries = ["10.0.0.5:5000"]
[registries.block]
registries = ["evil.example.com"]
""")
    assert plan(root, "10.0.0.5:5000/a/b:1").upstream.insecure
    with pytest.raises(RegistryBlockedError):
        plan(root, "evil.example.com/a/b:1")


# --- blocked ----------------------------------------------------------------------------------------------------

def test_a_blocked_registry_without_mirrors_is_one_error_naming_the_file(root):
    conf = drop_in(root, "50-airgap.conf", '[[registry]]\nlocation = "docker.io"\nblocked = true\n')
    with pytest.raises(RegistryBlockedError) as caught:
        plan(root, "ubuntu:24.04")
    assert str(conf) in caught.value.cause and "index.docker.io/library/ubuntu" in caught.value.cause
    assert isinstance(caught.value, PermissionError)


def test_a_blocked_upstream_with_a_mirror_is_served_by_the_mirror_only(root):
    conf = system_conf(root, """
[[registry]]
location = "docker.io"
blocked = true
[[registry.mirror]]
location = "harbor.internal/hub"
""")
    found = plan(root, "ubuntu:24.04")
    assert urls(found) == ["https://harbor.internal/v2/hub/library/ubuntu"]
    assert found.upstream is None and found.blocked_by == conf
    assert any("blocked" in line for line in found.describe())


def test_a_mirror_under_a_blocked_prefix_is_left_out(root):
    system_conf(root, """
[[registry]]
location = "ghcr.io"
[[registry.mirror]]
location = "old-mirror.internal"
[[registry.mirror]]
location = "new-mirror.internal"
[[registry]]
location = "old-mirror.internal"
blocked = true
""")
    assert [e.host for e in plan(root, "ghcr.io/a/b:1").endpoints] == ["new-mirror.internal", "ghcr.io"]


# --- containerd hosts.toml -----------------------------------------------------------------------------------------

SPEGEL = """server = 'https://registry-1.docker.io'

[host.'http://10.0.0.7:30020']
capabilities = ['pull', 'resolve']
dial_timeout = '200ms'
[host.'http://10.0.0.7:30020'.header]
Authorization = 'Basic c2VjcmV0OnNlY3JldA=='
"""


def test_spegel_hosts_toml_for_docker_hub(root):
    written = hosts(root, "docker.io", SPEGEL)
    found = plan(root, "ubuntu:24.04")
    spegel, upstream = found.endpoints
    assert spegel.url_base == "http://10.0.0.7:30020/v2/library/ubuntu" and not spegel.is_upstream
    assert spegel.ns == "docker.io"  # containerd's ?ns=: Spegel needs it to resolve a tag
    assert spegel.manifest_url("24.04") == "http://10.0.0.7:30020/v2/library/ubuntu/manifests/24.04?ns=docker.io"
    assert spegel.blob_url(DIGEST) == f"http://10.0.0.7:30020/v2/library/ubuntu/blobs/{DIGEST}?ns=docker.io"
    assert spegel.dial_timeout == pytest.approx(0.2) and spegel.source == written
    assert spegel.headers == (("Authorization", "Basic c2VjcmV0OnNlY3JldA=="),) and not spegel.crane_usable
    assert upstream.is_upstream and upstream.host == "registry-1.docker.io" and upstream.ns is None
    text = "\n".join(found.describe()) + str(found.to_json())
    assert "c2VjcmV0" not in text and "Authorization" in text  # the header's name, never its value


def test_dragonfly_default_catch_all_and_explicit_registry(root):
    hosts(root, "_default", '[host."http://127.0.0.1:4001"]\ncapabilities = ["pull", "resolve"]\n')
    hosts(root, "docker.io", """server = "https://registry.example.com"

[host."http://127.0.0.1:4001"]
capabilities = ["pull", "resolve"]
skip_verify = true
ca = ["ca.pem"]

[host."http://127.0.0.1:4001".header]
X-Dragonfly-Registry = "https://registry.example.com"
""")
    through = plan(root, "ghcr.io/acme/llama:v1")  # no ghcr.io directory: _default
    dragonfly, upstream = through.endpoints
    assert dragonfly.url_base == "http://127.0.0.1:4001/v2/acme/llama" and dragonfly.ns == "ghcr.io"
    assert any("hostNetwork" in note for note in dragonfly.notes)  # the node's loopback is not the pod's
    assert upstream.url_base == "https://ghcr.io/v2/acme/llama" and upstream.is_upstream and upstream.ns is None
    hub = plan(root, "ubuntu:24.04").endpoints[0]
    assert hub.headers == (("X-Dragonfly-Registry", "https://registry.example.com"),) and hub.insecure
    assert hub.ca_files == (root / "etc/containerd/certs.d/docker.io/ca.pem",)


def test_host_directory_with_a_port_is_found_as_host_port_(root):
    written = hosts(root, "registry.internal_5000_", '[host."https://mirror.internal"]\n')
    found = plan(root, "registry.internal:5000/acme/llama:v1")
    assert found.mirrors[0].source == written and found.mirrors[0].ns == "registry.internal:5000"
    assert found.upstream.url_base == "https://registry.internal:5000/v2/acme/llama"


def test_hosts_are_tried_in_file_order_and_capabilities_count(root):
    hosts(root, "ghcr.io", """server = "https://ghcr.io"
[host."https://zz-first.internal"]
capabilities = ["pull"]
[host."https://aa-second.internal"]
capabilities = ["pull", "resolve"]
""")
    found = plan(root, "ghcr.io/acme/llama:v1")
    assert [e.host for e in found.endpoints] == ["zz-first.internal", "aa-second.internal", "ghcr.io"]
    assert [e.host for e in found.resolvers()] == ["aa-second.internal", "ghcr.io"]
    assert [e.host for e in found.pullers()] == ["zz-first.internal", "aa-second.internal", "ghcr.io"]


def test_override_path_with_a_repository_prefix_is_harbors_proxy_project(root):
    hosts(root, "docker.io", """
[host."https://harbor.example.com/v2/dockerhub-proxy"]
capabilities = ["pull", "resolve"]
override_path = true
""")
    harbor = plan(root, "ubuntu:24.04").mirrors[0]
    assert (harbor.host, harbor.repository, harbor.api_path) == ("harbor.example.com", "dockerhub-proxy/library/ubuntu",
                                                                  "/v2")
    assert harbor.url_base == "https://harbor.example.com/v2/dockerhub-proxy/library/ubuntu"


def test_a_path_without_override_moves_the_api_root_and_crane_cannot_follow(root):
    hosts(root, "ghcr.io", '[host."https://proxy.internal/registry"]\n')
    moved = plan(root, "ghcr.io/acme/llama:v1").mirrors[0]
    assert moved.api_url == "https://proxy.internal/registry/v2" and not moved.crane_usable
    assert "HTTP client only" in moved.describe()


def test_oci_crane_hosts_dir_points_elsewhere_and_lists_roots(root, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write(second / "ghcr.io/hosts.toml", '[host."http://10.1.1.1:30020"]\ncapabilities = ["pull"]\n')
    hosts(root, "ghcr.io", '[host."http://ignored.internal"]\n')  # the default root is not read then
    found = plan(root, "ghcr.io/a/b:1", OCI_CRANE_HOSTS_DIR=f"{first}:{second}")
    assert found.mirrors[0].host == "10.1.1.1:30020"
    # the same roots as settings.py parses them, handed over as a fetch does (its RegistryAccess)
    parsed = Settings.from_environment({"OCI_CRANE_HOSTS_DIR": f"{first}:{second}:"}).hosts_dirs
    assert parsed == (first, second)
    given = plan_sources("ghcr.io/a/b:1", environ=env(root), root=root, hosts_dirs=parsed)
    assert given.mirrors[0].host == "10.1.1.1:30020"
    assert registry_access(environment=Settings(hosts_dirs=parsed)).hosts_dirs == parsed


def test_a_node_without_mirror_files_is_told_apart_without_parsing(root, tmp_path):
    """registry/mirror_files.py: what sources.py asks before loading the parser at all."""
    assert not locate(env(root), root).present()
    write(root / "etc/containers/registries.conf.d/README", "not a .conf")  # only *.conf drop-ins count
    (root / "etc/containerd/certs.d").mkdir(parents=True)  # an empty hosts root: nothing for any host
    assert not locate(env(root), root).present()
    drop_in(root, "10-mirror.conf", one_mirror("ghcr.io", "mirror.internal"))
    assert locate(env(root), root).present()
    elsewhere = tmp_path / "certs.d"
    write(elsewhere / "ghcr.io/hosts.toml", '[host."http://10.1.1.1:30020"]\n')
    assert locate(env(tmp_path / "empty"), tmp_path / "empty", [elsewhere]).present()
    # a registries.conf named by the variable must exist: its absence is mirrors.py's error to report
    assert locate({**env(tmp_path / "empty"), "CONTAINERS_REGISTRIES_CONF": str(tmp_path / "nope")},
                  tmp_path / "empty").present()


def test_docker_certs_d_layout_gives_the_upstream_its_ca(root):
    ca = write(root / "etc/containerd/certs.d/registry.internal/ca.crt", "PEM")
    upstream = plan(root, "registry.internal/a/b:1").upstream
    assert upstream.ca_files == (ca,) and upstream.url_base == "https://registry.internal/v2/a/b"


def test_both_formats_node_local_containerd_mirrors_come_first(root):
    system_conf(root, one_mirror("ghcr.io", "harbor.internal/gh"))
    hosts(root, "ghcr.io", '[host."http://10.0.0.7:30020"]\ncapabilities = ["pull", "resolve"]\n')
    assert urls(plan(root, "ghcr.io/acme/llama:v1")) == ["http://10.0.0.7:30020/v2/acme/llama",
                                                         "https://harbor.internal/v2/gh/acme/llama",
                                                         "https://ghcr.io/v2/acme/llama"]


def test_summary_for_doctor_names_the_files(root):
    conf = system_conf(root, one_mirror("ghcr.io", "m.internal"))
    hosts(root, "docker.io", SPEGEL)
    text = "\n".join(load_config(environ=env(root), root=root).summary())
    assert str(conf) in text and "ghcr.io: 1 mirror(s)" in text and "hosts.toml for docker.io" in text


# --- malformed files: one error naming the file --------------------------------------------------------------

@pytest.mark.parametrize(("text", "words"), [
    ("[[registry]\nlocation = 'x'", "not valid TOML"),
    ('[[registry]]\nlocation = "https://ghcr.io"\n', "URI schemes are not supported"),
    ('[[registry]]\nprefix = "ghcr.io"\n', "location is unset"),
    ('[[registry]]\ninsecure = true\n', "neither location nor prefix"),
    ('[[registry]]\nprefix = "*.example.com/foo"\n', "wildcard prefix"),
    ('[[registry]]\nlocation = "ghcr.io"\ninsecure = "yes"\n', "insecure must be a boolean"),
    ('[[registry]]\nlocation = "ghcr.io"\n[[registry.mirror]]\ninsecure = true\n', "has no location"),
    ('[[registry]]\nlocation = "ghcr.io"\n[[registry.mirror]]\nlocation = "m"\npull-from-mirror = "sometimes"\n',
     "unsupported pull-from-mirror"),
    ('[[registry]]\nlocation = "ghcr.io"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = "m"\n'
     'pull-from-mirror = "all"\n', "both set"),
    ('[[registry]]\nlocation = "ghcr.io"\npull-from-mirror = "all"\n', "belongs in a [[registry.mirror]]"),
    ('[[registry]]\nprefix = "a.io"\nlocation = "ghcr.io"\n[[registry]]\nprefix = "b.io"\nlocation = "ghcr.io"\n'
     'insecure = true\n', "conflicting 'insecure'"),
    ('[registries.block]\nregistries = ["x.io"]\n[[registry]]\nlocation = "y.io"\n', "mixes the v1 format"),
    (one_mirror("ghcr.io", "UPPER.internal/Bad"), "no valid name"),
])
def test_a_malformed_registries_conf_is_one_error_naming_the_file(root, text, words):
    conf = system_conf(root, text)
    with pytest.raises(MirrorConfigError) as caught:
        plan(root, "ghcr.io/acme/llama:v1")
    assert caught.value.cause.startswith(f"{conf}: ") and words in caught.value.cause, caught.value.cause
    assert str(conf) in caught.value.fix


def test_a_v1_drop_in_is_refused(root):
    conf = drop_in(root, "10-old.conf", '[registries.block]\nregistries = ["x.io"]\n')
    with pytest.raises(MirrorConfigError, match="must use the v2 format") as caught:
        plan(root, "ghcr.io/a/b:1")
    assert str(conf) in caught.value.cause


@pytest.mark.parametrize(("text", "words"), [
    ('[host."http://m"\n', "not valid TOML"),
    ('[host."http://m"]\ncapabilities = ["pull", "teleport"]\n', "unknown capability 'teleport'"),
    ('[host."http://m"]\ncapabilities = "pull"\n', "capabilities must be an array"),
    ('[host."http://m"]\nskip_verify = "yes"\n', "skip_verify and override_path must be true or false"),
    ('[host."http://m"]\ndial_timeout = "soon"\n', "not a Go duration"),
    ('[host."ftp://m"]\n', "not a registry URL"),
    ('server = 5\n', "server must be a string"),
    ('[host."http://m"]\nca = 5\n', "ca must be a path"),
    ('capabilities = ["push"]\n[host."http://m"]\ncapabilities = ["resolve"]\n', "none has the pull capability"),
])
def test_a_malformed_hosts_toml_is_one_error_naming_the_file(root, text, words):
    written = hosts(root, "ghcr.io", text)
    with pytest.raises(MirrorConfigError) as caught:
        plan(root, "ghcr.io/acme/llama:v1")
    assert str(written) in caught.value.cause and words in caught.value.cause, caught.value.cause


# --- oci-crane doctor --------------------------------------------------------------------------------------------

def test_doctor_check_lists_the_mirrors_for_a_reference_in_order(root):
    written = hosts(root, "docker.io", SPEGEL)
    check = check_mirrors("ubuntu:24.04", environ=env(root), root=root)
    assert check.ok and not check.required
    assert check.detail.index("http://10.0.0.7:30020/v2/library/ubuntu") < check.detail.index("registry-1.docker.io")
    assert str(written) in check.detail and "c2VjcmV0" not in check.detail + str(check.to_json())
    plan_json = check.to_json()["plan"]
    assert plan_json["endpoints"][0]["url"] == "http://10.0.0.7:30020/v2/library/ubuntu"


def test_doctor_check_names_the_bad_file_and_does_not_raise(root):
    conf = system_conf(root, '[[registry]]\nlocation = "https://ghcr.io"\n')
    check = check_mirrors(None, environ=env(root), root=root)
    assert not check.ok and str(conf) in check.detail and check.fix


def test_oci_crane_doctor_ref_and_json(tmp_path, cache_dir):
    conf = write(tmp_path / "registries.conf", """
[[registry]]
location = "models.mirrors-test.invalid"
[[registry.mirror]]
location = "harbor.mirrors-test.invalid/proxy"
""")
    hosts_dir = tmp_path / "certs.d"
    written = write(hosts_dir / "models.mirrors-test.invalid/hosts.toml", '[host."http://10.0.0.7:30020"]\n')
    environ = {"CONTAINERS_REGISTRIES_CONF": str(conf), "OCI_CRANE_HOSTS_DIR": str(hosts_dir),
               "HOME": str(tmp_path)}
    text = run_cli("doctor", "models.mirrors-test.invalid/acme/llama:v1", "--cache-dir", str(cache_dir), env=environ)
    assert text.returncode == 0, text.stderr
    block = text.stdout[text.stdout.index("mirrors: "):]
    assert block.index("http://10.0.0.7:30020/v2/acme/llama") < block.index("harbor.mirrors-test.invalid/v2/proxy") \
        < block.index("https://models.mirrors-test.invalid/v2/acme/llama")
    assert str(conf) in block and str(written) in block
    as_json = run_cli("doctor", "--ref", "models.mirrors-test.invalid/acme/llama:v1", "--json", "--cache-dir",
                      str(cache_dir), env=environ)
    mirrors = next(c for c in json.loads(as_json.stdout)["checks"] if c["name"] == "mirrors")
    assert [e["source"] for e in mirrors["plan"]["endpoints"]] == [str(written), str(conf), str(conf)]
    assert [e["upstream"] for e in mirrors["plan"]["endpoints"]] == [False, False, True]
    twice = run_cli("doctor", "a.io/b/c:1", "--ref", "d.io/e/f:1", "--cache-dir", str(cache_dir), env=environ)
    assert twice.returncode == 2 and "not allowed with argument" in twice.stderr
