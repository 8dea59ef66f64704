//! The SCSI block command layer of the iSCSI target: SPC-4 and SBC-4 commands over a
//! [`BlockDevice`], sans IO.
//!
//! Each Cairn volume is LUN 0 of its own iSCSI target. The iSCSI server hands this layer a
//! CDB, its data-out and the I_T [`Nexus`] it came through, and gets back an [`Outcome`]:
//! status, sense and data-in. Parsing ([`parse`]) is pure; execution ([`Lun::execute`])
//! awaits the device and the [`ReservationStore`], and nothing else: no sockets, no clock,
//! no spawning.
//!
//! Layout, one file per command family:
//! - [`sense`]: status codes and fixed-format sense data, the one place wire codes live;
//! - [`cdb`]: CDB bytes into a typed [`Command`], and the data-out / data-in lengths;
//! - [`lun`]: the logical unit, limit and reservation checks, the dispatch `match`;
//! - [`block`]: READ, WRITE, VERIFY, WRITE SAME, UNMAP, COMPARE AND WRITE;
//! - [`inquiry`]: standard INQUIRY, VPD pages, READ CAPACITY;
//! - [`mode`]: MODE SENSE and MODE SELECT;
//! - [`opcodes`]: REPORT SUPPORTED OPERATION CODES and REPORT LUNS;
//! - [`pr`]: persistent reservations and their store;
//! - [`device`]: the [`BlockDevice`] trait and the in-memory [`MemDevice`];
//! - [`limits`]: the block limits we advertise and enforce;
//! - [`lock`]: the per-LUN lock that makes COMPARE AND WRITE atomic.
//!
//! Invariants: data-in never exceeds the CDB's allocation (or READ transfer) length; a
//! command that fails validation touches neither the device nor the reservations; every
//! buffer is bounded by [`limits`].

pub mod block;
pub mod cdb;
pub mod device;
pub mod inquiry;
pub mod limits;
pub mod lock;
pub mod lun;
pub mod mode;
pub mod opcodes;
pub mod pr;
pub mod sense;

#[cfg(test)]
mod tests;

pub use cdb::{Command, data_in_len, data_out_len, parse};
pub use device::{BlockDevice, DeviceError, MemDevice};
pub use inquiry::{IdentityError, LunIdentity};
pub use limits::{BlockLimits, Geometry};
pub use lun::{Failure, Lun, LunError, Outcome, Prepared};
pub use pr::{
    MemReservationStore, NameError, Nexus, PrOutRequest, PrRefusal,
    RESERVATION_STATE_ENCODED_LEN_MAX, ReservationDecodeError, ReservationState, ReservationStore,
    ReservationType, StoreError, VolumeId,
};
pub use sense::{AdditionalSense, FieldPointer, Sense, SenseKey, Status};
