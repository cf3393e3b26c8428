"""The unmodified e2b SDK (PyPI) against emberd's E2B listeners, on Linux-guest sandboxes.

Run by scripts/rig-daemon.sh (emberd inside the nested rig, its ports forwarded to this host)
with E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY and E2B_TEMPLATE (an ember template booting an
image from `ember image build`) set. Checks: commands, files, pause/resume ("commands"); a
`python3 -m http.server` in the sandbox reached through envd's E2b-Sandbox-Port forwarding
("ports"); concurrent clients ("concurrent"). Every check is an assert; the script exits non-zero on
the first failure and prints one JSON line of figures last.
"""
import concurrent.futures
import json
import os
import statistics
import sys
import time

from e2b import CommandExitException, Sandbox, SandboxQuery
from e2b.exceptions import SandboxException, TimeoutException

import envd_port

TEMPLATE = os.environ.get("E2B_TEMPLATE", "linux")
CONCURRENCY = int(os.environ.get("E2B_CONCURRENCY", "16"))
FIGURES = {}


def check_commands():
    sbx = Sandbox.create(template=TEMPLATE, metadata={"owner": "alice", "run": "linux"},
                         envs={"GREETING": "hello from the env"}, timeout=300)
    info = sbx.get_info()
    assert info.template_id == TEMPLATE and info.metadata["owner"] == "alice", info
    assert info.state.value == "running", info.state

    # Real programs through the SDK's `bash -l -c`.
    r = sbx.commands.run("uname -s; python3 -c 'print(2+2)'")
    assert (r.stdout, r.exit_code) == ("Linux\n4\n", 0), r
    r = sbx.commands.run("echo $GREETING; echo to-stderr >&2")
    assert r.stdout == "hello from the env\n" and r.stderr == "to-stderr\n", r
    r = sbx.commands.run("echo $HOME; whoami; pwd")
    assert r.stdout.split() == ["/home/user", "user", "/home/user"], r
    r = sbx.commands.run("pwd", cwd="/tmp")
    assert r.stdout == "/tmp\n", r
    r = sbx.commands.run("echo $X", envs={"X": "per-command"})
    assert r.stdout == "per-command\n", r
    try:
        sbx.commands.run("echo failing; exit 3")
        raise AssertionError("a failing command did not raise")
    except CommandExitException as e:
        assert e.exit_code == 3 and e.stdout == "failing\n", e
    try:
        sbx.commands.run("no-such-program")
        raise AssertionError("a missing program did not raise")
    except CommandExitException as e:
        assert e.exit_code == 127, e

    # Output streamed as it comes, through callbacks.
    seen = []
    r = sbx.commands.run("for i in 1 2 3; do echo line$i; sleep 0.2; done",
                         on_stdout=lambda line: seen.append(line))
    assert "".join(seen) == "line1\nline2\nline3\n", seen

    # A background command: started, listed, fed stdin, killed.
    h = sbx.commands.run("sleep 600", background=True)
    pids = [p.pid for p in sbx.commands.list()]
    assert h.pid in pids, (h.pid, pids)
    assert sbx.commands.kill(h.pid) is True
    try:
        h.wait()
        raise AssertionError("a killed command ended well")
    except CommandExitException as e:
        assert e.exit_code != 0, e
    assert h.pid not in [p.pid for p in sbx.commands.list()]
    cat = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(cat.pid, "through stdin\n")
    sbx.commands.close_stdin(cat.pid)
    done = cat.wait()
    assert done.stdout == "through stdin\n", done

    # Files, byte for byte, next to real programs.
    sbx.files.write("/home/user/a.txt", "hello file")
    assert sbx.commands.run("cat a.txt").stdout == "hello file"
    blob = os.urandom(3 << 20)
    sbx.files.write("/tmp/blob.bin", blob)
    assert bytes(sbx.files.read("/tmp/blob.bin", format="bytes")) == blob
    assert sbx.commands.run("wc -c < /tmp/blob.bin").stdout.strip() == str(len(blob))
    written = sbx.files.write_files([{"path": "/w/one.txt", "data": "1"},
                                     {"path": "/w/two.txt", "data": "22"}])
    assert sorted(w.path for w in written) == ["/w/one.txt", "/w/two.txt"], written
    assert sbx.files.exists("/w/two.txt") and not sbx.files.exists("/w/three.txt")
    assert sbx.files.make_dir("/w/d") is True
    assert sorted(e.name for e in sbx.files.list("/w")) == ["d", "one.txt", "two.txt"]
    sbx.files.remove("/w")
    assert sbx.commands.run("test -e /w || echo gone").stdout == "gone\n"

    # Listing, time limit, metrics.
    found = Sandbox.list(query=SandboxQuery(metadata={"run": "linux"})).next_items()
    assert [s.sandbox_id for s in found] == [sbx.sandbox_id], found
    sbx.set_timeout(240)
    end = sbx.get_info().end_at.timestamp()
    assert 200 < end - time.time() <= 241, end - time.time()
    assert len(sbx.get_metrics()) >= 1

    # Pause to disk and resume, three times: files and a background process survive.
    keeper = sbx.commands.run("sleep 3600", background=True)
    for i in range(3):
        sbx.files.write(f"/home/user/f{i}", f"data{i}")
        assert sbx.pause() is True
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "paused"
        back = Sandbox.connect(sbx.sandbox_id)
        assert back.get_info().state.value == "running"
        for j in range(i + 1):
            assert back.files.read(f"/home/user/f{j}") == f"data{j}", (i, j)
        assert back.commands.run(f"cat f{i}").stdout == f"data{i}"
        assert keeper.pid in [p.pid for p in back.commands.list()], i
    assert bytes(back.files.read("/tmp/blob.bin", format="bytes")) == blob

    # Kill: gone for the API and for envd.
    assert sbx.kill() is True
    try:
        sbx.commands.run("echo hi")
        raise AssertionError("a killed sandbox ran a command")
    except TimeoutException as e:  # the SDK's SandboxNotRunningException
        assert "was not found" in str(e) or "not running" in str(e).lower(), e
    try:
        Sandbox.get_info(sbx.sandbox_id)
        raise AssertionError("a killed sandbox has info")
    except SandboxException:
        pass
    print("commands ok", flush=True)


def fetch_port(sbx, port, path="/"):
    """GET `path` from `port` in `sbx` through envd's port forwarding; (status, body)."""
    return envd_port.fetch_port(sbx.sandbox_id, sbx.get_host(port), port, path)


def check_ports():
    """A server listening on TCP inside the sandbox, reached through emberd's envd endpoint
    (E2b-Sandbox-Port: the agent's TcpConnect to 127.0.0.1:PORT in the guest)."""
    sbx = Sandbox.create(template=TEMPLATE, metadata={"run": "ports"}, timeout=300)
    assert sbx.get_host(8000).startswith("8000-") or sbx.get_host(8000).endswith(":8000"), \
        sbx.get_host(8000)
    sbx.files.write("/home/user/site/served.txt", "served from the sandbox\n")
    server = sbx.commands.run("python3 -m http.server 8000", cwd="/home/user/site",
                              background=True)
    t0 = time.monotonic()
    deadline = t0 + 60
    while True:
        status, body = fetch_port(sbx, 8000)
        if status == 200:
            break
        # Until python has bound the port, the proxy says it is not open.
        assert status == 502 and "port is not open" in body, (status, body)
        assert time.monotonic() < deadline, "http.server never answered"
        time.sleep(0.5)
    FIGURES["port_first_answer_s"] = round(time.monotonic() - t0, 2)
    assert "Directory listing" in body and "served.txt" in body, body
    status, body = fetch_port(sbx, 8000, "/served.txt")
    assert (status, body) == (200, "served from the sandbox\n"), (status, body)
    # Nothing listens on 8001: E2B's answer for a closed port.
    status, body = fetch_port(sbx, 8001)
    assert status == 502, (status, body)
    closed = json.loads(body)
    assert closed["message"] == "The sandbox is running but port is not open", closed
    assert closed["sandboxId"] == sbx.sandbox_id, closed
    assert sbx.commands.kill(server.pid) is True
    sbx.kill()
    print("ports ok", flush=True)


def one_client(i):
    t0 = time.monotonic()
    sbx = Sandbox.create(template=TEMPLATE, metadata={"run": "many", "i": str(i)}, timeout=300)
    t1 = time.monotonic()
    r = sbx.commands.run("echo hi")
    t2 = time.monotonic()
    assert r.stdout == "hi\n", r
    data = f"client {i}\n".encode() * 1000
    sbx.files.write(f"/home/user/c{i}", data)
    assert sbx.commands.run(f"sha256sum c{i} | cut -c1-8").exit_code == 0
    assert sbx.pause() is True
    back = Sandbox.connect(sbx.sandbox_id)
    assert bytes(back.files.read(f"/home/user/c{i}", format="bytes")) == data
    back.kill()
    return (t1 - t0, t2 - t0)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def check_concurrent():
    n = CONCURRENCY
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        times = list(pool.map(one_client, range(n)))
    left = Sandbox.list(query=SandboxQuery(metadata={"run": "many"})).next_items()
    assert left == [], left
    creates = [c for c, _ in times]
    firsts = [f for _, f in times]
    FIGURES["concurrent_clients"] = n
    FIGURES["create_ms"] = {"p50": round(statistics.median(creates) * 1000, 1),
                            "p99": round(pct(creates, 99) * 1000, 1)}
    FIGURES["create_to_first_command_ms"] = {"p50": round(statistics.median(firsts) * 1000, 1),
                                             "p99": round(pct(firsts, 99) * 1000, 1)}
    print(f"{n} concurrent clients ok", flush=True)


if __name__ == "__main__":
    which = sys.argv[1:] or ["commands", "ports", "concurrent"]
    for name in which:
        globals()[f"check_{name}"]()
    print(json.dumps(FIGURES))
