//! The volume data routes, shared by `cairn dev` and `cairn node run`:
//! `PUT /v1/volumes/NAME/data?offset=N` writes the body, `GET ...?offset=N&length=L` reads.
//!
//! A request is checked against the volume (at most [`DATA_REQUEST_BYTES_MAX`] bytes, inside
//! the volume), cut at chunk boundaries and at the largest PG request (`cairn_client::pieces`),
//! and each piece goes to its PG (`cairn_client::pg_of`) through a [`Backend`], up to
//! [`PIECES_IN_FLIGHT_MAX`] at once. Errors become HTTP in one place ([`DataError`]).

use std::future::Future;

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
            | PgError::Disk { .. }
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
) -> impl Iterator<Item = (GroupId, Piece)> {
    let Target {
        pool,
        owner,
        pg_count,
        ..
    } = *target;
    let all = cairn_client::pieces(
        pool,
        owner,
        offset,
        length,
        chunk_size,
        WRITE_BYTES_MAX as u32,
    );
    all.map(move |piece| {
        let pg = cairn_client::pg_of(owner, piece.chunk.index, pg_count);
        (GroupId::pg(pool, pg), piece)
    })
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

async fn write_data<B: Backend>(
    State(backend): State<B>,
    UrlPath(name): UrlPath<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let result: Result<(), DataError> = async {
        let (offset, _) = range(query.as_deref(), false)?;
        let target = backend.target(name).await?;
        check(&target, offset, body.len() as u64)?;
        let chunk_size = backend.chunk_size()?;
        let mut in_flight = tokio::task::JoinSet::new();
        for (group, piece) in pieces(&target, chunk_size, offset, body.len() as u64) {
            if in_flight.len() >= PIECES_IN_FLIGHT_MAX {
                finish_one(&mut in_flight).await?;
            }
            let start = piece.buffer_offset as usize;
            let data = body[start..start + piece.length as usize].to_vec();
            let backend = backend.clone();
            in_flight.spawn(async move { backend.write(group, piece, data).await });
        }
        while !in_flight.is_empty() {
            finish_one(&mut in_flight).await?;
        }
        Ok(())
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
        let length = length.unwrap_or_default();
        let target = backend.target(name).await?;
        check(&target, offset, length)?;
        let chunk_size = backend.chunk_size()?;
        let mut out = vec![0u8; length as usize];
        let mut place = |(at, data): (usize, Vec<u8>)| {
            out[at..at + data.len()].copy_from_slice(&data);
        };
        let mut in_flight = tokio::task::JoinSet::new();
        for (group, piece) in pieces(&target, chunk_size, offset, length) {
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
    .await;
    match result {
        Ok(data) => (StatusCode::OK, data).into_response(),
        Err(e) => e.into_response(),
    }
}
