//! Cairn's multi-raft runtime over raft-rs, shared by the metadata service (one group) and the
//! storage nodes (one group per placement-group replica).
//!
//! - [`node`]: many groups per process, driven sans-IO (tick, step, propose, process_ready),
//!   with group commit across groups and messages batched per peer node.
//! - [`log`]: the durable Raft state behind a trait; [`log::MemLogStore`] models a disk whose
//!   unsynced writes are lost on power loss (the simulation's disk).
//! - [`file_log`]: the log on disk: segmented, checksummed records of all groups, one
//!   fdatasync per round (group commit), torn tails truncated on open.
//! - [`transport`]: node-to-node TCP with mutual TLS ([`tls`]: the cluster CA and node
//!   identities), length-delimited frames, one batch per peer, bounded queues.
//!
//! Determinism: nothing here reads a clock, spawns or draws randomness of its own, except
//! raft-rs's election timeout, which a width-one range in [`node::NodeConfig`] pins. Leases
//! take the time from the caller ([`RaftNode::read`]).
//!
//! Linearizable reads use ReadIndex (leadership confirmed by a heartbeat round, no clock), or
//! with [`node::NodeConfig::read_lease`] a leader lease: for a while after a confirmed round
//! the leader serves reads at its commit index without another (see `read_lease` for why
//! that is safe, and what it costs: a restarted replica votes for no one for a minimum
//! election timeout).
//!
//! Snapshots: the caller's state machine hands its state to [`RaftNode::compact`]; the log
//! drops what it covers and lagging or new members receive it. Membership changes go through
//! joint consensus when several happen at once; learners catch up without voting.
//!
//! This crate must not depend on storage-node or metadata.

pub mod file_log;
pub mod log;
pub mod node;
pub mod storage;

pub use node::{
    Apply, GroupStatus, MemberChange, NodeConfig, NodeError, Outbox, ProposeError, RaftNode,
    ReadPath, ReadReady, conf_change_context,
};

/// raft-rs types that appear in this crate's API.
pub mod raft_types {
    pub use raft::{
        StateRole,
        eraftpb::{
            ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot,
            SnapshotMetadata,
        },
    };
}
pub mod tls;
pub mod transport;
