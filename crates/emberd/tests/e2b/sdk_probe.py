"""The unmodified e2b SDK (PyPI) against emberd's E2B listeners, on probe-guest sandboxes.

Run by crates/emberd/tests/e2b_sdk.rs with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set.
Every check is an assert; the script exits non-zero on the first failure.
"""
import concurrent.futures
import os
import sys
import time

from e2b import CommandExitException, Sandbox, SandboxQuery
from e2b.exceptions import (
    AuthenticationException,
    NotFoundException,
    SandboxException,
    TimeoutException,
)

TEMPLATE = os.environ.get("EMBER_TEMPLATE", "probe")


def check_lifecycle():
    sbx = Sandbox.create(template=TEMPLATE, metadata={"owner": "alice", "run": "lc"},
                         envs={"FOO": "bar"}, timeout=60)
    info = sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id, info
    assert info.template_id == TEMPLATE, info
    assert info.metadata == {"owner": "alice", "run": "lc"}, info.metadata
    assert info.state.value == "running", info.state
    assert info.cpu_count == 1 and info.memory_mb == 128, info

    # Files, byte for byte.
    sbx.files.write("/a.txt", "hello file")
    assert sbx.files.read("/a.txt") == "hello file"
    blob = bytes((i * 7) % 251 for i in range(40000))
    sbx.files.write("/blob.bin", blob)
    assert bytes(sbx.files.read("/blob.bin", format="bytes")) == blob
    written = sbx.files.write_files([
        {"path": "/w/one.txt", "data": "1"},
        {"path": "/w/two.txt", "data": "22"},
    ])
    assert sorted(w.path for w in written) == ["/w/one.txt", "/w/two.txt"], written
    assert sbx.files.read("/w/two.txt") == "22"
    try:
        sbx.files.read("/missing")
        raise AssertionError("reading a missing file succeeded")
    except NotFoundException:
        pass

    # The file tree: exists, make_dir, list, rename, remove.
    assert sbx.files.exists("/a.txt") is True
    assert sbx.files.exists("/nope") is False
    assert sbx.files.make_dir("/d/e") is True
    assert sbx.files.make_dir("/d/e") is False, "making an existing directory"
    sbx.files.write("/d/e/x.txt", "xx")
    names = sorted(e.name for e in sbx.files.list("/d/e"))
    assert names == ["x.txt"], names
    entry = sbx.files.get_info("/d/e/x.txt")
    assert entry.type.value == "file" and entry.size == 2, entry
    assert sbx.files.get_info("/d").type.value == "dir"
    deep = sorted(e.path for e in sbx.files.list("/d", depth=2))
    assert deep == ["/d/e", "/d/e/x.txt"], deep
    moved = sbx.files.rename("/d/e/x.txt", "/d/y.txt")
    assert moved.path == "/d/y.txt", moved
    assert sbx.files.read("/d/y.txt") == "xx"
    sbx.files.remove("/d")
    assert sbx.files.exists("/d") is False

    # Commands: the probe's built-ins, through the SDK's `bash -l -c`.
    r = sbx.commands.run("echo hi there")
    assert (r.stdout, r.stderr, r.exit_code) == ("hi there\n", "", 0), r
    r = sbx.commands.run("cat /a.txt")
    assert r.stdout == "hello file", r
    r = sbx.commands.run("pwd", cwd="/w")
    assert r.stdout == "/w\n", r
    try:
        sbx.commands.run("exit 3")
        raise AssertionError("a failing command did not raise")
    except CommandExitException as e:
        assert e.exit_code == 3, e
    try:
        sbx.commands.run("stderr oops")
    except CommandExitException:
        raise AssertionError("stderr output is not a failure")
    r = sbx.commands.run("stderr oops")
    assert r.stderr == "oops\n" and r.exit_code == 0, r
    try:
        sbx.commands.run("no-such-program")
        raise AssertionError("a missing program did not raise")
    except CommandExitException as e:
        assert e.exit_code == 127, e
    assert sbx.commands.list() == []
    assert sbx.commands.kill(12345) is False

    # Listing with a metadata filter, and paging.
    found = Sandbox.list(query=SandboxQuery(metadata={"run": "lc"})).next_items()
    assert [s.sandbox_id for s in found] == [sbx.sandbox_id], found

    # A new time limit, metrics.
    sbx.set_timeout(120)
    end = sbx.get_info().end_at.timestamp()
    assert 100 < end - time.time() <= 121, end - time.time()
    metrics = sbx.get_metrics()
    assert len(metrics) == 1 and metrics[0].mem_total == 128 << 20, metrics

    # Pause to disk and resume, three times: the files written before each pause stay.
    for i in range(3):
        sbx.files.write(f"/f{i}", f"data{i}")
        assert sbx.pause() is True
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "paused"
        assert sbx.pause() is False, "pausing a paused sandbox"
        try:
            sbx.files.read("/a.txt")
            raise AssertionError("a paused sandbox served a file")
        except TimeoutException:  # SandboxNotRunningException
            pass
        back = Sandbox.connect(sbx.sandbox_id)
        assert back.get_info().state.value == "running"
        for j in range(i + 1):
            assert back.files.read(f"/f{j}") == f"data{j}", (i, j)
        assert back.commands.run("cat /a.txt").stdout == "hello file"
        assert back.files.read("/blob.bin", format="bytes") == blob

    # Kill: gone for the API and for envd.
    assert sbx.kill() is True
    assert sbx.kill() is False
    try:
        sbx.files.read("/a.txt")
        raise AssertionError("a killed sandbox served a file")
    except TimeoutException as e:
        assert "was not found" in str(e) or "not running" in str(e).lower(), e
    try:
        Sandbox.get_info(sbx.sandbox_id)
        raise AssertionError("a killed sandbox has info")
    except SandboxException:
        pass
    print("lifecycle ok")


def check_auto_pause():
    sbx = Sandbox.create(template=TEMPLATE, timeout=1, lifecycle={"on_timeout": "pause"})
    deadline = time.time() + 20
    while time.time() < deadline:
        state = Sandbox.get_info(sbx.sandbox_id).state.value
        if state == "paused":
            break
        time.sleep(0.2)
    assert state == "paused", state
    Sandbox.connect(sbx.sandbox_id).kill()
    print("auto pause ok")


def check_bad_key():
    try:
        Sandbox.create(template=TEMPLATE, api_key="x" * 20)
        raise AssertionError("a wrong key was accepted")
    except AuthenticationException:
        pass
    print("bad key ok")


def one_client(i):
    sbx = Sandbox.create(template=TEMPLATE, metadata={"run": "many", "i": str(i)}, timeout=60)
    data = f"client {i}".encode() * 100
    sbx.files.write(f"/c{i}", data)
    assert bytes(sbx.files.read(f"/c{i}", format="bytes")) == data
    assert sbx.pause() is True
    back = Sandbox.connect(sbx.sandbox_id)
    assert bytes(back.files.read(f"/c{i}", format="bytes")) == data
    back.kill()
    return i


def check_concurrent(n=16):
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        done = sorted(pool.map(one_client, range(n)))
    assert done == list(range(n)), done
    left = Sandbox.list(query=SandboxQuery(metadata={"run": "many"})).next_items()
    assert left == [], left
    print(f"{n} concurrent clients ok")


if __name__ == "__main__":
    which = sys.argv[1:] or ["lifecycle", "auto_pause", "bad_key", "concurrent"]
    for name in which:
        globals()[f"check_{name}"]()
