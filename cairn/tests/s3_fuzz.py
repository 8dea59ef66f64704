#!/usr/bin/env python3
"""Random signed S3 requests against a running Cairn S3 endpoint: none may crash or hang the
gateway, none may get a 500, and none may change an object it did not name correctly.

Run by cairn/tests/cli.rs with S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION, BUCKET and
FUZZ_SEED (and FUZZ_COUNT, default 400). Requests are signed (SigV4, unsigned payload) so they
reach the gateway's own parsing, not only the signature check. Prints the first failing request
with its seed and index, so it can be replayed.
"""
import http.client
import os
import random
import sys
import urllib.parse

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ENDPOINT = os.environ["S3_ENDPOINT"]
BUCKET = os.environ["BUCKET"]
SEED = int(os.environ.get("FUZZ_SEED", "1"))
COUNT = int(os.environ.get("FUZZ_COUNT", "400"))
HOST = urllib.parse.urlparse(ENDPOINT).netloc
CREDENTIALS = Credentials(os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"])
REGION = os.environ.get("S3_REGION", "us-east-1")

rng = random.Random(SEED)


def junk(n=None):
    n = rng.randint(0, 40) if n is None else n
    alphabet = "abcXYZ019-_.~/ %?&=+#:;,'\"<>[]{}|\\^`\u00e9\u4e2d\U0001f600\x00\x01\x7f"
    return "".join(rng.choice(alphabet) for _ in range(n))


def number():
    return rng.choice(["0", "1", "-1", "2", "10000", "10001", "999999999999999999999", "abc", "", "5"])


def key():
    return rng.choice(["fuzz/a", "fuzz/b.bin", "keep.txt", junk(), "x" * rng.choice([1, 1024, 1025]), ""])


def bucket():
    return rng.choice([BUCKET, BUCKET, BUCKET, "no-such-bucket-fuzz", junk(rng.randint(0, 70)), "ab", "A" * 64])


def query():
    params = []
    for _ in range(rng.randint(0, 4)):
        name = rng.choice(["uploads", "uploadId", "partNumber", "list-type", "max-keys", "prefix", "delimiter",
                           "continuation-token", "start-after", "marker", "delete", "versionId", "versions",
                           "acl", "location", "encoding-type", "max-parts", "part-number-marker", "key-marker",
                           "upload-id-marker", "max-uploads", "fetch-owner", junk(5)])
        value = rng.choice([number(), junk(), "url", "2", "true", ""])
        params.append((name, value))
    return params


def headers(method):
    h = {}
    if rng.random() < 0.3:
        h["Range"] = rng.choice(["bytes=0-0", "bytes=-1", "bytes=5-", "bytes=9-2", "bytes=0-99999999999",
                                 "bytes=" + junk(8), junk(10), "bytes=0-1,3-4"])
    if rng.random() < 0.2:
        h["Content-MD5"] = rng.choice(["", "AAAA", junk(24), "1B2M2Y8AsgTpgAmY7PhCfg=="])
    if rng.random() < 0.2:
        h["x-amz-copy-source"] = rng.choice([f"/{BUCKET}/keep.txt", f"{BUCKET}/fuzz/a", junk(), "/", f"/{BUCKET}/"])
    if rng.random() < 0.1:
        h["x-amz-copy-source-range"] = rng.choice(["bytes=0-1", "bytes=1-0", junk(12), "bytes=0-99999999"])
    if rng.random() < 0.2:
        h[rng.choice(["If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"])] = rng.choice(
            ["*", '"abc"', junk(), "Wed, 21 Oct 2015 07:28:00 GMT", "yesterday"])
    if rng.random() < 0.2:
        h["x-amz-meta-" + rng.choice(["a", "b-c", "x_y", "Z9"])] = junk()
    if rng.random() < 0.1:
        h["x-amz-metadata-directive"] = rng.choice(["COPY", "REPLACE", junk(6)])
    if rng.random() < 0.1:
        h["x-amz-checksum-crc32"] = rng.choice(["AAAAAA==", junk(8)])
    if rng.random() < 0.1:
        h["Content-Type"] = junk()
    # Header values must be latin-1 and free of CR/LF for http.client to send them.
    return {k: v.encode("utf-8", "replace").decode("latin-1").replace("\r", "").replace("\n", "")
            for k, v in h.items() if all(32 <= ord(c) < 127 for c in k)}


def body(method):
    if method in ("GET", "HEAD", "DELETE") and rng.random() < 0.8:
        return b""
    return rng.choice([
        b"",
        os.urandom(rng.randint(1, 70_000)),
        b"<Delete><Object><Key>fuzz/a</Key></Object><Quiet>true</Quiet></Delete>",
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>",
        b"<CreateBucketConfiguration><LocationConstraint>" + junk().encode() + b"</LocationConstraint>"
        b"</CreateBucketConfiguration>",
        b"<" + junk().encode(),
    ])


def send(method, path, params, hdrs, data):
    url = ENDPOINT + path + ("?" + urllib.parse.urlencode(params) if params else "")
    request = AWSRequest(method=method, url=url, data=data, headers=dict(hdrs))
    request.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    SigV4Auth(CREDENTIALS, "s3", REGION).add_auth(request)
    prepared = request.prepare()
    connection = http.client.HTTPConnection(HOST, timeout=30)
    try:
        target = prepared.url[len(ENDPOINT):] or "/"
        connection.request(method, target, body=data, headers=dict(prepared.headers))
        response = connection.getresponse()
        payload = response.read()
        return response.status, payload
    finally:
        connection.close()


def plain(method, path, data=b""):
    status, payload = send(method, path, [], {}, data)
    return status, payload


keep = os.urandom(20_000)
assert plain("PUT", f"/{BUCKET}")[0] in (200, 409)
assert plain("PUT", f"/{BUCKET}/keep.txt", keep)[0] == 200

statuses = {}
for i in range(COUNT):
    method = rng.choice(["GET", "PUT", "POST", "DELETE", "HEAD"])
    b = bucket()
    k = key()
    path = "/" + urllib.parse.quote(b, safe="") + ("/" + urllib.parse.quote(k, safe="/") if rng.random() < 0.8 else "")
    if k == "keep.txt" and b == BUCKET and method in ("PUT", "DELETE", "POST"):
        k = "fuzz/not-keep"
        path = f"/{BUCKET}/fuzz/not-keep"
    params, hdrs, data = query(), headers(method), body(method)
    try:
        status, payload = send(method, path, params, hdrs, data)
    except Exception as e:  # a dropped connection or a hang
        print(f"seed {SEED} request {i}: {method} {path} {params} {hdrs}: {e!r}")
        sys.exit(1)
    statuses[status] = statuses.get(status, 0) + 1
    if status >= 500 and status not in (501, 503):
        print(f"seed {SEED} request {i}: {method} {path} {params} {hdrs} body {len(data)} bytes: "
              f"{status} {payload[:300]!r}")
        sys.exit(1)

status, payload = plain("GET", f"/{BUCKET}/keep.txt")
assert status == 200 and payload == keep, (status, len(payload))
print(f"fuzz: {COUNT} random requests, seed {SEED}: no crash, no 500, untouched object intact; "
      f"statuses {dict(sorted(statuses.items()))}")
