"""The unmodified e2b SDK measured from its own side: `Sandbox.create()` latency, and create →
first `commands.run("echo hi")` returned, with CONCURRENCY clients at once (one `Sandbox` each,
on threads), ROUNDS sandboxes per client. Each sandbox is killed after its command.

Run by `ember bench e2b` with E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY, E2B_TEMPLATE,
E2B_CONCURRENCY and E2B_ROUNDS set; prints one JSON object: the samples in milliseconds.
"""
import concurrent.futures
import json
import os
import time

from e2b import Sandbox

TEMPLATE = os.environ.get("E2B_TEMPLATE", "probe")
CONCURRENCY = int(os.environ.get("E2B_CONCURRENCY", "16"))
ROUNDS = int(os.environ.get("E2B_ROUNDS", "4"))


def client(i):
    samples = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        sbx = Sandbox.create(template=TEMPLATE, timeout=120)
        t1 = time.perf_counter()
        r = sbx.commands.run("echo hi")
        t2 = time.perf_counter()
        assert r.stdout == "hi\n", r
        sbx.kill()
        samples.append(((t1 - t0) * 1e3, (t2 - t0) * 1e3))
    return samples


def main():
    # One warm-up sandbox: the SDK's and the daemon's first connections are made here.
    client(-1)
    barrier_start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        results = list(pool.map(client, range(CONCURRENCY)))
    wall = time.perf_counter() - barrier_start
    creates = [c for r in results for c, _ in r]
    firsts = [f for r in results for _, f in r]
    print(json.dumps({"create_ms": creates, "create_to_first_command_ms": firsts,
                      "wall_s": wall, "clients": CONCURRENCY, "rounds": ROUNDS}))


if __name__ == "__main__":
    main()
