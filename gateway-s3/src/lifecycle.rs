//! Bucket lifecycle rules (S3's lifecycle configuration) and the worker that applies them.
//!
//! A configuration is parsed from s3s's DTO once, on PUT ([`Configuration::from_dto`]), and
//! stored as JSON of [`Configuration`] in the bucket's "lifecycle" document. What cannot be
//! enforced is refused rather than stored: tag filters and transitions (there is one storage
//! class) answer NotImplemented.
//!
//! The worker ([`run`]) walks, every interval, the buckets holding a configuration: their
//! versions under the enabled rules' prefixes, then their open multipart uploads, a page at a
//! time, with a bounded amount of listing and deleting per round; a walk cut short resumes from
//! its cursor next round. What it does to a version is decided by pure functions of the version
//! and the time ([`Configuration::decide`], [`Configuration::aborts`]), as S3 does:
//!
//! - Expiration (days after the object was written, or from a date): the current version is
//!   deleted as a plain DELETE would (removed when unversioned, hidden under a delete marker
//!   when versioned). ExpiredObjectDeleteMarker removes a delete marker left as the only
//!   version of its key.
//! - NoncurrentVersionExpiration: a version that became noncurrent (when its successor was
//!   written) more than N days ago is deleted by id, keeping the newest
//!   `NewerNoncurrentVersions` noncurrent versions if asked.
//! - AbortIncompleteMultipartUpload: uploads initiated more than N days ago are aborted.
//!
//! Days end as S3's do: the due time is rounded up to the next day boundary (midnight UTC for
//! real days). A day is [`DAY`]; tests shorten it.
//!
//! Several gateways may run the worker at once, so every action is safe to repeat: before
//! acting, the worker reads the key again and acts only if the decision still holds (the
//! current version is still the expired one, a version to delete is still noncurrent, a delete
//! marker is still alone). Two workers acting on one version in the same instant can still
//! both delete it; the second delete is a no-op, except that in a versioned bucket two
//! expirations racing may both add a delete marker (harmless: the key stays deleted).

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use s3s::dto;
use serde::{Deserialize, Serialize};

use crate::cluster::{
    Cluster, ClusterError, ClusterResult, ObjectVersion, VersionEntry, VersionQuery,
};

/// A day as S3 counts lifecycle days.
pub const DAY: Duration = Duration::from_secs(86_400);
/// Rules in one configuration (S3's limit).
pub const RULES_MAX: usize = 1000;
/// Characters of a rule id (S3's limit).
pub const RULE_ID_CHARS_MAX: usize = 255;
/// Versions NewerNoncurrentVersions may keep (S3's limit).
pub const NEWER_NONCURRENT_VERSIONS_MAX: u32 = 100;
/// The stored JSON's version; a document of any other version is not applied.
pub const FORMAT_VERSION: u32 = 1;
/// Longest interval between the worker's rounds.
pub const INTERVAL_MAX: Duration = Duration::from_secs(60);
/// Shortest interval between rounds, however short a day is.
pub const INTERVAL_MIN: Duration = Duration::from_millis(200);
/// Entries (versions and uploads) one listing page asks for.
pub const PAGE_MAX: u32 = 1000;
/// Entries listed per round over all buckets: bounds the metadata reads one round makes.
pub const LISTED_PER_ROUND_MAX: u32 = 10_000;
/// Deletes and aborts per round: bounds the metadata writes one round makes.
pub const ACTIONS_PER_ROUND_MAX: u32 = 1000;

/// Why a configuration was refused; ops maps each to its S3 error code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleError {
    /// Not a valid configuration (MalformedXML).
    Malformed(String),
    /// A value out of range (InvalidArgument).
    Invalid(String),
    /// Something this gateway cannot enforce: tags, transitions (NotImplemented).
    Unsupported(String),
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleError::Malformed(m) | RuleError::Invalid(m) | RuleError::Unsupported(m) => {
                f.write_str(m)
            }
        }
    }
}

/// A bucket's lifecycle configuration, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configuration {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The rules, in the order given.
    pub rules: Vec<Rule>,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Its id, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Whether it applies (status Enabled) or not (Disabled).
    pub enabled: bool,
    /// Which objects it applies to.
    pub filter: Filter,
    /// What happens to current versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Expiration>,
    /// What happens to noncurrent versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noncurrent: Option<NoncurrentExpiration>,
    /// Days after initiation an incomplete multipart upload is aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_upload_days: Option<u32>,
}

/// How a rule's filter was written, kept so GET answers what was put.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterForm {
    /// The deprecated `Prefix` element of the rule.
    Legacy,
    /// `Filter` with one condition (or none).
    Single,
    /// `Filter` with `And`.
    And,
}

/// The objects a rule applies to: all conditions hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// How it was written.
    pub form: FilterForm,
    /// Keys starting with this (none: every key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Objects larger than this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_greater_than: Option<u64>,
    /// Objects smaller than this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_less_than: Option<u64>,
}

/// When current versions expire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expiration {
    /// Days after the object was written.
    Days(u32),
    /// From this instant (midnight UTC, ms since the epoch).
    DateMs(u64),
    /// Whether a delete marker left as its key's only version is removed.
    ExpiredObjectDeleteMarker(bool),
}

/// When noncurrent versions expire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoncurrentExpiration {
    /// Days after the version became noncurrent.
    pub days: u32,
    /// Noncurrent versions kept whatever their age (the newest ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newer_versions: Option<u32>,
}

/// The time a decision is made at, and how long a day is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Now, in ms since the epoch.
    pub now_ms: u64,
    /// A day, in ms (86,400,000 outside tests).
    pub day_ms: u64,
}

/// What the worker knows of a version when it meets it in a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen<'a> {
    /// Its key.
    pub key: &'a str,
    /// Its size (0 for a delete marker).
    pub size: u64,
    /// Whether it is a delete marker.
    pub delete_marker: bool,
    /// When it was written (ms since the epoch).
    pub modified_ms: u64,
    /// `None` for the current version; for a noncurrent one, when its successor was written.
    pub noncurrent_since_ms: Option<u64>,
    /// Noncurrent versions of the key newer than this one.
    pub newer_noncurrent: u32,
    /// Whether no other version of the key is known (re-checked before acting).
    pub alone: bool,
}

/// What a rule does to a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Delete the current version as a DELETE without version id does.
    ExpireCurrent,
    /// Delete this noncurrent version by id.
    DeleteVersion,
    /// Remove this delete marker, the only version of its key, by id.
    RemoveDeleteMarker,
}

/// When something started `days` days after `start_ms` is due: rounded up to the next day
/// boundary, as S3 rounds to the next midnight UTC.
pub fn due_ms(start_ms: u64, days: u32, day_ms: u64) -> u64 {
    let day_ms = day_ms.max(1);
    let at = start_ms.saturating_add(u64::from(days).saturating_mul(day_ms));
    at.div_ceil(day_ms).saturating_mul(day_ms)
}

impl Filter {
    /// Whether the version of `key` with `size` bytes is selected. Delete markers have no
    /// size: only the prefix selects them.
    pub fn selects(&self, key: &str, size: u64, delete_marker: bool) -> bool {
        if !key.starts_with(self.prefix.as_deref().unwrap_or_default()) {
            return false;
        }
        if delete_marker {
            return true;
        }
        self.size_greater_than.is_none_or(|min| size > min)
            && self.size_less_than.is_none_or(|max| size < max)
    }
}

impl Rule {
    /// What this rule does to `seen` at `clock`, if anything.
    pub fn decide(&self, seen: &Seen<'_>, clock: Clock) -> Option<Action> {
        if !self.enabled || !self.filter.selects(seen.key, seen.size, seen.delete_marker) {
            return None;
        }
        match seen.noncurrent_since_ms {
            Some(since_ms) => {
                let rule = self.noncurrent?;
                let kept = rule.newer_versions.unwrap_or(0);
                let due = due_ms(since_ms, rule.days, clock.day_ms) <= clock.now_ms;
                (due && seen.newer_noncurrent >= kept).then_some(Action::DeleteVersion)
            }
            None if seen.delete_marker => {
                let remove = self.expiration == Some(Expiration::ExpiredObjectDeleteMarker(true));
                (remove && seen.alone).then_some(Action::RemoveDeleteMarker)
            }
            None => {
                let due = match self.expiration? {
                    Expiration::Days(days) => due_ms(seen.modified_ms, days, clock.day_ms),
                    Expiration::DateMs(date_ms) => date_ms,
                    Expiration::ExpiredObjectDeleteMarker(_) => return None,
                };
                (due <= clock.now_ms).then_some(Action::ExpireCurrent)
            }
        }
    }

    /// Whether this rule aborts an upload of `key` initiated at `initiated_ms`.
    pub fn aborts(&self, key: &str, initiated_ms: u64, clock: Clock) -> bool {
        let prefix = self.filter.prefix.as_deref().unwrap_or_default();
        self.enabled
            && key.starts_with(prefix)
            && self
                .abort_upload_days
                .is_some_and(|days| due_ms(initiated_ms, days, clock.day_ms) <= clock.now_ms)
    }

    fn prefix(&self) -> &str {
        self.filter.prefix.as_deref().unwrap_or_default()
    }

    fn walks_versions(&self) -> bool {
        self.enabled && (self.expiration.is_some() || self.noncurrent.is_some())
    }

    fn walks_uploads(&self) -> bool {
        self.enabled && self.abort_upload_days.is_some()
    }
}

impl Configuration {
    /// What the configuration does to `seen`: the first enabled rule that acts decides.
    pub fn decide(&self, seen: &Seen<'_>, clock: Clock) -> Option<Action> {
        self.rules.iter().find_map(|rule| rule.decide(seen, clock))
    }

    /// Whether any enabled rule aborts an upload of `key` initiated at `initiated_ms`.
    pub fn aborts(&self, key: &str, initiated_ms: u64, clock: Clock) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.aborts(key, initiated_ms, clock))
    }

    /// The stored form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("invariant: a configuration serializes")
    }

    /// Reads a stored configuration; one of another format version is refused.
    pub fn from_json(text: &str) -> Result<Configuration, String> {
        let config: Configuration =
            serde_json::from_str(text).map_err(|e| format!("stored lifecycle: {e}"))?;
        if config.version != FORMAT_VERSION {
            return Err(format!(
                "stored lifecycle has format version {}, this gateway reads {FORMAT_VERSION}",
                config.version
            ));
        }
        Ok(config)
    }

    /// The smallest set of prefixes covering the enabled rules the predicate picks, sorted.
    fn scopes(&self, picks: impl Fn(&Rule) -> bool) -> Vec<String> {
        let mut prefixes: Vec<&str> = self
            .rules
            .iter()
            .filter(|r| picks(r))
            .map(Rule::prefix)
            .collect();
        prefixes.sort_unstable();
        let mut scopes: Vec<String> = Vec::new();
        for prefix in prefixes {
            if !scopes
                .last()
                .is_some_and(|s| prefix.starts_with(s.as_str()))
            {
                scopes.push(prefix.to_string());
            }
        }
        scopes
    }
}

fn days(value: Option<i32>, what: &str) -> Result<u32, RuleError> {
    match value {
        Some(d) if d >= 1 => Ok(d as u32),
        Some(_) => Err(RuleError::Invalid(format!(
            "'{what}' must be a positive integer"
        ))),
        None => Err(RuleError::Malformed(format!("'{what}' is required"))),
    }
}

fn size(value: Option<i64>, what: &str) -> Result<Option<u64>, RuleError> {
    value
        .map(|v| {
            u64::try_from(v).map_err(|_| RuleError::Invalid(format!("{what} must not be negative")))
        })
        .transpose()
}

fn parse_filter(rule: &dto::LifecycleRule) -> Result<Filter, RuleError> {
    let filter = match (&rule.filter, &rule.prefix) {
        (Some(_), Some(_)) => {
            return Err(RuleError::Malformed(
                "a rule has both Prefix and Filter".into(),
            ));
        }
        (None, None) => {
            return Err(RuleError::Malformed(
                "a rule needs a Filter (or the older Prefix)".into(),
            ));
        }
        (None, Some(prefix)) => {
            return Ok(Filter {
                form: FilterForm::Legacy,
                prefix: Some(prefix.clone()),
                size_greater_than: None,
                size_less_than: None,
            });
        }
        (Some(filter), None) => filter,
    };
    if filter.tag.is_some() || filter.and.as_ref().is_some_and(|a| a.tags.is_some()) {
        return Err(RuleError::Unsupported(
            "lifecycle rules filtered by object tags are not supported".into(),
        ));
    }
    let given = [
        filter.prefix.is_some(),
        filter.object_size_greater_than.is_some(),
        filter.object_size_less_than.is_some(),
        filter.and.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(RuleError::Malformed(
            "a Filter holds one of Prefix, ObjectSizeGreaterThan, ObjectSizeLessThan or And".into(),
        ));
    }
    let parsed = match &filter.and {
        Some(and) => Filter {
            form: FilterForm::And,
            prefix: and.prefix.clone(),
            size_greater_than: size(and.object_size_greater_than, "ObjectSizeGreaterThan")?,
            size_less_than: size(and.object_size_less_than, "ObjectSizeLessThan")?,
        },
        None => Filter {
            form: FilterForm::Single,
            prefix: filter.prefix.clone(),
            size_greater_than: size(filter.object_size_greater_than, "ObjectSizeGreaterThan")?,
            size_less_than: size(filter.object_size_less_than, "ObjectSizeLessThan")?,
        },
    };
    if let (Some(min), Some(max)) = (parsed.size_greater_than, parsed.size_less_than)
        && min >= max
    {
        return Err(RuleError::Invalid(
            "ObjectSizeGreaterThan must be less than ObjectSizeLessThan".into(),
        ));
    }
    if parsed.size_less_than == Some(0) {
        return Err(RuleError::Invalid(
            "ObjectSizeLessThan must be positive".into(),
        ));
    }
    Ok(parsed)
}

fn parse_expiration(expiration: &dto::LifecycleExpiration) -> Result<Expiration, RuleError> {
    let given = [
        expiration.days.is_some(),
        expiration.date.is_some(),
        expiration.expired_object_delete_marker.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(RuleError::Malformed(
            "an Expiration holds exactly one of Days, Date or ExpiredObjectDeleteMarker".into(),
        ));
    }
    if let Some(marker) = expiration.expired_object_delete_marker {
        return Ok(Expiration::ExpiredObjectDeleteMarker(marker));
    }
    if let Some(date) = &expiration.date {
        let at: time::OffsetDateTime = date.clone().into();
        let at = at.to_offset(time::UtcOffset::UTC);
        if at.time() != time::Time::MIDNIGHT {
            return Err(RuleError::Invalid("'Date' must be at midnight UTC".into()));
        }
        let ms = u64::try_from(at.unix_timestamp_nanos() / 1_000_000)
            .map_err(|_| RuleError::Invalid("'Date' must be after 1970".into()))?;
        return Ok(Expiration::DateMs(ms));
    }
    Ok(Expiration::Days(days(expiration.days, "Days")?))
}

fn parse_rule(rule: &dto::LifecycleRule) -> Result<Rule, RuleError> {
    let transitions = rule.transitions.as_ref().is_some_and(|t| !t.is_empty());
    let noncurrent_transitions = rule
        .noncurrent_version_transitions
        .as_ref()
        .is_some_and(|t| !t.is_empty());
    if transitions || noncurrent_transitions {
        return Err(RuleError::Unsupported(
            "transitions are not supported: Cairn has one storage class".into(),
        ));
    }
    if let Some(id) = &rule.id
        && id.chars().count() > RULE_ID_CHARS_MAX
    {
        return Err(RuleError::Invalid(format!(
            "a rule id is at most {RULE_ID_CHARS_MAX} characters"
        )));
    }
    let enabled = match rule.status.as_str() {
        dto::ExpirationStatus::ENABLED => true,
        dto::ExpirationStatus::DISABLED => false,
        other => {
            return Err(RuleError::Malformed(format!(
                "a rule's Status is Enabled or Disabled, not {other:?}"
            )));
        }
    };
    let noncurrent = match &rule.noncurrent_version_expiration {
        None => None,
        Some(n) => Some(NoncurrentExpiration {
            days: days(n.noncurrent_days, "NoncurrentDays")?,
            newer_versions: n
                .newer_noncurrent_versions
                .map(|v| match u32::try_from(v) {
                    Ok(v @ 1..=NEWER_NONCURRENT_VERSIONS_MAX) => Ok(v),
                    _ => Err(RuleError::Invalid(format!(
                        "'NewerNoncurrentVersions' must be 1 to {NEWER_NONCURRENT_VERSIONS_MAX}"
                    ))),
                })
                .transpose()?,
        }),
    };
    let abort_upload_days = match &rule.abort_incomplete_multipart_upload {
        None => None,
        Some(a) => Some(days(a.days_after_initiation, "DaysAfterInitiation")?),
    };
    let parsed = Rule {
        id: rule.id.clone(),
        enabled,
        filter: parse_filter(rule)?,
        expiration: rule.expiration.as_ref().map(parse_expiration).transpose()?,
        noncurrent,
        abort_upload_days,
    };
    if parsed.expiration.is_none()
        && parsed.noncurrent.is_none()
        && parsed.abort_upload_days.is_none()
    {
        return Err(RuleError::Malformed(
            "a rule needs at least one action".into(),
        ));
    }
    Ok(parsed)
}

impl Configuration {
    /// Parses and checks a configuration as PUT gives it.
    pub fn from_dto(
        config: &dto::BucketLifecycleConfiguration,
    ) -> Result<Configuration, RuleError> {
        if config.rules.is_empty() || config.rules.len() > RULES_MAX {
            return Err(RuleError::Malformed(format!(
                "a lifecycle configuration holds 1 to {RULES_MAX} rules"
            )));
        }
        let rules = config
            .rules
            .iter()
            .map(parse_rule)
            .collect::<Result<Vec<_>, _>>()?;
        let mut ids = std::collections::HashSet::new();
        for id in rules.iter().filter_map(|r| r.id.as_deref()) {
            if !ids.insert(id) {
                return Err(RuleError::Invalid(format!(
                    "rule id {id:?} is given twice: ids must be unique"
                )));
            }
        }
        Ok(Configuration {
            version: FORMAT_VERSION,
            rules,
        })
    }

    /// The rules as GET answers them.
    pub fn to_dto(&self) -> Vec<dto::LifecycleRule> {
        self.rules.iter().map(rule_dto).collect()
    }
}

fn rule_dto(rule: &Rule) -> dto::LifecycleRule {
    let f = &rule.filter;
    let greater = f.size_greater_than.map(|v| v as i64);
    let less = f.size_less_than.map(|v| v as i64);
    let (prefix, filter) = match f.form {
        FilterForm::Legacy => (f.prefix.clone(), None),
        FilterForm::Single => (
            None,
            Some(dto::LifecycleRuleFilter {
                prefix: f.prefix.clone(),
                object_size_greater_than: greater,
                object_size_less_than: less,
                ..Default::default()
            }),
        ),
        FilterForm::And => (
            None,
            Some(dto::LifecycleRuleFilter {
                and: Some(dto::LifecycleRuleAndOperator {
                    prefix: f.prefix.clone(),
                    object_size_greater_than: greater,
                    object_size_less_than: less,
                    tags: None,
                }),
                ..Default::default()
            }),
        ),
    };
    let expiration = rule.expiration.map(|e| {
        let mut out = dto::LifecycleExpiration::default();
        match e {
            Expiration::Days(d) => out.days = Some(d as i32),
            Expiration::DateMs(ms) => {
                out.date = Some(dto::Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms)));
            }
            Expiration::ExpiredObjectDeleteMarker(m) => out.expired_object_delete_marker = Some(m),
        }
        out
    });
    dto::LifecycleRule {
        abort_incomplete_multipart_upload: rule.abort_upload_days.map(|d| {
            dto::AbortIncompleteMultipartUpload {
                days_after_initiation: Some(d as i32),
            }
        }),
        expiration,
        filter,
        id: rule.id.clone(),
        noncurrent_version_expiration: rule.noncurrent.map(|n| dto::NoncurrentVersionExpiration {
            noncurrent_days: Some(n.days as i32),
            newer_noncurrent_versions: n.newer_versions.map(|v| v as i32),
        }),
        noncurrent_version_transitions: None,
        prefix,
        status: dto::ExpirationStatus::from_static(if rule.enabled {
            dto::ExpirationStatus::ENABLED
        } else {
            dto::ExpirationStatus::DISABLED
        }),
        transitions: None,
    }
}

// The worker.

/// Where a bucket's walk stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Cursor {
    /// The prefixes walked for versions, then for uploads; a changed configuration restarts.
    version_scopes: Vec<String>,
    upload_scopes: Vec<String>,
    /// Index into `version_scopes`, then (past its end) into `upload_scopes`.
    scope: usize,
    key_marker: Option<String>,
    version_marker: Option<String>,
    /// The last version seen: its key, when it was written, and how many noncurrent versions
    /// of its key came before it (so a key split across pages is judged whole).
    last: Option<(String, u64, u32)>,
    upload_after: Option<(String, String)>,
}

/// Work left in a round.
struct Budget {
    listed: u32,
    actions: u32,
}

impl Budget {
    fn spent(&self) -> bool {
        self.listed == 0 || self.actions == 0
    }
}

/// The lifecycle worker's state: walk cursors by bucket.
#[derive(Default)]
pub struct Worker {
    cursors: HashMap<String, Cursor>,
    /// The bucket the last round ran out of budget in: the next round starts there.
    resume: Option<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The interval between rounds for a day of `day`: half a day, within
/// [`INTERVAL_MIN`]..=[`INTERVAL_MAX`].
pub fn interval(day: Duration) -> Duration {
    (day / 2).clamp(INTERVAL_MIN, INTERVAL_MAX)
}

impl Worker {
    /// One round over every bucket with a configuration, at most [`LISTED_PER_ROUND_MAX`]
    /// entries listed and [`ACTIONS_PER_ROUND_MAX`] actions taken. Answers the actions taken.
    pub async fn round<C: Cluster>(&mut self, cluster: &C, day: Duration) -> ClusterResult<u32> {
        let mut configured: BTreeMap<String, Configuration> = BTreeMap::new();
        for bucket in cluster.buckets(String::new()).await? {
            let Some(text) = bucket.documents.get("lifecycle") else {
                continue;
            };
            match Configuration::from_json(text) {
                Ok(config) => {
                    configured.insert(bucket.name, config);
                }
                Err(e) => tracing::warn!(bucket = bucket.name, "lifecycle not applied: {e}"),
            }
        }
        self.cursors.retain(|name, _| configured.contains_key(name));
        // Start where the last round stopped, then wrap around.
        let start = self.resume.take().unwrap_or_default();
        let order = configured
            .range(start.clone()..)
            .chain(configured.range(..start));
        let mut budget = Budget {
            listed: LISTED_PER_ROUND_MAX,
            actions: ACTIONS_PER_ROUND_MAX,
        };
        let day_ms = (day.as_millis() as u64).max(1);
        for (name, config) in order {
            let clock = Clock {
                now_ms: now_ms(),
                day_ms,
            };
            let mut cursor = self.cursors.remove(name).unwrap_or_default();
            let finished = walk(cluster, name, config, clock, &mut cursor, &mut budget).await;
            match finished {
                Ok(true) => {}
                Ok(false) => {
                    self.cursors.insert(name.clone(), cursor);
                    self.resume = Some(name.clone());
                    break;
                }
                Err(e) => {
                    // Keep the cursor: the next round resumes this walk.
                    tracing::debug!(bucket = name, "lifecycle walk: {e}");
                    self.cursors.insert(name.clone(), cursor);
                }
            }
        }
        Ok(ACTIONS_PER_ROUND_MAX - budget.actions)
    }
}

/// Walks `bucket` from `cursor` until the walk ends (`true`) or the budget does (`false`).
async fn walk<C: Cluster>(
    cluster: &C,
    bucket: &str,
    config: &Configuration,
    clock: Clock,
    cursor: &mut Cursor,
    budget: &mut Budget,
) -> ClusterResult<bool> {
    let version_scopes = config.scopes(Rule::walks_versions);
    let upload_scopes = config.scopes(Rule::walks_uploads);
    if cursor.version_scopes != version_scopes || cursor.upload_scopes != upload_scopes {
        *cursor = Cursor {
            version_scopes,
            upload_scopes,
            ..Cursor::default()
        };
    }
    loop {
        if budget.spent() {
            return Ok(false);
        }
        let versions = cursor.version_scopes.len();
        let done = if let Some(prefix) = cursor.version_scopes.get(cursor.scope).cloned() {
            versions_page(cluster, bucket, config, clock, &prefix, cursor, budget).await?
        } else if let Some(prefix) = cursor.upload_scopes.get(cursor.scope - versions).cloned() {
            uploads_page(cluster, bucket, config, clock, &prefix, cursor, budget).await?
        } else {
            *cursor = Cursor::default();
            return Ok(true);
        };
        if done {
            cursor.scope += 1;
            cursor.key_marker = None;
            cursor.version_marker = None;
            cursor.last = None;
            cursor.upload_after = None;
        }
    }
}

/// The facts about each version of a page, in order, given the last version before the page
/// (its key, when it was written, and how many noncurrent versions of its key preceded it).
fn facts(versions: &[VersionEntry], last: Option<(String, u64, u32)>) -> Vec<Seen<'_>> {
    let mut seen: Vec<Seen<'_>> = Vec::with_capacity(versions.len());
    for (at, v) in versions.iter().enumerate() {
        let before = match at.checked_sub(1) {
            Some(previous) => Some((
                versions[previous].key.as_str(),
                versions[previous].modified_ms,
                after(&seen[previous]),
            )),
            None => last.as_ref().map(|(k, m, c)| (k.as_str(), *m, *c)),
        };
        let (noncurrent_since_ms, newer_noncurrent) = match before {
            Some((key, modified_ms, count)) if key == v.key => (Some(modified_ms), count),
            _ => (None, 0),
        };
        // A version at the end of a truncated page may have more after it: "alone" is
        // re-checked before acting, so it is assumed here.
        let next_same_key = versions.get(at + 1).is_some_and(|n| n.key == v.key);
        seen.push(Seen {
            key: &v.key,
            size: v.size,
            delete_marker: v.delete_marker,
            modified_ms: v.modified_ms,
            noncurrent_since_ms,
            newer_noncurrent,
            alone: noncurrent_since_ms.is_none() && !next_same_key,
        });
    }
    seen
}

/// The noncurrent versions of `seen`'s key met once past `seen`.
fn after(seen: &Seen<'_>) -> u32 {
    match seen.noncurrent_since_ms {
        Some(_) => seen.newer_noncurrent + 1,
        None => 0,
    }
}

/// Lists one page of versions under `prefix` and acts on it; answers whether the scope ended.
async fn versions_page<C: Cluster>(
    cluster: &C,
    bucket: &str,
    config: &Configuration,
    clock: Clock,
    prefix: &str,
    cursor: &mut Cursor,
    budget: &mut Budget,
) -> ClusterResult<bool> {
    let query = VersionQuery {
        prefix: prefix.to_string(),
        delimiter: None,
        key_marker: cursor.key_marker.clone(),
        version_id_marker: cursor.version_marker.clone(),
        max: PAGE_MAX.min(budget.listed),
    };
    let page = cluster.list_versions(bucket.to_string(), query).await?;
    budget.listed = budget
        .listed
        .saturating_sub(page.versions.len().max(1) as u32);
    let seen = facts(&page.versions, cursor.last.clone());
    for (at, (version, facts)) in page.versions.iter().zip(&seen).enumerate() {
        let Some(action) = config.decide(facts, clock) else {
            continue;
        };
        if budget.actions == 0 {
            // Out of actions: the next round resumes just before this version.
            if let Some(previous) = at.checked_sub(1) {
                resume_after(cursor, &page.versions[previous], &seen[previous]);
            }
            return Ok(false);
        }
        budget.actions -= 1;
        if let Err(e) = act(cluster, bucket, version, action).await {
            tracing::warn!(bucket, key = version.key, "lifecycle {action:?}: {e}");
        }
    }
    if let (Some(version), Some(seen)) = (page.versions.last(), seen.last()) {
        resume_after(cursor, version, seen);
    }
    Ok(!page.truncated)
}

/// Moves the cursor past `version`.
fn resume_after(cursor: &mut Cursor, version: &VersionEntry, seen: &Seen<'_>) {
    cursor.key_marker = Some(version.key.clone());
    cursor.version_marker = Some(version.version_id.clone());
    cursor.last = Some((version.key.clone(), version.modified_ms, after(seen)));
}

/// Lists one page of uploads under `prefix` and aborts the due ones; answers whether the
/// scope ended.
async fn uploads_page<C: Cluster>(
    cluster: &C,
    bucket: &str,
    config: &Configuration,
    clock: Clock,
    prefix: &str,
    cursor: &mut Cursor,
    budget: &mut Budget,
) -> ClusterResult<bool> {
    let max = PAGE_MAX.min(budget.listed);
    let page = cluster
        .uploads(
            bucket.to_string(),
            prefix.to_string(),
            cursor.upload_after.clone(),
            max,
        )
        .await?;
    budget.listed = budget
        .listed
        .saturating_sub(page.uploads.len().max(1) as u32);
    for upload in &page.uploads {
        if !config.aborts(&upload.key, upload.created_ms, clock) {
            continue;
        }
        if budget.actions == 0 {
            break;
        }
        budget.actions -= 1;
        match cluster.abort_upload(upload.upload_id.clone()).await {
            Ok(()) | Err(ClusterError::NotFound(_)) => {
                tracing::debug!(bucket, key = upload.key, "lifecycle aborted an upload");
            }
            Err(e) => tracing::warn!(bucket, key = upload.key, "lifecycle abort: {e}"),
        }
    }
    if let Some(last) = page.uploads.last() {
        cursor.upload_after = Some((last.key.clone(), last.upload_id.clone()));
    }
    Ok(!page.truncated)
}

/// Takes `action` on `version` once the key, read again, shows the decision still holds.
async fn act<C: Cluster>(
    cluster: &C,
    bucket: &str,
    version: &VersionEntry,
    action: Action,
) -> ClusterResult<()> {
    let key = version.key.clone();
    let holds = match action {
        // The current version is still the one judged expired (not a newer write).
        Action::ExpireCurrent => current(cluster, bucket, &key)
            .await?
            .is_some_and(|c| is_version(&c, version)),
        // Still noncurrent: a newer version has not been deleted since.
        Action::DeleteVersion => current(cluster, bucket, &key)
            .await?
            .is_some_and(|c| c.version_id.as_deref() != Some(version.version_id.as_str())),
        Action::RemoveDeleteMarker => alone(cluster, bucket, version).await?,
    };
    if !holds {
        return Ok(());
    }
    let done = match action {
        // Conditional: a worker in another gateway may be expiring the same version, and a
        // second delete marker would be a version nobody asked for.
        Action::ExpireCurrent => cluster
            .expire_object(bucket.to_string(), key, version.version_id.clone())
            .await
            .map(drop),
        Action::DeleteVersion | Action::RemoveDeleteMarker => cluster
            .delete_object(bucket.to_string(), key, Some(version.version_id.clone()))
            .await
            .map(drop),
    };
    match done {
        Ok(()) | Err(ClusterError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The newest version of `key`, as a GET finds it.
async fn current<C: Cluster>(
    cluster: &C,
    bucket: &str,
    key: &str,
) -> ClusterResult<Option<ObjectVersion>> {
    cluster
        .object(bucket.to_string(), key.to_string(), None)
        .await
}

/// Whether `found` (an object, not a delete marker) is the version `listed` (an unversioned
/// bucket answers no version id: then its write time and entity tag tell).
fn is_version(found: &ObjectVersion, listed: &VersionEntry) -> bool {
    let same_id = found
        .version_id
        .as_ref()
        .is_none_or(|id| *id == listed.version_id);
    found.record.as_ref().is_some_and(|record| {
        same_id && record.modified_ms == listed.modified_ms && record.etag == listed.etag
    })
}

/// Whether the delete marker `marker` is still the only version of its key.
async fn alone<C: Cluster>(
    cluster: &C,
    bucket: &str,
    marker: &VersionEntry,
) -> ClusterResult<bool> {
    let query = VersionQuery {
        prefix: marker.key.clone(),
        max: 2,
        ..VersionQuery::default()
    };
    let listed = cluster.list_versions(bucket.to_string(), query).await?;
    let mut versions = listed.versions.iter().filter(|v| v.key == marker.key);
    let only = match (versions.next(), versions.next()) {
        (Some(only), None) => only,
        _ => return Ok(false),
    };
    Ok(only.delete_marker && only.version_id == marker.version_id)
}

/// Runs rounds until the process ends, a day lasting `day` ([`DAY`] in production; tests
/// shorten it), every [`interval`]`(day)`.
pub async fn run<C: Cluster>(cluster: C, day: Duration) {
    let every = interval(day);
    let mut worker = Worker::default();
    loop {
        tokio::time::sleep(every).await;
        match worker.round(&cluster, day).await {
            Ok(0) => {}
            Ok(actions) => tracing::debug!(actions, "lifecycle round"),
            Err(e) => tracing::debug!("lifecycle: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 86_400_000;

    fn rule(id: &str) -> dto::LifecycleRule {
        dto::LifecycleRule {
            abort_incomplete_multipart_upload: None,
            expiration: Some(dto::LifecycleExpiration {
                days: Some(30),
                ..Default::default()
            }),
            filter: Some(dto::LifecycleRuleFilter {
                prefix: Some("logs/".into()),
                ..Default::default()
            }),
            id: Some(id.into()),
            noncurrent_version_expiration: None,
            noncurrent_version_transitions: None,
            prefix: None,
            status: dto::ExpirationStatus::from_static(dto::ExpirationStatus::ENABLED),
            transitions: None,
        }
    }

    fn config(rules: Vec<dto::LifecycleRule>) -> dto::BucketLifecycleConfiguration {
        dto::BucketLifecycleConfiguration { rules }
    }

    fn date(text: &str) -> dto::Timestamp {
        dto::Timestamp::parse(dto::TimestampFormat::DateTime, text).unwrap()
    }

    /// Goal: every form S3 accepts (legacy prefix, single filters, And with sizes, each
    /// action) is stored, read back from JSON and answered by GET as it was put.
    #[test]
    fn configurations_round_trip_through_storage_and_get() {
        let mut legacy = rule("legacy");
        legacy.filter = None;
        legacy.prefix = Some("old/".into());
        legacy.status = dto::ExpirationStatus::from_static(dto::ExpirationStatus::DISABLED);
        let mut dated = rule("dated");
        dated.expiration = Some(dto::LifecycleExpiration {
            date: Some(date("2020-01-01T00:00:00Z")),
            ..Default::default()
        });
        let mut sized = rule("sized");
        sized.filter = Some(dto::LifecycleRuleFilter {
            and: Some(dto::LifecycleRuleAndOperator {
                prefix: Some("big/".into()),
                object_size_greater_than: Some(1024),
                object_size_less_than: Some(1 << 30),
                tags: None,
            }),
            ..Default::default()
        });
        let mut versions = rule("versions");
        versions.expiration = Some(dto::LifecycleExpiration {
            expired_object_delete_marker: Some(true),
            ..Default::default()
        });
        versions.noncurrent_version_expiration = Some(dto::NoncurrentVersionExpiration {
            noncurrent_days: Some(7),
            newer_noncurrent_versions: Some(3),
        });
        versions.abort_incomplete_multipart_upload = Some(dto::AbortIncompleteMultipartUpload {
            days_after_initiation: Some(2),
        });
        let mut everything = rule("");
        everything.id = None;
        everything.filter = Some(dto::LifecycleRuleFilter::default());
        let given = vec![rule("plain"), legacy, dated, sized, versions, everything];
        let parsed = Configuration::from_dto(&config(given.clone())).unwrap();
        assert_eq!(
            parsed.rules[2].expiration,
            Some(Expiration::DateMs(1_577_836_800_000))
        );
        let stored = Configuration::from_json(&parsed.to_json()).unwrap();
        assert_eq!(stored, parsed);
        assert_eq!(stored.to_dto(), given);
    }

    /// Goal: what S3 refuses, and what this gateway cannot enforce, is refused with the
    /// right class of error rather than stored or ignored.
    #[test]
    fn invalid_and_unsupported_configurations_are_refused() {
        use RuleError::{Invalid, Malformed, Unsupported};
        type Edit = fn(&mut dto::LifecycleRule);
        type Expected = fn(&RuleError) -> bool;
        let cases: Vec<(&str, Edit, Expected)> = vec![
            (
                "zero days",
                |r| r.expiration.as_mut().unwrap().days = Some(0),
                |e| matches!(e, Invalid(_)),
            ),
            (
                "no action",
                |r| r.expiration = None,
                |e| matches!(e, Malformed(_)),
            ),
            (
                "empty expiration",
                |r| r.expiration = Some(Default::default()),
                |e| matches!(e, Malformed(_)),
            ),
            (
                "days and marker",
                |r| r.expiration.as_mut().unwrap().expired_object_delete_marker = Some(true),
                |e| matches!(e, Malformed(_)),
            ),
            (
                "date not at midnight",
                |r| {
                    r.expiration = Some(dto::LifecycleExpiration {
                        date: Some(date("2020-01-01T12:00:00Z")),
                        ..Default::default()
                    })
                },
                |e| matches!(e, Invalid(_)),
            ),
            (
                "long id",
                |r| r.id = Some("x".repeat(256)),
                |e| matches!(e, Invalid(_)),
            ),
            (
                "bad status",
                |r| r.status = dto::ExpirationStatus::from("enabled".to_string()),
                |e| matches!(e, Malformed(_)),
            ),
            (
                "prefix and filter",
                |r| r.prefix = Some("a".into()),
                |e| matches!(e, Malformed(_)),
            ),
            (
                "no filter",
                |r| r.filter = None,
                |e| matches!(e, Malformed(_)),
            ),
            (
                "two filter conditions",
                |r| r.filter.as_mut().unwrap().object_size_less_than = Some(5),
                |e| matches!(e, Malformed(_)),
            ),
            (
                "tag filter",
                |r| {
                    r.filter = Some(dto::LifecycleRuleFilter {
                        tag: Some(dto::Tag {
                            key: Some("k".into()),
                            value: Some("v".into()),
                        }),
                        ..Default::default()
                    })
                },
                |e| matches!(e, Unsupported(_)),
            ),
            (
                "tags under And",
                |r| {
                    r.filter = Some(dto::LifecycleRuleFilter {
                        and: Some(dto::LifecycleRuleAndOperator {
                            prefix: Some("a".into()),
                            tags: Some(vec![dto::Tag::default()]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                },
                |e| matches!(e, Unsupported(_)),
            ),
            (
                "transition",
                |r| r.transitions = Some(vec![dto::Transition::default()]),
                |e| matches!(e, Unsupported(_)),
            ),
            (
                "noncurrent transition",
                |r| {
                    r.noncurrent_version_transitions =
                        Some(vec![dto::NoncurrentVersionTransition::default()])
                },
                |e| matches!(e, Unsupported(_)),
            ),
            (
                "sizes crossed",
                |r| {
                    r.filter = Some(dto::LifecycleRuleFilter {
                        and: Some(dto::LifecycleRuleAndOperator {
                            object_size_greater_than: Some(10),
                            object_size_less_than: Some(10),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                },
                |e| matches!(e, Invalid(_)),
            ),
            (
                "noncurrent without days",
                |r| r.noncurrent_version_expiration = Some(Default::default()),
                |e| matches!(e, Malformed(_)),
            ),
            (
                "too many newer versions kept",
                |r| {
                    r.noncurrent_version_expiration = Some(dto::NoncurrentVersionExpiration {
                        noncurrent_days: Some(1),
                        newer_noncurrent_versions: Some(101),
                    })
                },
                |e| matches!(e, Invalid(_)),
            ),
            (
                "abort after zero days",
                |r| {
                    r.abort_incomplete_multipart_upload =
                        Some(dto::AbortIncompleteMultipartUpload {
                            days_after_initiation: Some(0),
                        })
                },
                |e| matches!(e, Invalid(_)),
            ),
        ];
        for (name, edit, expected) in cases {
            let mut bad = rule("r");
            edit(&mut bad);
            let error = Configuration::from_dto(&config(vec![bad])).unwrap_err();
            assert!(expected(&error), "{name}: {error:?}");
        }
        let twice = Configuration::from_dto(&config(vec![rule("a"), rule("a")]));
        assert!(matches!(twice, Err(Invalid(_))), "{twice:?}");
        assert!(matches!(
            Configuration::from_dto(&config(vec![])),
            Err(Malformed(_))
        ));
        let many = (0..=RULES_MAX).map(|i| rule(&i.to_string())).collect();
        assert!(matches!(
            Configuration::from_dto(&config(many)),
            Err(Malformed(_))
        ));
        let most = (0..RULES_MAX).map(|i| rule(&i.to_string())).collect();
        assert!(Configuration::from_dto(&config(most)).is_ok());
    }

    #[test]
    fn stored_configurations_of_another_version_are_not_applied() {
        let mut parsed = Configuration::from_dto(&config(vec![rule("a")])).unwrap();
        parsed.version = FORMAT_VERSION + 1;
        assert!(Configuration::from_json(&parsed.to_json()).is_err());
        assert!(Configuration::from_json("{not json").is_err());
    }

    fn parsed(edit: impl FnOnce(&mut dto::LifecycleRule)) -> Configuration {
        let mut r = rule("r");
        edit(&mut r);
        Configuration::from_dto(&config(vec![r])).unwrap()
    }

    fn current(key: &str, size: u64, modified_ms: u64) -> Seen<'_> {
        Seen {
            key,
            size,
            delete_marker: false,
            modified_ms,
            noncurrent_since_ms: None,
            newer_noncurrent: 0,
            alone: true,
        }
    }

    fn at(now_ms: u64) -> Clock {
        Clock {
            now_ms,
            day_ms: DAY_MS,
        }
    }

    /// Goal: expiration by days is due at the day boundary after write + N days, only for
    /// keys under the prefix, and never for a disabled rule.
    #[test]
    fn current_versions_expire_by_days_under_the_prefix() {
        let config = parsed(|r| r.expiration.as_mut().unwrap().days = Some(2));
        let written = 10 * DAY_MS + 5; // Just after midnight of day 10.
        let seen = current("logs/a", 1, written);
        // Due at midnight ending day 12 (10 days + 5 ms + 2 days, rounded up).
        assert_eq!(due_ms(written, 2, DAY_MS), 13 * DAY_MS);
        assert_eq!(due_ms(12 * DAY_MS, 2, DAY_MS), 14 * DAY_MS);
        assert_eq!(config.decide(&seen, at(13 * DAY_MS - 1)), None);
        assert_eq!(
            config.decide(&seen, at(13 * DAY_MS)),
            Some(Action::ExpireCurrent)
        );
        let outside = current("other/a", 1, written);
        assert_eq!(config.decide(&outside, at(100 * DAY_MS)), None);
        let disabled = parsed(|r| {
            r.status = dto::ExpirationStatus::from_static(dto::ExpirationStatus::DISABLED)
        });
        assert_eq!(disabled.decide(&seen, at(100 * DAY_MS)), None);
        // A current delete marker is not expired by days.
        let marker = Seen {
            delete_marker: true,
            ..seen
        };
        assert_eq!(config.decide(&marker, at(100 * DAY_MS)), None);
    }

    #[test]
    fn current_versions_expire_from_a_date() {
        let config = parsed(|r| {
            r.expiration = Some(dto::LifecycleExpiration {
                date: Some(date("2020-01-02T00:00:00Z")),
                ..Default::default()
            })
        });
        let midnight = 1_577_923_200_000;
        let seen = current("logs/a", 1, midnight + DAY_MS);
        assert_eq!(config.decide(&seen, at(midnight - 1)), None);
        assert_eq!(
            config.decide(&seen, at(midnight)),
            Some(Action::ExpireCurrent)
        );
    }

    #[test]
    fn size_filters_select_objects_but_not_delete_markers() {
        let config = parsed(|r| {
            r.filter = Some(dto::LifecycleRuleFilter {
                and: Some(dto::LifecycleRuleAndOperator {
                    prefix: Some("logs/".into()),
                    object_size_greater_than: Some(10),
                    object_size_less_than: Some(20),
                    tags: None,
                }),
                ..Default::default()
            });
            r.expiration = Some(dto::LifecycleExpiration {
                days: Some(1),
                ..Default::default()
            });
        });
        let now = at(100 * DAY_MS);
        let decide = |size| config.decide(&current("logs/a", size, 0), now);
        assert_eq!(decide(10), None);
        assert_eq!(decide(11), Some(Action::ExpireCurrent));
        assert_eq!(decide(19), Some(Action::ExpireCurrent));
        assert_eq!(decide(20), None);
        assert!(config.rules[0].filter.selects("logs/a", 0, true));
    }

    /// Goal: a noncurrent version is deleted N days after its successor was written, the
    /// newest `NewerNoncurrentVersions` kept; expired delete markers go only when alone.
    #[test]
    fn noncurrent_versions_and_lone_delete_markers() {
        let config = parsed(|r| {
            r.expiration = Some(dto::LifecycleExpiration {
                expired_object_delete_marker: Some(true),
                ..Default::default()
            });
            r.noncurrent_version_expiration = Some(dto::NoncurrentVersionExpiration {
                noncurrent_days: Some(1),
                newer_noncurrent_versions: Some(1),
            });
        });
        let noncurrent = |newer, since| Seen {
            noncurrent_since_ms: Some(since),
            newer_noncurrent: newer,
            alone: false,
            ..current("logs/a", 5, 0)
        };
        // Written long ago, noncurrent since day 5: due at day 6, and only once one newer
        // noncurrent version is kept.
        assert_eq!(
            config.decide(&noncurrent(1, 5 * DAY_MS), at(6 * DAY_MS - 1)),
            None
        );
        assert_eq!(
            config.decide(&noncurrent(1, 5 * DAY_MS), at(6 * DAY_MS)),
            Some(Action::DeleteVersion)
        );
        assert_eq!(
            config.decide(&noncurrent(0, 5 * DAY_MS), at(60 * DAY_MS)),
            None
        );
        // The current version is not touched by a noncurrent rule or a marker rule.
        assert_eq!(
            config.decide(&current("logs/a", 5, 0), at(60 * DAY_MS)),
            None
        );
        let marker = |alone| Seen {
            delete_marker: true,
            alone,
            ..current("logs/a", 0, 0)
        };
        assert_eq!(
            config.decide(&marker(true), at(0)),
            Some(Action::RemoveDeleteMarker)
        );
        assert_eq!(config.decide(&marker(false), at(60 * DAY_MS)), None);
        let keep = parsed(|r| {
            r.expiration = Some(dto::LifecycleExpiration {
                expired_object_delete_marker: Some(false),
                ..Default::default()
            })
        });
        assert_eq!(keep.decide(&marker(true), at(0)), None);
    }

    #[test]
    fn uploads_are_aborted_days_after_initiation_under_the_prefix() {
        let config = parsed(|r| {
            r.expiration = None;
            r.abort_incomplete_multipart_upload = Some(dto::AbortIncompleteMultipartUpload {
                days_after_initiation: Some(1),
            });
        });
        assert!(!config.aborts("logs/a", DAY_MS / 2, at(DAY_MS * 2 - 1)));
        assert!(config.aborts("logs/a", DAY_MS / 2, at(DAY_MS * 2)));
        assert!(!config.aborts("other", 0, at(DAY_MS * 10)));
    }

    fn entry(key: &str, modified_ms: u64, delete_marker: bool) -> VersionEntry {
        VersionEntry {
            key: key.into(),
            version_id: format!("{key}@{modified_ms}"),
            is_latest: false,
            delete_marker,
            modified_ms,
            size: 1,
            etag: String::new(),
        }
    }

    /// Goal: a key's versions split over two pages are judged as one key: noncurrent since
    /// the successor's write, counted from the newest.
    #[test]
    fn facts_follow_keys_across_pages() {
        let first = [
            entry("a", 30, false),
            entry("a", 20, false),
            entry("b", 9, true),
        ];
        let seen = facts(&first, None);
        assert_eq!(seen[0].noncurrent_since_ms, None);
        assert!(!seen[0].alone);
        assert_eq!(
            (seen[1].noncurrent_since_ms, seen[1].newer_noncurrent),
            (Some(30), 0)
        );
        assert_eq!(seen[2].noncurrent_since_ms, None);
        assert!(seen[2].alone, "assumed alone at a page's end");
        let mut cursor = Cursor::default();
        resume_after(&mut cursor, &first[1], &seen[1]);
        assert_eq!(cursor.last, Some(("a".into(), 20, 1)));
        let second = [
            entry("a", 10, true),
            entry("a", 5, false),
            entry("c", 1, false),
        ];
        let seen = facts(&second, cursor.last.clone());
        assert_eq!(
            (seen[0].noncurrent_since_ms, seen[0].newer_noncurrent),
            (Some(20), 1)
        );
        assert_eq!(
            (seen[1].noncurrent_since_ms, seen[1].newer_noncurrent),
            (Some(10), 2)
        );
        assert_eq!(seen[2].noncurrent_since_ms, None);
    }

    #[test]
    fn walks_cover_enabled_rule_prefixes_once() {
        let mut rules = vec![rule("1"), rule("2"), rule("3"), rule("4")];
        rules[1].filter = Some(dto::LifecycleRuleFilter {
            prefix: Some("logs/old/".into()),
            ..Default::default()
        });
        rules[2].filter = Some(dto::LifecycleRuleFilter {
            prefix: Some("data/".into()),
            ..Default::default()
        });
        rules[2].status = dto::ExpirationStatus::from_static(dto::ExpirationStatus::DISABLED);
        rules[3].filter = Some(dto::LifecycleRuleFilter {
            prefix: Some("tmp/".into()),
            ..Default::default()
        });
        rules[3].expiration = None;
        rules[3].abort_incomplete_multipart_upload = Some(dto::AbortIncompleteMultipartUpload {
            days_after_initiation: Some(1),
        });
        let config = Configuration::from_dto(&config(rules)).unwrap();
        assert_eq!(config.scopes(Rule::walks_versions), ["logs/"]);
        assert_eq!(config.scopes(Rule::walks_uploads), ["tmp/"]);
    }

    #[test]
    fn rounds_come_every_half_day_within_bounds() {
        assert_eq!(interval(DAY), INTERVAL_MAX);
        assert_eq!(interval(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(interval(Duration::from_millis(100)), INTERVAL_MIN);
    }
}
