//! The storage node's one integration-test binary: the engine conformance suite, chunk store
//! behaviour, fault injection and the model-based property test, all on real files.

mod storage_node {
    pub mod chunk_store;
    pub mod conformance;
    pub mod faults;
    pub mod model;
    pub mod support;
}
