"""What a person's terminal shows: a command run under a private tmux server, its screens captured."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path

from support.commands import REPO_ROOT


def screens_under_tmux(command: list[str], tmp_path: Path) -> list[str]:
    """What a 150x40 terminal (tmux, a private server) showed while ``command`` ran, every 0.3 s; the last screen
    ends with EXIT=<status>."""
    tmux = ["tmux", "-L", f"oci-crane-test-{uuid.uuid4().hex[:8]}"]  # a private tmux server: nothing else is touched
    script = tmp_path / "command.sh"
    script.write_text(f"cd {shlex.quote(str(REPO_ROOT))}\n{shlex.join(command)}\necho EXIT=$?\nsleep 600\n")
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    subprocess.run([*tmux, "new-session", "-d", "-x", "150", "-y", "40", "-s", "run", f"bash {script}"],
                   check=True, env=env)
    screens: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", "run"], capture_output=True, text=True,
                                    check=True).stdout
            screens.append(screen)
            if "EXIT=" in screen:
                break
            time.sleep(0.3)
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
    return screens


def bars_on(screens: list[str]) -> list[str]:
    """The screens, before the command ended, that show a bar's percent and rate."""
    return [screen for screen in screens if "EXIT=" not in screen and re.search(r"\d+%", screen)
            and re.search(r"[\d.]+ [kMG]?B/s", screen)]
