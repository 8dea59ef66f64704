#!/usr/bin/env python3
"""S3 conformance checks with boto3 against a running Cairn S3 endpoint.

Run by cairn/tests/cli.rs (`cairn_dev_serves_s3_to_real_clients`) with S3_ENDPOINT,
S3_ACCESS_KEY, S3_SECRET_KEY and S3_REGION from `cairn dev`'s endpoints.env, and BUCKET, a
bucket name no other check uses. Each check prints one line; the first failure raises.
"""
import base64
import hashlib
import os
import subprocess
import sys
import urllib.error

import boto3
import botocore
from botocore.config import Config

ENDPOINT = os.environ["S3_ENDPOINT"]
BUCKET = os.environ["BUCKET"]
OTHER = BUCKET + "-other"


def client(secret=None, key=None, **config):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=key or os.environ["S3_ACCESS_KEY"],
        aws_secret_access_key=secret or os.environ["S3_SECRET_KEY"],
        region_name=os.environ.get("S3_REGION", "us-east-1"),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **config),
    )


s3 = client()


def ok(name):
    print(f"ok {name}", flush=True)


def error_code(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{call.__name__} succeeded; an error was expected")


def expect_error(code, call, *args, **kwargs):
    got = error_code(call, *args, **kwargs)
    assert got[0] == code, f"expected {code}, got {got}"
    return got


# Buckets.
s3.create_bucket(Bucket=BUCKET)
s3.create_bucket(Bucket=OTHER)
expect_error("BucketAlreadyOwnedByYou", s3.create_bucket, Bucket=BUCKET)
names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
assert BUCKET in names and OTHER in names, names
s3.head_bucket(Bucket=BUCKET)
assert s3.get_bucket_location(Bucket=BUCKET).get("LocationConstraint") in (None, "")
expect_error("NoSuchBucket", s3.list_objects_v2, Bucket=BUCKET + "-missing")
expect_error("InvalidBucketName", s3.create_bucket, Bucket="Bad_Name")
ok("buckets")

# Small objects (inline), user metadata, content type.
small = b"hello, cairn\n"
put = s3.put_object(Bucket=BUCKET, Key="docs/hello.txt", Body=small, ContentType="text/plain",
                    Metadata={"colour": "blue"})
assert put["ETag"] == '"%s"' % hashlib.md5(small).hexdigest(), put["ETag"]
got = s3.get_object(Bucket=BUCKET, Key="docs/hello.txt")
assert got["Body"].read() == small
assert got["ContentType"] == "text/plain", got["ContentType"]
assert got["Metadata"] == {"colour": "blue"}, got["Metadata"]
head = s3.head_object(Bucket=BUCKET, Key="docs/hello.txt")
assert head["ContentLength"] == len(small)
assert s3.get_object(Bucket=BUCKET, Key="docs/hello.txt", Range="bytes=7-11")["Body"].read() == b"cairn"
assert s3.get_object(Bucket=BUCKET, Key="docs/hello.txt", Range="bytes=-3")["Body"].read() == b"rn\n"
expect_error("InvalidRange", s3.get_object, Bucket=BUCKET, Key="docs/hello.txt", Range="bytes=100-200")
expect_error("NoSuchKey", s3.get_object, Bucket=BUCKET, Key="docs/missing.txt")
ok("small objects")

# Conditional requests.
etag = put["ETag"]
assert error_code(s3.get_object, Bucket=BUCKET, Key="docs/hello.txt", IfNoneMatch=etag)[1] == 304
expect_error("PreconditionFailed", s3.get_object, Bucket=BUCKET, Key="docs/hello.txt", IfMatch='"0000"')
assert s3.get_object(Bucket=BUCKET, Key="docs/hello.txt", IfMatch=etag)["Body"].read() == small
ok("conditional requests")

# Larger objects (chunks), with the CRC-32 trailer current SDKs send, and Content-MD5.
big = os.urandom(9 * 1024 * 1024 + 12345)
s3.put_object(Bucket=BUCKET, Key="data/big.bin", Body=big, ChecksumAlgorithm="CRC32")
assert s3.get_object(Bucket=BUCKET, Key="data/big.bin")["Body"].read() == big
part = s3.get_object(Bucket=BUCKET, Key="data/big.bin", Range="bytes=4194300-4194310")["Body"].read()
assert part == big[4194300:4194311]
medium = os.urandom(100 * 1024)
md5 = base64.b64encode(hashlib.md5(medium).digest()).decode()
s3.put_object(Bucket=BUCKET, Key="data/medium.bin", Body=medium, ContentMD5=md5)
assert s3.get_object(Bucket=BUCKET, Key="data/medium.bin")["Body"].read() == medium
ok("large objects with checksums")

# aws-chunked bodies with a CRC-32 trailer, as SDKs send them over HTTPS: a wrong trailer
# stores nothing.
def put_with_trailer(key, data, crc):
    import urllib.request
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    body = (f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\nx-amz-checksum-crc32:" + crc.encode()
            + b"\r\n\r\n")
    request = AWSRequest(method="PUT", url=f"{ENDPOINT}/{BUCKET}/{key}", data=body, headers={
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "content-encoding": "aws-chunked",
        "x-amz-trailer": "x-amz-checksum-crc32", "x-amz-decoded-content-length": str(len(data))})
    credentials = Credentials(os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"])
    SigV4Auth(credentials, "s3", os.environ.get("S3_REGION", "us-east-1")).add_auth(request)
    sent = urllib.request.Request(request.url, data=body, method="PUT", headers=dict(request.headers))
    try:
        with urllib.request.urlopen(sent) as response:
            return response.status, b""
    except urllib.error.HTTPError as e:
        return e.code, e.read()


import zlib
trailed = os.urandom(70_000)
crc = base64.b64encode(zlib.crc32(trailed).to_bytes(4, "big")).decode()
assert put_with_trailer("trailer/good", trailed, crc)[0] == 200
assert s3.get_object(Bucket=BUCKET, Key="trailer/good")["Body"].read() == trailed
status, text = put_with_trailer("trailer/bad", trailed, "AAAAAA==")
assert status == 400 and b"BadDigest" in text, (status, text)
assert error_code(s3.head_object, Bucket=BUCKET, Key="trailer/bad")[1] == 404
ok("aws-chunked trailers")

# aws-chunked bodies signed chunk by chunk (STREAMING-AWS4-HMAC-SHA256-PAYLOAD, as the Java
# and Go SDKs send them): a chunk with a wrong signature stores nothing.
def put_signed_chunks(key, chunks, tamper=False):
    import datetime
    import hmac
    import urllib.request
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    region = os.environ.get("S3_REGION", "us-east-1")
    decoded = sum(len(c) for c in chunks)
    request = AWSRequest(method="PUT", url=f"{ENDPOINT}/{BUCKET}/{key}", data=b"", headers={
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(decoded)})
    credentials = Credentials(os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"])
    SigV4Auth(credentials, "s3", region).add_auth(request)
    headers = dict(request.headers)
    seed = headers["Authorization"].rsplit("Signature=", 1)[1]
    stamp = headers["X-Amz-Date"]
    day = stamp[:8]
    scope = f"{day}/{region}/s3/aws4_request"
    key_bytes = ("AWS4" + os.environ["S3_SECRET_KEY"]).encode()
    for part in (day, region, "s3", "aws4_request"):
        key_bytes = hmac.new(key_bytes, part.encode(), hashlib.sha256).digest()
    empty = hashlib.sha256(b"").hexdigest()
    body, previous = b"", seed
    for i, chunk in enumerate(list(chunks) + [b""]):
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", stamp, scope, previous, empty,
                             hashlib.sha256(chunk).hexdigest()])
        signature = hmac.new(key_bytes, to_sign.encode(), hashlib.sha256).hexdigest()
        if tamper and i == 1:
            signature = "0" * 64
        body += f"{len(chunk):x};chunk-signature={signature}\r\n".encode() + chunk + b"\r\n"
        previous = signature
    headers["Content-Length"] = str(len(body))
    sent = urllib.request.Request(request.url, data=body, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(sent) as response:
            return response.status, b""
    except urllib.error.HTTPError as e:
        return e.code, e.read()


pieces = [os.urandom(64 * 1024), os.urandom(64 * 1024), os.urandom(1000)]
status, text = put_signed_chunks("signed/good", pieces)
assert status == 200, (status, text)
assert s3.get_object(Bucket=BUCKET, Key="signed/good")["Body"].read() == b"".join(pieces)
status, text = put_signed_chunks("signed/bad", pieces, tamper=True)
assert status == 403 and b"SignatureDoesNotMatch" in text, (status, text)
assert error_code(s3.head_object, Bucket=BUCKET, Key="signed/bad")[1] == 404
ok("aws-chunked signed chunks")

# A wrong digest stores nothing: the old content stays.
wrong = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
expect_error("BadDigest", s3.put_object, Bucket=BUCKET, Key="data/medium.bin", Body=os.urandom(50_000),
             ContentMD5=wrong)
expect_error("BadDigest", s3.put_object, Bucket=BUCKET, Key="docs/new.txt", Body=b"abc", ContentMD5=wrong)
assert s3.get_object(Bucket=BUCKET, Key="data/medium.bin")["Body"].read() == medium
assert error_code(s3.head_object, Bucket=BUCKET, Key="docs/new.txt")[1] == 404
ok("bad digests store nothing")

# Listings: prefix, delimiter, pagination (v1 and v2), start-after.
for i in range(5):
    s3.put_object(Bucket=BUCKET, Key=f"list/a/{i}", Body=b"x")
s3.put_object(Bucket=BUCKET, Key="list/b/0", Body=b"y")
s3.put_object(Bucket=BUCKET, Key="list/top", Body=b"z")
listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="list/", Delimiter="/")
assert [c["Prefix"] for c in listing["CommonPrefixes"]] == ["list/a/", "list/b/"], listing
assert [o["Key"] for o in listing["Contents"]] == ["list/top"], listing
keys, token = [], None
while True:
    kwargs = {"ContinuationToken": token} if token else {}
    page = s3.list_objects_v2(Bucket=BUCKET, Prefix="list/", MaxKeys=2, **kwargs)
    keys += [o["Key"] for o in page.get("Contents", [])]
    if not page["IsTruncated"]:
        break
    token = page["NextContinuationToken"]
assert keys == [f"list/a/{i}" for i in range(5)] + ["list/b/0", "list/top"], keys
after = s3.list_objects_v2(Bucket=BUCKET, Prefix="list/", StartAfter="list/a/3")
assert [o["Key"] for o in after["Contents"]] == ["list/a/4", "list/b/0", "list/top"]
v1 = s3.list_objects(Bucket=BUCKET, Prefix="list/a/", Marker="list/a/1", MaxKeys=2)
assert [o["Key"] for o in v1["Contents"]] == ["list/a/2", "list/a/3"] and v1["IsTruncated"]
paginator = s3.get_paginator("list_objects")
pages = paginator.paginate(Bucket=BUCKET, Prefix="list/", Delimiter="/", PaginationConfig={"PageSize": 1})
rolled = [c["Prefix"] for p in pages for c in p.get("CommonPrefixes", [])]
assert rolled == ["list/a/", "list/b/"], rolled
odd = "odd keys/ü?&=+#%.txt"
s3.put_object(Bucket=BUCKET, Key=odd, Body=b"odd")
assert s3.get_object(Bucket=BUCKET, Key=odd)["Body"].read() == b"odd"
assert odd in [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="odd")["Contents"]]
ok("listings")

# Copies: within a bucket with new metadata, across buckets keeping it.
s3.copy_object(Bucket=BUCKET, Key="copies/hello.txt", CopySource={"Bucket": BUCKET, "Key": "docs/hello.txt"},
               MetadataDirective="REPLACE", Metadata={"colour": "red"}, ContentType="text/x-copy")
copy = s3.get_object(Bucket=BUCKET, Key="copies/hello.txt")
assert copy["Body"].read() == small and copy["Metadata"] == {"colour": "red"}
assert copy["ContentType"] == "text/x-copy"
s3.copy_object(Bucket=OTHER, Key="big-copy.bin", CopySource={"Bucket": BUCKET, "Key": "data/big.bin"})
assert s3.get_object(Bucket=OTHER, Key="big-copy.bin")["Body"].read() == big
kept = s3.head_object(Bucket=OTHER, Key="big-copy.bin")
assert kept["ETag"] == '"%s"' % hashlib.md5(big).hexdigest()
ok("copies")

# Batch delete, quiet and not.
out = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "list/a/0"}, {"Key": "list/a/1"},
                                                            {"Key": "never-existed"}]})
assert sorted(d["Key"] for d in out["Deleted"]) == ["list/a/0", "list/a/1", "never-existed"], out
out = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "list/a/2"}], "Quiet": True})
assert not out.get("Deleted") and not out.get("Errors"), out
assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="list/a/")["Contents"]] == ["list/a/3", "list/a/4"]
s3.delete_object(Bucket=BUCKET, Key="list/a/3")
s3.delete_object(Bucket=BUCKET, Key="list/a/3")  # idempotent
ok("deletes")

# Multipart: out-of-order upload, list parts, part copy, errors, complete, abort.
mp = s3.create_multipart_upload(Bucket=BUCKET, Key="mp/object.bin", ContentType="application/x-test")
uid = mp["UploadId"]
p1, p2, p3 = os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024 + 7), os.urandom(1000)
e2 = s3.upload_part(Bucket=BUCKET, Key="mp/object.bin", UploadId=uid, PartNumber=2, Body=p2)["ETag"]
e1 = s3.upload_part(Bucket=BUCKET, Key="mp/object.bin", UploadId=uid, PartNumber=1, Body=p1)["ETag"]
e3 = s3.upload_part(Bucket=BUCKET, Key="mp/object.bin", UploadId=uid, PartNumber=3, Body=p3)["ETag"]
parts = s3.list_parts(Bucket=BUCKET, Key="mp/object.bin", UploadId=uid)["Parts"]
assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, len(p1)), (2, len(p2)), (3, len(p3))]
uploads = s3.list_multipart_uploads(Bucket=BUCKET)["Uploads"]
assert [u["UploadId"] for u in uploads if u["Key"] == "mp/object.bin"] == [uid], uploads
expect_error("InvalidPartOrder", s3.complete_multipart_upload, Bucket=BUCKET, Key="mp/object.bin", UploadId=uid,
             MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]})
expect_error("InvalidPart", s3.complete_multipart_upload, Bucket=BUCKET, Key="mp/object.bin", UploadId=uid,
             MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e2}]})
done = s3.complete_multipart_upload(
    Bucket=BUCKET, Key="mp/object.bin", UploadId=uid,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2},
                               {"PartNumber": 3, "ETag": e3}]})
assert done["ETag"].endswith('-3"'), done
whole = s3.get_object(Bucket=BUCKET, Key="mp/object.bin")
assert whole["Body"].read() == p1 + p2 + p3 and whole["ContentType"] == "application/x-test"
expect_error("NoSuchUpload", s3.upload_part, Bucket=BUCKET, Key="mp/object.bin", UploadId=uid, PartNumber=1,
             Body=b"late")
# A small part followed by another is refused at completion.
small_mp = s3.create_multipart_upload(Bucket=BUCKET, Key="mp/small.bin")["UploadId"]
s1 = s3.upload_part(Bucket=BUCKET, Key="mp/small.bin", UploadId=small_mp, PartNumber=1, Body=b"a" * 100)["ETag"]
s2 = s3.upload_part(Bucket=BUCKET, Key="mp/small.bin", UploadId=small_mp, PartNumber=2, Body=b"b" * 100)["ETag"]
expect_error("EntityTooSmall", s3.complete_multipart_upload, Bucket=BUCKET, Key="mp/small.bin", UploadId=small_mp,
             MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": s1}, {"PartNumber": 2, "ETag": s2}]})
# Upload part copy from a range of another object.
pc = s3.create_multipart_upload(Bucket=BUCKET, Key="mp/copied.bin")["UploadId"]
c1 = s3.upload_part_copy(Bucket=BUCKET, Key="mp/copied.bin", UploadId=pc, PartNumber=1,
                         CopySource={"Bucket": BUCKET, "Key": "data/big.bin"},
                         CopySourceRange="bytes=0-5242879")["CopyPartResult"]["ETag"]
c2 = s3.upload_part(Bucket=BUCKET, Key="mp/copied.bin", UploadId=pc, PartNumber=2, Body=b"tail")["ETag"]
s3.complete_multipart_upload(Bucket=BUCKET, Key="mp/copied.bin", UploadId=pc,
                             MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": c1},
                                                        {"PartNumber": 2, "ETag": c2}]})
assert s3.get_object(Bucket=BUCKET, Key="mp/copied.bin")["Body"].read() == big[:5242880] + b"tail"
s3.abort_multipart_upload(Bucket=BUCKET, Key="mp/small.bin", UploadId=small_mp)
expect_error("NoSuchUpload", s3.list_parts, Bucket=BUCKET, Key="mp/small.bin", UploadId=small_mp)
assert error_code(s3.head_object, Bucket=BUCKET, Key="mp/small.bin")[1] == 404
ok("multipart uploads")

# Presigned GET, fetched by curl; virtual-host style too.
url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "docs/hello.txt"}, ExpiresIn=300)
assert subprocess.run(["curl", "-sf", url], capture_output=True, check=True).stdout == small
port = ENDPOINT.rsplit(":", 1)[1]
virtual = boto3.client("s3", endpoint_url=f"http://localhost:{port}",
                       aws_access_key_id=os.environ["S3_ACCESS_KEY"],
                       aws_secret_access_key=os.environ["S3_SECRET_KEY"],
                       region_name=os.environ.get("S3_REGION", "us-east-1"),
                       config=Config(s3={"addressing_style": "virtual"}))
vurl = virtual.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "docs/hello.txt"},
                                      ExpiresIn=300)
assert f"//{BUCKET}.localhost:{port}/" in vurl, vurl
out = subprocess.run(["curl", "-sf", "--resolve", f"{BUCKET}.localhost:{port}:127.0.0.1", vurl],
                     capture_output=True, check=True).stdout
assert out == small
tampered = url.replace("docs/hello.txt", "data/medium.bin")
assert subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", tampered],
                      capture_output=True).stdout == b"403"
ok("presigned URLs")

# Authentication failures.
expect_error("SignatureDoesNotMatch", client(secret="x" * 40).list_objects_v2, Bucket=BUCKET)
expect_error("InvalidAccessKeyId", client(key="AKIANOSUCHKEY0000000").list_objects_v2, Bucket=BUCKET)
anonymous = boto3.client("s3", endpoint_url=ENDPOINT, region_name="us-east-1",
                         config=Config(signature_version=botocore.UNSIGNED))
expect_error("AccessDenied", anonymous.get_object, Bucket=BUCKET, Key="docs/hello.txt")
ok("authentication")

# A bucket with objects cannot be deleted; emptied, it can.
expect_error("BucketNotEmpty", s3.delete_bucket, Bucket=OTHER)
s3.delete_object(Bucket=OTHER, Key="big-copy.bin")
s3.delete_bucket(Bucket=OTHER)
assert error_code(s3.head_bucket, Bucket=OTHER)[1] == 404
ok("bucket deletion")
print("boto3 checks passed")
sys.exit(0)
