"""Writes the seed inputs of the request-parser fuzz targets (`bundle_request`,
`getbatch_request`) into fuzz/corpus/<target>/seed-*.

Each input is a small HTTP request (see fuzz/fuzz_targets/common/mod.rs):
`METHOD TARGET\\n`, header lines, an empty line, the body. The realistic ones copy what the
real clients send: tigris-boto3-ext (`bundle_objects`: `json.dumps({"keys": keys})`,
X-Tigris-Bundle-* headers, SigV4), the crate's BundleStore (serde_json, no spaces), the
aistore SDK (`GET /v1/ml/moss/{bucket}?provider=ais`, `json=MossReq.dict()` with defaults
left out), plus edge cases.

Usage: python3 make_seeds.py   (from anywhere; the corpus directories are made if needed)
"""

import base64
import hashlib
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "corpus")

SIGV4 = (
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/us-east-1/s3/aws4_request, "
    "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;"
    "x-tigris-bundle-compression;x-tigris-bundle-format;x-tigris-bundle-on-error, "
    "Signature=" + "ab" * 32
)


def request(method, target, headers, body):
    if isinstance(body, str):
        body = body.encode()
    head = f"{method} {target}\n" + "".join(f"{k}: {v}\n" for k, v in headers) + "\n"
    return head.encode() + body


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"seed-{name}"), "wb") as f:
        f.write(data)


# --- Tigris -------------------------------------------------------------------------------

def boto3_ext(keys, compression="none", on_error="skip", bucket="data", query="bundle"):
    body = json.dumps({"keys": keys})
    headers = [
        ("Host", "127.0.0.1:9000"),
        ("Content-Type", "application/json"),
        ("X-Tigris-Bundle-Format", "tar"),
        ("X-Tigris-Bundle-Compression", compression),
        ("X-Tigris-Bundle-On-Error", on_error),
        ("X-Amz-Content-Sha256", hashlib.sha256(body.encode()).hexdigest()),
        ("X-Amz-Date", "20250101T000000Z"),
        ("Authorization", SIGV4),
        ("Content-Length", str(len(body))),
    ]
    return request("POST", f"/{bucket}?{query}", headers, body)


def bundle_store(keys, compression="none", completion=False):
    body = json.dumps({"keys": keys}, separators=(",", ":"))
    headers = [
        ("content-type", "application/json"),
        ("accept-encoding", "identity"),
        ("x-tigris-bundle-format", "tar"),
        ("x-tigris-bundle-compression", compression),
        ("x-tigris-bundle-on-error", "skip"),
    ]
    if completion:
        headers.append(("x-getmany-order", "completion"))
    return request("POST", "/data?bundle", headers, body)


def tigris():
    t = "bundle_request"
    keys10 = [f"t/{i}" for i in range(10)]
    write(t, "boto3-skip", boto3_ext(keys10 + ["t/missing"]))
    write(t, "boto3-fail", boto3_ext(["t/1", "t/nope"], on_error="fail"))
    write(t, "boto3-dups", boto3_ext(["t/3", "t/3", "t/4", "t/3"]))
    write(t, "boto3-gzip", boto3_ext(keys10[:5], compression="gzip"))
    write(t, "boto3-zstd", boto3_ext(keys10[:2], compression="zstd", bucket="b2"))
    write(t, "boto3-query-eq", boto3_ext(["a"], query="bundle="))
    write(t, "store-plain", bundle_store(["array/c/0/0", "array/c/0/1", "zarr.json"]))
    write(t, "store-completion", bundle_store(["shard/000.tar"], "zstd", completion=True))
    write(t, "store-unicode", bundle_store(["é/ü", "a b/c+d", "x%2Fy", "...", ".hidden/x"]))
    write(t, "curl-form", request("POST", "/data?bundle", [
        ("Content-Type", "application/x-www-form-urlencoded")], '{"keys":["a"]}'))
    write(t, "xml", request("POST", "/data?bundle", [("Content-Type", "application/xml")],
        '<?xml version="1.0" encoding="UTF-8"?>\n<Bundle><Object><Key>a</Key></Object>'
        '<Object><Key>x&amp;y</Key></Object><Object><Key>b&#47;c</Key></Object></Bundle>'))
    write(t, "xml-ns", request("POST", "/data/?bundle", [],
        '<Bundle xmlns="http://s3.amazonaws.com/doc/2006-03-01/">\n  <Object>\n    '
        '<Key>k1</Key>\n  </Object>\n  <Object><Key><![CDATA[k2]]></Key></Object>\n'
        '  <!-- c --><Object/><Quiet>true</Quiet></Bundle>'))
    # Edge cases.
    write(t, "empty-keys", request("POST", "/data?bundle", [], '{"keys":[]}'))
    write(t, "no-key-path", request("POST", "/data/a/b?bundle", [], '{"keys":["a"]}'))
    write(t, "root-path", request("POST", "/?bundle", [], '{"keys":["a"]}'))
    write(t, "no-bucket", request("POST", "/nobucket?bundle", [], '{"keys":["a"]}'))
    write(t, "bad-format", request("POST", "/data?bundle",
        [("x-tigris-bundle-format", "zip")], '{"keys":["a"]}'))
    write(t, "bad-compression", request("POST", "/data?bundle",
        [("x-tigris-bundle-compression", "brotli")], '{"keys":["a"]}'))
    write(t, "bad-on-error", request("POST", "/data?bundle",
        [("x-tigris-bundle-on-error", "ignore")], '{"keys":["a"]}'))
    write(t, "escapes", request("POST", "/data?bundle", [],
        '{"keys":["../../etc/passwd","/abs","a//b","a/./b","a\\\\b","a\\u0000b","tail/",'
        '"\\ud83d\\ude00","k\\"q"]}'))
    write(t, "long-key", request("POST", "/data?bundle", [],
        json.dumps({"keys": ["k" * 1024, "k" * 1025]})))
    write(t, "non-string", request("POST", "/data?bundle", [], '{"keys":[1, null, true]}'))
    write(t, "extra-fields", request("POST", "/data?bundle", [],
        '{"keys":["a"],"keys2":[],"format":"tar"}'))
    write(t, "dup-field", request("POST", "/data?bundle", [], '{"keys":["a"],"keys":["b"]}'))
    write(t, "not-utf8", request("POST", "/data?bundle", [], b'{"keys":["\xff\xfe"]}'))
    write(t, "bom", request("POST", "/data?bundle", [], '\ufeff{"keys":["a"]}'))
    write(t, "truncated-json", request("POST", "/data?bundle", [], '{"keys":["a",'))
    write(t, "xml-bad-root", request("POST", "/data?bundle", [], "<Other><Key>a</Key></Other>"))
    write(t, "xml-unclosed", request("POST", "/data?bundle", [],
        "<Bundle><Object><Key>a</Key></Object>"))
    write(t, "xml-entity", request("POST", "/data?bundle", [],
        "<Bundle><Object><Key>&unknown;</Key></Object></Bundle>"))
    write(t, "xml-mismatch", request("POST", "/data?bundle", [],
        "<Bundle><Object><Key>a</Object></Key></Bundle>"))
    write(t, "xml-doctype", request("POST", "/data?bundle", [],
        '<!DOCTYPE Bundle [<!ENTITY e "x">]><Bundle><Object><Key>&e;&lt;</Key></Object></Bundle>'))
    write(t, "crlf", b"POST /data?bundle\r\nx-tigris-bundle-on-error: fail\r\n"
          b"x-tigris-bundle-compression:  gzip \r\n\r\n{\"keys\":[\"a\"]}")
    write(t, "many", bundle_store([f"m/{i}" for i in range(70)]))


# --- AIStore ------------------------------------------------------------------------------

def sdk(entries, bucket="data", mime=".tar", coer=True, onob=False, strm=True):
    """What the aistore SDK sends: MossReq.dict() (exclude_defaults) via requests' json=."""
    body = {"in": entries, "mime": mime, "coer": coer, "onob": onob, "strm": strm}
    body = json.dumps(body)
    target = f"/v1/ml/moss/{bucket}?provider=ais" if bucket else "/v1/ml/moss"
    headers = [
        ("Host", "127.0.0.1:51080"),
        ("User-Agent", "ais/python/1.18.0"),
        ("Accept-Encoding", "gzip, deflate"),
        ("Accept", "*/*"),
        ("Connection", "keep-alive"),
        ("Content-Type", "application/json"),
        ("Authorization", "Bearer tok-123"),
        ("Content-Length", str(len(body))),
    ]
    return request("GET", target, headers, body)


def opaque(b):
    return base64.urlsafe_b64encode(b).decode()


def aistore():
    t = "getbatch_request"
    names = [{"objname": f"a/{i}"} for i in range(10)] + [{"objname": "a/missing"},
                                                          {"objname": "a/3"}]
    write(t, "sdk-stream", sdk(names))
    write(t, "sdk-tgz", sdk(names[:4], mime=".tar.gz"))
    write(t, "sdk-tgz2", sdk(names[:4], mime=".tgz"))
    write(t, "sdk-zip", sdk(names[:3], mime=".zip"))
    write(t, "sdk-onob", sdk([{"objname": "a/5"}, {"objname": "a/gone"}], onob=True))
    write(t, "sdk-nocoer", sdk([{"objname": "a/1"}, {"objname": "a/gone"}], coer=False))
    write(t, "sdk-multipart", sdk([
        {"objname": "a/1", "opaque": opaque(b"user-id-123")},
        {"objname": "a/missing", "opaque": opaque(b"req-2")},
        {"objname": "a/2", "start": 3, "length": 4},
        {"objname": "a/4", "start": 5, "length": -1},
    ], strm=False))
    write(t, "sdk-archpath", sdk([
        {"objname": "shard.tar", "archpath": "s/2.json"},
        {"objname": "shard.zip", "archpath": "img/cat.jpg"},
        {"objname": "shard.tar", "archpath": "s/1.txt", "start": 1, "length": 3},
        {"objname": "shard.tgz", "archpath": "/s/none"},
    ], strm=False))
    write(t, "sdk-objects", sdk([
        {"objname": "x", "bucket": "data", "provider": "ais"},
        {"objname": "y", "bucket": "b2", "provider": "s3"},
    ], bucket=None))
    write(t, "store", request("GET", "/v1/ml/moss/data?provider=ais", [
        ("content-type", "application/json"), ("accept-encoding", "identity"),
        ("x-getmany-order", "completion")],
        json.dumps({"in": [{"objname": "k0"}, {"objname": "k1", "start": 10, "length": 90},
                           {"objname": "k2", "start": 7, "length": -1}],
                    "mime": ".tgz", "coer": True, "onob": True, "strm": True},
                   separators=(",", ":"))))
    # Edge cases.
    write(t, "post", request("POST", "/v1/ml/moss/data", [], '{"in":[{"objname":"a"}]}'))
    write(t, "put", request("PUT", "/v1/ml/moss/data", [], '{"in":[{"objname":"a"}]}'))
    write(t, "path-key", request("GET", "/v1/ml/moss/data/x", [], '{"in":[{"objname":"a"}]}'))
    write(t, "path-slashes", request("GET", "/v1/ml/moss//data//", [], '{"in":[{"objname":"a"}]}'))
    write(t, "other-path", request("GET", "/v1/ml/mossy", [], '{"in":[{"objname":"a"}]}'))
    write(t, "no-bucket", request("GET", "/v1/ml/moss", [], '{"in":[{"objname":"a"}]}'))
    write(t, "unknown-bucket", request("GET", "/v1/ml/moss/data", [],
        '{"in":[{"objname":"a"},{"objname":"b","bucket":"zzz"}]}'))
    write(t, "empty-in", request("GET", "/v1/ml/moss/data", [], '{"in":[]}'))
    write(t, "in-string", request("GET", "/v1/ml/moss/data", [], '{"in":"x"}'))
    write(t, "no-body", request("GET", "/v1/ml/moss/data", [], ""))
    write(t, "ranges", request("GET", "/v1/ml/moss/data", [], json.dumps({"in": [
        {"objname": "a", "start": 0, "length": 0},
        {"objname": "a", "start": 0, "length": -1},
        {"objname": "a", "start": 9223372036854775807, "length": 1},
        {"objname": "a", "start": 9223372036854775806, "length": 1},
        {"objname": "a", "start": -1, "length": 2},
        {"objname": "a", "start": 3},
        {"objname": "a", "length": -2},
        {"objname": "a", "start": 1.5, "length": 2},
        {"objname": "a", "start": 18446744073709551615, "length": 1},
    ]})))
    write(t, "bad-names", request("GET", "/v1/ml/moss/data", [], json.dumps({"in": [
        {"objname": "../x"}, {"objname": ""}, {"objname": "a", "archpath": "../../x"},
        {"objname": "a", "archpath": "//"}, {"objname": "a\u0000b"}, {"objname": "a", "uname": "u"},
    ]})))
    write(t, "opaque", request("GET", "/v1/ml/moss/data", [], json.dumps({"in": [
        {"objname": "a", "opaque": "dXNlcg=="}, {"objname": "a", "opaque": "dXNlcg"},
        {"objname": "a", "opaque": "-_-_"}, {"objname": "a", "opaque": "!!"},
        {"objname": "a", "opaque": ""},
    ]})))
    write(t, "mimes", request("GET", "/v1/ml/moss/data", [],
        '{"in":[{"objname":"a"}],"mime":".tar.lz4"}'))
    write(t, "mime-rar", request("GET", "/v1/ml/moss/data", [],
        '{"in":[{"objname":"a"}],"mime":".rar","coer":null,"onob":1}'))
    write(t, "nulls", request("GET", "/v1/ml/moss/data", [],
        '{"in":[{"objname":"a","bucket":null,"provider":null,"archpath":null,"opaque":null,'
        '"start":null,"length":null}],"mime":null,"coer":null,"onob":null,"strm":null,'
        '"colocation":2}'))
    write(t, "dup-field", request("GET", "/v1/ml/moss/data", [],
        '{"in":[{"objname":"a","objname":"b"}]}'))
    write(t, "empty-strings", request("GET", "/v1/ml/moss/data", [],
        '{"in":[{"objname":"a","bucket":"","provider":"","archpath":"","uname":""}],"mime":""}'))
    write(t, "many", request("GET", "/v1/ml/moss/data", [],
        json.dumps({"in": [{"objname": f"m/{i}"} for i in range(70)]})))


if __name__ == "__main__":
    tigris()
    aistore()
