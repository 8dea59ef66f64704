#!/usr/bin/env python3
"""Bucket policies with boto3 against a running Cairn S3 endpoint: another tenant's access
granted and refused, a prefix denied to everyone, anonymous reads from an address range,
copies needing read access to their source, malformed policies refused.

Run by cairn/tests/cli.rs with S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY (the owner, tenant
`dev`), OTHER_ACCESS_KEY, OTHER_SECRET_KEY (tenant `other`) and S3_REGION.
"""
import json
import os
import socket
import subprocess
import urllib.parse

import boto3
import botocore
from botocore.config import Config

ENDPOINT = os.environ["S3_ENDPOINT"]
REGION = os.environ.get("S3_REGION", "us-east-1")


def client(key, secret):
    return boto3.client("s3", endpoint_url=ENDPOINT, aws_access_key_id=key, aws_secret_access_key=secret,
                        region_name=REGION,
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


owner = client(os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"])
other = client(os.environ["OTHER_ACCESS_KEY"], os.environ["OTHER_SECRET_KEY"])


def code(call, **kwargs):
    try:
        call(**kwargs)
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    return "ok"


def anonymous_get(key):
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{ENDPOINT}/shared/{key}"],
                         capture_output=True)
    return out.stdout.decode()


owner.create_bucket(Bucket="shared")
owner.put_object(Bucket="shared", Key="public/a.txt", Body=b"for everyone")
owner.put_object(Bucket="shared", Key="private/b.txt", Body=b"for nobody")
other.create_bucket(Bucket="others")

# Without a policy, only the owner reaches the bucket.
assert code(other.get_object, Bucket="shared", Key="public/a.txt") == "AccessDenied"
assert code(other.list_objects_v2, Bucket="shared") == "AccessDenied"
assert code(owner.get_bucket_policy, Bucket="shared") == "NoSuchBucketPolicy"
assert anonymous_get("public/a.txt") == "403"
print("ok private by default")

policy = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "OtherReads", "Effect": "Allow", "Principal": {"AWS": ["arn:aws:iam::other:root"]},
         "Action": ["s3:GetObject", "s3:ListBucket"],
         "Resource": ["arn:aws:s3:::shared", "arn:aws:s3:::shared/*"]},
        {"Sid": "LocalAnonymousReads", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
         "Resource": "arn:aws:s3:::shared/public/*",
         "Condition": {"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}}},
        {"Sid": "NobodyReadsPrivate", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
         "Resource": "arn:aws:s3:::shared/private/*"},
    ],
}
assert code(other.put_bucket_policy, Bucket="shared", Policy=json.dumps(policy)) == "AccessDenied"
owner.put_bucket_policy(Bucket="shared", Policy=json.dumps(policy))
assert json.loads(owner.get_bucket_policy(Bucket="shared")["Policy"]) == policy
assert code(other.get_bucket_policy, Bucket="shared") == "AccessDenied"

assert other.get_object(Bucket="shared", Key="public/a.txt")["Body"].read() == b"for everyone"
keys = [o["Key"] for o in other.list_objects_v2(Bucket="shared")["Contents"]]
assert keys == ["private/b.txt", "public/a.txt"], keys
assert code(other.get_object, Bucket="shared", Key="private/b.txt") == "AccessDenied"
assert code(other.put_object, Bucket="shared", Key="public/new.txt", Body=b"x") == "AccessDenied"
assert code(other.delete_object, Bucket="shared", Key="public/a.txt") == "AccessDenied"
# The deny holds for the owner too: an explicit deny wins.
assert code(owner.get_object, Bucket="shared", Key="private/b.txt") == "AccessDenied"
assert code(owner.put_object, Bucket="shared", Key="private/c.txt", Body=b"x") == "AccessDenied"
owner.put_object(Bucket="shared", Key="public/c.txt", Body=b"owner writes")
assert anonymous_get("public/a.txt") == "200"
assert anonymous_get("private/b.txt") == "403"

# A PUT refused before its body was asked for (Expect: 100-continue) closes the connection:
# the client may or may not send the body, and the next request must not be read as it.
with socket.create_connection((urllib.parse.urlsplit(ENDPOINT).hostname, urllib.parse.urlsplit(ENDPOINT).port)) as s:
    s.sendall(b"PUT /shared/private/d.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
              b"Expect: 100-continue\r\n\r\n")
    head = s.recv(65536).split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 403") and b"\r\nconnection: close" in head, head
print("ok policy grants and denies")

# Copies need read access to the source.
other.copy_object(Bucket="others", Key="copy.txt", CopySource={"Bucket": "shared", "Key": "public/a.txt"})
assert other.get_object(Bucket="others", Key="copy.txt")["Body"].read() == b"for everyone"
assert code(other.copy_object, Bucket="others", Key="stolen.txt",
            CopySource={"Bucket": "shared", "Key": "private/b.txt"}) == "AccessDenied"
assert code(owner.copy_object, Bucket="shared", Key="public/from-others.txt",
            CopySource={"Bucket": "others", "Key": "copy.txt"}) == "AccessDenied"
print("ok copies")

# What cannot be enforced exactly is refused.
for bad in ["not json", json.dumps({"Statement": []}),
            json.dumps({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "s3:*", "Resource": "*",
                                      "Condition": {"DateGreaterThan": {"aws:CurrentTime": "2020-01-01"}}}})]:
    assert code(owner.put_bucket_policy, Bucket="shared", Policy=bad) == "MalformedPolicy", bad
assert json.loads(owner.get_bucket_policy(Bucket="shared")["Policy"]) == policy, "a refused policy changes nothing"

owner.delete_bucket_policy(Bucket="shared")
assert code(other.get_object, Bucket="shared", Key="public/a.txt") == "AccessDenied"
assert owner.get_object(Bucket="shared", Key="private/b.txt")["Body"].read() == b"for nobody"
print("ok policy removed")

# ACLs: canned on bucket and object, grants by header, what each permission allows.
owner.create_bucket(Bucket="acls", ACL="public-read")
owner.put_object(Bucket="acls", Key="open.txt", Body=b"anyone", ACL="public-read")
owner.put_object(Bucket="acls", Key="closed.txt", Body=b"owner only")
grants = owner.get_bucket_acl(Bucket="acls")["Grants"]
assert {"Type": "Group", "URI": "http://acs.amazonaws.com/groups/global/AllUsers"} in [g["Grantee"] for g in grants]
anon = subprocess.run(["curl", "-s", "-w", " %{http_code}", f"{ENDPOINT}/acls/open.txt"], capture_output=True).stdout
assert anon == b"anyone 200", anon
anon = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{ENDPOINT}/acls/closed.txt"],
                      capture_output=True).stdout
assert anon == b"403", anon
assert [o["Key"] for o in other.list_objects_v2(Bucket="acls")["Contents"]] == ["closed.txt", "open.txt"]
assert code(other.get_object, Bucket="acls", Key="closed.txt") == "AccessDenied"
assert code(other.put_object, Bucket="acls", Key="x", Body=b"x") == "AccessDenied"
got = code(other.put_bucket_acl, Bucket="acls", ACL="public-read-write")
assert got == "AccessDenied", got
owner.put_object_acl(Bucket="acls", Key="closed.txt", GrantRead='id="other"')
assert other.get_object(Bucket="acls", Key="closed.txt")["Body"].read() == b"owner only"
object_grants = owner.get_object_acl(Bucket="acls", Key="closed.txt")["Grants"]
assert [(g["Grantee"].get("ID"), g["Permission"]) for g in object_grants] == [("dev", "FULL_CONTROL"), ("other", "READ")]
owner.put_bucket_acl(Bucket="acls", GrantWrite='id="other"', GrantReadACP='id="other"')
other.put_object(Bucket="acls", Key="from-other.txt", Body=b"written by other")
assert owner.get_object(Bucket="acls", Key="from-other.txt")["Body"].read() == b"written by other"
assert len(other.get_bucket_acl(Bucket="acls")["Grants"]) == 3
assert code(other.list_objects_v2, Bucket="acls") == "AccessDenied", "the new list has no READ"
owner.put_bucket_acl(Bucket="acls", ACL="private")
assert code(other.put_object, Bucket="acls", Key="y", Body=b"y") == "AccessDenied"
assert code(owner.put_bucket_acl, Bucket="acls", GrantRead='emailAddress="a@example.com"') == "NotImplemented"
# A multipart upload's ACL is the completed object's.
upload = owner.create_multipart_upload(Bucket="acls", Key="parts.bin", ACL="public-read")["UploadId"]
part = owner.upload_part(Bucket="acls", Key="parts.bin", UploadId=upload, PartNumber=1, Body=b"in parts")
owner.complete_multipart_upload(Bucket="acls", Key="parts.bin", UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
anon = subprocess.run(["curl", "-s", "-w", " %{http_code}", f"{ENDPOINT}/acls/parts.bin"], capture_output=True).stdout
assert anon == b"in parts 200", anon
object_grants = owner.get_object_acl(Bucket="acls", Key="parts.bin")["Grants"]
assert any(g["Grantee"].get("URI", "").endswith("/AllUsers") and g["Permission"] == "READ" for g in object_grants)
upload = owner.create_multipart_upload(Bucket="acls", Key="private.bin")["UploadId"]
part = owner.upload_part(Bucket="acls", Key="private.bin", UploadId=upload, PartNumber=1, Body=b"owner only")
owner.complete_multipart_upload(Bucket="acls", Key="private.bin", UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
anon = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{ENDPOINT}/acls/private.bin"],
                      capture_output=True).stdout
assert anon == b"403", anon
print("ok ACLs")


# CORS: rules set by the owner, preflights answered, headers on answers.
def curl_headers(*args):
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-D", "-", *args], capture_output=True).stdout.decode()
    lines = out.splitlines()
    status = lines[0].split()[1] if lines else ""
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:]) if v}
    return status, headers


assert code(owner.get_bucket_cors, Bucket="acls") == "NoSuchCORSConfiguration"
rules = [{"AllowedOrigins": ["https://*.example.com"], "AllowedMethods": ["GET", "PUT"],
          "AllowedHeaders": ["content-type", "x-amz-*"], "ExposeHeaders": ["ETag"], "MaxAgeSeconds": 600}]
assert code(other.put_bucket_cors, Bucket="acls", CORSConfiguration={"CORSRules": rules}) == "AccessDenied"
owner.put_bucket_cors(Bucket="acls", CORSConfiguration={"CORSRules": rules})
got = owner.get_bucket_cors(Bucket="acls")["CORSRules"]
assert got[0]["AllowedOrigins"] == ["https://*.example.com"] and got[0]["MaxAgeSeconds"] == 600, got
url = f"{ENDPOINT}/acls/open.txt"
status, headers = curl_headers("-X", "OPTIONS", "-H", "Origin: https://app.example.com",
                               "-H", "Access-Control-Request-Method: PUT",
                               "-H", "Access-Control-Request-Headers: content-type, x-amz-date", url)
assert status == "200", (status, headers)
assert headers["access-control-allow-origin"] == "https://app.example.com", headers
assert headers["access-control-max-age"] == "600" and "PUT" in headers["access-control-allow-methods"]
for refused in [["-H", "Origin: https://evil.com", "-H", "Access-Control-Request-Method: GET"],
                ["-H", "Origin: https://app.example.com", "-H", "Access-Control-Request-Method: DELETE"],
                ["-H", "Origin: https://app.example.com", "-H", "Access-Control-Request-Method: GET",
                 "-H", "Access-Control-Request-Headers: authorization"]]:
    assert curl_headers("-X", "OPTIONS", *refused, url)[0] == "403", refused
status, headers = curl_headers("-H", "Origin: https://app.example.com", url)
assert status == "200" and headers.get("access-control-allow-origin") == "https://app.example.com", headers
assert headers.get("access-control-expose-headers") == "ETag", headers
status, headers = curl_headers("-H", "Origin: https://evil.com", url)
assert status == "200" and "access-control-allow-origin" not in headers, headers
owner.delete_bucket_cors(Bucket="acls")
assert curl_headers("-X", "OPTIONS", "-H", "Origin: https://app.example.com",
                    "-H", "Access-Control-Request-Method: GET", url)[0] == "403"
print("policy checks passed")
