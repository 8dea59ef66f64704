//! Multi-raft runtime over raft-rs, shared by the metadata service and placement groups: filled by issue 3 (the Raft runtime and the metadata service).
