//! The metadata state machine, pure: typed commands applied in Raft log order to the cluster
//! map, pools (with their PG maps) and volumes.
//!
//! Every replica applies the same commands in the same order and must end in the same state, so
//! `apply` reads no clock, draws no randomness and iterates only ordered maps. A command either
//! applies whole or is refused with a typed error and changes nothing (the admin API maps the
//! errors to 400, 404 and 409).
//!
//! Still to come (issue 3): persistence (RocksDB, keys by prefix: `map/`, `pool/`, `pg/`,
//! `vol/`), the versioned wire encoding of commands in the Raft log, tenants and access keys.

use std::collections::BTreeMap;

use cairn_common::{DiskId, OwnerId, PoolId};

use crate::placement::{self, Disk, DiskState, FailureDomain, PoolPolicy};

/// Longest pool or volume name.
pub const NAME_BYTES_MAX: usize = 128;
/// Largest volume: 64 TiB, the most a single EVS volume is offered at.
pub const VOLUME_BYTES_MAX: u64 = 64 << 40;

/// A volume's IOPS tier (DESIGN.md: 800 / 2,500 / 10,000 IOPS per volume).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QosTier {
    /// 800 IOPS.
    Normal,
    /// 2,500 IOPS.
    High,
    /// 10,000 IOPS.
    Ultra,
}

impl QosTier {
    /// The tier's IOPS limit.
    pub fn iops_max(self) -> u32 {
        match self {
            QosTier::Normal => 800,
            QosTier::High => 2500,
            QosTier::Ultra => 10_000,
        }
    }
}

/// A pool: its policy and where its PGs live.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    /// The pool's id.
    pub id: PoolId,
    /// Replicas, failure-domain level and PG count.
    pub policy: PoolPolicy,
    /// Per PG, its members (disk ids), preferred leader first.
    pub pg_map: Vec<Vec<DiskId>>,
    /// Bumped whenever the PG map changes; replicas reject requests of older epochs.
    pub epoch: u64,
}

/// A block volume (EVS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// The owner id its chunks are keyed by.
    pub id: OwnerId,
    /// The pool holding it.
    pub pool: String,
    /// Its size (thin: nothing is allocated until written).
    pub size_bytes: u64,
    /// Its IOPS tier.
    pub tier: QosTier,
}

/// A change to the metadata, as proposed to the Raft group.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Adds a disk to the cluster map (or refuses a known UUID).
    RegisterDisk(Disk),
    /// Marks a disk in or out.
    SetDiskState {
        /// The disk.
        disk: DiskId,
        /// Its new state.
        state: DiskState,
    },
    /// Creates a pool and places its PGs.
    CreatePool {
        /// Unique name.
        name: String,
        /// Replicas per PG.
        replicas: u32,
        /// Failure-domain level.
        domain: FailureDomain,
        /// PG count.
        pg_count: u32,
    },
    /// Creates a volume.
    CreateVolume {
        /// Unique name.
        name: String,
        /// The pool.
        pool: String,
        /// Size.
        size_bytes: u64,
        /// IOPS tier.
        tier: QosTier,
    },
    /// Grows a volume (shrinking would drop written data, so it is refused).
    ResizeVolume {
        /// The volume.
        name: String,
        /// The new size.
        size_bytes: u64,
    },
    /// Deletes a volume.
    DeleteVolume {
        /// The volume.
        name: String,
    },
}

/// Why a command was refused. Nothing changed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// The thing named does not exist (404).
    #[error("{kind} {name} not found")]
    NotFound {
        /// "disk", "pool" or "volume".
        kind: &'static str,
        /// Its name or id.
        name: String,
    },
    /// The name or id is taken (409).
    #[error("{kind} {name} already exists")]
    AlreadyExists {
        /// "disk", "pool" or "volume".
        kind: &'static str,
        /// Its name or id.
        name: String,
    },
    /// The request is malformed or impossible as asked (400).
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// What an applied command produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Done; nothing to return.
    Done,
    /// A pool was created with this id.
    Pool(PoolId),
    /// A volume was created with this owner id.
    Volume(OwnerId),
}

/// The whole metadata state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetaState {
    disks: BTreeMap<DiskId, Disk>,
    pools: BTreeMap<String, Pool>,
    volumes: BTreeMap<String, Volume>,
    next_pool: u32,
    next_owner: u64,
}

fn check_name(name: &str) -> Result<(), MetaError> {
    let valid = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(MetaError::Invalid(format!(
            "name {name:?}: 1-{NAME_BYTES_MAX} characters of a-z, A-Z, 0-9, '-', '_', '.'"
        )))
    }
}

impl MetaState {
    /// Applies one command, whole or not at all.
    pub fn apply(&mut self, command: Command) -> Result<Applied, MetaError> {
        match command {
            Command::RegisterDisk(disk) => {
                if self.disks.contains_key(&disk.id) {
                    return Err(MetaError::AlreadyExists {
                        kind: "disk",
                        name: disk.id.to_string(),
                    });
                }
                if disk.capacity_bytes == 0 {
                    return Err(MetaError::Invalid("a disk needs a capacity".into()));
                }
                self.disks.insert(disk.id, disk);
                Ok(Applied::Done)
            }
            Command::SetDiskState { disk, state } => {
                let entry = self.disks.get_mut(&disk);
                let entry = entry.ok_or_else(|| MetaError::NotFound {
                    kind: "disk",
                    name: disk.to_string(),
                })?;
                entry.state = state;
                Ok(Applied::Done)
            }
            Command::CreatePool {
                name,
                replicas,
                domain,
                pg_count,
            } => self.create_pool(
                name,
                PoolPolicy {
                    replicas,
                    domain,
                    pg_count,
                },
            ),
            Command::CreateVolume {
                name,
                pool,
                size_bytes,
                tier,
            } => {
                check_name(&name)?;
                if self.volumes.contains_key(&name) {
                    return Err(MetaError::AlreadyExists {
                        kind: "volume",
                        name,
                    });
                }
                if !self.pools.contains_key(&pool) {
                    return Err(MetaError::NotFound {
                        kind: "pool",
                        name: pool,
                    });
                }
                check_size(size_bytes)?;
                self.next_owner += 1;
                let id = OwnerId(self.next_owner);
                self.volumes.insert(
                    name,
                    Volume {
                        id,
                        pool,
                        size_bytes,
                        tier,
                    },
                );
                Ok(Applied::Volume(id))
            }
            Command::ResizeVolume { name, size_bytes } => {
                check_size(size_bytes)?;
                let volume = self.volumes.get_mut(&name);
                let volume = volume.ok_or_else(|| MetaError::NotFound {
                    kind: "volume",
                    name: name.clone(),
                })?;
                if size_bytes < volume.size_bytes {
                    return Err(MetaError::Invalid(format!(
                        "volume {name} is {} bytes; shrinking to {size_bytes} would drop data",
                        volume.size_bytes
                    )));
                }
                volume.size_bytes = size_bytes;
                Ok(Applied::Done)
            }
            Command::DeleteVolume { name } => match self.volumes.remove(&name) {
                Some(_) => Ok(Applied::Done),
                None => Err(MetaError::NotFound {
                    kind: "volume",
                    name,
                }),
            },
        }
    }

    fn create_pool(&mut self, name: String, policy: PoolPolicy) -> Result<Applied, MetaError> {
        check_name(&name)?;
        if self.pools.contains_key(&name) {
            return Err(MetaError::AlreadyExists { kind: "pool", name });
        }
        let disks: Vec<Disk> = self.disks.values().cloned().collect();
        let placed =
            placement::place(&disks, &policy).map_err(|e| MetaError::Invalid(e.to_string()))?;
        let pg_map = placed
            .into_iter()
            .map(|members| members.into_iter().map(|i| disks[i].id).collect())
            .collect();
        self.next_pool += 1;
        let id = PoolId(self.next_pool);
        self.pools.insert(
            name,
            Pool {
                id,
                policy,
                pg_map,
                epoch: 1,
            },
        );
        Ok(Applied::Pool(id))
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }

    /// A volume by name.
    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.get(name)
    }

    /// Volumes in name order.
    pub fn volumes(&self) -> impl Iterator<Item = (&String, &Volume)> {
        self.volumes.iter()
    }

    /// Disks in id order.
    pub fn disks(&self) -> impl Iterator<Item = &Disk> {
        self.disks.values()
    }
}

fn check_size(size_bytes: u64) -> Result<(), MetaError> {
    let block = u64::from(cairn_common::BLOCK_SIZE);
    if size_bytes == 0 || size_bytes > VOLUME_BYTES_MAX || !size_bytes.is_multiple_of(block) {
        return Err(MetaError::Invalid(format!(
            "size {size_bytes}: a positive multiple of {block} bytes up to {VOLUME_BYTES_MAX}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::placement::{HostId, RackId, SiteId};

    fn disk(n: u8, host: u32) -> Disk {
        Disk {
            id: DiskId([n; 16]),
            host: HostId(host),
            rack: RackId(0),
            site: SiteId(0),
            capacity_bytes: 1 << 40,
            state: DiskState::In,
        }
    }

    #[test]
    fn pools_volumes_and_clear_refusals() {
        let mut state = MetaState::default();
        for n in 0..6 {
            state
                .apply(Command::RegisterDisk(disk(n, u32::from(n / 2))))
                .expect("disk");
        }
        assert!(matches!(
            state.apply(Command::RegisterDisk(disk(0, 0))),
            Err(MetaError::AlreadyExists { .. })
        ));
        let pool = Command::CreatePool {
            name: "ssd".into(),
            replicas: 3,
            domain: FailureDomain::Host,
            pg_count: 64,
        };
        assert_eq!(state.apply(pool.clone()), Ok(Applied::Pool(PoolId(1))));
        assert_eq!(state.pool("ssd").expect("pool").pg_map.len(), 64);
        assert!(matches!(
            state.apply(pool),
            Err(MetaError::AlreadyExists { .. })
        ));
        let racks = Command::CreatePool {
            name: "r".into(),
            replicas: 3,
            domain: FailureDomain::Rack,
            pg_count: 8,
        };
        assert!(
            matches!(state.apply(racks), Err(MetaError::Invalid(_))),
            "one rack cannot hold 3 replicas"
        );
        let volume = |name: &str, size: u64| Command::CreateVolume {
            name: name.into(),
            pool: "ssd".into(),
            size_bytes: size,
            tier: QosTier::High,
        };
        assert_eq!(
            state.apply(volume("vm-1", 10 << 30)),
            Ok(Applied::Volume(OwnerId(1)))
        );
        assert!(matches!(
            state.apply(volume("vm-1", 1 << 30)),
            Err(MetaError::AlreadyExists { .. })
        ));
        assert!(matches!(
            state.apply(volume("bad name!", 1 << 30)),
            Err(MetaError::Invalid(_))
        ));
        assert!(matches!(
            state.apply(volume("odd", 1000)),
            Err(MetaError::Invalid(_))
        ));
        let shrink = Command::ResizeVolume {
            name: "vm-1".into(),
            size_bytes: 1 << 30,
        };
        assert!(matches!(state.apply(shrink), Err(MetaError::Invalid(_))));
        state
            .apply(Command::ResizeVolume {
                name: "vm-1".into(),
                size_bytes: 20 << 30,
            })
            .expect("grow");
        assert_eq!(state.volume("vm-1").expect("volume").size_bytes, 20 << 30);
        state
            .apply(Command::DeleteVolume {
                name: "vm-1".into(),
            })
            .expect("delete");
        assert!(matches!(
            state.apply(Command::DeleteVolume {
                name: "vm-1".into()
            }),
            Err(MetaError::NotFound { .. })
        ));
        assert_eq!(QosTier::Ultra.iops_max(), 10_000);
    }

    fn command() -> impl Strategy<Value = Command> {
        let name = prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("c".to_string()),
            Just("".to_string())
        ];
        let tier = prop_oneof![
            Just(QosTier::Normal),
            Just(QosTier::High),
            Just(QosTier::Ultra)
        ];
        prop_oneof![
            (0u8..8, 0u32..4).prop_map(|(n, host)| Command::RegisterDisk(disk(n, host))),
            (0u8..8, any::<bool>()).prop_map(|(n, out)| Command::SetDiskState {
                disk: DiskId([n; 16]),
                state: if out { DiskState::Out } else { DiskState::In },
            }),
            (name.clone(), 1u32..5, 0u32..40).prop_map(|(name, replicas, pg_count)| {
                Command::CreatePool {
                    name,
                    replicas,
                    domain: FailureDomain::Host,
                    pg_count,
                }
            }),
            (name.clone(), name.clone(), 0u64..64, tier).prop_map(|(name, pool, blocks, tier)| {
                Command::CreateVolume {
                    name,
                    pool,
                    size_bytes: blocks * 4096,
                    tier,
                }
            }),
            (name.clone(), 0u64..64).prop_map(|(name, blocks)| Command::ResizeVolume {
                name,
                size_bytes: blocks * 4096
            }),
            name.prop_map(|name| Command::DeleteVolume { name }),
        ]
    }

    proptest! {
        /// Goal: replicas applying the same log agree, refused commands change nothing, and the
        /// invariants hold. Method: random command sequences applied to two states (one also
        /// cloned before each command to compare on refusal).
        #[test]
        fn apply_is_deterministic_atomic_and_keeps_invariants(commands in proptest::collection::vec(command(), 1..60)) {
            let (mut a, mut b) = (MetaState::default(), MetaState::default());
            for command in commands {
                let before = a.clone();
                let result_a = a.apply(command.clone());
                let result_b = b.apply(command);
                prop_assert_eq!(&result_a, &result_b);
                prop_assert_eq!(&a, &b);
                if result_a.is_err() {
                    prop_assert_eq!(&a, &before, "a refused command changed the state");
                }
                for (_, volume) in a.volumes() {
                    prop_assert!(a.pool(&volume.pool).is_some(), "a volume's pool exists");
                    prop_assert!(volume.size_bytes > 0 && volume.size_bytes % 4096 == 0);
                }
                for pool in a.pools.values() {
                    prop_assert_eq!(pool.pg_map.len() as u32, pool.policy.pg_count);
                    for members in &pool.pg_map {
                        let hosts: std::collections::BTreeSet<_> =
                            members.iter().map(|d| a.disks[d].host).collect();
                        prop_assert_eq!(hosts.len(), members.len(), "distinct hosts per PG");
                    }
                }
            }
        }
    }
}
