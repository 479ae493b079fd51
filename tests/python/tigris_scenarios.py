"""The Tigris bundle scenarios, driven by the real PyPI client `tigris-boto3-ext`
(`bundle_objects` over a boto3 S3 client) against `getmany serve`.

Usage: tigris_scenarios.py ENDPOINT ROOT ACCESS_KEY SECRET_KEY
ROOT is the server's --root; the scripts write their objects under ROOT/data.
Exits non-zero on the first failed check.
"""

import gzip
import io
import json
import os
import sys
import tarfile

import boto3
from botocore.config import Config
from tigris_boto3_ext import bundle_objects
from tigris_boto3_ext.objects.bundle import BundleError

ENDPOINT, ROOT, ACCESS, SECRET = sys.argv[1:5]
BUCKET = "data"


def put(key: str, data: bytes) -> None:
    path = os.path.join(ROOT, BUCKET, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def s3(secret: str = SECRET):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def members(fileobj, mode="r|"):
    """(name, bytes) of every member of a tar stream."""
    out = []
    with tarfile.open(fileobj=fileobj, mode=mode) as tar:
        for member in tar:
            f = tar.extractfile(member)
            out.append((member.name, f.read() if f is not None else b""))
    return out


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"FAIL tigris: {what}")


def value(i: int) -> bytes:
    return f"tigris object {i} ".encode() * (1 + i % 7)


for i in range(20):
    put(f"t/{i}", value(i))

client = s3()

# Skip mode (default): members in request order, missing keys in __bundle_errors.json.
keys = [f"t/{i}" for i in range(10)] + ["t/missing"]
with bundle_objects(client, BUCKET, keys) as response:
    got = members(response)
check([n for n, _ in got] == keys[:10] + ["__bundle_errors.json"], f"skip order: {got}")
check(all(d == value(i) for i, (_, d) in enumerate(got[:10])), "skip contents")
errors = json.loads(got[-1][1])
check(errors["skipped"] == [{"key": "t/missing", "reason": "NoSuchKey"}], f"errors member {errors}")
print("ok tigris skip mode and missing keys")

# Fail mode: a missing key fails the whole bundle with 404 BundleKeyNotFound.
try:
    bundle_objects(client, BUCKET, ["t/1", "t/nope"], on_error="fail")
    check(False, "fail mode with a missing key did not raise")
except BundleError as e:
    check(e.status_code == 404, f"fail mode status {e.status_code}")
    check(e.code == "BundleKeyNotFound", f"fail mode code {e.code}")
    check("<Key>t/nope</Key>" in e.body, f"fail mode body {e.body}")
with bundle_objects(client, BUCKET, ["t/1", "t/2"], on_error="fail") as response:
    check([n for n, _ in members(response)] == ["t/1", "t/2"], "fail mode, all present")
print("ok tigris fail mode")

# Duplicates: one member per key asked for.
with bundle_objects(client, BUCKET, ["t/3", "t/3", "t/4", "t/3"]) as response:
    got = members(response)
check([n for n, _ in got] == ["t/3", "t/3", "t/4", "t/3"], f"duplicates {got}")
check(got[3][1] == value(3), "duplicate contents")
print("ok tigris duplicates")

# More than 5,000 keys: the client refuses, the caller splits, every object arrives.
many = [f"m/{i}" for i in range(6000)]
for i, key in enumerate(many):
    put(key, str(i).encode())
try:
    bundle_objects(client, BUCKET, many)
    check(False, "6,000 keys were accepted by the client")
except ValueError:
    pass
seen = []
for start in range(0, len(many), 5000):
    with bundle_objects(client, BUCKET, many[start:start + 5000]) as response:
        seen.extend(members(response))
check(len(seen) == 6000, f"{len(seen)} of 6000 members")
check(all(name == f"m/{i}" and data == str(i).encode() for i, (name, data) in enumerate(seen)),
      "6,000 keys in order")
print("ok tigris 6,000 keys in two bundles")

# gzip: the body itself is compressed (no Content-Encoding).
with bundle_objects(client, BUCKET, keys[:5], compression="gzip") as response:
    check(response.content_type == "application/gzip", response.content_type)
    check("content-encoding" not in response.headers, "gzip sent as Content-Encoding")
    compressed = response.read()
with gzip.open(io.BytesIO(compressed), "rb") as gz:
    got = members(gz)
check([n for n, _ in got] == keys[:5], f"gzip members {got}")
check(got[4][1] == value(4), "gzip contents")
print("ok tigris gzip")

# A wrong secret key is refused (SigV4 is verified).
try:
    bundle_objects(s3("wrong-secret"), BUCKET, ["t/1"])
    check(False, "a wrong signature was accepted")
except BundleError as e:
    check(e.status_code == 403, f"bad signature status {e.status_code}")
print("ok tigris signature checked")

# The same endpoint serves plain and ranged S3 reads.
got = client.get_object(Bucket=BUCKET, Key="t/5", Range="bytes=0-5")["Body"].read()
check(got == value(5)[:6], f"ranged GET {got!r}")
check(client.head_object(Bucket=BUCKET, Key="t/5")["ContentLength"] == len(value(5)), "HEAD")
print("ok tigris plain and ranged GET")
