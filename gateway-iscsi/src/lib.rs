//! iSCSI target for EVS volumes (issue 5, RFC 7143 over SBC-4).
//!
//! Sans-IO layers first, each testable without a socket or a cluster:
//!
//! - [`pdu`]: the PDU codec (basic header segment, additional headers, data segment, header
//!   and data digests), typed per opcode;
//! - [`login`]: text key=value negotiation, the login phases and CHAP;
//! - [`scsi`]: CDB parsing, sense data and the SCSI block command set over a [`scsi::BlockDevice`].

pub mod login;
pub mod pdu;
pub mod scsi;
