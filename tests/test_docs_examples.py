"""The shell examples of the documentation site run as written, against a registry on loopback.

Every shell block in docs/*.md (```console, ```bash, ```sh, ```shell) either runs here or is marked, on the line
just above it, `<!-- not-run: REASON -->` (it needs the internet, vLLM, Docker, or is a synopsis). A block that runs
is a ```console block of `$ COMMAND` lines, each followed by the output it shows.

What a page's examples find, as a reader on a fresh machine would after docs/index.md's steps:
- a registry at `127.0.0.1:5000` (also `localhost:5000`): a fresh `crane registry serve` per page, whose port
  replaces 5000 in commands and shown output;
- `./tiny-model`, the demo's two-shard safetensors model, already pushed as `127.0.0.1:5000/demo/tiny:v1`;
- an empty HOME, so the cache is `~/.cache/oci-crane-loader` and the docker config `~/.docker/config.json`;
- `REGISTRY_PASSWORD` set, and `oci-crane` and `python` from the environment under test first on PATH.

Each `$ ` line (a trailing backslash continues it) runs in bash, in the page's working directory, in order. It must
exit 0, or 1 where the shown output has an `error: ` line. The shown lines must appear, in that order, among the
lines it printed (stdout and stderr): `...` matches any text (a line of only `...`: any lines), `~` is HOME, and
any run of spaces matches any run of spaces.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.commands import REPO_ROOT

from oci_crane_loader.demo import write_tiny_model
from oci_crane_loader.registry.local_registry import LocalRegistry

DOCS = REPO_ROOT / "docs"
SHELL_LANGUAGES = {"console", "bash", "sh", "shell", "zsh"}
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(\S.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```(\w*)")
PLACEHOLDER_HOSTS = ("127.0.0.1:5000", "localhost:5000")


@dataclass
class Block:
    page: str
    line: int  # 1-based, of the opening fence
    language: str
    text: str
    not_run: str | None  # the reason, when marked

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


@dataclass
class Step:
    command: str
    shown: list[str]


def shell_blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, language = opening.groups()
        end = next((j for j in range(index + 1, len(lines)) if lines[j].strip().startswith("```")), len(lines))
        if language in SHELL_LANGUAGES:
            before = next((lines[j] for j in range(index - 1, -1, -1) if lines[j].strip()), "")
            marked = NOT_RUN.fullmatch(before.strip())
            body = "\n".join(line[len(indent):] for line in lines[index + 1:end])
            blocks.append(Block(page.name, index + 1, language, body, marked[1] if marked else None))
        index = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for page in sorted(DOCS.glob("*.md")) for block in shell_blocks(page)]


def steps(block: Block) -> list[Step]:
    found: list[Step] = []
    pending = ""
    for line in block.text.splitlines():
        if pending:
            pending += "\n" + line
        elif line.startswith("$ "):
            pending = line[2:]
        elif found:
            found[-1].shown.append(line)
            continue
        else:
            raise AssertionError(f"{block.where}: output before the first `$ ` command: {line!r}")
        if pending.endswith("\\"):
            continue
        found.append(Step(pending, []))
        pending = ""
    return found


def runnable(page: str) -> list[Block]:
    return [block for block in shell_blocks(DOCS / page) if block.not_run is None]


PAGES = sorted(page.name for page in DOCS.glob("*.md") if runnable(page.name))


def test_every_shell_block_is_run_or_marked():
    blocks = all_blocks()
    unmarked = [block.where for block in blocks if block.not_run is None and block.language != "console"]
    assert unmarked == [], "make these ```console blocks of `$ ` commands, or mark them <!-- not-run: REASON -->"
    empty = [block.where for block in blocks if block.not_run is None and not steps(block)]
    assert empty == [], "a block that runs needs `$ ` commands"
    executed = [block for block in blocks if block.not_run is None]
    marked = [block for block in blocks if block.not_run is not None]
    assert len(executed) + len(marked) == len(blocks)
    # The site's own pages show the loopback workflow, and what needs the internet is marked as such.
    assert {block.page for block in executed} >= {"index.md", "push.md", "registries.md", "from-hf.md"}
    assert len(executed) >= 10 and len(marked) >= 8


def _normalise(line: str) -> str:
    return " ".join(line.split())


def _pattern(shown: str, home: str, host: str) -> re.Pattern[str] | None:
    text = _normalise(shown)
    if text in ("", "..."):
        return None
    for placeholder in PLACEHOLDER_HOSTS:
        text = text.replace(placeholder, host)
    text = re.sub(r"(?<![\w/])~(?=/|$)", home, text)
    return re.compile(".*".join(re.escape(part) for part in text.split("...")))


def missing_lines(shown: list[str], printed: str, home: str, host: str) -> list[str]:
    """The shown lines not found, in order, among the printed ones (empty when all are there)."""
    lines = [_normalise(line) for line in printed.splitlines()]
    position = 0
    missing = []
    for line in shown:
        pattern = _pattern(line, home, host)
        if pattern is None:
            continue
        found = next((i for i in range(position, len(lines)) if pattern.fullmatch(lines[i])), None)
        if found is None:
            missing.append(line)
        else:
            position = found + 1
    return missing


def test_the_matcher_can_fail():
    printed = "127.0.0.1:41234/acme/tiny@sha256:abc\nv1\n"
    assert missing_lines(["127.0.0.1:5000/acme/tiny@sha256:...", "v1"], printed, "/h", "127.0.0.1:41234") == []
    assert missing_lines(["v1", "127.0.0.1:5000/acme/tiny@sha256:..."], printed, "/h", "127.0.0.1:41234") != []
    assert missing_lines(["v2"], printed, "/h", "127.0.0.1:41234") == ["v2"]
    assert missing_lines(["~/.cache/x"], "/h/.cache/x", "/h", "h:1") == []


def _environment(home: Path) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("OCI_CRANE_LOADER_CACHE", "XDG_CACHE_HOME", "DOCKER_CONFIG", "OCI_CRANE_OFFLINE",
                                  "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME")}
    tools = Path(sys.executable).parent
    assert (tools / "oci-crane").is_file(), f"no oci-crane beside {sys.executable}: install the package (-e .)"
    environment.update(HOME=str(home), PATH=f"{tools}{os.pathsep}{environment.get('PATH', '')}",
                       REGISTRY_PASSWORD="demo-password")
    return environment


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page: str, registry: LocalRegistry, tmp_path: Path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    environment = _environment(home)
    model = write_tiny_model(work / "tiny-model")
    for file in model.iterdir():
        file.chmod(0o644)  # the file mode is packed: same digests whatever the umask
    setup = subprocess.run(["oci-crane", "push", "./tiny-model", f"{registry.host}/demo/tiny:v1"], cwd=work,
                           env=environment, capture_output=True, text=True, timeout=120, check=False)
    assert setup.returncode == 0, setup.stderr
    ran = 0
    for block in runnable(page):
        for step in steps(block):
            command = step.command
            for placeholder in PLACEHOLDER_HOSTS:
                command = command.replace(placeholder, registry.host)
            done = subprocess.run(["bash", "-c", command], cwd=work, env=environment, capture_output=True,
                                  text=True, timeout=180, check=False)
            printed = done.stdout + done.stderr
            expected = 1 if any(_normalise(line).startswith("error: ") for line in step.shown) else 0
            assert done.returncode == expected, f"{block.where}: `{step.command}` exited {done.returncode}:\n{printed}"
            missing = missing_lines(step.shown, printed, str(home), registry.host)
            assert missing == [], f"{block.where}: `{step.command}` did not print {missing}; it printed:\n{printed}"
            ran += 1
    assert ran > 0
