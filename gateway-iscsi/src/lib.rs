//! iSCSI target for EVS volumes (issue 5, RFC 7143 over SPC-4 / SBC-4).
//!
//! Sans-IO layers first, each testable without a socket or a cluster:
//!
//! - [`pdu`]: the PDU codec (basic header segment, additional headers, data segment, header
//!   and data digests), typed per opcode, both directions (a target and a test initiator);
//! - [`login`]: text key=value negotiation, the login phases, CHAP (one-way and mutual),
//!   initiator ACLs and SendTargets;
//! - [`scsi`]: CDB parsing, sense data and the SCSI block command set, persistent
//!   reservations included, over a [`scsi::BlockDevice`].
//!
//! Not here yet: the TCP server (sessions, R2T and Data-Out collection, task management),
//! the volume backend over the client library, and `cairn gateway iscsi` / `cairn dev`.

pub mod login;
pub mod pdu;
pub mod scsi;
