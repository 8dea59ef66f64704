//! Request bodies in, object bytes out: an upload is hashed as it streams, kept inline when
//! small, else written to fresh chunks a few pieces at a time; a GET streams the pieces of a
//! range back with a little read-ahead.

use std::{
    ops::Range,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt;
use s3s::{
    S3Error, S3Result,
    crypto::{Checksum, Crc32, Crc32c, Md5, Sha256},
    dto::StreamingBlob,
    s3_error,
};

use crate::cluster::{Cluster, ClusterError, ObjectData, Segment};

/// Largest object kept in the index record rather than in chunks. It must not exceed the
/// metadata service's own limit (16 KiB: inline bytes live in every metadata replica's memory).
pub const INLINE_BYTES_MAX: usize = 16 << 10;

/// Bytes per data-plane write or read: one chunk, so a piece is one PG request.
pub const PIECE_BYTES: usize = 4 << 20;

/// Writes of one upload in flight at once: bounds an upload's memory to this many pieces
/// while keeping several PGs busy.
pub const WRITES_IN_FLIGHT_MAX: usize = 4;

/// Pieces of one GET read ahead of the client.
pub const READ_AHEAD: usize = 2;

/// How long a GET streams from the object record it looked up before checking, piece by
/// piece, that the object still uses those chunks. Replaced chunks are reclaimed only after
/// [`GARBAGE_GRACE`], twice as long, so a GET never reads chunks already reclaimed.
pub const RECHECK_AFTER: Duration = Duration::from_secs(300);

/// How long garbage waits before its chunks are discarded (see [`RECHECK_AFTER`]).
pub const GARBAGE_GRACE: Duration = Duration::from_secs(600);

/// Digests an upload must match: each is checked only if the client sent it.
#[derive(Debug, Default)]
pub struct Expected {
    /// Content-MD5 (base64).
    pub md5: Option<String>,
    /// x-amz-checksum-crc32 (base64), from a header or a trailer.
    pub crc32: Option<String>,
    /// x-amz-checksum-crc32c (base64).
    pub crc32c: Option<String>,
    /// x-amz-checksum-sha256 (base64).
    pub sha256: Option<String>,
    /// Whether SHA-256 must be computed (a trailer announces it, or it was sent).
    pub want_sha256: bool,
}

/// What an upload stored.
#[derive(Debug)]
pub struct Stored {
    /// The bytes' home.
    pub data: ObjectData,
    /// Their count.
    pub size: u64,
    /// Their MD5.
    pub md5: [u8; 16],
    /// Their CRC-32 (base64), to echo.
    pub crc32: String,
    /// Their CRC-32C (base64), to echo.
    pub crc32c: String,
}

struct Hashes {
    md5: Md5,
    crc32: Crc32,
    crc32c: Crc32c,
    sha256: Option<Sha256>,
}

impl Hashes {
    fn update(&mut self, data: &[u8]) {
        self.md5.update(data);
        self.crc32.update(data);
        self.crc32c.update(data);
        if let Some(sha) = &mut self.sha256 {
            sha.update(data);
        }
    }
}

pub(crate) fn base64(bytes: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(bytes)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The S3 error code of a write refused by a bucket or tenant quota.
pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";

/// Maps a failure to read a request body: a chunk of an aws-chunked body whose signature
/// does not verify (s3s's error type is private: its name is matched) is the client's
/// signature error, anything else an incomplete body.
fn body_error(e: s3s::StdError) -> S3Error {
    let text = e.to_string();
    if text.contains("SignatureMismatch") {
        s3_error!(
            SignatureDoesNotMatch,
            "a chunk's signature does not match what we computed"
        )
    } else {
        s3_error!(IncompleteBody, "reading the body: {text}")
    }
}

/// Maps a cluster failure to the S3 error a client should see.
pub(crate) fn cluster_error(e: ClusterError) -> S3Error {
    match e {
        ClusterError::NotFound(m) => s3_error!(NoSuchKey, "{m}"),
        ClusterError::Exists { message, .. } => s3_error!(BucketAlreadyExists, "{message}"),
        ClusterError::NotEmpty(m) => s3_error!(BucketNotEmpty, "{m}"),
        ClusterError::Refused { code, message } => {
            let code = code.parse().unwrap_or(s3s::S3ErrorCode::InvalidRequest);
            let quota = code.as_str() == QUOTA_EXCEEDED;
            let mut error = S3Error::with_message(code, message);
            if quota {
                // Not an AWS code, so s3s knows no status for it: 403, as MinIO and Ceph
                // answer a quota refusal.
                error.set_status_code(http::StatusCode::FORBIDDEN);
            }
            error
        }
        ClusterError::Invalid(m) => s3_error!(InvalidArgument, "{m}"),
        ClusterError::Unavailable(m) => s3_error!(ServiceUnavailable, "{m}"),
        ClusterError::Failed(m) => s3_error!(InternalError, "{m}"),
    }
}

/// An upload's chunks while they are written: the owner, the bytes handed to writes so far,
/// and the writes in flight.
struct Writer<'a, C: Cluster> {
    cluster: &'a C,
    bucket: &'a str,
    owner: u64,
    written: u64,
    in_flight: tokio::task::JoinSet<Result<(), ClusterError>>,
}

impl<'a, C: Cluster> Writer<'a, C> {
    /// A writer under a fresh owner (pending in the metadata service until committed).
    async fn begin(cluster: &'a C, bucket: &'a str) -> S3Result<Writer<'a, C>> {
        let owner = cluster
            .begin_write(bucket.to_string())
            .await
            .map_err(cluster_error)?;
        Ok(Writer {
            cluster,
            bucket,
            owner,
            written: 0,
            in_flight: tokio::task::JoinSet::new(),
        })
    }

    async fn push(&mut self, data: Vec<u8>) -> Result<(), ClusterError> {
        while self.in_flight.len() >= WRITES_IN_FLIGHT_MAX {
            self.finish_one().await?;
        }
        let (cluster, bucket, owner, offset) = (
            self.cluster.clone(),
            self.bucket.to_string(),
            self.owner,
            self.written,
        );
        self.written += data.len() as u64;
        self.in_flight
            .spawn(async move { cluster.write(bucket, owner, offset, data).await });
        Ok(())
    }

    async fn finish_one(&mut self) -> Result<(), ClusterError> {
        match self.in_flight.join_next().await {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(ClusterError::Failed(format!("write task: {e}"))),
            None => Ok(()),
        }
    }

    async fn finish(&mut self) -> Result<(), ClusterError> {
        while !self.in_flight.is_empty() {
            self.finish_one().await?;
        }
        Ok(())
    }
}

/// Reads `body` to its end, hashing it: at most [`INLINE_BYTES_MAX`] bytes stay inline (when
/// `inline` allows), more go to a fresh owner's chunks. Fails with `EntityTooLarge` past
/// `max_bytes` and `BadDigest` on a digest mismatch; a failed upload leaves its chunks to the
/// garbage list, never visible. `trailers` yields checksums sent after the body.
pub async fn ingest<C: Cluster>(
    cluster: &C,
    bucket: &str,
    body: StreamingBlob,
    inline: bool,
    max_bytes: u64,
    mut expected: Expected,
    trailers: impl FnOnce() -> Expected,
) -> S3Result<Stored> {
    let mut hashes = Hashes {
        md5: Md5::new(),
        crc32: Crc32::new(),
        crc32c: Crc32c::new(),
        sha256: expected.want_sha256.then(Sha256::new),
    };
    let mut buffer: Vec<u8> = Vec::new();
    let mut size: u64 = 0;
    let mut writer: Option<Writer<'_, C>> = None;
    let mut body = body;
    let outcome: S3Result<()> = async {
        while let Some(frame) = body.next().await {
            let frame = frame.map_err(body_error)?;
            size += frame.len() as u64;
            if size > max_bytes {
                return Err(s3_error!(
                    EntityTooLarge,
                    "at most {max_bytes} bytes in one request"
                ));
            }
            hashes.update(&frame);
            buffer.extend_from_slice(&frame);
            if writer.is_none() && (!inline || buffer.len() > INLINE_BYTES_MAX) {
                writer = Some(Writer::begin(cluster, bucket).await?);
            }
            if let Some(w) = writer.as_mut() {
                while buffer.len() >= PIECE_BYTES {
                    let rest = buffer.split_off(PIECE_BYTES);
                    let piece = std::mem::replace(&mut buffer, rest);
                    w.push(piece).await.map_err(cluster_error)?;
                }
            }
        }
        if let Some(w) = writer.as_mut() {
            if !buffer.is_empty() {
                w.push(std::mem::take(&mut buffer))
                    .await
                    .map_err(cluster_error)?;
            }
            w.finish().await.map_err(cluster_error)?;
        } else if !inline {
            // An empty part: it still gets an owner, so every part is a segment.
            writer = Some(Writer::begin(cluster, bucket).await?);
        }
        let late = trailers();
        expected.crc32 = expected.crc32.take().or(late.crc32);
        expected.crc32c = expected.crc32c.take().or(late.crc32c);
        expected.sha256 = expected.sha256.take().or(late.sha256);
        Ok(())
    }
    .await;
    let md5: [u8; 16] = hashes.md5.finalize();
    let crc32 = base64(hashes.crc32.finalize().as_ref());
    let crc32c = base64(hashes.crc32c.finalize().as_ref());
    let sha256 = hashes.sha256.map(|s| base64(s.finalize().as_ref()));
    let checked = outcome.and_then(|()| {
        let mismatch = |what: &str| {
            Err(s3_error!(
                BadDigest,
                "the {what} you specified did not match what we received"
            ))
        };
        if expected.md5.as_ref().is_some_and(|m| *m != base64(&md5)) {
            return mismatch("Content-MD5");
        }
        if expected.crc32.as_ref().is_some_and(|c| *c != crc32) {
            return mismatch("CRC-32 checksum");
        }
        if expected.crc32c.as_ref().is_some_and(|c| *c != crc32c) {
            return mismatch("CRC-32C checksum");
        }
        if let Some(sent) = &expected.sha256
            && sha256.as_ref() != Some(sent)
        {
            return mismatch("SHA-256 checksum");
        }
        Ok(())
    });
    if let Err(e) = checked {
        if let Some(mut w) = writer {
            // Let the writes already started end, then hand the chunks to the reclaimer.
            let _ = w.finish().await;
            if let Err(why) = cluster.abandon(vec![w.owner], max_bytes.min(size)).await {
                tracing::warn!(owner = w.owner, "abandoning a failed upload: {why}");
            }
        }
        return Err(e);
    }
    let data = match writer {
        Some(w) => ObjectData::Segments(vec![Segment {
            owner: w.owner,
            length: size,
        }]),
        None => ObjectData::Inline(buffer),
    };
    Ok(Stored {
        data,
        size,
        md5,
        crc32,
        crc32c,
    })
}

/// One read of a GET: `length` bytes at `offset` of `owner`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) owner: u64,
    pub(crate) offset: u64,
    pub(crate) length: u64,
}

/// The pieces covering `range` of an object made of `segments`, generated lazily (a 5 TB
/// object has a million of them).
pub(crate) fn pieces(segments: Vec<Segment>, range: Range<u64>) -> impl Iterator<Item = Piece> {
    let mut start = 0u64;
    segments.into_iter().flat_map(move |segment| {
        let seg_start = start;
        start += segment.length;
        let from = range.start.max(seg_start);
        let to = range.end.min(seg_start + segment.length);
        let mut at = from;
        std::iter::from_fn(move || {
            if at >= to {
                return None;
            }
            let offset = at - seg_start;
            // Cut at piece boundaries of the segment, so each read is one chunk.
            let piece_end = (offset / PIECE_BYTES as u64 + 1) * PIECE_BYTES as u64;
            let length = (piece_end - offset).min(to - at);
            at += length;
            Some(Piece {
                owner: segment.owner,
                offset,
                length,
            })
        })
    })
}

/// A body stream fed by a task: `Sync`, as s3s wants, whatever the data plane's futures are.
struct Channel(tokio::sync::mpsc::Receiver<Result<Bytes, BodyError>>);

impl futures::Stream for Channel {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Why a GET's body stopped early (the client sees the connection end short).
#[derive(Debug)]
pub struct BodyError(String);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BodyError {}

/// The body of a GET of `range` of an object: its bytes inline, or its pieces read in order
/// by a task [`READ_AHEAD`] pieces ahead of the client. Past [`RECHECK_AFTER`], each piece
/// first checks that the version `version_id` of `key` (its newest if `None`) still holds
/// that piece's owner; if not, the stream fails rather than risk reading chunks the reclaimer
/// may have discarded. The task ends when the client goes away.
pub(crate) fn stream<C: Cluster>(
    cluster: C,
    bucket: String,
    key: String,
    version_id: Option<String>,
    data: ObjectData,
    range: Range<u64>,
) -> StreamingBlob {
    match data {
        ObjectData::Inline(bytes) => {
            let (from, to) = (range.start as usize, range.end as usize);
            let slice = Bytes::from(bytes).slice(from..to.max(from));
            StreamingBlob::wrap(futures::stream::iter([Ok::<_, BodyError>(slice)]))
        }
        ObjectData::Segments(segments) => {
            let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
            let started = Instant::now();
            tokio::spawn(async move {
                let reads = futures::stream::iter(pieces(segments, range))
                    .map(|piece| {
                        let (cluster, bucket, key) = (&cluster, bucket.clone(), &key);
                        let version_id = version_id.clone();
                        async move {
                            if started.elapsed() > RECHECK_AFTER {
                                still_holds(cluster, &bucket, key, version_id, piece.owner).await?;
                            }
                            let data = cluster
                                .read(bucket, piece.owner, piece.offset, piece.length)
                                .await
                                .map_err(|e| BodyError(e.to_string()))?;
                            if data.len() as u64 != piece.length {
                                return Err(BodyError(
                                    "the data plane answered a short read".into(),
                                ));
                            }
                            Ok(Bytes::from(data))
                        }
                    })
                    .buffered(READ_AHEAD);
                futures::pin_mut!(reads);
                while let Some(piece) = reads.next().await {
                    let failed = piece.is_err();
                    if tx.send(piece).await.is_err() || failed {
                        break;
                    }
                }
            });
            StreamingBlob::wrap(Channel(rx))
        }
    }
}

async fn still_holds<C: Cluster>(
    cluster: &C,
    bucket: &str,
    key: &str,
    version_id: Option<String>,
    owner: u64,
) -> Result<(), BodyError> {
    let found = cluster
        .object(bucket.to_string(), key.to_string(), version_id)
        .await
        .map_err(|e| BodyError(e.to_string()))?;
    let data = found.and_then(|v| v.record).map(|r| r.data);
    let holds = matches!(data, Some(ObjectData::Segments(s)) if s.iter().any(|s| s.owner == owner));
    if holds {
        Ok(())
    } else {
        Err(BodyError("the object changed while it was read".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PIECE_BYTES as u64;

    fn seg(owner: u64, length: u64) -> Segment {
        Segment { owner, length }
    }

    #[test]
    fn pieces_cover_the_range_exactly_and_never_cross_a_chunk() {
        let segments = vec![seg(1, P + 10), seg(2, 5), seg(3, 3 * P)];
        let total = P + 10 + 5 + 3 * P;
        for range in [0..total, 7..P + 12, P + 10..P + 15, P..P, 2 * P..total - 1] {
            let got: Vec<Piece> = pieces(segments.clone(), range.clone()).collect();
            let sum: u64 = got.iter().map(|p| p.length).sum();
            assert_eq!(sum, range.end - range.start, "{range:?}");
            for p in &got {
                assert!(p.length > 0);
                assert_eq!(p.offset / P, (p.offset + p.length - 1) / P, "{p:?}");
            }
        }
        let got: Vec<Piece> = pieces(segments, P + 8..P + 13).collect();
        assert_eq!(
            got,
            vec![
                Piece {
                    owner: 1,
                    offset: P + 8,
                    length: 2
                },
                Piece {
                    owner: 2,
                    offset: 0,
                    length: 3
                }
            ]
        );
    }
}
