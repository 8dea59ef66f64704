//! The client library every gateway shares: where a byte of a volume, object or file lives,
//! and (next) the PG map cache, leader routing, retries under a deadline and QoS.
//!
//! Today it holds the pure pieces the data path is built on:
//!
//! - [`pg_of`]: the placement group of a chunk, `hash(owner, index) mod pg_count`, so no
//!   per-chunk location table exists anywhere (DESIGN.md, "Data model");
//! - [`pieces`]: a byte range of an owner cut at chunk boundaries and at the largest request a
//!   PG takes;
//! - [`PgRouter`]: the PG map cache that says which node to send a PG's requests to (the
//!   leader it last heard of, else the preferred leader), refusing older maps by epoch and
//!   leader hints from replicas that are no longer members.
//!
//! - [`qos`]: per-volume token buckets (IOPS and bytes per second) the gateways enforce.
//!
//! The transport (requests to the nodes, retries under a deadline) lives with its callers for
//! now: `cairn node run` forwards pieces with it.

pub mod qos;

use std::collections::BTreeMap;

use cairn_common::{ChunkId, GroupId, NodeId, OwnerId, PoolId, ReplicaId};

pub use cairn_common::pg_of;

/// One piece of a byte range: a request to one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The chunk.
    pub chunk: ChunkId,
    /// Byte offset inside the chunk.
    pub offset: u32,
    /// Bytes.
    pub length: u32,
    /// Where the piece starts in the caller's buffer.
    pub buffer_offset: u64,
}

/// Cuts `length` bytes at byte `offset` of `owner` (in `pool`, with `chunk_size`-byte chunks)
/// into pieces that each stay inside one chunk and hold at most `piece_max` bytes.
pub fn pieces(
    pool: PoolId,
    owner: OwnerId,
    offset: u64,
    length: u64,
    chunk_size: u32,
    piece_max: u32,
) -> impl Iterator<Item = Piece> + Clone {
    assert!(chunk_size > 0 && piece_max > 0, "sizes must be positive");
    let end = offset
        .checked_add(length)
        .expect("invariant: callers check ranges against the volume size");
    let chunk_size = u64::from(chunk_size);
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let index = at / chunk_size;
        let within = at % chunk_size;
        let room = (chunk_size - within).min(u64::from(piece_max));
        let take = room.min(end - at);
        let piece = Piece {
            chunk: ChunkId {
                pool,
                owner,
                index: u32::try_from(index).expect("invariant: owners stay below 2^32 chunks"),
            },
            offset: within as u32,
            length: take as u32,
            buffer_offset: at - offset,
        };
        at += take;
        Some(piece)
    })
}

/// One PG as the router knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Route {
    /// The pool map's epoch this entry came from.
    epoch: u64,
    /// Members, the preferred leader first.
    members: Vec<ReplicaId>,
    /// The leader last heard of, if it is a member.
    leader: Option<ReplicaId>,
}

/// Where to send each PG's requests (see the crate docs).
#[derive(Clone, Debug, Default)]
pub struct PgRouter {
    routes: BTreeMap<GroupId, Route>,
    epochs: BTreeMap<PoolId, u64>,
}

impl PgRouter {
    /// An empty router.
    pub fn new() -> PgRouter {
        PgRouter::default()
    }

    /// Takes a pool's PG map at `epoch` (members per PG, preferred leader first). A map older
    /// than the one held is ignored (returns false); leader hints survive for PGs whose
    /// members did not change.
    pub fn update_pool(&mut self, pool: PoolId, epoch: u64, pg_map: &[Vec<ReplicaId>]) -> bool {
        if self.epochs.get(&pool).is_some_and(|held| *held > epoch) {
            return false;
        }
        self.epochs.insert(pool, epoch);
        for (index, members) in pg_map.iter().enumerate() {
            let group = GroupId::pg(pool, index as u32);
            let leader = self
                .routes
                .get(&group)
                .and_then(|r| r.leader)
                .filter(|l| members.contains(l));
            let route = Route {
                epoch,
                members: members.clone(),
                leader,
            };
            self.routes.insert(group, route);
        }
        true
    }

    /// Records that `leader` leads `group`, if it is a member of the map held.
    pub fn note_leader(&mut self, group: GroupId, leader: ReplicaId) {
        if let Some(route) = self.routes.get_mut(&group)
            && route.members.contains(&leader)
        {
            route.leader = Some(leader);
        }
    }

    /// Forgets `group`'s leader (it refused or did not answer).
    pub fn forget_leader(&mut self, group: GroupId) {
        if let Some(route) = self.routes.get_mut(&group) {
            route.leader = None;
        }
    }

    /// Gives up on `node` for `group` (it did not answer: down, or cut off by a partition)
    /// and guesses the next member after it as the leader. Forgetting the leader alone would
    /// send the next request to the preferred leader, often the very node that did not
    /// answer; a guessed member that does not lead names the leader in its answer.
    pub fn skip_node(&mut self, group: GroupId, node: NodeId) {
        if let Some(route) = self.routes.get_mut(&group) {
            let members = &route.members;
            let after = members
                .iter()
                .position(|m| m.node() == node)
                .map_or(0, |i| i + 1);
            route.leader = (0..members.len())
                .map(|k| members[(after + k) % members.len()])
                .find(|m| m.node() != node);
        }
    }

    /// The node to send `group`'s requests to: its known leader's, else its preferred
    /// leader's; `None` for a PG not in any map held.
    pub fn target(&self, group: GroupId) -> Option<NodeId> {
        let route = self.routes.get(&group)?;
        route
            .leader
            .or_else(|| route.members.first().copied())
            .map(ReplicaId::node)
    }

    /// The members of `group`, preferred leader first.
    pub fn members(&self, group: GroupId) -> Option<&[ReplicaId]> {
        self.routes.get(&group).map(|r| r.members.as_slice())
    }

    /// The epoch of the map `group` came from.
    pub fn epoch(&self, group: GroupId) -> Option<u64> {
        self.routes.get(&group).map(|r| r.epoch)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Golden values: a change here would move every stored chunk to another PG.
    #[test]
    fn pg_of_is_stable() {
        let got: Vec<u32> = (0..8).map(|i| pg_of(OwnerId(42), i, 128)).collect();
        assert_eq!(got, GOLDEN);
    }

    // Computed independently (Python, same formula).
    const GOLDEN: [u32; 8] = [83, 94, 108, 47, 44, 29, 105, 41];

    #[test]
    fn pg_of_spreads_a_volume_evenly() {
        let pg_count = 64u32;
        let mut counts = vec![0u32; pg_count as usize];
        for owner in 1..=16u64 {
            for index in 0..4096 {
                counts[pg_of(OwnerId(owner), index, pg_count) as usize] += 1;
            }
        }
        let ideal = 16 * 4096 / pg_count;
        for (pg, count) in counts.iter().enumerate() {
            assert!(
                count.abs_diff(ideal) * 10 < ideal,
                "PG {pg} holds {count} chunks, ideal {ideal}"
            );
        }
    }

    fn replica(node: u64, number: u64) -> ReplicaId {
        ReplicaId::new(NodeId(node), number)
    }

    #[test]
    fn router_prefers_the_known_leader_then_the_preferred_one() {
        let mut router = PgRouter::new();
        let map = vec![vec![replica(2, 1), replica(3, 1), replica(4, 1)]];
        assert!(router.update_pool(PoolId(1), 1, &map));
        let group = GroupId::pg(PoolId(1), 0);
        assert_eq!(
            router.target(group),
            Some(NodeId(2)),
            "preferred leader first"
        );
        router.note_leader(group, replica(4, 1));
        assert_eq!(router.target(group), Some(NodeId(4)));
        router.note_leader(group, replica(9, 9));
        assert_eq!(
            router.target(group),
            Some(NodeId(4)),
            "a non-member's hint is ignored"
        );
        router.forget_leader(group);
        assert_eq!(router.target(group), Some(NodeId(2)));
        assert_eq!(router.target(GroupId::pg(PoolId(2), 0)), None);
    }

    /// Goal: a node that did not answer for a PG is skipped: the next request goes to the
    /// member after it (in map order, wrapping), never to it again at once.
    #[test]
    fn router_skips_a_node_that_did_not_answer() {
        let mut router = PgRouter::new();
        let map = vec![vec![replica(2, 1), replica(3, 1), replica(4, 1)]];
        assert!(router.update_pool(PoolId(1), 1, &map));
        let group = GroupId::pg(PoolId(1), 0);
        router.skip_node(group, NodeId(2));
        assert_eq!(router.target(group), Some(NodeId(3)));
        router.skip_node(group, NodeId(3));
        assert_eq!(router.target(group), Some(NodeId(4)));
        router.skip_node(group, NodeId(4));
        assert_eq!(router.target(group), Some(NodeId(2)), "wraps around");
        router.skip_node(group, NodeId(9));
        assert_eq!(
            router.target(group),
            Some(NodeId(2)),
            "not a member: the first"
        );
        router.skip_node(GroupId::pg(PoolId(2), 0), NodeId(2));
        assert_eq!(router.target(GroupId::pg(PoolId(2), 0)), None);
    }

    #[test]
    fn router_refuses_older_maps_and_drops_hints_of_removed_members() {
        let mut router = PgRouter::new();
        let group = GroupId::pg(PoolId(1), 0);
        let old = vec![vec![replica(2, 1), replica(3, 1), replica(4, 1)]];
        let new = vec![vec![replica(2, 1), replica(3, 1), replica(5, 7)]];
        assert!(router.update_pool(PoolId(1), 5, &old));
        router.note_leader(group, replica(4, 1));
        assert!(router.update_pool(PoolId(1), 6, &new));
        assert_eq!(
            router.target(group),
            Some(NodeId(2)),
            "the old leader left the PG"
        );
        assert!(
            !router.update_pool(PoolId(1), 5, &old),
            "a stale map is refused"
        );
        assert_eq!(router.members(group).map(<[ReplicaId]>::len), Some(3));
        assert_eq!(router.epoch(group), Some(6));
        router.note_leader(group, replica(3, 1));
        assert!(router.update_pool(PoolId(1), 6, &new));
        assert_eq!(
            router.target(group),
            Some(NodeId(3)),
            "hints survive an unchanged map"
        );
    }

    proptest! {
        /// The pieces cover the range exactly, in order, each inside one chunk and within
        /// the size limit.
        #[test]
        fn pieces_tile_the_range(
            offset in 0u64..1 << 34,
            length in 0u64..1 << 22,
            chunk_shift in 12u32..23,
            piece_max in 1u32..1 << 21,
        ) {
            let chunk_size = 1u32 << chunk_shift;
            let mut next = offset;
            for piece in pieces(PoolId(1), OwnerId(9), offset, length, chunk_size, piece_max) {
                let start = u64::from(piece.chunk.index) * u64::from(chunk_size) + u64::from(piece.offset);
                prop_assert_eq!(start, next);
                prop_assert_eq!(piece.buffer_offset, next - offset);
                prop_assert!(piece.length > 0 && piece.length <= piece_max);
                prop_assert!(u64::from(piece.offset) + u64::from(piece.length) <= u64::from(chunk_size));
                next += u64::from(piece.length);
            }
            prop_assert_eq!(next, offset + length);
        }

        #[test]
        fn pg_of_stays_in_range(owner: u64, index: u32, pg_count in 1u32..100_000) {
            prop_assert!(pg_of(OwnerId(owner), index, pg_count) < pg_count);
        }
    }
}
