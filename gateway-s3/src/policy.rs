//! Bucket policies: the IAM policy language as S3 bucket policies use it, parsed once and
//! evaluated for every request to the bucket.
//!
//! Supported: `Version`, `Statement` (one or a list), `Sid`, `Effect` (`Allow`, `Deny`),
//! `Principal` (`"*"`, or `{"AWS": ...}` naming tenants, as `TENANT`, `arn:aws:iam::TENANT:root`
//! or `*`), `Action` / `NotAction` (`s3:GetObject`, wildcards `*` and `?`), `Resource` /
//! `NotResource` (`arn:aws:s3:::bucket/prefix*`), and `Condition` with the operators
//! `IpAddress`, `NotIpAddress` (key `aws:SourceIp`, CIDR or address), `Bool` (key
//! `aws:SecureTransport`), `StringEquals`, `StringNotEquals`, `StringLike`, `StringNotLike`
//! (keys `aws:SourceIp`, `aws:SecureTransport`, `aws:username` (the tenant), `s3:prefix`,
//! `s3:delimiter`). A policy using anything else is refused when it is set
//! (`MalformedPolicy`), never ignored: an ignored condition would grant more than was written.
//!
//! Evaluation follows IAM's rule: an explicit `Deny` that matches wins; otherwise a matching
//! `Allow` grants; otherwise the policy says nothing (the bucket owner keeps access, everyone
//! else is refused).

use std::net::IpAddr;

use serde_json::Value;

/// Largest policy document (S3's limit).
pub const POLICY_BYTES_MAX: usize = 20 << 10;
/// Most statements in one policy: bounds evaluation per request.
pub const STATEMENTS_MAX: usize = 100;
/// Most values in one list (actions, resources, principals, condition values).
pub const VALUES_MAX: usize = 100;

/// What a policy says about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A statement allows it and none denies it.
    Allow,
    /// A statement denies it.
    Deny,
    /// No statement matches.
    NotApplicable,
}

/// The facts a policy is evaluated against.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// The tenant signing the request; `None` for anonymous requests.
    pub tenant: Option<&'a str>,
    /// The IAM action, such as `s3:GetObject`.
    pub action: &'a str,
    /// The resource ARN: `arn:aws:s3:::bucket` or `arn:aws:s3:::bucket/key`.
    pub resource: &'a str,
    /// The client's address.
    pub source_ip: Option<IpAddr>,
    /// Whether the request came over TLS.
    pub secure: bool,
    /// The `prefix` of a listing, if any.
    pub prefix: Option<&'a str>,
    /// The `delimiter` of a listing, if any.
    pub delimiter: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Principal {
    Anyone,
    Tenants(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Match {
    Any(Vec<String>),
    NoneOf(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    IpAddress,
    NotIpAddress,
    Bool,
    StringEquals,
    StringNotEquals,
    StringLike,
    StringNotLike,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Condition {
    operator: Operator,
    key: String,
    values: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Statement {
    allow: bool,
    principal: Principal,
    actions: Match,
    resources: Match,
    conditions: Vec<Condition>,
}

/// A parsed bucket policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    statements: Vec<Statement>,
}

fn strings(value: &Value, what: &str) -> Result<Vec<String>, String> {
    let list = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{what}: every entry must be a string"))
            })
            .collect::<Result<_, _>>()?,
        // Bool conditions are often written as JSON booleans.
        Value::Bool(b) => vec![b.to_string()],
        _ => return Err(format!("{what}: a string or a list of strings")),
    };
    if list.is_empty() || list.len() > VALUES_MAX {
        return Err(format!("{what}: 1 to {VALUES_MAX} entries"));
    }
    Ok(list)
}

fn tenant_of(principal: &str) -> Result<String, String> {
    if principal == "*" {
        return Ok("*".into());
    }
    if let Some(rest) = principal.strip_prefix("arn:aws:iam::") {
        return match rest.split_once(':') {
            Some((tenant, "root")) if !tenant.is_empty() => Ok(tenant.to_string()),
            _ => Err(format!(
                "principal {principal:?}: arn:aws:iam::TENANT:root or a tenant name"
            )),
        };
    }
    if principal.is_empty() || principal.contains(':') {
        return Err(format!(
            "principal {principal:?}: arn:aws:iam::TENANT:root or a tenant name"
        ));
    }
    Ok(principal.to_string())
}

fn principal(value: &Value) -> Result<Principal, String> {
    match value {
        Value::String(s) if s == "*" => Ok(Principal::Anyone),
        Value::Object(map) => {
            let mut tenants = Vec::new();
            for (kind, names) in map {
                if kind != "AWS" {
                    return Err(format!(
                        "principal type {kind:?}: only \"AWS\" is supported"
                    ));
                }
                for name in strings(names, "Principal")? {
                    tenants.push(tenant_of(&name)?);
                }
            }
            if tenants.iter().any(|t| t == "*") {
                return Ok(Principal::Anyone);
            }
            if tenants.is_empty() {
                return Err("Principal names nobody".into());
            }
            Ok(Principal::Tenants(tenants))
        }
        _ => Err("Principal: \"*\" or {\"AWS\": ...}".into()),
    }
}

fn pair(statement: &serde_json::Map<String, Value>, yes: &str, no: &str) -> Result<Match, String> {
    match (statement.get(yes), statement.get(no)) {
        (Some(v), None) => Ok(Match::Any(strings(v, yes)?)),
        (None, Some(v)) => Ok(Match::NoneOf(strings(v, no)?)),
        _ => Err(format!("a statement needs exactly one of {yes} and {no}")),
    }
}

fn conditions(value: &Value) -> Result<Vec<Condition>, String> {
    let Value::Object(operators) = value else {
        return Err("Condition: an object of operators".into());
    };
    let mut out = Vec::new();
    for (name, keys) in operators {
        let operator = match name.as_str() {
            "IpAddress" => Operator::IpAddress,
            "NotIpAddress" => Operator::NotIpAddress,
            "Bool" => Operator::Bool,
            "StringEquals" => Operator::StringEquals,
            "StringNotEquals" => Operator::StringNotEquals,
            "StringLike" => Operator::StringLike,
            "StringNotLike" => Operator::StringNotLike,
            other => return Err(format!("condition operator {other:?} is not supported")),
        };
        let Value::Object(keys) = keys else {
            return Err(format!("{name}: an object of condition keys"));
        };
        for (key, values) in keys {
            let key = key.to_ascii_lowercase();
            let supported = match operator {
                Operator::IpAddress | Operator::NotIpAddress => key == "aws:sourceip",
                Operator::Bool => key == "aws:securetransport",
                _ => matches!(
                    key.as_str(),
                    "aws:sourceip"
                        | "aws:securetransport"
                        | "aws:username"
                        | "s3:prefix"
                        | "s3:delimiter"
                ),
            };
            if !supported {
                return Err(format!(
                    "condition key {key:?} is not supported with {name}"
                ));
            }
            let values = strings(values, name)?;
            if matches!(operator, Operator::IpAddress | Operator::NotIpAddress) {
                for v in &values {
                    cidr(v).ok_or_else(|| format!("{name}: {v:?} is not an address or CIDR"))?;
                }
            }
            if operator == Operator::Bool
                && values
                    .iter()
                    .any(|v| !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false"))
            {
                return Err(format!("{name}: true or false"));
            }
            out.push(Condition {
                operator,
                key,
                values,
            });
        }
    }
    Ok(out)
}

impl Policy {
    /// Parses a policy document, refusing anything it would not enforce exactly.
    pub fn parse(text: &str) -> Result<Policy, String> {
        if text.len() > POLICY_BYTES_MAX {
            return Err(format!("a policy holds at most {POLICY_BYTES_MAX} bytes"));
        }
        let document: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(document) = document else {
            return Err("a policy is a JSON object".into());
        };
        for key in document.keys() {
            if !matches!(key.as_str(), "Version" | "Id" | "Statement") {
                return Err(format!("unknown policy element {key:?}"));
            }
        }
        if let Some(version) = document.get("Version")
            && !matches!(version.as_str(), Some("2012-10-17" | "2008-10-17"))
        {
            return Err("Version: 2012-10-17 or 2008-10-17".into());
        }
        let statements = match document.get("Statement") {
            Some(Value::Array(list)) => list.clone(),
            Some(one @ Value::Object(_)) => vec![one.clone()],
            _ => return Err("Statement: an object or a list of objects".into()),
        };
        if statements.is_empty() || statements.len() > STATEMENTS_MAX {
            return Err(format!("1 to {STATEMENTS_MAX} statements"));
        }
        let mut parsed = Vec::with_capacity(statements.len());
        for statement in &statements {
            let Value::Object(statement) = statement else {
                return Err("every statement is an object".into());
            };
            for key in statement.keys() {
                if !matches!(
                    key.as_str(),
                    "Sid"
                        | "Effect"
                        | "Principal"
                        | "Action"
                        | "NotAction"
                        | "Resource"
                        | "NotResource"
                        | "Condition"
                ) {
                    return Err(format!("statement element {key:?} is not supported"));
                }
            }
            let allow = match statement.get("Effect").and_then(Value::as_str) {
                Some("Allow") => true,
                Some("Deny") => false,
                _ => return Err("Effect: Allow or Deny".into()),
            };
            let principal = principal(
                statement
                    .get("Principal")
                    .ok_or("a bucket policy statement needs a Principal")?,
            )?;
            let actions = pair(statement, "Action", "NotAction")?;
            for action in match &actions {
                Match::Any(a) | Match::NoneOf(a) => a,
            } {
                if !(action == "*" || action.to_ascii_lowercase().starts_with("s3:")) {
                    return Err(format!("action {action:?}: s3:NAME or *"));
                }
            }
            let resources = pair(statement, "Resource", "NotResource")?;
            for resource in match &resources {
                Match::Any(r) | Match::NoneOf(r) => r,
            } {
                if !(resource == "*" || resource.starts_with("arn:aws:s3:::")) {
                    return Err(format!("resource {resource:?}: arn:aws:s3:::BUCKET[/KEY]"));
                }
            }
            let conditions = match statement.get("Condition") {
                Some(c) => conditions(c)?,
                None => Vec::new(),
            };
            parsed.push(Statement {
                allow,
                principal,
                actions,
                resources,
                conditions,
            });
        }
        Ok(Policy { statements: parsed })
    }

    /// What the policy says about `request`.
    pub fn evaluate(&self, request: &Request<'_>) -> Decision {
        let mut allowed = false;
        for statement in &self.statements {
            if statement.matches(request) {
                if !statement.allow {
                    return Decision::Deny;
                }
                allowed = true;
            }
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::NotApplicable
        }
    }
}

impl Statement {
    fn matches(&self, request: &Request<'_>) -> bool {
        let principal = match &self.principal {
            Principal::Anyone => true,
            Principal::Tenants(tenants) => request
                .tenant
                .is_some_and(|t| tenants.iter().any(|name| name == t)),
        };
        principal
            && matches_any(&self.actions, request.action, true)
            && matches_any(&self.resources, request.resource, false)
            && self.conditions.iter().all(|c| c.holds(request))
    }
}

fn matches_any(m: &Match, value: &str, case_insensitive: bool) -> bool {
    let hit = |patterns: &[String]| {
        patterns.iter().any(|p| {
            if case_insensitive {
                glob(&p.to_ascii_lowercase(), &value.to_ascii_lowercase())
            } else {
                glob(p, value)
            }
        })
    };
    match m {
        Match::Any(patterns) => hit(patterns),
        Match::NoneOf(patterns) => !hit(patterns),
    }
}

impl Condition {
    fn holds(&self, request: &Request<'_>) -> bool {
        let secure = request.secure.to_string();
        let ip = request.source_ip.map(|ip| ip.to_string());
        let value: Option<&str> = match self.key.as_str() {
            "aws:sourceip" => ip.as_deref(),
            "aws:securetransport" => Some(secure.as_str()),
            "aws:username" => request.tenant,
            "s3:prefix" => request.prefix,
            "s3:delimiter" => request.delimiter,
            _ => None,
        };
        let any = |f: &dyn Fn(&str, &str) -> bool| {
            value.is_some_and(|v| self.values.iter().any(|want| f(want, v)))
        };
        match self.operator {
            Operator::IpAddress => request.source_ip.is_some_and(|ip| {
                self.values
                    .iter()
                    .any(|c| cidr(c).is_some_and(|c| c.contains(ip)))
            }),
            Operator::NotIpAddress => request.source_ip.is_some_and(|ip| {
                !self
                    .values
                    .iter()
                    .any(|c| cidr(c).is_some_and(|c| c.contains(ip)))
            }),
            Operator::Bool => any(&|want, v| want.eq_ignore_ascii_case(v)),
            Operator::StringEquals => any(&|want, v| want == v),
            // A key with no value (no prefix given) is "not equal" to everything, as in IAM.
            Operator::StringNotEquals => !any(&|want, v| want == v),
            Operator::StringLike => any(&|want, v| glob(want, v)),
            Operator::StringNotLike => !any(&|want, v| glob(want, v)),
        }
    }
}

/// An address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    bits: u8,
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

fn cidr(text: &str) -> Option<Cidr> {
    let (address, bits) = match text.split_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
        None => (text, None),
    };
    let network: IpAddr = address.parse().ok()?;
    let max = if network.is_ipv4() { 32 } else { 128 };
    let bits = bits.unwrap_or(max);
    (bits <= max).then_some(Cidr { network, bits })
}

/// IAM wildcard matching: `*` any run of characters, `?` any one character. Iterative with one
/// backtrack point, so no pattern makes it slow (linear in practice, quadratic at worst).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(tenant: Option<&'a str>, action: &'a str, resource: &'a str) -> Request<'a> {
        Request {
            tenant,
            action,
            resource,
            source_ip: Some("10.1.2.3".parse().unwrap()),
            secure: false,
            prefix: None,
            delimiter: None,
        }
    }

    #[test]
    fn globs_match_like_iam() {
        assert!(glob("arn:aws:s3:::b/*", "arn:aws:s3:::b/x/y"));
        assert!(glob("s3:Get*", "s3:GetObject"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*", ""));
        assert!(!glob("arn:aws:s3:::b/private/*", "arn:aws:s3:::b/public/x"));
        assert!(glob("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!glob("*a*b*c*d", "xxaxxbxxcxx"));
    }

    #[test]
    fn deny_wins_over_allow() {
        let policy = Policy::parse(
            r#"{"Version":"2012-10-17","Statement":[
              {"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/*"},
              {"Effect":"Deny","Principal":{"AWS":"*"},"Action":"s3:*","Resource":"arn:aws:s3:::b/secret/*"}]}"#,
        )
        .unwrap();
        let get = |r| policy.evaluate(&request(None, "s3:GetObject", r));
        assert_eq!(get("arn:aws:s3:::b/public/x"), Decision::Allow);
        assert_eq!(get("arn:aws:s3:::b/secret/x"), Decision::Deny);
        assert_eq!(
            policy.evaluate(&request(Some("t"), "s3:PutObject", "arn:aws:s3:::b/x")),
            Decision::NotApplicable
        );
    }

    #[test]
    fn principals_name_tenants() {
        let policy = Policy::parse(
            r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":["arn:aws:iam::acme:root","beta"]},
               "Action":["s3:GetObject","s3:ListBucket"],"Resource":["arn:aws:s3:::b","arn:aws:s3:::b/*"]}}"#,
        )
        .unwrap();
        for (tenant, want) in [
            (Some("acme"), Decision::Allow),
            (Some("beta"), Decision::Allow),
            (Some("other"), Decision::NotApplicable),
            (None, Decision::NotApplicable),
        ] {
            assert_eq!(
                policy.evaluate(&request(tenant, "s3:ListBucket", "arn:aws:s3:::b")),
                want
            );
        }
    }

    #[test]
    fn conditions_on_address_and_transport() {
        let policy = Policy::parse(
            r#"{"Statement":[
              {"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"*",
               "Condition":{"IpAddress":{"aws:SourceIp":["10.0.0.0/8","192.168.1.7"]}}},
              {"Effect":"Deny","Principal":"*","Action":"s3:*","Resource":"*",
               "Condition":{"Bool":{"aws:SecureTransport":false}}}]}"#,
        )
        .unwrap();
        let mut r = request(None, "s3:GetObject", "arn:aws:s3:::b/k");
        assert_eq!(policy.evaluate(&r), Decision::Deny, "plain HTTP is denied");
        r.secure = true;
        assert_eq!(policy.evaluate(&r), Decision::Allow);
        r.source_ip = Some("11.0.0.1".parse().unwrap());
        assert_eq!(policy.evaluate(&r), Decision::NotApplicable);
        r.source_ip = Some("192.168.1.7".parse().unwrap());
        assert_eq!(policy.evaluate(&r), Decision::Allow);
        r.source_ip = Some("::ffff:10.9.9.9".parse().unwrap());
        assert_eq!(
            policy.evaluate(&r),
            Decision::Allow,
            "v4-mapped v6 addresses"
        );
    }

    #[test]
    fn not_action_and_string_conditions() {
        let policy = Policy::parse(
            r#"{"Statement":{"Effect":"Deny","Principal":"*","NotAction":"s3:Get*","Resource":"*",
               "Condition":{"StringNotLike":{"s3:prefix":"home/*"}}}}"#,
        )
        .unwrap();
        let mut r = request(Some("t"), "s3:ListBucket", "arn:aws:s3:::b");
        assert_eq!(
            policy.evaluate(&r),
            Decision::Deny,
            "no prefix is not like home/*"
        );
        r.prefix = Some("home/alice/");
        assert_eq!(policy.evaluate(&r), Decision::NotApplicable);
        r.prefix = None;
        r.action = "s3:GetObject";
        assert_eq!(policy.evaluate(&r), Decision::NotApplicable);
    }

    #[test]
    fn what_cannot_be_enforced_is_refused() {
        for bad in [
            "",
            "[]",
            r#"{"Statement":[]}"#,
            r#"{"Statement":{"Effect":"Allow","Action":"s3:*","Resource":"*"}}"#,
            r#"{"Statement":{"Effect":"Maybe","Principal":"*","Action":"s3:*","Resource":"*"}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"s3:*","NotResource":"*","Resource":"*"}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"ec2:*","Resource":"*"}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"s3:*","Resource":"*",
                "Condition":{"DateGreaterThan":{"aws:CurrentTime":"2020-01-01"}}}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"s3:*","Resource":"*",
                "Condition":{"IpAddress":{"aws:SourceIp":"10.0.0.0/33"}}}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":{"Service":"x"},"Action":"s3:*","Resource":"*"}}"#,
            r#"{"Version":"2030-01-01","Statement":{"Effect":"Allow","Principal":"*","Action":"s3:*","Resource":"*"}}"#,
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
        assert!(Policy::parse(&"x".repeat(POLICY_BYTES_MAX + 1)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parsing_and_evaluating_never_panic(text in "\\PC{0,300}", action in "\\PC{0,20}", resource in "\\PC{0,40}") {
            if let Ok(policy) = Policy::parse(&text) {
                let _ = policy.evaluate(&request(Some("t"), &action, &resource));
            }
        }

        #[test]
        fn glob_agrees_with_a_regex_model(pattern in "[ab*?]{0,8}", text in "[ab]{0,10}") {
            // Model: translate to a regular expression by hand and match by brute force.
            fn model(p: &[char], t: &[char]) -> bool {
                match p.split_first() {
                    None => t.is_empty(),
                    Some(('*', rest)) => (0..=t.len()).any(|i| model(rest, &t[i..])),
                    Some(('?', rest)) => !t.is_empty() && model(rest, &t[1..]),
                    Some((c, rest)) => t.first() == Some(c) && model(rest, &t[1..]),
                }
            }
            let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
            proptest::prop_assert_eq!(glob(&pattern, &text), model(&p, &t));
        }
    }
}
