//! Versioned encodings: commands in the Raft log and the values of [`crate::store`] records.
//!
//! Both are one format-version byte ([`FORMAT_VERSION`] = 1) followed by JSON (serde_json, the
//! derived representation of the type). JSON keeps the log and the store readable in a debugger
//! and in test failures; metadata is small and off the data path, so its size and speed do not
//! matter. A new layout bumps the version byte and keeps a decoder for the old one.
//!
//! Decoding never panics: an empty input, an unknown version or bad JSON is a typed
//! [`CodecError`]. Unknown fields are refused, not ignored (`deny_unknown_fields` on the
//! types): a replica that does not understand a command must stop rather than apply a
//! different command than its peers.
//!
//! A [`CodecError`] never quotes the input (only where JSON parsing stopped), since commands and
//! records can hold secret keys.

use serde::{Serialize, de::DeserializeOwned};

use crate::state::Command;

/// The format-version byte every encoding starts with.
pub const FORMAT_VERSION: u8 = 1;

/// Why bytes did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// No bytes at all: not even a version.
    #[error("empty input, no format version")]
    Empty,
    /// A format version this build does not know.
    #[error("unknown format version {version} (this build knows {FORMAT_VERSION})")]
    UnknownVersion {
        /// The leading byte found.
        version: u8,
    },
    /// The JSON after the version byte is malformed or is not the expected type.
    #[error("bad JSON ({category:?}) at line {line} column {column}")]
    Json {
        /// Syntax, data (wrong type or field), premature end of input, or IO.
        category: serde_json::error::Category,
        /// Where parsing stopped (1-based).
        line: u64,
        /// Where parsing stopped (1-based).
        column: u64,
    },
}

/// Encodes a command for the Raft log.
pub fn encode_command(command: &Command) -> Vec<u8> {
    encode(command)
}

/// Decodes what [`encode_command`] produced.
pub fn decode_command(bytes: &[u8]) -> Result<Command, CodecError> {
    decode(bytes)
}

/// Encodes any record: the version byte, then JSON.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    // Writing to a Vec cannot fail, and every type encoded here has string map keys only.
    serde_json::to_writer(&mut out, value).expect("invariant: metadata records serialize to JSON");
    assert!(out.len() > 1);
    out
}

/// Decodes what [`encode`] produced.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, json) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion { version });
    }
    serde_json::from_slice(json).map_err(|e| CodecError::Json {
        category: e.classify(),
        line: e.line() as u64,
        column: e.column() as u64,
    })
}

#[cfg(test)]
mod tests {
    use cairn_common::{DiskId, NodeId, OwnerId, PoolId, ReplicaId};
    use proptest::prelude::*;

    use super::*;
    use crate::{
        objects::{ObjectData, ObjectRecord, QuotaScope, Segment, VersionId},
        placement::{Disk, DiskState, FailureDomain, HostId, PoolPolicy, RackId, SiteId},
        state::{PgMember, Pool, QosTier, SecretKey},
    };

    const GOLDEN_VOLUME: &[u8] = b"\x01{\"CreateVolume\":{\"name\":\"vm-1\",\"pool\":\"ssd\",\
\"size_bytes\":10737418240,\"tier\":\"High\"}}";

    const GOLDEN_DISK: &[u8] = b"\x01{\"RegisterDisk\":{\"id\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,\
15,16],\"host\":7,\"rack\":2,\"site\":1,\"capacity_bytes\":1099511627776,\"state\":\"Out\"}}";

    const GOLDEN_KEY: &[u8] = b"\x01{\"CreateAccessKey\":{\"tenant\":\"acme\",\
\"access_key_id\":\"AKIAIOSFODNN7EXAMPLE\",\
\"secret_key\":\"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\"}}";

    /// Goal: the version-1 format never changes by accident. Method: fixed bytes decode to
    /// known commands, and those commands encode to the same bytes.
    #[test]
    fn golden_commands_decode_and_encode() {
        let volume = Command::CreateVolume {
            name: "vm-1".into(),
            pool: "ssd".into(),
            size_bytes: 10 << 30,
            tier: QosTier::High,
            iops_max: None,
            bytes_per_s_max: None,
        };
        let disk = Command::RegisterDisk(Disk {
            id: DiskId([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]),
            host: HostId(7),
            rack: RackId(2),
            site: SiteId(1),
            capacity_bytes: 1 << 40,
            state: DiskState::Out,
        });
        let key = Command::CreateAccessKey {
            tenant: "acme".into(),
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: SecretKey::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
        };
        for (golden, command) in [
            (GOLDEN_VOLUME, volume),
            (GOLDEN_DISK, disk),
            (GOLDEN_KEY, key),
        ] {
            assert_eq!(decode_command(golden), Ok(command.clone()));
            assert_eq!(encode_command(&command), golden);
        }
    }

    const GOLDEN_MOVE: &[u8] = b"\x01{\"MovePgMember\":{\"pool\":\"ssd\",\"pg\":7,\
\"from\":3298534883330,\"to\":[9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9]}}";

    const GOLDEN_REBALANCE: &[u8] = b"\x01{\"SetRebalance\":{\"enabled\":false}}";

    /// Goal: the recovery commands' encoding never changes by accident. Method: as for the
    /// other golden commands.
    #[test]
    fn golden_recovery_commands_decode_and_encode() {
        let moved = Command::MovePgMember {
            pool: "ssd".into(),
            pg: 7,
            from: ReplicaId::new(NodeId(3), 2),
            to: DiskId([9; 16]),
        };
        let rebalance = Command::SetRebalance { enabled: false };
        for (golden, command) in [(GOLDEN_MOVE, moved), (GOLDEN_REBALANCE, rebalance)] {
            assert_eq!(decode_command(golden), Ok(command.clone()));
            assert_eq!(encode_command(&command), golden);
        }
    }

    const GOLDEN_PUT_INLINE: &[u8] = b"\x01{\"PutObject\":{\"bucket\":\"photos\",\
\"key\":\"a/b.txt\",\"record\":{\"size\":5,\"etag\":\"\\\"e\\\"\",\"modified_ms\":0,\
\"content_type\":\"text/plain\",\"metadata\":{\"color\":\"blue\"},\
\"data\":{\"Inline\":{\"data\":\"aGVsbG8=\"}}},\"now_ms\":1700000000000}}";

    const GOLDEN_PUT_SEGMENTS: &[u8] =
        b"\x01{\"PutObject\":{\"bucket\":\"photos\",\"key\":\"big\",\
\"record\":{\"size\":12,\"etag\":\"x\",\"modified_ms\":0,\"data\":{\"Segments\":[{\"owner\":7,\
\"length\":12}]}},\"now_ms\":2}}";

    const GOLDEN_COMPLETE: &[u8] = b"\x01{\"CompleteUpload\":{\"upload_id\":\"u-1\",\
\"parts\":[[1,\"p1\"],[3,\"p3\"]],\"etag\":\"m-2\",\"now_ms\":3}}";

    const GOLDEN_BUCKET: &[u8] = b"\x01{\"CreateBucket\":{\"name\":\"photos\",\"tenant\":\"acme\",\
\"pool\":\"ssd\",\"now_ms\":4}}";

    /// Goal: the object index commands' encoding never changes by accident (inline data as
    /// base64, segments and completion part lists as arrays). Method: as for the other golden
    /// commands.
    #[test]
    fn golden_object_commands_decode_and_encode() {
        let inline = Command::PutObject {
            bucket: "photos".into(),
            key: "a/b.txt".into(),
            record: ObjectRecord {
                size: 5,
                etag: "\"e\"".into(),
                modified_ms: 0,
                content_type: Some("text/plain".into()),
                metadata: [("color".to_string(), "blue".to_string())].into(),
                data: ObjectData::Inline {
                    data: b"hello".to_vec(),
                },
                acl: None,
                request: None,
            },
            now_ms: 1_700_000_000_000,
        };
        let segments = Command::PutObject {
            bucket: "photos".into(),
            key: "big".into(),
            record: ObjectRecord {
                size: 12,
                etag: "x".into(),
                modified_ms: 0,
                content_type: None,
                metadata: Default::default(),
                data: ObjectData::Segments(vec![Segment {
                    owner: OwnerId(7),
                    length: 12,
                }]),
                acl: None,
                request: None,
            },
            now_ms: 2,
        };
        let complete = Command::CompleteUpload {
            upload_id: "u-1".into(),
            parts: vec![(1, "p1".into()), (3, "p3".into())],
            etag: "m-2".into(),
            now_ms: 3,
            request: None,
        };
        let bucket = Command::CreateBucket {
            name: "photos".into(),
            tenant: "acme".into(),
            pool: "ssd".into(),
            now_ms: 4,
        };
        for (golden, command) in [
            (GOLDEN_PUT_INLINE, inline),
            (GOLDEN_PUT_SEGMENTS, segments),
            (GOLDEN_COMPLETE, complete),
            (GOLDEN_BUCKET, bucket),
        ] {
            assert_eq!(decode_command(golden), Ok(command.clone()));
            assert_eq!(encode_command(&command), golden);
        }
    }

    /// A `DeleteObject` as builds before versioning wrote it.
    const GOLDEN_DELETE_BEFORE_VERSIONS: &[u8] =
        b"\x01{\"DeleteObject\":{\"bucket\":\"photos\",\"key\":\"a/b.txt\"}}";

    const GOLDEN_DELETE_VERSION: &[u8] = b"\x01{\"DeleteObject\":{\"bucket\":\"photos\",\
\"key\":\"a/b.txt\",\"version_id\":3,\"now_ms\":9}}";

    const GOLDEN_VERSIONING: &[u8] =
        b"\x01{\"SetBucketVersioning\":{\"bucket\":\"photos\",\"enabled\":true}}";

    const GOLDEN_QUOTA: &[u8] = b"\x01{\"SetQuota\":{\"scope\":{\"Tenant\":\"acme\"},\
\"bytes_max\":1099511627776,\"objects_max\":null}}";

    /// A bucket record as builds before versioning and quotas wrote it.
    const GOLDEN_BUCKET_BEFORE_VERSIONS: &[u8] = b"\x01{\"id\":1,\"tenant\":\"acme\",\
\"pool\":\"ssd\",\"created_ms\":4,\"objects\":2,\"bytes\":7}";

    /// Goal: versioning and quota commands keep their encoding, entries and bucket records
    /// written before them decode (and records re-encode to the same bytes while their new
    /// fields are default). Method: golden bytes.
    #[test]
    fn golden_versioning_and_quota_commands() {
        let old_delete = Command::DeleteObject {
            bucket: "photos".into(),
            key: "a/b.txt".into(),
            version_id: None,
            now_ms: 0,
            request: None,
            if_newest: None,
        };
        let delete = Command::DeleteObject {
            bucket: "photos".into(),
            key: "a/b.txt".into(),
            version_id: Some(VersionId(3)),
            now_ms: 9,
            request: None,
            if_newest: None,
        };
        let versioning = Command::SetBucketVersioning {
            bucket: "photos".into(),
            enabled: true,
        };
        let quota = Command::SetQuota {
            scope: QuotaScope::Tenant("acme".into()),
            bytes_max: Some(1 << 40),
            objects_max: None,
        };
        for (golden, command) in [
            (GOLDEN_DELETE_BEFORE_VERSIONS, old_delete),
            (GOLDEN_DELETE_VERSION, delete),
            (GOLDEN_VERSIONING, versioning),
            (GOLDEN_QUOTA, quota),
        ] {
            assert_eq!(decode_command(golden), Ok(command.clone()));
            assert_eq!(encode_command(&command), golden);
        }
        let bucket: crate::objects::Bucket =
            decode(GOLDEN_BUCKET_BEFORE_VERSIONS).expect("an old bucket decodes");
        assert_eq!(bucket.versioning, crate::objects::Versioning::Unversioned);
        assert!(bucket.quota.is_unlimited());
        assert_eq!(encode(&bucket), GOLDEN_BUCKET_BEFORE_VERSIONS);
    }

    /// Goal: counters written before buckets existed still decode (no bucket handed out yet).
    /// Method: an old record.
    #[test]
    fn counters_without_next_bucket_still_decode() {
        let old = b"\x01{\"next_pool\":2,\"next_owner\":9,\"next_tenant\":1,\"replicas\":{}}";
        let counters: crate::state::Counters = decode(old).expect("decodes");
        assert_eq!((counters.next_owner, counters.next_bucket), (9, 0));
    }

    /// A pool record as builds before `PgMember::joined` wrote it.
    const GOLDEN_POOL_BEFORE_JOINED: &[u8] = b"\x01{\"id\":1,\"policy\":{\"replicas\":1,\
\"domain\":\"Host\",\"pg_count\":1},\"pg_map\":[[{\"disk\":[2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2],\
\"replica\":1099511627777}]],\"epoch\":1}";

    /// Goal: pool records written before members had `joined` still decode (as original
    /// members) and encode to the same bytes; a joined member carries the flag. Method: a
    /// golden old record; then the same pool with the member joined.
    #[test]
    fn pool_records_without_joined_still_decode() {
        let member = PgMember {
            disk: DiskId([2; 16]),
            replica: ReplicaId::new(NodeId(1), 1),
            joined: false,
        };
        let mut pool = Pool {
            id: PoolId(1),
            policy: PoolPolicy {
                replicas: 1,
                domain: FailureDomain::Host,
                pg_count: 1,
            },
            pg_map: vec![vec![member]],
            epoch: 1,
        };
        assert_eq!(decode::<Pool>(GOLDEN_POOL_BEFORE_JOINED), Ok(pool.clone()));
        assert_eq!(encode(&pool), GOLDEN_POOL_BEFORE_JOINED);
        pool.pg_map[0][0].joined = true;
        let encoded = encode(&pool);
        let text = String::from_utf8_lossy(&encoded[1..]).into_owned();
        assert!(
            text.contains("\"replica\":1099511627777,\"joined\":true}"),
            "{text}"
        );
        assert_eq!(decode::<Pool>(&encoded), Ok(pool));
        let unknown = text.replace("\"joined\"", "\"joind\"");
        let unknown = [&[FORMAT_VERSION][..], unknown.as_bytes()].concat();
        assert!(
            decode::<Pool>(&unknown).is_err(),
            "unknown member fields are still refused"
        );
    }

    /// Goal: every malformed input is a typed error. Method: one input per failure.
    #[test]
    fn bad_input_is_a_typed_error() {
        assert_eq!(decode_command(b""), Err(CodecError::Empty));
        let mut version_2 = GOLDEN_VOLUME.to_vec();
        version_2[0] = 2;
        assert_eq!(
            decode_command(&version_2),
            Err(CodecError::UnknownVersion { version: 2 })
        );
        let cases: [(&[u8], serde_json::error::Category); 4] = [
            (b"\x01", serde_json::error::Category::Eof),
            (b"\x01{\"CreateVolume\":", serde_json::error::Category::Eof),
            (b"\x01not json", serde_json::error::Category::Syntax),
            (b"\x01{\"Format\":{}}", serde_json::error::Category::Data),
        ];
        for (bytes, expected) in cases {
            let Err(CodecError::Json { category, .. }) = decode_command(bytes) else {
                panic!("{bytes:?} decoded");
            };
            assert_eq!(category, expected, "{bytes:?}");
        }
        let extra_field = b"\x01{\"DeleteVolume\":{\"name\":\"a\",\"force\":true}}";
        assert!(
            matches!(decode_command(extra_field), Err(CodecError::Json { .. })),
            "unknown fields are refused"
        );
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let wrong_type =
            format!("\x01{{\"DeleteAccessKey\":{{\"access_key_id\":7,\"x\":\"{secret}\"}}}}");
        let error = decode_command(wrong_type.as_bytes()).expect_err("wrong type");
        assert!(
            !error.to_string().contains(secret),
            "errors never quote the input"
        );
    }

    /// Any command, with arbitrary strings and numbers (unlike the state tests' small sets).
    fn any_command() -> impl Strategy<Value = Command> {
        // Any characters, control characters included (`any::<String>()` leaves them out), so
        // that JSON escaping is exercised.
        let text = proptest::collection::vec(any::<char>(), 0..24)
            .prop_map(|chars| chars.into_iter().collect::<String>());
        let tier = prop_oneof![
            Just(QosTier::Normal),
            Just(QosTier::High),
            Just(QosTier::Ultra)
        ];
        let domain = prop_oneof![
            Just(FailureDomain::Disk),
            Just(FailureDomain::Host),
            Just(FailureDomain::Rack),
            Just(FailureDomain::Site)
        ];
        let state = prop_oneof![Just(DiskState::In), Just(DiskState::Out)];
        prop_oneof![
            (
                any::<[u8; 16]>(),
                any::<[u32; 3]>(),
                any::<u64>(),
                state.clone()
            )
                .prop_map(|(id, [host, rack, site], capacity_bytes, state)| {
                    Command::RegisterDisk(Disk {
                        id: DiskId(id),
                        host: HostId(host),
                        rack: RackId(rack),
                        site: SiteId(site),
                        capacity_bytes,
                        state,
                    })
                }),
            (any::<u64>(), any::<u16>(), any::<u16>()).prop_map(|(id, raft, data)| {
                Command::RegisterNode {
                    id,
                    node: crate::state::NodeRecord {
                        raft_addr: std::net::SocketAddr::from(([127, 0, 0, 1], raft)),
                        data_addr: std::net::SocketAddr::from(([127, 0, 0, 1], data)),
                    },
                }
            }),
            (any::<[u8; 16]>(), state).prop_map(|(id, state)| Command::SetDiskState {
                disk: DiskId(id),
                state
            }),
            (text.clone(), any::<u32>(), domain, any::<u32>()).prop_map(
                |(name, replicas, domain, pg_count)| Command::CreatePool {
                    name,
                    replicas,
                    domain,
                    pg_count
                }
            ),
            (text.clone(), text.clone(), any::<u64>(), tier).prop_map(
                |(name, pool, size_bytes, tier)| Command::CreateVolume {
                    name,
                    pool,
                    size_bytes,
                    tier,
                    iops_max: None,
                    bytes_per_s_max: None,
                }
            ),
            (text.clone(), any::<u64>())
                .prop_map(|(name, size_bytes)| Command::ResizeVolume { name, size_bytes }),
            text.clone().prop_map(|name| Command::DeleteVolume { name }),
            text.clone().prop_map(|name| Command::CreateTenant { name }),
            text.clone().prop_map(|name| Command::DeleteTenant { name }),
            (text.clone(), text.clone(), text.clone()).prop_map(|(tenant, id, secret)| {
                Command::CreateAccessKey {
                    tenant,
                    access_key_id: id,
                    secret_key: SecretKey::new(secret),
                }
            }),
            text.clone()
                .prop_map(|access_key_id| Command::DeleteAccessKey { access_key_id }),
            (text, any::<u32>(), any::<u64>(), any::<[u8; 16]>()).prop_map(
                |(pool, pg, from, to)| Command::MovePgMember {
                    pool,
                    pg,
                    from: ReplicaId(from),
                    to: DiskId(to),
                }
            ),
            any::<bool>().prop_map(|enabled| Command::SetRebalance { enabled }),
            any_object_command(),
        ]
    }

    /// Any object index command, with arbitrary strings, numbers and bytes.
    fn any_object_command() -> impl Strategy<Value = Command> {
        let text = proptest::collection::vec(any::<char>(), 0..24)
            .prop_map(|chars| chars.into_iter().collect::<String>());
        let segment = (any::<u64>(), any::<u64>()).prop_map(|(owner, length)| Segment {
            owner: OwnerId(owner),
            length,
        });
        let data = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|data| ObjectData::Inline { data }),
            proptest::collection::vec(segment.clone(), 0..4).prop_map(ObjectData::Segments),
        ];
        let metadata = proptest::collection::btree_map(text.clone(), text.clone(), 0..3);
        let record = (
            any::<u64>(),
            text.clone(),
            proptest::option::of(text.clone()),
            metadata.clone(),
            data,
        )
            .prop_map(|(size, etag, content_type, metadata, data)| ObjectRecord {
                size,
                etag,
                modified_ms: size / 2,
                content_type,
                metadata,
                data,
                acl: None,
                request: (size % 2 == 0).then_some(crate::objects::Request(size)),
            });
        let owners = proptest::collection::vec(any::<u64>().prop_map(OwnerId), 0..4);
        prop_oneof![
            (text.clone(), text.clone(), text.clone(), any::<u64>()).prop_map(
                |(name, tenant, pool, now_ms)| Command::CreateBucket {
                    name,
                    tenant,
                    pool,
                    now_ms
                }
            ),
            text.clone().prop_map(|name| Command::DeleteBucket { name }),
            (text.clone(), any::<u64>())
                .prop_map(|(bucket, now_ms)| Command::BeginWrite { bucket, now_ms }),
            (text.clone(), text.clone(), record, any::<u64>()).prop_map(
                |(bucket, key, record, now_ms)| Command::PutObject {
                    bucket,
                    key,
                    record,
                    now_ms
                }
            ),
            (
                text.clone(),
                text.clone(),
                proptest::option::of(any::<u64>()),
                any::<u64>()
            )
                .prop_map(|(bucket, key, version, now_ms)| Command::DeleteObject {
                    bucket,
                    key,
                    version_id: version.map(VersionId),
                    now_ms,
                    request: (now_ms % 3 == 0).then_some(crate::objects::Request(now_ms)),
                    if_newest: None,
                }),
            (text.clone(), any::<bool>())
                .prop_map(|(bucket, enabled)| Command::SetBucketVersioning { bucket, enabled }),
            (text.clone(), proptest::option::of(text.clone())).prop_map(|(bucket, document)| {
                Command::SetBucketDocument {
                    bucket,
                    kind: crate::objects::DocumentKind::Lifecycle,
                    document,
                }
            }),
            (
                text.clone(),
                any::<bool>(),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(name, bucket, bytes_max, objects_max)| Command::SetQuota {
                    scope: if bucket {
                        QuotaScope::Bucket(name)
                    } else {
                        QuotaScope::Tenant(name)
                    },
                    bytes_max,
                    objects_max,
                }),
            (
                text.clone(),
                text.clone(),
                text.clone(),
                proptest::option::of(text.clone()),
                metadata
            )
                .prop_map(|(bucket, key, upload_id, content_type, metadata)| {
                    Command::CreateUpload {
                        bucket,
                        key,
                        upload_id,
                        acl: content_type.as_ref().map(|t| format!("acl {t}")),
                        content_type,
                        metadata,
                        now_ms: 1,
                    }
                }),
            (text.clone(), any::<u32>(), segment, text.clone()).prop_map(
                |(upload_id, part_number, segment, etag)| Command::PutPart {
                    upload_id,
                    part_number,
                    segment,
                    etag,
                    now_ms: 2,
                }
            ),
            (
                text.clone(),
                proptest::collection::vec((any::<u32>(), text.clone()), 0..4),
                text.clone()
            )
                .prop_map(|(upload_id, parts, etag)| Command::CompleteUpload {
                    upload_id,
                    parts,
                    etag,
                    now_ms: 3,
                    request: None,
                }),
            text.prop_map(|upload_id| Command::AbortUpload { upload_id }),
            (owners.clone(), any::<u64>())
                .prop_map(|(owners, length)| Command::AbandonWrites { owners, length }),
            owners.prop_map(|owners| Command::ReclaimDone { owners }),
        ]
    }

    proptest! {
        /// Goal: decoding is total. Method: arbitrary bytes, and arbitrary bytes after a valid
        /// version byte, and valid encodings with one byte changed.
        #[test]
        fn decode_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            command in any_command(),
            flip in any::<(usize, u8)>(),
        ) {
            let _ = decode_command(&bytes);
            let mut versioned = vec![FORMAT_VERSION];
            versioned.extend_from_slice(&bytes);
            let _ = decode_command(&versioned);
            let mut encoded = encode_command(&command);
            let at = flip.0 % encoded.len();
            encoded[at] ^= flip.1;
            let _ = decode_command(&encoded);
        }

        /// Goal: encode then decode gives the same command back. Method: arbitrary commands.
        #[test]
        fn encode_decode_round_trips(command in any_command()) {
            let encoded = encode_command(&command);
            prop_assert_eq!(encoded[0], FORMAT_VERSION);
            prop_assert_eq!(decode_command(&encoded), Ok(command));
        }
    }
}
