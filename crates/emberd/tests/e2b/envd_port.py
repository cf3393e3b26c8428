"""What the SDK scripts share: a request to a port in a sandbox through emberd's envd endpoint."""
import os
import urllib.error
import urllib.request


def fetch_port(sandbox_id, host, port, path="/", timeout=30):
    """GET `path` from `port` in sandbox `sandbox_id` the way the SDK reaches envd with
    E2B_SANDBOX_URL set: that URL, with E2b-Sandbox-Id and E2b-Sandbox-Port naming the sandbox
    and port (the SDK's own envd calls carry the same two headers). `host` is what
    `sandbox.get_host(port)` gives, as a client going through E2B's proxy would send it.
    Returns (status, body)."""
    base = os.environ["E2B_SANDBOX_URL"].rstrip("/")
    req = urllib.request.Request(base + path, headers={
        "E2b-Sandbox-Id": sandbox_id,
        "E2b-Sandbox-Port": str(port),
        "Host": host,
    })
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
