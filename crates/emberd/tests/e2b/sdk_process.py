"""The unmodified e2b SDK's commands and PTY calls against emberd's envd process service in
front of a real ember-agent (crates/emberd/tests/envd_process.rs starts both and sets
E2B_SANDBOX_URL and EMBER_ENVD_VERSION). The Sandbox object is built without the REST API
(its plain constructor), so only envd is reached. Prints one "... ok" line a check."""

import os
import socket
import tempfile
import threading
import time
import warnings

from packaging.version import Version

from e2b import CommandExitException, ConnectionConfig, Sandbox
from e2b.sandbox.commands.command_handle import PtySize

import envd_port

warnings.simplefilter("ignore", DeprecationWarning)

config = ConnectionConfig(
    sandbox_url=os.environ["E2B_SANDBOX_URL"],
    api_key="e2b_" + "0" * 40,
    extra_sandbox_headers={"E2b-Sandbox-Id": "sb", "E2b-Sandbox-Port": "49983"},
)
sbx = Sandbox(
    sandbox_id="sb",
    sandbox_domain=None,
    envd_version=Version(os.environ["EMBER_ENVD_VERSION"]),
    envd_access_token=None,
    traffic_access_token=None,
    connection_config=config,
)


def wait_until(what, cond, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# Foreground, with output as it comes.
seen = []
t0 = time.monotonic()
r = sbx.commands.run(
    "echo a; sleep 1.5; echo b", on_stdout=lambda s: seen.append((s, time.monotonic() - t0))
)
assert r.exit_code == 0 and r.stdout == "a\nb\n", r
assert [s for s, _ in seen] == ["a\n", "b\n"], seen
assert seen[1][1] - seen[0][1] >= 1.0, f"not streamed: {seen}"
try:
    sbx.commands.run("echo out; echo err >&2; exit 3")
    raise AssertionError("exit 3 did not raise")
except CommandExitException as e:
    assert (e.exit_code, e.stdout, e.stderr, e.error) == (3, "out\n", "err\n", "exit status 3"), e
print("run ok")

# Background: listed, killed, gone.
h = sbx.commands.run("sleep 30", background=True, envs={"K": "v"}, cwd="/tmp")
procs = sbx.commands.list()
mine = [p for p in procs if p.pid == h.pid]
assert len(mine) == 1, procs
p = mine[0]
assert (p.cmd, p.args, p.envs, p.cwd) == ("/bin/bash", ["-l", "-c", "sleep 30"], {"K": "v"}, "/tmp"), p
assert sbx.commands.kill(h.pid) is True
try:
    h.wait()
    raise AssertionError("a killed command did not raise")
except CommandExitException as e:
    assert e.error == "signal: killed", e
assert all(q.pid != h.pid for q in sbx.commands.list())
assert sbx.commands.kill(h.pid) is False
print("background ok")

# stdin: send, stream, close.
h = sbx.commands.run("cat", background=True, stdin=True)
sbx.commands.send_stdin(h.pid, "hello\n")
sbx.commands.stream_input(h.pid, ["one ", b"two\n"])
sbx.commands.close_stdin(h.pid)
r = h.wait()
assert r.stdout == "hello\none two\n", r
print("stdin ok")

# Disconnect and connect again.
h = sbx.commands.run("read x; echo got $x", background=True, stdin=True)
h.disconnect()
h2 = sbx.commands.connect(h.pid)
sbx.commands.send_stdin(h.pid, "it\n")
r = h2.wait()
assert r.stdout == "got it\n", r
print("connect ok")

# A PTY: typed into, resized, exited.
out = []
term = sbx.pty.create(PtySize(rows=24, cols=80), envs={"PS1": "$ "})
done = threading.Thread(target=lambda: term.wait(on_pty=out.append), daemon=True)
done.start()
sbx.pty.send_stdin(term.pid, b"stty size\n")
wait_until("24 80", lambda: b"24 80" in b"".join(out))
sbx.pty.resize(term.pid, PtySize(rows=30, cols=100))
sbx.pty.send_stdin(term.pid, b"stty size\n")
wait_until("30 100", lambda: b"30 100" in b"".join(out))
sbx.pty.send_stdin(term.pid, b"exit\n")
done.join(15)
assert not done.is_alive(), "the PTY did not end"
assert sbx.pty.kill(term.pid) is False
print("pty ok")

# A server listening on TCP "in the sandbox" (the agent runs on this host, so on its loopback),
# started as a background command and reached as sdk_linux.py reaches one in a real sandbox:
# E2B_SANDBOX_URL with E2b-Sandbox-Id and E2b-Sandbox-Port naming the sandbox and port.
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
site = tempfile.mkdtemp(prefix="envd-port-")
os.chmod(site, 0o755)
with open(os.path.join(site, "served.txt"), "w") as f:
    f.write("served through the agent\n")


def fetch_port(port, path="/"):
    return envd_port.fetch_port("sb", sbx.get_host(port), port, path, timeout=15)


# Commands run as E2B's default user here, which may not reach this venv's python: the system's.
python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)),
              "python3")
server = sbx.commands.run(f"{python} -m http.server {port} --bind 127.0.0.1", cwd=site,
                          background=True)
deadline = time.monotonic() + 15
while True:
    status, body = fetch_port(port)
    if status == 200:
        break
    assert status == 502 and "port is not open" in body, (status, body)
    if time.monotonic() > deadline:
        listed = sbx.commands.list()
        try:
            server.kill()
            ended = server.wait()
        except CommandExitException as e:
            ended = e
        raise AssertionError(f"http.server never answered: {listed} {ended}")
    time.sleep(0.1)
assert "Directory listing" in body and "served.txt" in body, body
assert fetch_port(port, "/served.txt") == (200, "served through the agent\n")
assert sbx.commands.kill(server.pid) is True
wait_until("the port closed", lambda: fetch_port(port)[0] == 502)
status, body = fetch_port(port)
assert status == 502 and "port is not open" in body, (status, body)
print("port ok")
