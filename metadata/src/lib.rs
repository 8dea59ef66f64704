//! Cairn's metadata service: the cluster map, pools with their PG maps, volumes, tenants, their
//! S3 access keys and the S3 object index, replicated through one Raft group.
//!
//! - [`placement`]: the pure function from a cluster map and a pool policy to each placement
//!   group's members.
//! - [`state`]: the pure state machine that applies typed commands in Raft log order; the only
//!   place where command logic lives.
//! - [`objects`]: the S3 object index in the state machine: buckets, objects, multipart
//!   uploads, writes in progress and garbage (chunks to reclaim), with their checks and listing.
//! - [`codec`]: the versioned encoding of commands in the Raft log and of stored records.
//! - [`store`]: the state machine persisted in RocksDB (one record per object, keys by prefix),
//!   with snapshots for Raft log compaction and its crash ordering.
//! - [`health`]: cluster health from storage-node heartbeats.
//! - [`scheduler`]: the pure planner of recovery and rebalance moves (PG members from lost,
//!   drained or fuller disks to others), run by the leader every second.
//! - [`server`]: `cairn meta`, one member of the metadata Raft group: the Raft node on its file
//!   log, the store as its state machine, the mutual-TLS transport.
//! - [`api`]: the admin API (axum, JSON, bearer token) the CLI and the Cinder driver use.
//!
//! Pure modules here (placement, state, codec, health, scheduler) do no IO, read no clock and
//! spawn nothing. This crate must not depend on storage-node or any gateway.

pub mod api;
pub mod codec;
pub mod health;
pub mod objects;
pub mod placement;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod store;
