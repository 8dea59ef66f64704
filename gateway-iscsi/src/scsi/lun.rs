//! The logical unit: checks a command against limits and reservations, dispatches it in one
//! `match`, and maps every failure to a status and sense.
//!
//! The iSCSI server drives it per SCSI Command PDU:
//! 1. [`Lun::prepare`] parses the CDB and says how many data-out bytes to collect (or gives
//!    the sense to answer with at once);
//! 2. the server collects the data-out (immediate data, unsolicited Data-Out, R2Ts);
//! 3. [`Lun::execute`] runs the command and returns an [`Outcome`]: status, sense, and
//!    data-in never longer than the CDB's allocation or transfer length. Residuals against
//!    the iSCSI expected length are the server's to compute.

use crate::scsi::{
    block::{self, Direction},
    cdb::{self, Command},
    device::{BlockDevice, DeviceError},
    inquiry::{self, IdentityError, LunIdentity},
    limits::{BLOCK_SIZES, BlockLimits, Geometry},
    lock::{LockMode, WriteLock},
    mode::{self, ModeSenseRequest},
    opcodes,
    pr::{self, Access, Nexus, PrOutRequest, PrRefusal, ReservationStore},
    sense::{AdditionalSense, Sense, SenseKey, Status},
};

/// What a command produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The status byte.
    pub status: Status,
    /// The sense data, present exactly when the status is CHECK CONDITION.
    pub sense: Option<Sense>,
    /// The data-in, at most the allocation length (or READ transfer length) of the CDB.
    pub data_in: Vec<u8>,
}

impl Outcome {
    fn good(data_in: Vec<u8>) -> Outcome {
        Outcome {
            status: Status::Good,
            sense: None,
            data_in,
        }
    }

    fn from_failure(failure: Failure) -> Outcome {
        let (status, sense) = match failure {
            Failure::Check(sense) => (Status::CheckCondition, Some(sense)),
            Failure::Busy => (Status::Busy, None),
            Failure::ReservationConflict => (Status::ReservationConflict, None),
        };
        Outcome {
            status,
            sense,
            data_in: Vec::new(),
        }
    }
}

/// Why a command did not complete with GOOD status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// CHECK CONDITION with this sense.
    Check(Sense),
    /// BUSY: the device, the reservation store or the write lock cannot take the command now.
    Busy,
    /// RESERVATION CONFLICT.
    ReservationConflict,
}

impl From<Sense> for Failure {
    fn from(sense: Sense) -> Failure {
        Failure::Check(sense)
    }
}

/// A parsed command with its data lengths, from [`Lun::prepare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// The command.
    pub command: Command,
    /// How many data-out bytes the command needs.
    pub data_out_len: u32,
    /// The most data-in bytes the command returns.
    pub data_in_len: u32,
}

/// A logical unit could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LunError {
    /// The device failed to report its block size.
    #[error("reading the block size")]
    Device(#[from] DeviceError),
    /// The device has a block size we do not serve.
    #[error("block size {block_size} is not 512 or 4096")]
    BlockSize {
        /// The device's block size.
        block_size: u32,
    },
    /// The identity is not reportable.
    #[error("logical unit identity")]
    Identity(#[from] IdentityError),
}

/// LUN 0 of a Cairn volume's target.
pub struct Lun<D, S> {
    device: D,
    identity: LunIdentity,
    store: S,
    /// Read once at open: a volume's block size never changes.
    block_size: u32,
    limits: BlockLimits,
    /// Writes hold it shared, COMPARE AND WRITE exclusive (see the `lock` module).
    write_lock: WriteLock,
}

impl<D: BlockDevice, S: ReservationStore> Lun<D, S> {
    /// Opens the logical unit over `device`, reporting `identity`, with its persistent
    /// reservations in `store`.
    pub async fn open(device: D, identity: LunIdentity, store: S) -> Result<Self, LunError> {
        let block_size = device.block_size().await?;
        if !BLOCK_SIZES.contains(&block_size) {
            return Err(LunError::BlockSize { block_size });
        }
        let limits = BlockLimits::for_block_size(block_size);
        Ok(Lun {
            device,
            identity,
            store,
            block_size,
            limits,
            write_lock: WriteLock::default(),
        })
    }

    /// The logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The identity the logical unit reports.
    pub fn identity(&self) -> &LunIdentity {
        &self.identity
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Parses `cdb` and checks it against the block limits. On error the server answers
    /// CHECK CONDITION with the sense without collecting data-out (it must still accept
    /// data the initiator already sent unsolicited).
    pub fn prepare(&self, cdb: &[u8]) -> Result<Prepared, Sense> {
        let command = cdb::parse(cdb)?;
        self.check_limits(&command)?;
        let data_out_len = cdb::data_out_len(&command, self.block_size);
        let data_in_len = cdb::data_in_len(&command, self.block_size);
        // Within limits every length fits 32 bits: at most TRANSFER_BYTES_MAX, twice the
        // COMPARE AND WRITE limit, or a 32-bit allocation length.
        let data_out_len = u32::try_from(data_out_len).expect("invariant: limits bound data-out");
        let data_in_len = u32::try_from(data_in_len).expect("invariant: limits bound data-in");
        Ok(Prepared {
            command,
            data_out_len,
            data_in_len,
        })
    }

    /// Refuses transfers over the block limits VPD page's limits with INVALID FIELD IN CDB
    /// pointing at the length field (SBC-4 6.6.4).
    fn check_limits(&self, command: &Command) -> Result<(), Sense> {
        let limits = &self.limits;
        let (range, blocks_max) = match *command {
            Command::Read(range)
            | Command::Write(range)
            | Command::WriteAndVerify { range, .. }
            | Command::Verify { range, .. } => (range, u64::from(limits.transfer_blocks_max)),
            Command::CompareAndWrite(range) => {
                (range, u64::from(limits.compare_and_write_blocks_max))
            }
            Command::WriteSame { range, .. } => {
                // WSNZ=1: zero blocks ("to the end of the medium") is not supported.
                if range.blocks == 0 {
                    return Err(Sense::invalid_field_in_cdb(range.length_field, None));
                }
                (range, limits.write_same_blocks_max)
            }
            _ => return Ok(()),
        };
        if u64::from(range.blocks) > blocks_max {
            return Err(Sense::invalid_field_in_cdb(range.length_field, None));
        }
        Ok(())
    }

    /// Executes one command from `nexus`. `data_out` must hold the bytes
    /// [`Lun::prepare`] asked for; extra bytes are ignored.
    pub async fn execute(&self, nexus: &Nexus, cdb: &[u8], data_out: &[u8]) -> Outcome {
        let prepared = match self.prepare(cdb) {
            Ok(prepared) => prepared,
            Err(sense) => return Outcome::from_failure(Failure::Check(sense)),
        };
        let command = prepared.command;
        let Some(data_out) = data_out.get(..prepared.data_out_len as usize) else {
            return Outcome::from_failure(Failure::Check(short_data_out(&command)));
        };
        if let Err(failure) = self.check_reservation(nexus, &command).await {
            return Outcome::from_failure(failure);
        }
        match self.dispatch(nexus, command, data_out).await {
            Ok(mut data_in) => {
                if let Command::Read(_) = command {
                    assert_eq!(data_in.len(), prepared.data_in_len as usize);
                }
                // Allocation lengths truncate the data; the initiator learns the full length
                // from the data's own length fields (SPC-4 4.2.5.6).
                data_in.truncate(prepared.data_in_len as usize);
                Outcome::good(data_in)
            }
            Err(failure) => Outcome::from_failure(failure),
        }
    }

    /// RESERVATION CONFLICT if a persistent reservation keeps `nexus` from running
    /// `command`.
    async fn check_reservation(&self, nexus: &Nexus, command: &Command) -> Result<(), Failure> {
        let access = access_of(command);
        if access == Access::Always {
            return Ok(());
        }
        let state = self
            .store
            .load(self.identity.volume_id())
            .await
            .map_err(|_| Failure::Busy)?;
        if !state.allows(nexus, access) {
            return Err(Failure::ReservationConflict);
        }
        Ok(())
    }

    async fn geometry(&self) -> Result<Geometry, Failure> {
        let size_bytes = self
            .device
            .size_bytes()
            .await
            .map_err(|error| block::device_failure(error, Direction::Read, self.block_size))?;
        Ok(Geometry {
            block_size: self.block_size,
            block_count: size_bytes / u64::from(self.block_size),
        })
    }

    /// Runs a command that passed the limit and reservation checks: the one `match` over
    /// every command. Block commands go on to [`Lun::dispatch_block`].
    async fn dispatch(
        &self,
        nexus: &Nexus,
        command: Command,
        data_out: &[u8],
    ) -> Result<Vec<u8>, Failure> {
        match command {
            Command::TestUnitReady => Ok(Vec::new()),
            Command::RequestSense { .. } => {
                // Sense travels with each SCSI Response (autosense), so none is ever pending.
                let none = Sense::new(
                    SenseKey::NoSense,
                    AdditionalSense::NoAdditionalSenseInformation,
                );
                Ok(none.to_fixed().to_vec())
            }
            Command::Inquiry {
                vital_product_data: false,
                ..
            } => Ok(inquiry::standard_inquiry()),
            Command::Inquiry {
                vital_product_data: true,
                page_code,
                ..
            } => Ok(inquiry::vpd_page(
                page_code,
                &self.identity,
                self.block_size,
            )?),
            Command::ModeSense {
                format,
                page_control,
                page_code,
                subpage_code,
                block_descriptor,
                long_lba_accepted,
                ..
            } => {
                let request = ModeSenseRequest {
                    format,
                    page_control,
                    page_code,
                    subpage_code,
                    block_descriptor,
                    long_lba_accepted,
                };
                Ok(mode::mode_sense(&request, &self.geometry().await?)?)
            }
            Command::ModeSelect {
                format,
                page_format,
                ..
            } => {
                let geometry = self.geometry().await?;
                mode::mode_select(format, page_format, data_out, &geometry)?;
                Ok(Vec::new())
            }
            Command::ReadCapacity10 => Ok(inquiry::read_capacity_10(&self.geometry().await?)),
            Command::ReadCapacity16 { .. } => {
                Ok(inquiry::read_capacity_16(&self.geometry().await?))
            }
            Command::ReportLuns {
                well_known_only, ..
            } => Ok(opcodes::report_luns(well_known_only)),
            Command::ReportSupportedOperationCodes {
                query, timeouts, ..
            } => Ok(opcodes::report_supported_operation_codes(query, timeouts)?),
            Command::PersistentReserveIn { action, .. } => self.reserve_in(action).await,
            Command::PersistentReserveOut {
                action,
                reservation_type,
                ..
            } => {
                self.reserve_out(nexus, action, reservation_type, data_out)
                    .await
            }
            Command::Read(_)
            | Command::Write(_)
            | Command::WriteAndVerify { .. }
            | Command::Verify { .. }
            | Command::SynchronizeCache(_)
            | Command::WriteSame { .. }
            | Command::Unmap { .. }
            | Command::CompareAndWrite(_) => {
                let geometry = self.geometry().await?;
                self.dispatch_block(&geometry, command, data_out).await
            }
        }
    }

    /// Runs a block command. Commands that change the medium hold the write lock: shared,
    /// or exclusive for COMPARE AND WRITE.
    async fn dispatch_block(
        &self,
        geometry: &Geometry,
        command: Command,
        data_out: &[u8],
    ) -> Result<Vec<u8>, Failure> {
        let device = &self.device;
        match command {
            Command::Read(range) => return block::read(device, geometry, &range).await,
            Command::Write(range) => {
                let _guard = self.lock(LockMode::Shared).await?;
                block::write(device, geometry, &range, data_out).await?;
            }
            Command::WriteAndVerify { range, compare } => {
                let _guard = self.lock(LockMode::Shared).await?;
                block::write_and_verify(device, geometry, &range, compare, data_out).await?;
            }
            Command::Verify { range, check } => {
                block::verify(device, geometry, &range, check, data_out).await?;
            }
            Command::SynchronizeCache(range) => {
                // NUMBER OF LOGICAL BLOCKS zero means "to the end"; the LBA must exist.
                if !geometry.contains(range.lba, range.blocks.into()) {
                    return Err(Failure::Check(Sense::lba_out_of_range()));
                }
                let failure =
                    |error| block::device_failure(error, Direction::Write, self.block_size);
                device.flush().await.map_err(failure)?;
            }
            Command::WriteSame {
                range,
                unmap,
                no_data_out,
            } => {
                // NDOB: the block is all zeros and there is no data-out.
                let zeros = if no_data_out {
                    vec![0u8; self.block_size as usize]
                } else {
                    Vec::new()
                };
                let block = if no_data_out { &zeros[..] } else { data_out };
                let _guard = self.lock(LockMode::Shared).await?;
                block::write_same(device, geometry, &range, unmap, block).await?;
            }
            Command::Unmap { .. } => {
                let descriptors = block::unmap_descriptors(data_out, geometry)?;
                let _guard = self.lock(LockMode::Shared).await?;
                block::unmap(device, geometry, &descriptors).await?;
            }
            Command::CompareAndWrite(range) => {
                let _guard = self.lock(LockMode::Exclusive).await?;
                block::compare_and_write(device, geometry, &range, data_out).await?;
            }
            other => unreachable!("not a block command: {other:?}"),
        }
        Ok(Vec::new())
    }

    async fn reserve_out(
        &self,
        nexus: &Nexus,
        action: cdb::PrOutAction,
        reservation_type: Option<pr::ReservationType>,
        data_out: &[u8],
    ) -> Result<Vec<u8>, Failure> {
        let request = PrOutRequest::parse(action, reservation_type, data_out)?;
        let applied = self
            .store
            .apply(self.identity.volume_id(), nexus, &request)
            .await;
        match applied.map_err(|_| Failure::Busy)? {
            Ok(()) => Ok(Vec::new()),
            Err(PrRefusal::Conflict) => Err(Failure::ReservationConflict),
            Err(PrRefusal::Sense(sense)) => Err(Failure::Check(sense)),
        }
    }

    async fn reserve_in(&self, action: cdb::PrInAction) -> Result<Vec<u8>, Failure> {
        let load = || async {
            self.store
                .load(self.identity.volume_id())
                .await
                .map_err(|_| Failure::Busy)
        };
        Ok(match action {
            cdb::PrInAction::ReportCapabilities => pr::report_capabilities(),
            cdb::PrInAction::ReadKeys => pr::read_keys(&*load().await?),
            cdb::PrInAction::ReadReservation => pr::read_reservation(&*load().await?),
            cdb::PrInAction::ReadFullStatus => pr::read_full_status(&*load().await?),
        })
    }

    async fn lock(&self, mode: LockMode) -> Result<crate::scsi::lock::LockGuard<'_>, Failure> {
        self.write_lock
            .acquire(mode)
            .await
            .map_err(|_| Failure::Busy)
    }
}

/// The sense for data-out shorter than the CDB needs: the initiator's expected transfer
/// length disagrees with the CDB. Parameter lists get PARAMETER LIST LENGTH ERROR; block
/// data gets INVALID FIELD IN CDB at the length field.
fn short_data_out(command: &Command) -> Sense {
    match *command {
        Command::Write(range)
        | Command::WriteAndVerify { range, .. }
        | Command::Verify { range, .. }
        | Command::WriteSame { range, .. }
        | Command::CompareAndWrite(range) => Sense::invalid_field_in_cdb(range.length_field, None),
        _ => Sense::parameter_list_length_error(),
    }
}

/// The reservation class of a command (SPC-4 table 62, SBC-4 table 15, for a non-holder).
fn access_of(command: &Command) -> Access {
    match command {
        Command::TestUnitReady
        | Command::RequestSense { .. }
        | Command::Inquiry { .. }
        | Command::ReadCapacity10
        | Command::ReadCapacity16 { .. }
        | Command::ReportLuns { .. }
        | Command::ReportSupportedOperationCodes { .. }
        | Command::PersistentReserveIn { .. }
        | Command::PersistentReserveOut { .. } => Access::Always,
        Command::Read(_) | Command::Verify { .. } | Command::ModeSense { .. } => Access::Read,
        Command::Write(_)
        | Command::WriteAndVerify { .. }
        | Command::WriteSame { .. }
        | Command::Unmap { .. }
        | Command::CompareAndWrite(_)
        | Command::SynchronizeCache(_)
        | Command::ModeSelect { .. } => Access::Write,
    }
}
