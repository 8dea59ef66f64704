//! Cairn's metadata service. Today: [`placement`], the pure function from a cluster map and a
//! pool policy to each placement group's members, and [`state`], the pure state machine that
//! applies typed commands (disks, pools with their PG maps, volumes) in Raft log order.
//!
//! Still to come (issue 3): the Raft-replicated state machine on RocksDB (cluster map, pools,
//! PG map, volumes, tenants and keys, laid out by key prefix), the admin API and `cairn meta`.
//! Pure modules here (placement, state) do no IO, read no clock and spawn nothing. This crate
//! must not depend on storage-node or any gateway.

pub mod placement;
pub mod state;
