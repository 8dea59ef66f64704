//! CORS: a bucket's rules, as S3 keeps them, answered for browsers.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here,
//! without signature (browsers send none): 200 with the matching rule's headers, or 403. Any
//! other request carrying `Origin` gets the matching rule's `Access-Control-*` headers on its
//! answer. Rules match in order: the first whose origins, method and (for a preflight)
//! requested headers all match wins; `*` in an origin or header pattern matches any run of
//! characters.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, Response, StatusCode},
    middleware::Next,
};
use s3s::{S3Result, dto, s3_error};
use serde::{Deserialize, Serialize};

use crate::{auth::Owners, cluster::Cluster, policy::glob};

/// Most rules in one configuration (S3's limit).
pub const RULES_MAX: usize = 100;

/// One CORS rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Its id, if given.
    pub id: Option<String>,
    /// Origins it allows (patterns with at most one `*`).
    pub origins: Vec<String>,
    /// Methods it allows: GET, PUT, POST, DELETE, HEAD.
    pub methods: Vec<String>,
    /// Request headers a preflight may ask for (patterns).
    pub headers: Vec<String>,
    /// Response headers the browser may show the page.
    pub expose: Vec<String>,
    /// How long a browser may cache a preflight answer.
    pub max_age: Option<i32>,
}

/// A bucket's CORS configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cors {
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

impl Cors {
    /// From S3's document, checked.
    pub fn from_dto(configuration: &dto::CORSConfiguration) -> S3Result<Cors> {
        if configuration.cors_rules.is_empty() || configuration.cors_rules.len() > RULES_MAX {
            return Err(s3_error!(MalformedXML, "1 to {RULES_MAX} CORS rules"));
        }
        let mut rules = Vec::new();
        for rule in &configuration.cors_rules {
            let methods: Vec<String> = rule
                .allowed_methods
                .iter()
                .map(|m| m.as_str().to_string())
                .collect();
            if let Some(bad) = methods
                .iter()
                .find(|m| !matches!(m.as_str(), "GET" | "PUT" | "POST" | "DELETE" | "HEAD"))
            {
                return Err(s3_error!(
                    InvalidRequest,
                    "Found unsupported HTTP method in CORS config. Unsupported method is {bad}"
                ));
            }
            if rule
                .allowed_origins
                .iter()
                .any(|o| o.matches('*').count() > 1)
            {
                return Err(s3_error!(
                    InvalidRequest,
                    "an AllowedOrigin can have at most one * wildcard"
                ));
            }
            if methods.is_empty() || rule.allowed_origins.is_empty() {
                return Err(s3_error!(
                    MalformedXML,
                    "a CORS rule needs an AllowedMethod and an AllowedOrigin"
                ));
            }
            rules.push(Rule {
                id: rule.id.clone(),
                origins: rule.allowed_origins.clone(),
                methods,
                headers: rule.allowed_headers.clone().unwrap_or_default(),
                expose: rule.expose_headers.clone().unwrap_or_default(),
                max_age: rule.max_age_seconds,
            });
        }
        Ok(Cors { rules })
    }

    /// As S3's document.
    pub fn to_dto(&self) -> Vec<dto::CORSRule> {
        self.rules
            .iter()
            .map(|r| dto::CORSRule {
                allowed_headers: (!r.headers.is_empty()).then(|| r.headers.clone()),
                allowed_methods: r.methods.clone(),
                allowed_origins: r.origins.clone(),
                expose_headers: (!r.expose.is_empty()).then(|| r.expose.clone()),
                id: r.id.clone(),
                max_age_seconds: r.max_age,
            })
            .collect()
    }

    /// The stored form.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the stored form; an unreadable one allows nothing.
    pub fn from_text(text: &str) -> Cors {
        serde_json::from_str(text).unwrap_or_default()
    }

    /// The first rule allowing `origin` to use `method` with request `headers`.
    pub fn matching(&self, origin: &str, method: &str, headers: &[&str]) -> Option<&Rule> {
        self.rules.iter().find(|rule| {
            rule.origins.iter().any(|o| glob(o, origin))
                && rule.methods.iter().any(|m| m == method)
                && headers.iter().all(|h| {
                    rule.headers
                        .iter()
                        .any(|p| glob(&p.to_ascii_lowercase(), &h.to_ascii_lowercase()))
                })
        })
    }
}

/// The bucket a request names: the first path segment, or the host's label before `domain`.
fn bucket_of(request: &Request, domain: Option<&str>) -> Option<String> {
    let host = request
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name));
    if let (Some(host), Some(domain)) = (host, domain)
        && let Some(bucket) = host.strip_suffix(domain).and_then(|b| b.strip_suffix('.'))
        && !bucket.is_empty()
    {
        return Some(bucket.to_ascii_lowercase());
    }
    let path = request.uri().path().trim_start_matches('/');
    let bucket = path.split('/').next().unwrap_or_default();
    (!bucket.is_empty()).then(|| bucket.to_string())
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fn apply(headers: &mut HeaderMap, rule: &Rule, origin: &str, preflight: Option<&str>) {
    let any_origin = rule.origins.iter().any(|o| o == "*");
    set(
        headers,
        "access-control-allow-origin",
        if any_origin { "*" } else { origin },
    );
    if !any_origin {
        set(headers, "vary", "Origin");
    }
    set(
        headers,
        "access-control-allow-methods",
        &rule.methods.join(", "),
    );
    if let Some(requested) = preflight.filter(|h| !h.is_empty()) {
        set(headers, "access-control-allow-headers", requested);
    }
    if !rule.expose.is_empty() {
        set(
            headers,
            "access-control-expose-headers",
            &rule.expose.join(", "),
        );
    }
    if let Some(age) = rule.max_age {
        set(headers, "access-control-max-age", &age.to_string());
    }
}

/// What the CORS layer needs.
pub struct CorsState<C> {
    /// Buckets (with their documents), cached.
    pub owners: Arc<Owners<C>>,
    /// The virtual-host domain.
    pub domain: Option<String>,
}

async fn rules_of<C: Cluster>(state: &CorsState<C>, bucket: &str) -> Option<Cors> {
    let entry = state.owners.get(bucket).await.ok()??;
    entry.info.documents.get("cors").map(|t| Cors::from_text(t))
}

/// The axum middleware: preflights answered, CORS headers added to answers.
pub async fn layer<C: Cluster>(
    State(state): State<Arc<CorsState<C>>>,
    request: Request,
    next: Next,
) -> Response<Body> {
    let origin = request
        .headers()
        .get("origin")
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let Some(origin) = origin else {
        return next.run(request).await;
    };
    let bucket = bucket_of(&request, state.domain.as_deref());
    if request.method() == Method::OPTIONS {
        let asked = request
            .headers()
            .get("access-control-request-method")
            .and_then(|m| m.to_str().ok())
            .map(str::to_string);
        let requested = request
            .headers()
            .get("access-control-request-headers")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (Some(asked), Some(bucket)) = (asked, bucket) else {
            return forbidden("Invalid CORS preflight: no method or no bucket");
        };
        let headers: Vec<&str> = requested
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        let cors = rules_of(&state, &bucket).await;
        let Some(rule) = cors
            .as_ref()
            .and_then(|c| c.matching(&origin, &asked, &headers))
        else {
            return forbidden("CORSResponse: This CORS request is not allowed.");
        };
        let mut response = Response::new(Body::empty());
        apply(response.headers_mut(), rule, &origin, Some(&requested));
        return response;
    }
    let method = request.method().as_str().to_string();
    let mut response = next.run(request).await;
    if let Some(bucket) = bucket
        && let Some(cors) = rules_of(&state, &bucket).await
        && let Some(rule) = cors.matching(&origin, &method, &[])
    {
        apply(response.headers_mut(), rule, &origin, None);
    }
    response
}

fn forbidden(message: &str) -> Response<Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessForbidden</Code>\
         <Message>{message}</Message></Error>"
    );
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::FORBIDDEN;
    set(response.headers_mut(), "content-type", "application/xml");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors {
            rules: vec![
                Rule {
                    origins: vec!["https://*.example.com".into()],
                    methods: vec!["GET".into(), "PUT".into()],
                    headers: vec!["x-amz-*".into(), "content-type".into()],
                    expose: vec!["ETag".into()],
                    max_age: Some(600),
                    ..Rule::default()
                },
                Rule {
                    origins: vec!["*".into()],
                    methods: vec!["GET".into()],
                    ..Rule::default()
                },
            ],
        }
    }

    #[test]
    fn rules_match_origin_method_and_headers_in_order() {
        let cors = cors();
        let first = cors.matching(
            "https://app.example.com",
            "PUT",
            &["Content-Type", "x-amz-date"],
        );
        assert_eq!(first.map(|r| r.max_age), Some(Some(600)));
        assert!(
            cors.matching("https://app.example.com", "DELETE", &[])
                .is_none()
        );
        assert!(cors.matching("https://evil.com", "PUT", &[]).is_none());
        let second = cors.matching("https://evil.com", "GET", &[]);
        assert_eq!(second.map(|r| r.origins[0].as_str()), Some("*"));
        assert!(
            cors.matching("https://evil.com", "GET", &["authorization"])
                .is_none()
        );
        assert_eq!(Cors::from_text(&cors.to_text()), cors);
    }

    #[test]
    fn configurations_round_trip_and_bad_ones_are_refused() {
        let dto_rules = cors().to_dto();
        let back = Cors::from_dto(&dto::CORSConfiguration {
            cors_rules: dto_rules,
        })
        .unwrap();
        assert_eq!(back, cors());
        let bad = |methods: Vec<&str>, origins: Vec<&str>| dto::CORSConfiguration {
            cors_rules: vec![dto::CORSRule {
                allowed_headers: None,
                allowed_methods: methods.into_iter().map(str::to_string).collect(),
                allowed_origins: origins.into_iter().map(str::to_string).collect(),
                expose_headers: None,
                id: None,
                max_age_seconds: None,
            }],
        };
        assert!(Cors::from_dto(&bad(vec!["PATCH"], vec!["*"])).is_err());
        assert!(Cors::from_dto(&bad(vec!["GET"], vec!["https://*.*.com"])).is_err());
        assert!(Cors::from_dto(&bad(vec![], vec!["*"])).is_err());
        assert!(Cors::from_dto(&dto::CORSConfiguration { cors_rules: vec![] }).is_err());
    }
}
