//! The volume data routes, shared by `cairn dev` and `cairn node run`:
//! `PUT /v1/volumes/NAME/data?offset=N` writes the body, `GET ...?offset=N&length=L` reads.
//!
//! A request is checked against the volume (at most [`DATA_REQUEST_BYTES_MAX`] bytes, inside
//! the volume), cut at chunk boundaries and at the largest PG request (`cairn_client::pieces`),
//! and each piece goes to its PG (`cairn_client::pg_of`) through a [`Backend`], up to
//! [`PIECES_IN_FLIGHT_MAX`] at once. Errors become HTTP in one place ([`DataError`]).

use std::{
    collections::HashMap,
    future::Future,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path as UrlPath, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use cairn_client::Piece;
use cairn_common::{GroupId, OwnerId, PoolId};
use cairn_storage_node::pg::{PgError, WRITE_BYTES_MAX};
use serde_json::json;

/// Largest body of one data request: bounds what one request holds in memory.
pub const DATA_REQUEST_BYTES_MAX: usize = 64 << 20;

/// Pieces of one request in flight at once: enough to keep every PG of a 64 MiB request busy
/// on a small cluster without one request taking the whole queue of the PG task.
pub const PIECES_IN_FLIGHT_MAX: usize = 16;

/// How long a volume looked up stays trusted without asking the metadata service again.
pub const TARGET_FRESH: Duration = Duration::from_secs(2);

/// How long a volume looked up may still be used while the metadata service does not answer
/// (a leader just killed, an election): data keeps flowing instead of waiting out the lookup's
/// deadline on every request.
pub const TARGET_STALE_MAX: Duration = Duration::from_secs(60);

/// Volumes a [`TargetCache`] holds at most; past it, it starts over.
pub const TARGET_CACHE_MAX: usize = 4096;

/// Where a volume's bytes go.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The owner id its chunks are keyed by.
    pub owner: OwnerId,
    /// Its pool.
    pub pool: PoolId,
    /// The pool's PG count.
    pub pg_count: u32,
    /// The volume's size.
    pub size_bytes: u64,
}

/// Volumes looked up recently, by name, so a data request does not cost a metadata lookup
/// (two admin calls on a storage node). A volume deleted and created again under the same
/// name is seen at most [`TARGET_FRESH`] late: until then requests go to the old one's chunks.
#[derive(Debug, Default)]
pub struct TargetCache {
    entries: Mutex<HashMap<String, (Target, Instant)>>,
}

impl TargetCache {
    /// The volume `name`: from the cache while fresh, else from `lookup`, else (the metadata
    /// service unavailable) from the cache up to [`TARGET_STALE_MAX`] old.
    pub async fn get<F>(&self, name: String, lookup: F) -> Result<Target, DataError>
    where
        F: AsyncFnOnce(String) -> Result<Target, DataError>,
    {
        let cached = self.entries().get(&name).copied();
        if let Some((target, at)) = cached
            && at.elapsed() < TARGET_FRESH
        {
            return Ok(target);
        }
        match lookup(name.clone()).await {
            Ok(target) => {
                let mut entries = self.entries();
                if entries.len() >= TARGET_CACHE_MAX {
                    entries.clear();
                }
                entries.insert(name, (target, Instant::now()));
                Ok(target)
            }
            Err(DataError::Unavailable(why)) => match cached {
                Some((target, at)) if at.elapsed() < TARGET_STALE_MAX => {
                    tracing::debug!(volume = %name, "metadata unavailable ({why}); volume as last seen");
                    Ok(target)
                }
                _ => Err(DataError::Unavailable(why)),
            },
            Err(e) => {
                self.entries().remove(&name);
                Err(e)
            }
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Target, Instant)>> {
        self.entries.lock().expect("invariant: not poisoned")
    }
}

/// Why a data request failed; its `into_response` is the one place it becomes HTTP.
#[derive(Debug)]
pub enum DataError {
    /// The request is malformed or out of range (400).
    BadRequest(String),
    /// The volume or its pool does not exist (404).
    NotFound(String),
    /// Retry later: starting, electing, busy (503).
    Unavailable(String),
    /// A disk, a log or a peer failed (500).
    Failed(String),
}

impl From<PgError> for DataError {
    fn from(e: PgError) -> DataError {
        match e {
            PgError::Invalid(_) => DataError::BadRequest(e.to_string()),
            PgError::NotLeader { .. } | PgError::Dropped(_) | PgError::Busy => {
                DataError::Unavailable(e.to_string())
            }
            PgError::UnknownGroup(_)
            | PgError::Store { .. }
            | PgError::DiskFailed { .. }
            | PgError::Raft(_) => DataError::Failed(e.to_string()),
        }
    }
}

impl IntoResponse for DataError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            DataError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            DataError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            DataError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            DataError::Failed(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        (status, axum::Json(json!({ "error": message }))).into_response()
    }
}

/// Where volumes are looked up and pieces executed.
pub trait Backend: Clone + Send + Sync + 'static {
    /// The volume named `name`.
    fn target(&self, name: String) -> impl Future<Output = Result<Target, DataError>> + Send;
    /// The chunk size of the cluster's disks.
    fn chunk_size(&self) -> Result<u32, DataError>;
    /// Writes one piece through its PG.
    fn write(
        &self,
        group: GroupId,
        piece: Piece,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<(), DataError>> + Send;
    /// Reads one piece through its PG.
    fn read(
        &self,
        group: GroupId,
        piece: Piece,
    ) -> impl Future<Output = Result<Vec<u8>, DataError>> + Send;
    /// Deallocates one piece through its PG: it reads as zeros afterwards.
    fn discard(
        &self,
        group: GroupId,
        piece: Piece,
    ) -> impl Future<Output = Result<(), DataError>> + Send;
}

/// The volume data routes over `backend`.
pub fn routes<B: Backend>(backend: B) -> Router {
    Router::new()
        .route(
            "/v1/volumes/{name}/data",
            get(read_data::<B>).put(write_data::<B>),
        )
        .layer(DefaultBodyLimit::max(DATA_REQUEST_BYTES_MAX))
        .with_state(backend)
}

/// `offset` and `length` from a query string; unknown keys are refused.
pub fn range(query: Option<&str>, need_length: bool) -> Result<(u64, Option<u64>), DataError> {
    let mut offset = None;
    let mut length = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = value
            .parse::<u64>()
            .map_err(|_| DataError::BadRequest(format!("{key}={value:?} is not a number")))?;
        match key {
            "offset" => offset = Some(number),
            "length" => length = Some(number),
            other => {
                return Err(DataError::BadRequest(format!(
                    "unknown parameter {other:?}"
                )));
            }
        }
    }
    let offset = offset.ok_or_else(|| DataError::BadRequest("offset is required".into()))?;
    if need_length && length.is_none() {
        return Err(DataError::BadRequest("length is required".into()));
    }
    Ok((offset, length))
}

/// Checks a range against the volume and the request limit.
fn check(target: &Target, offset: u64, length: u64) -> Result<(), DataError> {
    if length > DATA_REQUEST_BYTES_MAX as u64 {
        return Err(DataError::BadRequest(format!(
            "at most {DATA_REQUEST_BYTES_MAX} bytes per request"
        )));
    }
    check_range(target, offset, length)
}

/// Refuses a range that runs past the volume's end.
fn check_range(target: &Target, offset: u64, length: u64) -> Result<(), DataError> {
    let end = offset.checked_add(length);
    if end.is_none_or(|end| end > target.size_bytes) {
        return Err(DataError::BadRequest(format!(
            "{length} bytes at {offset} run past the volume's {} bytes",
            target.size_bytes
        )));
    }
    Ok(())
}

/// The pieces of a range of the volume, each with its PG.
fn pieces(
    target: &Target,
    chunk_size: u32,
    offset: u64,
    length: u64,
) -> impl Iterator<Item = (GroupId, Piece)> + Clone {
    pieces_of(target, chunk_size, offset, length, WRITE_BYTES_MAX as u32)
}

/// Like [`pieces`], each piece at most `piece_max` bytes.
fn pieces_of(
    target: &Target,
    chunk_size: u32,
    offset: u64,
    length: u64,
    piece_max: u32,
) -> impl Iterator<Item = (GroupId, Piece)> + Clone {
    let Target {
        pool,
        owner,
        pg_count,
        ..
    } = *target;
    let all = cairn_client::pieces(pool, owner, offset, length, chunk_size, piece_max);
    all.map(move |piece| {
        let pg = cairn_client::pg_of(owner, piece.chunk.index, pg_count);
        (GroupId::pg(pool, pg), piece)
    })
}

/// The only piece of `pieces`, if there is exactly one (peeked on a clone: `pieces` itself
/// is left whole for the general path).
fn single<I>(pieces: &I) -> Option<(GroupId, Piece)>
where
    I: Iterator<Item = (GroupId, Piece)> + Clone,
{
    let mut peek = pieces.clone();
    let first = peek.next()?;
    if peek.next().is_some() {
        return None;
    }
    Some(first)
}

/// Waits for one piece; its error fails the request (the others are dropped with the set).
async fn finish_one<T: 'static>(
    in_flight: &mut tokio::task::JoinSet<Result<T, DataError>>,
) -> Result<T, DataError> {
    match in_flight.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(DataError::Failed(format!("piece task: {e}"))),
        None => Err(DataError::Failed("no piece in flight".into())),
    }
}

/// Writes `data` at byte `offset` of the volume `target`, every piece through its PG; returns
/// once every piece is acknowledged (committed on a majority of replicas and applied).
pub async fn write_range<B: Backend>(
    backend: &B,
    target: &Target,
    offset: u64,
    data: &[u8],
) -> Result<(), DataError> {
    check(target, offset, data.len() as u64)?;
    let chunk_size = backend.chunk_size()?;
    let all = pieces(target, chunk_size, offset, data.len() as u64);
    if let Some((group, piece)) = single(&all) {
        // One piece (most block IO): run it on this task, no spawn and wake-up in between.
        return backend.write(group, piece, data.to_vec()).await;
    }
    let mut in_flight = tokio::task::JoinSet::new();
    for (group, piece) in all {
        if in_flight.len() >= PIECES_IN_FLIGHT_MAX {
            finish_one(&mut in_flight).await?;
        }
        let start = piece.buffer_offset as usize;
        let data = data[start..start + piece.length as usize].to_vec();
        let backend = backend.clone();
        in_flight.spawn(async move { backend.write(group, piece, data).await });
    }
    while !in_flight.is_empty() {
        finish_one(&mut in_flight).await?;
    }
    Ok(())
}

/// Deallocates `length` bytes at byte `offset` of the volume `target` (SCSI UNMAP): afterwards
/// they read as zeros, and chunks left with nothing written are deleted. One discard per
/// chunk touched (a discard carries no data, so a whole chunk is one log entry); no request
/// size limit beyond the volume's.
pub async fn discard_range<B: Backend>(
    backend: &B,
    target: &Target,
    offset: u64,
    length: u64,
) -> Result<(), DataError> {
    check_range(target, offset, length)?;
    let chunk_size = backend.chunk_size()?;
    let mut in_flight = tokio::task::JoinSet::new();
    for (group, piece) in pieces_of(target, chunk_size, offset, length, chunk_size) {
        if in_flight.len() >= PIECES_IN_FLIGHT_MAX {
            finish_one(&mut in_flight).await?;
        }
        let backend = backend.clone();
        in_flight.spawn(async move { backend.discard(group, piece).await });
    }
    while !in_flight.is_empty() {
        finish_one(&mut in_flight).await?;
    }
    Ok(())
}

/// Reads `length` bytes at byte `offset` of the volume `target` (unwritten space reads as
/// zeros), every piece through its PG, linearizably.
pub async fn read_range<B: Backend>(
    backend: &B,
    target: &Target,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, DataError> {
    check(target, offset, length)?;
    let chunk_size = backend.chunk_size()?;
    let all = pieces(target, chunk_size, offset, length);
    if let Some((group, piece)) = single(&all) {
        // One piece (most block IO): run it on this task, no spawn and wake-up in between.
        return backend.read(group, piece).await;
    }
    let mut out = vec![0u8; length as usize];
    let mut place = |(at, data): (usize, Vec<u8>)| {
        out[at..at + data.len()].copy_from_slice(&data);
    };
    let mut in_flight = tokio::task::JoinSet::new();
    for (group, piece) in all {
        if in_flight.len() >= PIECES_IN_FLIGHT_MAX {
            place(finish_one(&mut in_flight).await?);
        }
        let backend = backend.clone();
        in_flight.spawn(async move {
            let data = backend.read(group, piece).await?;
            Ok((piece.buffer_offset as usize, data))
        });
    }
    while !in_flight.is_empty() {
        place(finish_one(&mut in_flight).await?);
    }
    Ok(out)
}

async fn write_data<B: Backend>(
    State(backend): State<B>,
    UrlPath(name): UrlPath<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let result: Result<(), DataError> = async {
        let (offset, _) = range(query.as_deref(), false)?;
        let target = backend.target(name).await?;
        write_range(&backend, &target, offset, &body).await
    }
    .await;
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn read_data<B: Backend>(
    State(backend): State<B>,
    UrlPath(name): UrlPath<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let result: Result<Vec<u8>, DataError> = async {
        let (offset, length) = range(query.as_deref(), true)?;
        let target = backend.target(name).await?;
        read_range(&backend, &target, offset, length.unwrap_or_default()).await
    }
    .await;
    match result {
        Ok(data) => (StatusCode::OK, data).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn target(size_bytes: u64) -> Target {
        Target {
            owner: OwnerId(7),
            pool: PoolId(1),
            pg_count: 8,
            size_bytes,
        }
    }

    /// Goal: a fresh entry saves the lookup, an unavailable metadata service is bridged by the
    /// entry last seen, and a volume found gone is forgotten.
    #[test]
    fn the_target_cache_bridges_an_unavailable_metadata_service() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let cache = TargetCache::default();
            let lookups = AtomicU32::new(0);
            let found = async |_: String| {
                lookups.fetch_add(1, Ordering::Relaxed);
                Ok(target(1 << 20))
            };
            let got = cache.get("v".into(), found).await.expect("found");
            assert_eq!(got.size_bytes, 1 << 20);
            cache.get("v".into(), found).await.expect("cached");
            assert_eq!(
                lookups.load(Ordering::Relaxed),
                1,
                "the second came from the cache"
            );
            // Age the entry past freshness: the lookup runs, and its outage is bridged.
            cache.entries().get_mut("v").expect("entry").1 -= TARGET_FRESH;
            let down = async |_: String| Err(DataError::Unavailable("no leader".into()));
            let got = cache.get("v".into(), down).await.expect("stale entry");
            assert_eq!(got.size_bytes, 1 << 20);
            cache.entries().get_mut("v").expect("entry").1 -= TARGET_STALE_MAX;
            assert!(matches!(
                cache.get("v".into(), down).await,
                Err(DataError::Unavailable(_))
            ));
            let gone = async |name: String| Err(DataError::NotFound(name));
            assert!(matches!(
                cache.get("v".into(), gone).await,
                Err(DataError::NotFound(_))
            ));
            assert!(
                cache.entries().is_empty(),
                "a volume found gone is forgotten"
            );
        });
    }
}
