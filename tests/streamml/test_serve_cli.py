"""`streamml serve` and `streamml serve tokens add` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
from streamml.onnx_models import ensure_demo_registry
from streamml.state.layout import StateLayout

from streamml.server.runner import free_port

CLI = [sys.executable, "-m", "streamml.cli"]


def test_tokens_add_then_serve_with_it(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    out = subprocess.run(
        [
            *CLI,
            "serve",
            "tokens",
            "add",
            "app",
            "--scopes",
            "features:read",
            "--tokens",
            str(tokens),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    token = out.stdout.strip()
    assert token.startswith("sml_") and token not in tokens.read_text()
    assert json.loads(tokens.read_text())["tokens"][0]["scopes"] == ["features:read"]
    bad = subprocess.run(
        [*CLI, "serve", "--state-dir", str(tmp_path / "none"), "--registry", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "holds no feature state" in bad.stderr
    StateLayout(shards=1).ensure(tmp_path / "state")
    ensure_demo_registry(tmp_path / "models")
    port = free_port()
    cmd = [*CLI, "serve", "--state-dir", str(tmp_path / "state"), "--registry"]
    cmd += [str(tmp_path / "models"), "--tokens", str(tokens), "--port", str(port)]
    proc = subprocess.Popen(cmd)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        headers = {"authorization": f"Bearer {token}"}
        r = httpx.get(url + "/v1/features/acct-1", headers=headers)
        assert r.status_code == 200 and r.json()["entity_key"] == "acct-1"
        assert httpx.get(url + "/v1/features/acct-1").status_code == 401
    finally:
        proc.terminate()
        proc.wait(30)
