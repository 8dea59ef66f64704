#!/usr/bin/env python3
"""S3 versioning and quota checks with boto3 against a running Cairn S3 endpoint.

Run by cairn/tests/cli.rs (`cairn_dev_serves_s3_to_real_clients`) after s3_boto3.py, with the
same environment plus CAIRN_BIN (the cairn binary: quotas are set through its CLI, which
reads CAIRN_ADMIN_URL and CAIRN_ADMIN_TOKEN). Uses buckets "versions" and "quota". Each check
prints one line; the first failure raises.
"""
import json
import os
import subprocess
import sys

import boto3
import botocore
from botocore.config import Config

ENDPOINT = os.environ["S3_ENDPOINT"]
CAIRN = os.environ["CAIRN_BIN"]
BUCKET = "versions"
QUOTA = "quota"

s3 = boto3.client(
    "s3",
    endpoint_url=ENDPOINT,
    aws_access_key_id=os.environ["S3_ACCESS_KEY"],
    aws_secret_access_key=os.environ["S3_SECRET_KEY"],
    region_name=os.environ.get("S3_REGION", "us-east-1"),
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)


def ok(name):
    print(f"ok {name}", flush=True)


def failure(call, *args, **kwargs):
    """The error code, HTTP status and headers of a call that must fail."""
    try:
        call(*args, **kwargs)
    except botocore.exceptions.ClientError as e:
        meta = e.response["ResponseMetadata"]
        return e.response["Error"]["Code"], meta["HTTPStatusCode"], meta.get("HTTPHeaders", {})
    raise AssertionError(f"{call.__name__} succeeded; an error was expected")


def cairn(*args):
    out = subprocess.run([CAIRN, *args], capture_output=True, text=True)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def versions_of(key):
    listed = s3.list_object_versions(Bucket=BUCKET, Prefix=key)
    versions = [(v["VersionId"], v["IsLatest"], False) for v in listed.get("Versions", [])]
    markers = [(m["VersionId"], m["IsLatest"], True) for m in listed.get("DeleteMarkers", [])]
    return versions, markers


# Versioning: enable, two PUTs, both listed, the old one readable by id.
s3.create_bucket(Bucket=BUCKET)
assert "Status" not in s3.get_bucket_versioning(Bucket=BUCKET)
s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
old, new = os.urandom(100_000), b"second version"
v1 = s3.put_object(Bucket=BUCKET, Key="k", Body=old)["VersionId"]
v2 = s3.put_object(Bucket=BUCKET, Key="k", Body=new)["VersionId"]
assert v1 and v2 and v1 != v2 and "null" not in (v1, v2), (v1, v2)
versions, markers = versions_of("k")
assert versions == [(v2, True, False), (v1, False, False)] and not markers, (versions, markers)
got = s3.get_object(Bucket=BUCKET, Key="k", VersionId=v1)
assert got["Body"].read() == old and got["VersionId"] == v1
latest = s3.get_object(Bucket=BUCKET, Key="k")
assert latest["Body"].read() == new and latest["VersionId"] == v2
assert s3.head_object(Bucket=BUCKET, Key="k", VersionId=v1)["ContentLength"] == len(old)
assert failure(s3.get_object, Bucket=BUCKET, Key="k", VersionId="nonsense")[:2] == ("InvalidArgument", 400)
missing = "0" * 15 + "1"
assert failure(s3.get_object, Bucket=BUCKET, Key="k", VersionId=missing)[:2] == ("NoSuchVersion", 404)
ok("versioning keeps every version")

# A DELETE adds a marker: GET 404 with x-amz-delete-marker, the marker listed, keys unlisted.
deleted = s3.delete_object(Bucket=BUCKET, Key="k")
marker = deleted["VersionId"]
assert deleted["DeleteMarker"] is True and marker not in (v1, v2), deleted
code, status, headers = failure(s3.get_object, Bucket=BUCKET, Key="k")
assert (code, status) == ("NoSuchKey", 404) and headers.get("x-amz-delete-marker") == "true", headers
code, status, headers = failure(s3.get_object, Bucket=BUCKET, Key="k", VersionId=marker)
assert status == 405 and headers.get("x-amz-delete-marker") == "true", (code, status, headers)
versions, markers = versions_of("k")
assert markers == [(marker, True, True)], markers
assert versions == [(v2, False, False), (v1, False, False)], versions
assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET), "a deleted key is not listed"
assert "Contents" not in s3.list_objects(Bucket=BUCKET)
ok("delete markers")

# Deleting the marker by id restores the object; a copy may name a source version.
undone = s3.delete_object(Bucket=BUCKET, Key="k", VersionId=marker)
assert undone["VersionId"] == marker and undone["DeleteMarker"] is True, undone
assert s3.get_object(Bucket=BUCKET, Key="k")["Body"].read() == new
copied = s3.copy_object(Bucket=BUCKET, Key="copy", CopySource={"Bucket": BUCKET, "Key": "k", "VersionId": v1})
assert copied["CopySourceVersionId"] == v1 and copied["VersionId"], copied
assert s3.get_object(Bucket=BUCKET, Key="copy")["Body"].read() == old
ok("undelete and copy of a version")

# Suspended: a PUT writes the null version, replacing it on the next PUT; old versions stay.
s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Suspended"})
assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Suspended"
assert s3.put_object(Bucket=BUCKET, Key="k", Body=b"null one")["VersionId"] == "null"
assert s3.put_object(Bucket=BUCKET, Key="k", Body=b"null two")["VersionId"] == "null"
versions, markers = versions_of("k")
assert versions == [("null", True, False), (v2, False, False), (v1, False, False)], versions
assert s3.get_object(Bucket=BUCKET, Key="k", VersionId="null")["Body"].read() == b"null two"
null_marker = s3.delete_object(Bucket=BUCKET, Key="k")
assert null_marker["DeleteMarker"] is True and null_marker["VersionId"] == "null", null_marker
versions, markers = versions_of("k")
assert markers == [("null", True, True)] and [v[0] for v in versions] == [v2, v1], (versions, markers)
ok("suspended versioning writes the null version")

# Paging through versions one at a time returns each exactly once.
seen, kwargs = [], {}
while True:
    page = s3.list_object_versions(Bucket=BUCKET, MaxKeys=1, **kwargs)
    seen += [(v["Key"], v["VersionId"]) for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
    if not page["IsTruncated"]:
        break
    kwargs = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}
assert len(seen) == len(set(seen)) == 4, seen

# A bucket holding versions or markers is not empty; a batch delete by version empties it.
assert failure(s3.delete_bucket, Bucket=BUCKET)[0] == "BucketNotEmpty"
out = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k, "VersionId": v} for k, v in seen]})
assert not out.get("Errors") and len(out["Deleted"]) == 4, out
assert any(d.get("DeleteMarker") for d in out["Deleted"]), out
s3.delete_bucket(Bucket=BUCKET)
ok("version listing pages and batch deletes by version")

# A bucket quota refuses an upload over it (403 QuotaExceeded) and stores nothing.
s3.create_bucket(Bucket=QUOTA)
shown = json.loads(cairn("bucket", "quota", QUOTA, "--bytes", "100K", "--json"))
assert shown["quota"]["bytes_max"] == 100 * 1024, shown
s3.put_object(Bucket=QUOTA, Key="first", Body=os.urandom(60_000))
code, status, _ = failure(s3.put_object, Bucket=QUOTA, Key="second", Body=os.urandom(60_000))
assert (code, status) == ("QuotaExceeded", 403), (code, status)
assert failure(s3.head_object, Bucket=QUOTA, Key="second")[1] == 404
code, status, _ = failure(s3.put_object, Bucket=QUOTA, Key="small", Body=os.urandom(50_000))
assert code == "QuotaExceeded", code
s3.put_object(Bucket=QUOTA, Key="first", Body=os.urandom(90_000))  # a replacement fits
shown = json.loads(cairn("bucket", "show", QUOTA, "--json"))
assert (shown["objects"], shown["bytes"]) == (1, 90_000), shown
assert QUOTA in cairn("bucket", "list")
ok("bucket quota")

# A tenant quota counts all the tenant's buckets; without limits, writes pass again.
tenant = shown["tenant"]
tenants = json.loads(cairn("tenant", "list", "--json"))
used = next(t for t in tenants if t["name"] == tenant)["objects"]
limited = json.loads(cairn("tenant", "quota", tenant, "--objects", str(used), "--json"))
assert limited["quota"]["objects_max"] == used, limited
code, status, _ = failure(s3.put_object, Bucket=QUOTA, Key="another", Body=b"tiny")
assert (code, status) == ("QuotaExceeded", 403), (code, status)
assert failure(s3.head_object, Bucket=QUOTA, Key="another")[1] == 404
mp = s3.create_multipart_upload(Bucket=QUOTA, Key="multi")["UploadId"]
part = s3.upload_part(Bucket=QUOTA, Key="multi", UploadId=mp, PartNumber=1, Body=b"p")["ETag"]
code, status, _ = failure(s3.complete_multipart_upload, Bucket=QUOTA, Key="multi", UploadId=mp,
                          MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part}]})
assert (code, status) == ("QuotaExceeded", 403), (code, status)
s3.abort_multipart_upload(Bucket=QUOTA, Key="multi", UploadId=mp)
unlimited = json.loads(cairn("tenant", "quota", tenant, "--json"))
assert unlimited["quota"] == {"bytes_max": None, "objects_max": None}, unlimited
s3.put_object(Bucket=QUOTA, Key="another", Body=b"tiny")
ok("tenant quota")
print("versioning and quota checks passed")
sys.exit(0)
