//! The storage node's one integration-test binary: the engine conformance suite, chunk store
//! behaviour, discards, fault injection, the model-based property test and placement-group
//! replicas over Raft, all on real files.

mod storage_node {
    pub mod chunk_store;
    pub mod conformance;
    pub mod discard;
    pub mod faults;
    pub mod model;
    pub mod pg;
    pub mod support;
}
