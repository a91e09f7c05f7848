"""`tunix-tui serve [--host 127.0.0.1] [--port 8000]`: the console in a web browser, through `textual-serve`.

Each browser tab that opens the page gets its own console process (the same `tunix-tui` console, with the same
profile and run folders), drawn in the page by xterm.js over a WebSocket. Engines keep running when a tab closes,
as with a terminal. The server listens on 127.0.0.1 by default: from another machine, reach it through an SSH
tunnel (`ssh -L 8000:127.0.0.1:8000 HOST`, then open http://127.0.0.1:8000) rather than listening on a public
address, since whoever reaches the page can start and stop runs as you.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def console_command(profiles_dir: str | Path, output_dir: str | Path | None) -> str:
    """The shell command textual-serve runs for each browser session."""
    cmd = [sys.executable, "-m", "tunix_tui.cli", "--profiles-dir", str(Path(profiles_dir).resolve())]
    if output_dir:
        cmd += ["--output-dir", str(Path(output_dir).resolve())]
    return shlex.join(cmd)


def serve(*, host: str = "127.0.0.1", port: int = 8000, profiles_dir: str | Path = "profiles",
          output_dir: str | Path | None = None, public_url: str | None = None) -> int:
    """Run the web server until Ctrl-C."""
    from textual_serve.server import Server

    url = public_url or f"http://{host}:{port}"
    print(f"tunix-tui console at {url} (Ctrl-C stops the server; running engines go on)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: whoever reaches this address can control your runs; prefer "
              "127.0.0.1 and an SSH tunnel", file=sys.stderr, flush=True)
    server = Server(console_command(profiles_dir, output_dir), host=host, port=port, title="tunix-tui",
                    public_url=public_url)
    try:
        server.serve()
    except OSError as exc:   # the port is taken, or the address is not this machine's
        print(f"tunix-tui serve: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
