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
//! On top of them, [`server`] is the TCP target: connections, login, sessions in full
//! feature phase (CmdSN window, R2T and Data-Out collection, Data-In, task management,
//! NOP-In pings, logout) at ErrorRecoveryLevel 0, over devices a [`server::Volumes`]
//! provides ([`server::MemVolumes`] in memory).
//! [`initiator`] is a blocking initiator over `std::net::TcpStream`, for tests and tools.
//!
//! Not here yet: the volume backend over the client library, and `cairn gateway iscsi` /
//! `cairn dev`.

pub mod initiator;
pub mod login;
pub mod pdu;
pub mod scsi;
pub mod server;
