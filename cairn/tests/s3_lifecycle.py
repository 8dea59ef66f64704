#!/usr/bin/env python3
"""Bucket lifecycle rules with boto3 against a running Cairn S3 endpoint whose lifecycle day
is shortened (cairn dev --s3-lifecycle-day-secs 1): expiration by days under a prefix only,
by a date in the past, noncurrent versions and lone delete markers in a versioned bucket,
incomplete multipart uploads aborted, disabled rules inert, GET/DELETE of the configuration,
malformed and unsupported configurations refused, and the configuration the owner's alone.

Run by cairn/tests/cli.rs (`cairn_dev_serves_s3_to_real_clients`) with S3_ENDPOINT,
S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION, OTHER_ACCESS_KEY and OTHER_SECRET_KEY (a second
tenant). Uses buckets "life", "life-date" and "life-versions". Each check prints one line;
the first failure raises. Waits poll with a deadline; they never sleep a fixed time to pass.
"""
import datetime
import os
import time

import boto3
import botocore
from botocore.config import Config

ENDPOINT = os.environ["S3_ENDPOINT"]
REGION = os.environ.get("S3_REGION", "us-east-1")
# Rules of one or two (one-second) days act within seconds; this leaves room on a loaded machine.
DEADLINE_SECS = 60


def client(key, secret):
    return boto3.client("s3", endpoint_url=ENDPOINT, aws_access_key_id=key, aws_secret_access_key=secret,
                        region_name=REGION,
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


s3 = client(os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"])
other = client(os.environ["OTHER_ACCESS_KEY"], os.environ["OTHER_SECRET_KEY"])


def ok(name):
    print(f"ok {name}", flush=True)


def code(call, **kwargs):
    try:
        call(**kwargs)
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    return "ok"


def wait_for(what, condition):
    deadline = time.monotonic() + DEADLINE_SECS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def keys(bucket):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def versions(bucket, key):
    listed = s3.list_object_versions(Bucket=bucket, Prefix=key)
    found = [(v["VersionId"], False) for v in listed.get("Versions", []) if v["Key"] == key]
    found += [(m["VersionId"], True) for m in listed.get("DeleteMarkers", []) if m["Key"] == key]
    return found


def rule(rule_id, prefix, status="Enabled", **actions):
    return {"ID": rule_id, "Filter": {"Prefix": prefix}, "Status": status, **actions}


def put_rules(bucket, *rules):
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": list(rules)})


# Configuration: none at first; put, read back as put, refused to another tenant, deleted.
s3.create_bucket(Bucket="life")
assert code(s3.get_bucket_lifecycle_configuration, Bucket="life") == "NoSuchLifecycleConfiguration"
rules = [
    rule("expire", "expire/", Expiration={"Days": 1}),
    rule("inert", "disabled/", status="Disabled", Expiration={"Days": 1}),
    rule("uploads", "mp/", AbortIncompleteMultipartUpload={"DaysAfterInitiation": 1}),
]
put_rules("life", *rules)
got = s3.get_bucket_lifecycle_configuration(Bucket="life")["Rules"]
assert got == rules, got
for call in (other.get_bucket_lifecycle_configuration, other.delete_bucket_lifecycle):
    assert code(call, Bucket="life") == "AccessDenied"
assert code(other.put_bucket_lifecycle_configuration, Bucket="life",
            LifecycleConfiguration={"Rules": [rule("x", "", Expiration={"Days": 1})]}) == "AccessDenied"
s3.delete_bucket_lifecycle(Bucket="life")
assert code(s3.get_bucket_lifecycle_configuration, Bucket="life") == "NoSuchLifecycleConfiguration"
ok("configuration put, read back, owner only, deleted")

# Refused: what S3 refuses, and what Cairn cannot enforce (tags, transitions).
refusals = [
    ("MalformedXML", rule("r", "a/", Expiration={"Days": 1, "ExpiredObjectDeleteMarker": True})),
    ("MalformedXML", rule("r", "a/", status="enabled", Expiration={"Days": 1})),
    ("MalformedXML", {"ID": "r", "Filter": {"Prefix": "a/"}, "Status": "Enabled"}),
    ("InvalidArgument", rule("r", "a/", Expiration={"Date": datetime.datetime(2020, 1, 1, 12)})),
    ("InvalidArgument", rule("r" * 256, "a/", Expiration={"Days": 1})),
    ("NotImplemented", {"ID": "r", "Filter": {"Tag": {"Key": "k", "Value": "v"}}, "Status": "Enabled",
                        "Expiration": {"Days": 1}}),
    ("NotImplemented", {"ID": "r", "Filter": {"And": {"Prefix": "a/", "Tags": [{"Key": "k", "Value": "v"}]}},
                        "Status": "Enabled", "Expiration": {"Days": 1}}),
    ("NotImplemented", rule("r", "a/", Transitions=[{"Days": 1, "StorageClass": "GLACIER"}])),
]
for expected, bad in refusals:
    got = code(s3.put_bucket_lifecycle_configuration, Bucket="life", LifecycleConfiguration={"Rules": [bad]})
    assert got == expected, (bad, got, expected)
twice = [rule("same", "a/", Expiration={"Days": 1}), rule("same", "b/", Expiration={"Days": 1})]
assert code(s3.put_bucket_lifecycle_configuration, Bucket="life",
            LifecycleConfiguration={"Rules": twice}) == "InvalidArgument"
assert code(s3.get_bucket_lifecycle_configuration, Bucket="life") == "NoSuchLifecycleConfiguration"
ok("malformed, tag-filtered and transition configurations refused, nothing stored")

# Expiration by days under a prefix only; a disabled rule does nothing; uploads aborted.
for key in ("expire/a", "expire/b", "disabled/a", "keep/a"):
    s3.put_object(Bucket="life", Key=key, Body=key.encode())
old_upload = s3.create_multipart_upload(Bucket="life", Key="mp/big")["UploadId"]
s3.upload_part(Bucket="life", Key="mp/big", UploadId=old_upload, PartNumber=1, Body=b"x" * 1000)
kept_upload = s3.create_multipart_upload(Bucket="life", Key="other/big")["UploadId"]
put_rules("life", *rules)
wait_for("expire/ to be emptied", lambda: keys("life") == ["disabled/a", "keep/a"])
ok("expiration by days removed the prefix's objects only")


def uploads(bucket):
    return [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


wait_for("the old upload to be aborted", lambda: uploads("life") == [kept_upload])
assert code(s3.list_parts, Bucket="life", Key="mp/big", UploadId=old_upload) == "NoSuchUpload"
ok("incomplete multipart upload under the prefix aborted, the other kept")

# Several days later the disabled rule's object is still there.
time.sleep(3)
assert keys("life") == ["disabled/a", "keep/a"], keys("life")
assert s3.get_object(Bucket="life", Key="disabled/a")["Body"].read() == b"disabled/a"
s3.abort_multipart_upload(Bucket="life", Key="other/big", UploadId=kept_upload)
ok("a disabled rule does nothing")

# A date in the past expires everything the rule selects (here the whole bucket).
s3.create_bucket(Bucket="life-date")
for key in ("a", "b/c"):
    s3.put_object(Bucket="life-date", Key=key, Body=b"dated")
put_rules("life-date", {"ID": "past", "Filter": {}, "Status": "Enabled",
                        "Expiration": {"Date": datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)}})
got = s3.get_bucket_lifecycle_configuration(Bucket="life-date")["Rules"][0]["Expiration"]["Date"]
assert got == datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc), got
wait_for("life-date to be emptied", lambda: keys("life-date") == [])
ok("expiration from a past date removed the objects")

# Versioned: noncurrent versions expire while the current stays; a delete marker left alone
# is removed.
s3.create_bucket(Bucket="life-versions")
s3.put_bucket_versioning(Bucket="life-versions", VersioningConfiguration={"Status": "Enabled"})
ids = [s3.put_object(Bucket="life-versions", Key="v/k", Body=f"v{i}".encode())["VersionId"] for i in range(3)]
gone = s3.put_object(Bucket="life-versions", Key="v/gone", Body=b"soon deleted")["VersionId"]
s3.delete_object(Bucket="life-versions", Key="v/gone")
assert len(versions("life-versions", "v/k")) == 3 and len(versions("life-versions", "v/gone")) == 2
current = s3.put_object(Bucket="life-versions", Key="x/current", Body=b"expires")["VersionId"]
put_rules("life-versions", rule("versions", "v/", NoncurrentVersionExpiration={"NoncurrentDays": 1},
                                Expiration={"ExpiredObjectDeleteMarker": True}),
          rule("current", "x/", Expiration={"Days": 1}))
wait_for("noncurrent versions to expire", lambda: versions("life-versions", "v/k") == [(ids[2], False)])
got = s3.get_object(Bucket="life-versions", Key="v/k")
assert got["Body"].read() == b"v2" and got["VersionId"] == ids[2]
ok("noncurrent versions expired, the current one stays")
wait_for("the lone delete marker to go", lambda: versions("life-versions", "v/gone") == [])
assert code(s3.get_object, Bucket="life-versions", Key="v/gone", VersionId=gone) == "NoSuchVersion"
ok("the delete marker left alone was removed")
# Expiring a current version adds one delete marker (the worker's delete is conditioned on
# the version it judged, so a second round or another gateway's worker adds none).
wait_for("the current version to expire", lambda: len(versions("life-versions", "x/current")) == 2)
time.sleep(3)
got = versions("life-versions", "x/current")
assert len(got) == 2 and got[0] == (current, False) and got[1][1], got
ok("an expired current version got one delete marker")

print("lifecycle checks passed", flush=True)
