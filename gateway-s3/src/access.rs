//! Who may do what: every request passes [`Access`] before its operation runs.
//!
//! The caller is the tenant of the signing key, or anonymous. A request to a bucket is allowed
//! when the bucket's policy allows it and no statement denies it, or when the caller owns the
//! bucket and the policy does not deny it (IAM's rule: an explicit deny wins). Managing the
//! policy itself (and the lifecycle rules) is the owner's alone, whatever the policy says, so no
//! policy can lock its owner out. Listing buckets and creating one need a signed request. Copies also need read
//! access to their source ([`Authorizer::check`], called by the operations).

use std::{net::IpAddr, sync::Arc};

use s3s::{
    S3Result,
    access::{S3Access, S3AccessContext},
    path::S3Path,
    s3_error,
};

use crate::{
    Peer,
    acl::{Acl, Permission},
    auth::{BucketEntry, Keys, Owners},
    body::cluster_error,
    cluster::{Cluster, ClusterError},
    policy::{Decision, Request},
};

/// The caller of a request, as [`Access`] found it; operations read it from the request's
/// extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The tenant of the signing key; `None` for an anonymous request.
    pub tenant: Option<String>,
    /// The client's address.
    pub source_ip: Option<IpAddr>,
    /// Whether the request came over TLS.
    pub secure: bool,
}

/// Operations that manage a bucket's policy, lifecycle and CORS rules: the owner's alone.
const OWNER_OPERATIONS: [&str; 9] = [
    "PutBucketPolicy",
    "GetBucketPolicy",
    "DeleteBucketPolicy",
    "PutBucketLifecycleConfiguration",
    "GetBucketLifecycleConfiguration",
    "DeleteBucketLifecycle",
    "PutBucketCors",
    "GetBucketCors",
    "DeleteBucketCors",
];

/// The IAM action of an S3 operation (the names S3's documentation gives them).
pub fn action(operation: &str, versioned: bool) -> &'static str {
    match operation {
        "GetObject" | "HeadObject" if versioned => "s3:GetObjectVersion",
        "GetObject" | "HeadObject" => "s3:GetObject",
        "PutObject"
        | "CopyObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "UploadPartCopy"
        | "CompleteMultipartUpload" => "s3:PutObject",
        "DeleteObject" if versioned => "s3:DeleteObjectVersion",
        "DeleteObject" | "DeleteObjects" => "s3:DeleteObject",
        "AbortMultipartUpload" => "s3:AbortMultipartUpload",
        "ListParts" => "s3:ListMultipartUploadParts",
        "ListObjects" | "ListObjectsV2" | "HeadBucket" => "s3:ListBucket",
        "ListObjectVersions" => "s3:ListBucketVersions",
        "ListMultipartUploads" => "s3:ListBucketMultipartUploads",
        "GetBucketLocation" => "s3:GetBucketLocation",
        "DeleteBucket" => "s3:DeleteBucket",
        "CreateBucket" => "s3:CreateBucket",
        "ListBuckets" => "s3:ListAllMyBuckets",
        "PutBucketPolicy" => "s3:PutBucketPolicy",
        "GetBucketPolicy" => "s3:GetBucketPolicy",
        "DeleteBucketPolicy" => "s3:DeleteBucketPolicy",
        "PutBucketVersioning" => "s3:PutBucketVersioning",
        "GetBucketAcl" => "s3:GetBucketAcl",
        "PutBucketCors" | "DeleteBucketCors" => "s3:PutBucketCORS",
        "GetBucketCors" => "s3:GetBucketCORS",
        "PutBucketAcl" => "s3:PutBucketAcl",
        "GetObjectAcl" if versioned => "s3:GetObjectVersionAcl",
        "GetObjectAcl" => "s3:GetObjectAcl",
        "PutObjectAcl" if versioned => "s3:PutObjectVersionAcl",
        "PutObjectAcl" => "s3:PutObjectAcl",
        "GetBucketVersioning" => "s3:GetBucketVersioning",
        // S3 names one action for putting and deleting a lifecycle configuration.
        "PutBucketLifecycleConfiguration" | "DeleteBucketLifecycle" => {
            "s3:PutLifecycleConfiguration"
        }
        "GetBucketLifecycleConfiguration" => "s3:GetLifecycleConfiguration",
        _ => "s3:Unknown",
    }
}

/// Decodes a percent-encoded query value (`+` is a space); `None` if it is not UTF-8.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The value of query parameter `name`, decoded.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| decode(v))
}

/// The decision shared by the access hook and the operations.
pub struct Authorizer<C> {
    pub(crate) cluster: C,
    pub(crate) keys: Arc<Keys<C>>,
    pub(crate) owners: Arc<Owners<C>>,
}

/// What an operation needs from an ACL: the object's list (true) or the bucket's, and which
/// permission. `None`: no ACL grants it (bucket configuration, deleting the bucket).
fn acl_need(operation: &str) -> Option<(bool, Permission)> {
    Some(match operation {
        "GetObject" | "HeadObject" => (true, Permission::Read),
        "GetObjectAcl" => (true, Permission::ReadAcp),
        "PutObjectAcl" => (true, Permission::WriteAcp),
        "ListObjects"
        | "ListObjectsV2"
        | "ListObjectVersions"
        | "ListMultipartUploads"
        | "HeadBucket"
        | "GetBucketLocation" => (false, Permission::Read),
        "PutObject"
        | "CopyObject"
        | "DeleteObject"
        | "DeleteObjects"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "UploadPartCopy"
        | "CompleteMultipartUpload"
        | "AbortMultipartUpload"
        | "ListParts" => (false, Permission::Write),
        "GetBucketAcl" => (false, Permission::ReadAcp),
        "PutBucketAcl" => (false, Permission::WriteAcp),
        _ => return None,
    })
}

/// One authorization question.
pub struct Question<'a> {
    /// Who asks.
    pub caller: &'a Caller,
    /// The operation's name (s3s's).
    pub operation: &'a str,
    /// The bucket.
    pub bucket: &'a str,
    /// The key, for object operations.
    pub key: Option<&'a str>,
    /// Whether a version id was given.
    pub versioned: bool,
    /// The version id, if one was given.
    pub version_id: Option<&'a str>,
    /// A listing's prefix.
    pub prefix: Option<&'a str>,
    /// A listing's delimiter.
    pub delimiter: Option<&'a str>,
}

impl<C: Cluster> Authorizer<C> {
    /// Allows or refuses `question` (`NoSuchBucket` for a signed request to a missing bucket,
    /// `AccessDenied` for a refusal).
    pub async fn check(&self, question: &Question<'_>) -> S3Result<()> {
        let caller = question.caller;
        let Some(bucket) = self.owners.get(question.bucket).await? else {
            return if caller.tenant.is_some() {
                Err(s3_error!(
                    NoSuchBucket,
                    "The specified bucket does not exist"
                ))
            } else {
                Err(s3_error!(AccessDenied, "Access Denied"))
            };
        };
        let owner = caller.tenant.as_deref() == Some(bucket.info.tenant.as_str());
        if OWNER_OPERATIONS.contains(&question.operation) {
            return if owner {
                Ok(())
            } else {
                Err(s3_error!(AccessDenied, "Access Denied"))
            };
        }
        let resource = match question.key {
            Some(key) => format!("arn:aws:s3:::{}/{key}", question.bucket),
            None => format!("arn:aws:s3:::{}", question.bucket),
        };
        let decision = match &bucket.policy {
            None => Decision::NotApplicable,
            Some(Ok(policy)) => policy.evaluate(&Request {
                tenant: caller.tenant.as_deref(),
                action: action(question.operation, question.versioned),
                resource: &resource,
                source_ip: caller.source_ip,
                secure: caller.secure,
                prefix: question.prefix,
                delimiter: question.delimiter,
            }),
            // A stored policy this gateway cannot read grants nothing and denies everyone but
            // the owner, who can replace it.
            Some(Err(_)) if owner => Decision::NotApplicable,
            Some(Err(_)) => Decision::Deny,
        };
        let allowed = match decision {
            Decision::Allow => true,
            Decision::Deny => false,
            Decision::NotApplicable => owner || self.acl_allows(&bucket, question).await?,
        };
        if allowed {
            Ok(())
        } else {
            Err(s3_error!(AccessDenied, "Access Denied"))
        }
    }

    /// Whether the bucket's or the object's ACL grants what `question` needs.
    async fn acl_allows(&self, bucket: &BucketEntry, question: &Question<'_>) -> S3Result<bool> {
        let Some((on_object, permission)) = acl_need(question.operation) else {
            return Ok(false);
        };
        let tenant = question.caller.tenant.as_deref();
        if !on_object {
            let acl = bucket.info.documents.get("acl").map(|t| Acl::from_text(t));
            return Ok(acl.is_some_and(|acl| acl.allows(tenant, permission)));
        }
        let Some(key) = question.key else {
            return Ok(false);
        };
        let version = question.version_id.map(str::to_string);
        let found = self
            .cluster
            .object(question.bucket.to_string(), key.to_string(), version)
            .await;
        let acl = match found {
            Ok(Some(found)) => found.record.and_then(|r| r.acl),
            // A missing object: the refusal does not tell it apart from a denied one.
            Ok(None) | Err(ClusterError::NotFound(_)) => None,
            Err(e) => return Err(cluster_error(e)),
        };
        Ok(acl.is_some_and(|text| Acl::from_text(&text).allows(tenant, permission)))
    }

    /// The caller of a request signed with `access_key` (or anonymous) from `peer`.
    pub async fn caller(&self, access_key: Option<&str>, peer: Option<Peer>) -> S3Result<Caller> {
        let tenant = match access_key {
            Some(key) => Some(self.keys.get(key).await?.tenant),
            None => None,
        };
        Ok(Caller {
            tenant,
            source_ip: peer.map(|p| p.addr.ip()),
            secure: peer.is_some_and(|p| p.tls),
        })
    }
}

/// The s3s access hook over an [`Authorizer`].
pub struct Access<C>(pub Arc<Authorizer<C>>);

#[async_trait::async_trait]
impl<C: Cluster> S3Access for Access<C> {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let peer = cx
            .extensions_mut()
            .get::<axum::extract::ConnectInfo<Peer>>()
            .map(|c| c.0);
        let access_key = cx.credentials().map(|c| c.access_key.clone());
        let caller = self.0.caller(access_key.as_deref(), peer).await?;
        let operation = cx.s3_op().name().to_string();
        let query = cx.uri().query().map(str::to_string);
        // What the path names, owned: the context is borrowed again below.
        let (bucket, key): (Option<String>, Option<String>) = match cx.s3_path() {
            S3Path::Root => (None, None),
            S3Path::Bucket { bucket } => (Some(bucket.to_string()), None),
            S3Path::Object { bucket, key } => (Some(bucket.to_string()), Some(key.to_string())),
        };
        match bucket {
            None => {
                if caller.tenant.is_none() {
                    return Err(s3_error!(AccessDenied, "Signature is required"));
                }
            }
            Some(_) if operation == "CreateBucket" => {
                if caller.tenant.is_none() {
                    return Err(s3_error!(AccessDenied, "Signature is required"));
                }
            }
            Some(bucket) => {
                let prefix = query_value(query.as_deref(), "prefix");
                let version = query_value(query.as_deref(), "versionId");
                let delimiter = query_value(query.as_deref(), "delimiter");
                self.0
                    .check(&Question {
                        caller: &caller,
                        operation: &operation,
                        bucket: &bucket,
                        key: key.as_deref(),
                        versioned: version.is_some(),
                        version_id: version.as_deref(),
                        prefix: prefix.as_deref(),
                        delimiter: delimiter.as_deref(),
                    })
                    .await?;
            }
        }
        cx.extensions_mut().insert(caller);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        let q = Some("list-type=2&prefix=a%2Fb+c&delimiter=%2F&bad=%zz&versionId");
        assert_eq!(query_value(q, "prefix").as_deref(), Some("a/b c"));
        assert_eq!(query_value(q, "delimiter").as_deref(), Some("/"));
        assert_eq!(query_value(q, "bad"), None);
        assert_eq!(query_value(q, "versionId").as_deref(), Some(""));
        assert_eq!(query_value(q, "missing"), None);
        assert_eq!(query_value(Some("prefix=%4"), "prefix"), None);
        assert_eq!(query_value(None, "prefix"), None);
    }

    #[test]
    fn every_operation_the_gateway_serves_has_an_action() {
        for op in [
            "GetObject",
            "HeadObject",
            "PutObject",
            "CopyObject",
            "DeleteObject",
            "DeleteObjects",
            "ListObjects",
            "ListObjectsV2",
            "CreateMultipartUpload",
            "UploadPart",
            "UploadPartCopy",
            "CompleteMultipartUpload",
            "AbortMultipartUpload",
            "ListParts",
            "ListMultipartUploads",
            "HeadBucket",
            "GetBucketLocation",
            "DeleteBucket",
            "CreateBucket",
            "ListBuckets",
            "PutBucketLifecycleConfiguration",
            "GetBucketLifecycleConfiguration",
            "DeleteBucketLifecycle",
        ] {
            assert_ne!(action(op, false), "s3:Unknown", "{op}");
        }
    }
}
