//! Access control lists on buckets and objects, as S3 has them: canned ACLs, `x-amz-grant-*`
//! headers and `AccessControlPolicy` documents, turned into one list of grants.
//!
//! A bucket's owner owns every object in it (S3's "bucket owner preferred" ownership: a
//! tenant writing into another's bucket through a grant or a policy does not own what it
//! wrote), and always holds full control, whatever the list says. Grantees are tenants (by
//! canonical id, which is the tenant's name), all users (anonymous included) or authenticated
//! users (any tenant); grants by e-mail address are refused.

use s3s::{S3Result, dto, s3_error};
use serde::{Deserialize, Serialize};

/// Most grants in one list (S3's limit).
pub const GRANTS_MAX: usize = 100;

const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";
const AUTHENTICATED_USERS: &str = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers";

/// Who a grant is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grantee {
    /// Everyone, anonymous requests included.
    AllUsers,
    /// Any signed request.
    AuthenticatedUsers,
    /// One tenant.
    Tenant(String),
}

/// What a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Permission {
    /// List a bucket; read an object.
    Read,
    /// Write and delete objects in a bucket.
    Write,
    /// Read the ACL.
    ReadAcp,
    /// Change the ACL.
    WriteAcp,
    /// All of the above.
    FullControl,
}

impl Permission {
    fn as_str(self) -> &'static str {
        match self {
            Permission::Read => dto::Permission::READ,
            Permission::Write => dto::Permission::WRITE,
            Permission::ReadAcp => dto::Permission::READ_ACP,
            Permission::WriteAcp => dto::Permission::WRITE_ACP,
            Permission::FullControl => dto::Permission::FULL_CONTROL,
        }
    }

    fn parse(text: &str) -> S3Result<Permission> {
        Ok(match text {
            dto::Permission::READ => Permission::Read,
            dto::Permission::WRITE => Permission::Write,
            dto::Permission::READ_ACP => Permission::ReadAcp,
            dto::Permission::WRITE_ACP => Permission::WriteAcp,
            dto::Permission::FULL_CONTROL => Permission::FullControl,
            other => return Err(s3_error!(MalformedACLError, "no permission {other:?}")),
        })
    }
}

/// An access control list (the owner's full control is implied, never listed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    /// The grants.
    pub grants: Vec<(Grantee, Permission)>,
}

/// The `x-amz-grant-*` headers of a request.
#[derive(Clone, Debug, Default)]
pub struct GrantHeaders<'a> {
    /// x-amz-grant-read.
    pub read: Option<&'a str>,
    /// x-amz-grant-write.
    pub write: Option<&'a str>,
    /// x-amz-grant-read-acp.
    pub read_acp: Option<&'a str>,
    /// x-amz-grant-write-acp.
    pub write_acp: Option<&'a str>,
    /// x-amz-grant-full-control.
    pub full_control: Option<&'a str>,
}

impl GrantHeaders<'_> {
    fn any(&self) -> bool {
        self.read.is_some()
            || self.write.is_some()
            || self.read_acp.is_some()
            || self.write_acp.is_some()
            || self.full_control.is_some()
    }
}

fn grantee_of_uri(uri: &str) -> S3Result<Grantee> {
    match uri {
        ALL_USERS => Ok(Grantee::AllUsers),
        AUTHENTICATED_USERS => Ok(Grantee::AuthenticatedUsers),
        other => Err(s3_error!(InvalidArgument, "no grantee group {other:?}")),
    }
}

fn tenant_grantee(id: &str) -> S3Result<Grantee> {
    if id.is_empty() || id.len() > 128 {
        return Err(s3_error!(
            InvalidArgument,
            "grantee id: 1 to 128 characters"
        ));
    }
    Ok(Grantee::Tenant(id.to_string()))
}

impl Acl {
    /// A canned ACL by name. Object-only names that grant the bucket owner access mean
    /// nothing more here (the bucket owner owns every object).
    pub fn canned(name: &str) -> S3Result<Acl> {
        let grants = match name {
            "private" | "bucket-owner-read" | "bucket-owner-full-control" => vec![],
            "public-read" => vec![(Grantee::AllUsers, Permission::Read)],
            "public-read-write" => vec![
                (Grantee::AllUsers, Permission::Read),
                (Grantee::AllUsers, Permission::Write),
            ],
            "authenticated-read" => vec![(Grantee::AuthenticatedUsers, Permission::Read)],
            other => {
                return Err(s3_error!(InvalidArgument, "no canned ACL {other:?}"));
            }
        };
        Ok(Acl { grants })
    }

    /// The ACL of a request: its canned ACL, its grant headers, or its policy document
    /// (exactly one of them; `None` if it has none).
    pub fn from_request(
        canned: Option<&str>,
        headers: &GrantHeaders<'_>,
        policy: Option<&dto::AccessControlPolicy>,
    ) -> S3Result<Option<Acl>> {
        let given = usize::from(canned.is_some())
            + usize::from(headers.any())
            + usize::from(policy.is_some());
        if given > 1 {
            return Err(s3_error!(
                InvalidRequest,
                "give a canned ACL, grant headers or an ACL document, not several"
            ));
        }
        if let Some(name) = canned {
            return Acl::canned(name).map(Some);
        }
        if let Some(policy) = policy {
            return Acl::from_policy(policy).map(Some);
        }
        if !headers.any() {
            return Ok(None);
        }
        let mut grants = Vec::new();
        for (text, permission) in [
            (headers.read, Permission::Read),
            (headers.write, Permission::Write),
            (headers.read_acp, Permission::ReadAcp),
            (headers.write_acp, Permission::WriteAcp),
            (headers.full_control, Permission::FullControl),
        ] {
            for part in text.unwrap_or_default().split(',') {
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                let (kind, value) = part.split_once('=').ok_or_else(|| {
                    s3_error!(InvalidArgument, "grant {part:?}: id=\"...\" or uri=\"...\"")
                })?;
                let value = value.trim().trim_matches('"');
                let grantee = match kind.trim().to_ascii_lowercase().as_str() {
                    "id" => tenant_grantee(value)?,
                    "uri" => grantee_of_uri(value)?,
                    "emailaddress" => {
                        return Err(s3_error!(NotImplemented, "grants by e-mail address"));
                    }
                    other => return Err(s3_error!(InvalidArgument, "grantee type {other:?}")),
                };
                grants.push((grantee, permission));
            }
        }
        Acl { grants }.checked().map(Some)
    }

    fn from_policy(policy: &dto::AccessControlPolicy) -> S3Result<Acl> {
        let mut grants = Vec::new();
        for grant in policy.grants.iter().flatten() {
            let grantee = grant
                .grantee
                .as_ref()
                .ok_or_else(|| s3_error!(MalformedACLError, "a grant without a grantee"))?;
            let permission = grant
                .permission
                .as_ref()
                .ok_or_else(|| s3_error!(MalformedACLError, "a grant without a permission"))?;
            let grantee = match grantee.type_.as_str() {
                dto::Type::CANONICAL_USER => tenant_grantee(grantee.id.as_deref().unwrap_or(""))?,
                dto::Type::GROUP => grantee_of_uri(grantee.uri.as_deref().unwrap_or(""))?,
                dto::Type::AMAZON_CUSTOMER_BY_EMAIL => {
                    return Err(s3_error!(NotImplemented, "grants by e-mail address"));
                }
                other => return Err(s3_error!(MalformedACLError, "grantee type {other:?}")),
            };
            grants.push((grantee, Permission::parse(permission.as_str())?));
        }
        Acl { grants }.checked()
    }

    fn checked(self) -> S3Result<Acl> {
        if self.grants.len() > GRANTS_MAX {
            return Err(s3_error!(MalformedACLError, "at most {GRANTS_MAX} grants"));
        }
        Ok(self)
    }

    /// Whether the list gives `tenant` (`None`: anonymous) `permission`.
    pub fn allows(&self, tenant: Option<&str>, permission: Permission) -> bool {
        self.grants.iter().any(|(grantee, granted)| {
            let who = match grantee {
                Grantee::AllUsers => true,
                Grantee::AuthenticatedUsers => tenant.is_some(),
                Grantee::Tenant(name) => tenant == Some(name.as_str()),
            };
            who && (*granted == permission || *granted == Permission::FullControl)
        })
    }

    /// The list as S3 answers it: the owner with full control first, then the grants.
    pub fn to_dto(&self, owner: &str) -> (dto::Owner, dto::Grants) {
        let owner_dto = dto::Owner {
            display_name: Some(owner.to_string()),
            id: Some(owner.to_string()),
        };
        let tenant = |id: &str| dto::Grantee {
            display_name: Some(id.to_string()),
            email_address: None,
            id: Some(id.to_string()),
            type_: dto::Type::from_static(dto::Type::CANONICAL_USER),
            uri: None,
        };
        let group = |uri: &'static str| dto::Grantee {
            display_name: None,
            email_address: None,
            id: None,
            type_: dto::Type::from_static(dto::Type::GROUP),
            uri: Some(uri.to_string()),
        };
        let mut grants = vec![dto::Grant {
            grantee: Some(tenant(owner)),
            permission: Some(dto::Permission::from_static(dto::Permission::FULL_CONTROL)),
        }];
        for (grantee, permission) in &self.grants {
            let grantee = match grantee {
                Grantee::AllUsers => group(ALL_USERS),
                Grantee::AuthenticatedUsers => group(AUTHENTICATED_USERS),
                Grantee::Tenant(name) => tenant(name),
            };
            grants.push(dto::Grant {
                grantee: Some(grantee),
                permission: Some(dto::Permission::from(permission.as_str().to_string())),
            });
        }
        (owner_dto, grants)
    }

    /// The stored form (JSON).
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{\"grants\":[]}".into())
    }

    /// Reads the stored form; an unreadable list grants nothing.
    pub fn from_text(text: &str) -> Acl {
        serde_json::from_str(text).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canned_lists_grant_what_their_names_say() {
        let public = Acl::canned("public-read").unwrap();
        assert!(public.allows(None, Permission::Read));
        assert!(!public.allows(None, Permission::Write));
        let authenticated = Acl::canned("authenticated-read").unwrap();
        assert!(authenticated.allows(Some("t"), Permission::Read));
        assert!(!authenticated.allows(None, Permission::Read));
        assert!(
            !Acl::canned("private")
                .unwrap()
                .allows(Some("t"), Permission::Read)
        );
        assert!(Acl::canned("public").is_err());
    }

    #[test]
    fn grant_headers_parse_tenants_and_groups() {
        let headers = GrantHeaders {
            read: Some(
                "id=\"acme\", uri=\"http://acs.amazonaws.com/groups/global/AuthenticatedUsers\"",
            ),
            full_control: Some("id=beta"),
            ..GrantHeaders::default()
        };
        let acl = Acl::from_request(None, &headers, None).unwrap().unwrap();
        assert!(acl.allows(Some("acme"), Permission::Read));
        assert!(acl.allows(Some("zeta"), Permission::Read));
        assert!(!acl.allows(None, Permission::Read));
        assert!(acl.allows(Some("beta"), Permission::WriteAcp));
        assert!(!acl.allows(Some("acme"), Permission::Write));
        assert_eq!(Acl::from_text(&acl.to_text()), acl);
        for bad in [
            "emailAddress=\"a@b\"",
            "id",
            "uri=\"http://example.com\"",
            "colour=red",
        ] {
            let headers = GrantHeaders {
                read: Some(bad),
                ..GrantHeaders::default()
            };
            assert!(Acl::from_request(None, &headers, None).is_err(), "{bad}");
        }
        let both = GrantHeaders {
            read: Some("id=a"),
            ..GrantHeaders::default()
        };
        assert!(Acl::from_request(Some("private"), &both, None).is_err());
        assert_eq!(
            Acl::from_request(None, &GrantHeaders::default(), None).unwrap(),
            None
        );
    }

    #[test]
    fn lists_answer_with_the_owner_first() {
        let acl = Acl::canned("public-read").unwrap();
        let (owner, grants) = acl.to_dto("acme");
        assert_eq!(owner.id.as_deref(), Some("acme"));
        assert_eq!(grants.len(), 2);
        let back = Acl::from_policy(&dto::AccessControlPolicy {
            grants: Some(grants[1..].to_vec()),
            owner: Some(owner),
        })
        .unwrap();
        assert_eq!(back, acl);
    }
}
