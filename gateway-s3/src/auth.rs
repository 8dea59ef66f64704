//! Who is asking: access keys from the metadata service (SigV4's secret lookup), and bucket
//! owners, both cached briefly so a request does not cost a metadata read for each.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use s3s::{S3Request, S3Result, auth::S3Auth, s3_error};

use crate::{
    body::cluster_error,
    cluster::{BucketInfo, Cluster, KeyInfo},
    policy::Policy,
};

/// How long a key or bucket owner looked up stays trusted. A deleted key keeps working at
/// most this long on a gateway that has just used it.
pub const CACHE_FRESH: Duration = Duration::from_secs(2);

/// Entries a cache holds; past it, it starts over.
pub const CACHE_MAX: usize = 4096;

/// A small map whose entries expire.
pub(crate) struct Fresh<V> {
    entries: Mutex<HashMap<String, (V, Instant)>>,
}

impl<V: Clone> Fresh<V> {
    pub(crate) fn new() -> Fresh<V> {
        Fresh {
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < CACHE_FRESH)
            .map(|(v, _)| v.clone())
    }

    pub(crate) fn put(&self, key: String, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_MAX {
            entries.clear();
        }
        entries.insert(key, (value, Instant::now()));
    }

    pub(crate) fn forget(&self, key: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(key);
    }
}

/// Access keys by id.
pub struct Keys<C> {
    cluster: C,
    cache: Fresh<KeyInfo>,
}

impl<C: Cluster> Keys<C> {
    /// Keys looked up in `cluster`.
    pub fn new(cluster: C) -> Keys<C> {
        Keys {
            cluster,
            cache: Fresh::new(),
        }
    }

    /// The key `id`; `InvalidAccessKeyId` if there is none.
    pub async fn get(&self, id: &str) -> S3Result<KeyInfo> {
        if let Some(key) = self.cache.get(id) {
            return Ok(key);
        }
        match self.cluster.access_key(id.to_string()).await {
            Ok(Some(key)) => {
                self.cache.put(id.to_string(), key.clone());
                Ok(key)
            }
            Ok(None) => Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records."
            )),
            Err(e) => Err(cluster_error(e)),
        }
    }
}

/// The SigV4 secret lookup, shared with the gateway (which maps a key to its tenant).
pub struct KeyAuth<C>(pub std::sync::Arc<Keys<C>>);

#[async_trait::async_trait]
impl<C: Cluster> S3Auth for KeyAuth<C> {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<s3s::auth::SecretKey> {
        Ok(self.0.get(access_key).await?.secret)
    }
}

/// The tenant a signed request acts for. Anonymous requests never reach the operations
/// (s3s refuses them when a key lookup is set), so a missing credential is refused here too.
pub(crate) async fn tenant<C: Cluster, T>(keys: &Keys<C>, req: &S3Request<T>) -> S3Result<String> {
    let credentials = req
        .credentials
        .as_ref()
        .ok_or_else(|| s3_error!(AccessDenied, "Signature is required"))?;
    Ok(keys.get(&credentials.access_key).await?.tenant)
}

/// A bucket as the gateway enforces it: its record and its policy, parsed once.
pub struct BucketEntry {
    /// The bucket's record.
    pub info: BucketInfo,
    /// Its policy, if it has one: parsed, or why it does not parse (then it grants nothing
    /// and denies everyone but the owner).
    pub policy: Option<Result<Policy, String>>,
}

/// Buckets by name, cached for [`CACHE_FRESH`].
pub struct Owners<C> {
    cluster: C,
    cache: Fresh<Arc<BucketEntry>>,
}

impl<C: Cluster> Owners<C> {
    /// Buckets looked up in `cluster`.
    pub fn new(cluster: C) -> Owners<C> {
        Owners {
            cluster,
            cache: Fresh::new(),
        }
    }

    /// The bucket `name`, or `None` if it does not exist.
    pub async fn get(&self, name: &str) -> S3Result<Option<Arc<BucketEntry>>> {
        if let Some(entry) = self.cache.get(name) {
            return Ok(Some(entry));
        }
        match self.cluster.bucket(name.to_string()).await {
            Ok(Some(info)) => {
                let policy = info.documents.get("policy").map(|text| Policy::parse(text));
                let entry = Arc::new(BucketEntry { info, policy });
                self.cache.put(name.to_string(), entry.clone());
                Ok(Some(entry))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(cluster_error(e)),
        }
    }

    /// Drops the cached bucket `name` (it changed here).
    pub fn forget(&self, name: &str) {
        self.cache.forget(name);
    }
}
