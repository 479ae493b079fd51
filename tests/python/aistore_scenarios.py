"""The AIStore GetBatch scenarios, driven by the real PyPI client `aistore`
(`Client(endpoint).batch(...)`) against `getmany serve`.

Usage: aistore_scenarios.py ENDPOINT ROOT TOKEN
ROOT is the server's --root; the scripts write their objects under ROOT/data.
Exits non-zero on the first failed check.
"""

import io
import os
import sys
import tarfile
import zipfile

from aistore.sdk import Client

ENDPOINT, ROOT, TOKEN = sys.argv[1:4]
BUCKET = "data"


def put(key: str, data: bytes) -> None:
    path = os.path.join(ROOT, BUCKET, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"FAIL aistore: {what}")


def value(i: int) -> bytes:
    return f"aistore object {i} ".encode() * (1 + i % 5)


for i in range(20):
    put(f"a/{i}", value(i))

# A shard written by Python's tarfile and one by zipfile, for archpath.
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as tar:
    for name, data in [("s/1.txt", b"first"), ("s/2.json", b'{"two": 2}')]:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
put("shard.tar", buf.getvalue())
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
    z.writestr("img/cat.jpg", b"meow" * 100)
put("shard.zip", buf.getvalue())

client = Client(ENDPOINT, token=TOKEN)
bucket = client.bucket(BUCKET)

# Streaming tar: strict order, a missing object as a __404__ placeholder.
names = [f"a/{i}" for i in range(10)] + ["a/missing", "a/3"]
got = list(client.batch(names, bucket=bucket).get())
check(len(got) == len(names), f"{len(got)} results for {len(names)} entries")
for (info, data), name in zip(got, names):
    check(info.obj_name == name, f"order: {info.obj_name} for {name}")
    if name == "a/missing":
        check(data == b"" and info.err_msg, f"missing entry: {info}")
    else:
        check(data == value(int(name.split("/")[1])), f"contents of {name}")
        check(not info.err_msg, f"error on {name}: {info.err_msg}")
print("ok aistore streaming, order, missing keys, duplicates")

# More than 5,000 entries in one batch.
many = [f"m/{i}" for i in range(6000)]
for i, key in enumerate(many):
    put(key, str(i).encode())
got = list(client.batch(many, bucket=bucket).get())
check(len(got) == 6000, f"{len(got)} of 6000")
check(all(info.obj_name == f"m/{i}" and data == str(i).encode()
          for i, (info, data) in enumerate(got)), "6,000 entries in order")
print("ok aistore 6,000 entries")

# gzip output (.tar.gz and .tgz).
for fmt in (".tar.gz", ".tgz"):
    got = list(client.batch(names[:4], bucket=bucket, output_format=fmt).get())
    check([d for _, d in got] == [value(i) for i in range(4)], f"{fmt} contents")
print("ok aistore gzip")

# Multipart: metadata first (sizes, errors, opaque), then the archive.
batch = client.batch(bucket=bucket, streaming_get=False)
batch.add("a/1", opaque=b"user-id-123")
batch.add("a/missing", opaque=b"req-2")
batch.add("a/2", start=3, length=4)
batch.add("a/4", start=5, length=-1)
got = list(batch.get())
check(len(got) == 4, f"multipart results {got}")
(i1, d1), (i2, d2), (i3, d3), (i4, d4) = got
check(d1 == value(1) and i1.size == len(value(1)), f"multipart a/1 {i1}")
check(i1.opaque == b"user-id-123", f"opaque {i1.opaque!r}")
check(i2.err_msg and d2 == b"" and i2.opaque == b"req-2", f"multipart missing {i2}")
check(d3 == value(2)[3:7] and i3.size == 4, f"range {d3!r} {i3}")
check(d4 == value(4)[5:], f"open range {d4!r}")
print("ok aistore multipart, opaque, byte ranges")

# archpath: files out of tar and zip shards; a missing file is a placeholder.
for strm in (True, False):
    batch = client.batch(bucket=bucket, streaming_get=strm)
    batch.add("shard.tar", archpath="s/2.json")
    batch.add("shard.zip", archpath="img/cat.jpg")
    batch.add("shard.tar", archpath="s/1.txt", start=1, length=3)
    batch.add("shard.tar", archpath="s/none")
    got = list(batch.get())
    check([d for _, d in got[:3]] == [b'{"two": 2}', b"meow" * 100, b"irs"],
          f"archpath contents (strm={strm}): {[d[:20] for _, d in got]}")
    check(got[0][0].archpath == "s/2.json", f"archpath metadata {got[0][0]}")
    check(got[3][1] == b"" and got[3][0].err_msg, f"missing archived file {got[3][0]}")
print("ok aistore archpath")

# zip output.
got = list(client.batch(names[:3], bucket=bucket, output_format=".zip").get())
check([d for _, d in got] == [value(i) for i in range(3)], "zip contents")
print("ok aistore zip output")

# Only object names in the archive (onob).
got = list(client.batch(["a/5", "a/gone"], bucket=bucket, only_obj_name=True).get())
check(got[0][1] == value(5) and got[1][0].err_msg, f"onob {got}")
print("ok aistore onob")

# cont_on_err=False: a missing object fails the request.
try:
    list(client.batch(["a/1", "a/gone"], bucket=bucket, cont_on_err=False).get())
    check(False, "a missing object with cont_on_err=False did not raise")
except Exception as e:  # the SDK raises its own error type for a 404
    check("404" in str(e) or "does not exist" in str(e), f"coer=false error: {e!r}")
print("ok aistore cont_on_err=False")

# A wrong token is refused.
try:
    list(Client(ENDPOINT, token="wrong").batch(["a/1"], bucket=bucket).get())
    check(False, "a wrong token was accepted")
except Exception as e:
    check("401" in str(e) or "bearer" in str(e).lower(), f"bad token error: {e!r}")
print("ok aistore token checked")
