//! Integration tests of the iSCSI target server: an in-process server on 127.0.0.1:0 over
//! in-memory LUNs, driven by real initiators (libiscsi's command-line tools and its
//! conformance suite, as subprocesses) and by a test initiator built on this crate's own
//! PDU codec for the protocol paths the tools do not reach.

#[path = "iscsi/harness.rs"]
mod harness;
#[path = "iscsi/initiator.rs"]
mod initiator;

#[path = "iscsi/budget.rs"]
mod budget;
#[path = "iscsi/client.rs"]
mod client;
#[path = "iscsi/conformance.rs"]
mod conformance;
#[path = "iscsi/digests.rs"]
mod digests;
#[path = "iscsi/gated.rs"]
mod gated;
#[path = "iscsi/malformed.rs"]
mod malformed;
#[path = "iscsi/protocol.rs"]
mod protocol;
#[path = "iscsi/sessions.rs"]
mod sessions;
#[path = "iscsi/tools.rs"]
mod tools;
