"""The bench-zarr reads by zarr-python (with its obstore store) and by tensorstore.

Starts `getmany s3-serve --bench-arrays` (the same server, the same arrays as `getmany
bench-zarr`: 2048x2048 float32 in 64x64 chunks, `dense/`, and in 512x512 shards, `sharded/`),
optionally behind the TCP delay proxy (`--rtt-ms`), then times the full read and a 256-row
band with each client, checks every element, and counts the GETs at the server.

    python benches/python/bench_zarr_clients.py --getmany target/release/getmany --rtt-ms 10

Needs: pip install zarr obstore tensorstore numpy
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

SIDE = 2048
SELECTIONS = {
    "full": (slice(0, SIDE), slice(0, SIDE)),
    "256-row band": (slice(0, 256), slice(0, SIDE)),
}


def expected(sel):
    rows = np.arange(sel[0].start, sel[0].stop, dtype=np.float64)[:, None]
    cols = np.arange(sel[1].start, sel[1].stop, dtype=np.float64)[None, :]
    return (rows * SIDE + cols).astype(np.float32)


class Server:
    def __init__(self, binary, rtt_ms):
        self.proc = subprocess.Popen(
            [binary, "s3-serve", "--bench-arrays", "--rtt-ms", str(rtt_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.info = json.loads(self.proc.stdout.readline())

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def reset(self):
        self.command("reset")

    def gets(self):
        self.command("counts")
        return json.loads(self.proc.stdout.readline())["get"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def zarr_python_reader(info, concurrency):
    import zarr
    from obstore.store import S3Store
    from zarr.storage import ObjectStore

    zarr.config.set({"async.concurrency": concurrency})
    s3 = S3Store(info["bucket"], endpoint=info["endpoint"], region="us-east-1",
                 access_key_id=info["access_key"], secret_access_key=info["secret_key"],
                 virtual_hosted_style_request=False, client_options={"allow_http": True})
    store = ObjectStore(s3, read_only=True)

    def open_array(path):
        a = zarr.open_array(store=store, path=path, mode="r")
        return lambda sel: a[sel]

    return open_array


def tensorstore_reader(info):
    import tensorstore as ts

    os.environ["AWS_ACCESS_KEY_ID"] = info["access_key"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = info["secret_key"]

    def open_array(path):
        spec = {
            "driver": "zarr3",
            "kvstore": {
                "driver": "s3",
                "bucket": info["bucket"],
                "path": path + "/",
                "endpoint": info["endpoint"],
                "aws_region": "us-east-1",
                "aws_credentials": {"type": "environment"},
            },
            # No cache: every repetition reads from the server.
            "context": {"cache_pool": {"total_bytes_limit": 0}},
            "recheck_cached_data": False,
        }
        a = ts.open(spec, read=True).result()
        return lambda sel: a[sel].read().result()

    return open_array


def measure(server, read, sel, repeat):
    got = np.asarray(read(sel))  # warm-up, checked
    if not np.array_equal(got, expected(sel)):
        raise SystemExit("a client read wrong values")
    walls, gets = [], []
    for _ in range(repeat):
        server.reset()
        t = time.perf_counter()
        read(sel)
        walls.append(time.perf_counter() - t)
        gets.append(server.gets())
    return statistics.median(walls), statistics.median(gets)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--getmany", default="target/release/getmany")
    p.add_argument("--rtt-ms", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()

    server = Server(args.getmany, args.rtt_ms)
    info = server.info
    import importlib.metadata as md
    versions = {n: md.version(n) for n in ["zarr", "obstore", "tensorstore"]}
    print(f"# zarr-python {versions['zarr']} (obstore {versions['obstore']}) and tensorstore"
          f" {versions['tensorstore']}"
          f" against getmany s3-serve at {info['endpoint']}"
          + (f" (TCP delay proxy, {args.rtt_ms} ms round trip)" if args.rtt_ms > 0 else " (no delay)"))
    print()
    print("| array | selection | reader | GETs | wall (median) |")
    print("|---|---|---|---|---|")
    readers = [
        ("zarr-python + obstore (async.concurrency 10, default)", zarr_python_reader(info, 10)),
        ("zarr-python + obstore (async.concurrency 64)", zarr_python_reader(info, 64)),
        ("tensorstore", tensorstore_reader(info)),
    ]
    try:
        for path in ["dense", "sharded"]:
            for name, sel in SELECTIONS.items():
                for label, make in readers:
                    read = make(path)
                    wall, gets = measure(server, read, sel, args.repeat)
                    print(f"| {path} | {name} | {label} | {gets:.0f} | {wall * 1e3:.1f} ms |",
                          flush=True)
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
