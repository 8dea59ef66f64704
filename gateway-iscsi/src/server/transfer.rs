//! Data-Out collection for one write command (RFC 7143 sections 4.2.5 and 11.7), sans IO.
//!
//! A write's data arrives as immediate data in the command, then unsolicited Data-Out PDUs
//! (TTT 0xffffffff) until one carries the F bit, up to FirstBurstLength in all, then one
//! sequence per R2T we send, each at most MaxBurstLength, at most MaxOutstandingR2T at a time.
//! We negotiate DataPDUInOrder=Yes and DataSequenceInOrder=Yes, so the bytes arrive in order:
//! every PDU must start where the previous one ended, and a sequence's DataSN counts from 0.
//!
//! The initiator may send up to its Expected Data Transfer Length; we keep only the first
//! `needed_len` bytes (what the command needs, never more), count the rest, and ask with R2Ts
//! only for what we keep. Any violation is an [`TransferError`]: at ErrorRecoveryLevel 0 the
//! connection is dropped.
//!
//! A PDU whose data failed its digest is discarded, and the command's data with it
//! ([`DataOutCollector::on_lost_data_out`]): the collector frees its buffer, asks for nothing
//! more, and follows the sequences under way to their end, after which the command fails.
//!
//! The buffer for the `needed_len` bytes is allocated whole once the command holds its share
//! of the server's data-out budget (`granted`). Until then no R2T goes out, and the bytes the
//! initiator sends unasked (immediate and unsolicited data, at most FirstBurstLength) are
//! staged in a buffer of at most that size.

use std::collections::VecDeque;

use crate::pdu::{DataOut, Ttt};

/// Largest data-out buffer of one command: twice the largest READ/WRITE, because COMPARE AND
/// WRITE carries the compare and the write data. The SCSI layer's limits keep it there.
pub(crate) const DATA_OUT_LEN_MAX: u32 = 2 * crate::scsi::limits::TRANSFER_BYTES_MAX;

/// The negotiated parameters that shape a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TransferLimits {
    /// FirstBurstLength: immediate plus unsolicited bytes.
    pub(crate) first_burst_len: u32,
    /// MaxBurstLength: bytes of one R2T.
    pub(crate) max_burst_len: u32,
    /// MaxOutstandingR2T.
    pub(crate) max_outstanding_r2t: u16,
    /// InitialR2T: no unsolicited Data-Out PDUs.
    pub(crate) initial_r2t: bool,
}

/// A protocol violation in a write's data.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TransferError {
    /// More unsolicited data than FirstBurstLength or the expected length allow.
    #[error("{len} bytes of unsolicited data exceed the limit of {max}")]
    UnsolicitedTooLong {
        /// Unsolicited bytes so far.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// Unsolicited Data-Out while InitialR2T=Yes, or after the unsolicited burst ended.
    #[error("unsolicited data is not allowed now")]
    UnsolicitedNotAllowed,
    /// A TTT that names no R2T outstanding, or not the oldest one.
    #[error("Data-Out with TTT {ttt:#x} answers no outstanding R2T in order")]
    UnknownTransfer {
        /// The TTT received.
        ttt: u32,
    },
    /// DataSN out of sequence.
    #[error("DataSN {received}, expected {expected}")]
    DataSn {
        /// DataSN received.
        received: u32,
        /// DataSN expected.
        expected: u32,
    },
    /// Buffer Offset not where the previous PDU ended.
    #[error("buffer offset {received}, expected {expected}")]
    Offset {
        /// Offset received.
        received: u32,
        /// Offset expected.
        expected: u32,
    },
    /// Data beyond the end of the R2T's range.
    #[error("data ends at {end}, past the R2T's end {max}")]
    PastR2t {
        /// Where the PDU's data ends.
        end: u64,
        /// Where the R2T's range ends.
        max: u32,
    },
    /// The F bit before the R2T's range was complete.
    #[error("F bit at {received} before the R2T's end {end}")]
    EarlyFinal {
        /// Bytes received.
        received: u32,
        /// The R2T's end.
        end: u32,
    },
}

/// An R2T to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct R2tRequest {
    /// Its TTT.
    pub(crate) ttt: Ttt,
    /// R2TSN.
    pub(crate) r2t_sn: u32,
    /// Buffer Offset.
    pub(crate) offset: u32,
    /// Desired Data Transfer Length.
    pub(crate) len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Outstanding {
    ttt: Ttt,
    end: u32,
    data_sn_next: u32,
}

/// The data of one write command being collected.
#[derive(Debug)]
pub(crate) struct DataOutCollector {
    limits: TransferLimits,
    /// Bytes we keep and ask for.
    needed_len: u32,
    /// The first `needed_len` bytes, as they arrive.
    data: Vec<u8>,
    /// Bytes received so far (kept or not): where the next PDU must start.
    received_len: u32,
    /// Most unsolicited bytes (immediate included): FirstBurstLength and the expected length.
    unsolicited_max: u32,
    /// `Some(next DataSN)` while unsolicited Data-Out may still come.
    unsolicited: Option<u32>,
    r2ts: VecDeque<Outstanding>,
    /// Where the next R2T starts.
    solicited_len: u32,
    r2t_sn_next: u32,
    /// The command holds its data-out budget: `data` may grow to `needed_len` and R2Ts may
    /// ask for the rest.
    granted: bool,
    /// Data was discarded (a data digest error): the command cannot run; `data` is freed.
    lost: bool,
}

impl DataOutCollector {
    /// Starts collecting: `expected_len` is the command's Expected Data Transfer Length (0
    /// without the W bit), `needed_len` what the command needs of it, `immediate` the
    /// command's data segment and `fin` its F bit (no unsolicited Data-Out follows).
    /// `granted` says the command holds its data-out budget already (see
    /// [`DataOutCollector::grant`]).
    pub(crate) fn new(
        limits: TransferLimits,
        expected_len: u32,
        needed_len: u32,
        immediate: &[u8],
        fin: bool,
        granted: bool,
    ) -> Result<DataOutCollector, TransferError> {
        assert!(needed_len <= expected_len);
        assert!(needed_len <= DATA_OUT_LEN_MAX);
        assert!(limits.max_outstanding_r2t >= 1 && limits.max_burst_len >= 1);
        let unsolicited_max = limits.first_burst_len.min(expected_len);
        // Without the budget, only the bytes the initiator may send unasked are kept.
        let capacity = if granted {
            needed_len
        } else {
            needed_len.min(unsolicited_max)
        };
        let mut collector = DataOutCollector {
            limits,
            needed_len,
            data: Vec::with_capacity(capacity as usize),
            received_len: 0,
            unsolicited_max,
            unsolicited: Some(0),
            r2ts: VecDeque::new(),
            solicited_len: 0,
            r2t_sn_next: 0,
            granted,
            lost: false,
        };
        let len = u32::try_from(immediate.len()).unwrap_or(u32::MAX);
        if len > unsolicited_max {
            return Err(TransferError::UnsolicitedTooLong {
                len,
                max: unsolicited_max,
            });
        }
        collector.keep(len, immediate);
        // Without room for more unsolicited data, the F bit is implied.
        if fin || collector.received_len == unsolicited_max {
            collector.end_unsolicited();
        } else if limits.initial_r2t {
            return Err(TransferError::UnsolicitedNotAllowed);
        }
        Ok(collector)
    }

    /// Takes one Data-Out PDU of this command.
    pub(crate) fn on_data_out(&mut self, pdu: &DataOut) -> Result<(), TransferError> {
        let len = u32::try_from(pdu.data.len()).unwrap_or(u32::MAX);
        self.take(pdu, len, &pdu.data)
    }

    /// Takes the header of a Data-Out PDU of this command whose `len` bytes of data were
    /// discarded: the command's data is lost for good (ErrorRecoveryLevel 0 asks for nothing
    /// again), its buffer is freed, and the PDU still counts in its sequence.
    pub(crate) fn on_lost_data_out(
        &mut self,
        header: &DataOut,
        len: u32,
    ) -> Result<(), TransferError> {
        assert!(header.data.is_empty());
        self.lost = true;
        self.data = Vec::new();
        self.take(header, len, &[])
    }

    /// Checks a Data-Out PDU of `len` bytes against the sequences under way and keeps
    /// `bytes` (empty once the data is lost).
    fn take(&mut self, pdu: &DataOut, len: u32, bytes: &[u8]) -> Result<(), TransferError> {
        if pdu.buffer_offset != self.received_len {
            return Err(TransferError::Offset {
                received: pdu.buffer_offset,
                expected: self.received_len,
            });
        }
        let end = u64::from(self.received_len) + u64::from(len);
        if pdu.ttt == Ttt::RESERVED {
            let Some(data_sn_next) = self.unsolicited else {
                return Err(TransferError::UnsolicitedNotAllowed);
            };
            check_data_sn(pdu.data_sn, data_sn_next)?;
            if end > u64::from(self.unsolicited_max) {
                return Err(TransferError::UnsolicitedTooLong {
                    len: u32::try_from(end).unwrap_or(u32::MAX),
                    max: self.unsolicited_max,
                });
            }
            self.unsolicited = Some(data_sn_next.wrapping_add(1));
            self.keep(len, bytes);
            if pdu.fin {
                self.end_unsolicited();
            }
            return Ok(());
        }
        let Some(front) = self.r2ts.front_mut() else {
            return Err(TransferError::UnknownTransfer { ttt: pdu.ttt.0 });
        };
        if front.ttt != pdu.ttt {
            return Err(TransferError::UnknownTransfer { ttt: pdu.ttt.0 });
        }
        check_data_sn(pdu.data_sn, front.data_sn_next)?;
        if end > u64::from(front.end) {
            return Err(TransferError::PastR2t {
                end,
                max: front.end,
            });
        }
        front.data_sn_next = front.data_sn_next.wrapping_add(1);
        let front_end = front.end;
        if pdu.fin && end != u64::from(front_end) {
            return Err(TransferError::EarlyFinal {
                received: u32::try_from(end).unwrap_or(u32::MAX),
                end: front_end,
            });
        }
        self.keep(len, bytes);
        if pdu.fin {
            self.r2ts.pop_front();
        }
        Ok(())
    }

    /// Records that the command now holds its data-out budget: the buffer grows to its full
    /// size and R2Ts may follow.
    pub(crate) fn grant(&mut self) {
        assert!(!self.granted);
        assert!(!self.lost, "a command whose data is lost needs no budget");
        // Unsolicited data alone never passes what the staging buffer was sized for.
        assert!(self.data.len() <= self.data.capacity());
        self.data
            .reserve_exact(self.needed_len as usize - self.data.len());
        self.granted = true;
    }

    /// Whether an R2T should be sent now.
    pub(crate) fn wants_r2t(&self) -> bool {
        self.granted
            && !self.lost
            && self.unsolicited.is_none()
            && self.r2ts.len() < usize::from(self.limits.max_outstanding_r2t)
            && self.solicited_len < self.needed_len
    }

    /// Records the next R2T, tagged `ttt`, and returns it to send. Call when
    /// [`DataOutCollector::wants_r2t`].
    pub(crate) fn issue_r2t(&mut self, ttt: Ttt) -> R2tRequest {
        assert!(self.wants_r2t());
        assert_ne!(ttt, Ttt::RESERVED);
        let offset = self.solicited_len;
        let len = self.limits.max_burst_len.min(self.needed_len - offset);
        assert!(len > 0);
        self.solicited_len = offset + len;
        let r2t_sn = self.r2t_sn_next;
        self.r2t_sn_next = self.r2t_sn_next.wrapping_add(1);
        self.r2ts.push_back(Outstanding {
            ttt,
            end: offset + len,
            data_sn_next: 0,
        });
        R2tRequest {
            ttt,
            r2t_sn,
            offset,
            len,
        }
    }

    /// Whether every byte we need has arrived and no sequence is open.
    pub(crate) fn is_complete(&self) -> bool {
        self.unsolicited.is_none() && self.r2ts.is_empty() && self.received_len >= self.needed_len
    }

    /// Whether the command may run: all its data is in and it holds its budget.
    pub(crate) fn is_ready(&self) -> bool {
        self.is_complete() && self.granted && !self.lost
    }

    /// Whether data was discarded: the command must fail.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost
    }

    /// Whether no sequence is under way: no more unsolicited data may come and every R2T
    /// sent has had its last PDU.
    pub(crate) fn is_drained(&self) -> bool {
        self.unsolicited.is_none() && self.r2ts.is_empty()
    }

    /// The collected data, `needed_len` bytes once complete and granted.
    pub(crate) fn into_data(self) -> Vec<u8> {
        assert!(self.is_ready());
        assert_eq!(self.data.len(), self.needed_len as usize);
        self.data
    }

    fn end_unsolicited(&mut self) {
        self.unsolicited = None;
        self.solicited_len = self.received_len;
    }

    /// Counts `len` bytes as received at `received_len` and keeps what of `bytes` falls
    /// below `needed_len`, unless the data is lost.
    fn keep(&mut self, len: u32, bytes: &[u8]) {
        if !self.lost && self.received_len < self.needed_len {
            assert_eq!(bytes.len(), len as usize);
            assert_eq!(self.data.len(), self.received_len as usize);
            let take = len.min(self.needed_len - self.received_len) as usize;
            // Staged data stays in the buffer sized for it: no reallocation, no growth past
            // the first burst before the grant.
            assert!(self.granted || self.data.len() + take <= self.data.capacity());
            self.data.extend_from_slice(&bytes[..take]);
        }
        self.received_len += len;
        assert!(self.data.len() <= self.needed_len as usize);
    }
}

fn check_data_sn(received: u32, expected: u32) -> Result<(), TransferError> {
    if received == expected {
        Ok(())
    } else {
        Err(TransferError::DataSn { received, expected })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: TransferLimits = TransferLimits {
        first_burst_len: 1024,
        max_burst_len: 2048,
        max_outstanding_r2t: 2,
        initial_r2t: false,
    };

    fn data_out(ttt: Ttt, data_sn: u32, offset: u32, len: usize, fin: bool) -> DataOut {
        DataOut {
            fin,
            ttt,
            data_sn,
            buffer_offset: offset,
            data: (0..len)
                .map(|index| (offset as usize + index) as u8)
                .collect(),
            ..DataOut::default()
        }
    }

    /// Immediate data, one unsolicited PDU, then three R2Ts with two outstanding at most;
    /// the collected bytes are the stream's first `needed_len` bytes.
    #[test]
    fn immediate_unsolicited_then_r2ts() {
        let mut collector = DataOutCollector::new(LIMITS, 6000, 6000, &[0u8; 512], false, true)
            .expect("within the first burst");
        assert!(!collector.wants_r2t());
        collector
            .on_data_out(&data_out(Ttt::RESERVED, 0, 512, 512, true))
            .expect("unsolicited in order");
        let first = collector.issue_r2t(Ttt(1));
        assert_eq!((first.offset, first.len, first.r2t_sn), (1024, 2048, 0));
        let second = collector.issue_r2t(Ttt(2));
        assert_eq!((second.offset, second.len), (3072, 2048));
        assert!(!collector.wants_r2t());
        collector
            .on_data_out(&data_out(Ttt(1), 0, 1024, 1024, false))
            .expect("first half");
        collector
            .on_data_out(&data_out(Ttt(1), 1, 2048, 1024, true))
            .expect("second half");
        let third = collector.issue_r2t(Ttt(3));
        assert_eq!((third.offset, third.len, third.r2t_sn), (5120, 880, 2));
        collector
            .on_data_out(&data_out(Ttt(2), 0, 3072, 2048, true))
            .expect("second R2T");
        assert!(!collector.is_complete());
        collector
            .on_data_out(&data_out(Ttt(3), 0, 5120, 880, true))
            .expect("third R2T");
        assert!(collector.is_complete());
        let data = collector.into_data();
        assert_eq!(data.len(), 6000);
        assert_eq!(data[600], (600 % 256) as u8);
    }

    /// The initiator sends more than the command needs: the surplus is counted, not kept.
    #[test]
    fn surplus_is_dropped() {
        let collector = DataOutCollector::new(LIMITS, 1000, 512, &[7u8; 1000], true, true)
            .expect("immediate data");
        assert!(collector.is_complete());
        assert_eq!(collector.into_data(), vec![7u8; 512]);
    }

    /// Before its grant a command stages only its unsolicited data, in a buffer of at most
    /// FirstBurstLength, and asks for nothing; the grant grows the buffer and R2Ts follow.
    #[test]
    fn nothing_is_asked_before_the_grant() {
        let mut collector = DataOutCollector::new(LIMITS, 6000, 6000, &[1u8; 512], false, false)
            .expect("within the first burst");
        assert!(!collector.granted);
        collector
            .on_data_out(&data_out(Ttt::RESERVED, 0, 512, 512, true))
            .expect("unsolicited in order");
        assert!(!collector.wants_r2t());
        assert!(!collector.is_complete());
        assert!(collector.data.capacity() < 6000);
        collector.grant();
        assert!(collector.data.capacity() >= 6000);
        let r2t = collector.issue_r2t(Ttt(1));
        assert_eq!((r2t.offset, r2t.len), (1024, 2048));

        // A write the first burst covers whole completes without R2Ts, granted or not.
        let collector = DataOutCollector::new(LIMITS, 512, 512, &[2u8; 512], true, false)
            .expect("all immediate");
        assert!(collector.is_complete() && !collector.wants_r2t());
    }

    /// A PDU whose data was discarded frees the buffer and stops the R2Ts; the collector
    /// still follows the R2T's sequence to its end, and the command never becomes ready.
    #[test]
    fn lost_data_is_followed_to_the_end_of_its_sequence() {
        let mut collector = DataOutCollector::new(LIMITS, 6000, 6000, &[0u8; 1024], true, true)
            .expect("a whole first burst");
        let r2t = collector.issue_r2t(Ttt(1));
        assert_eq!((r2t.offset, r2t.len), (1024, 2048));
        let _ = collector.issue_r2t(Ttt(2));
        let lost = DataOut {
            data: Vec::new(),
            ..data_out(Ttt(1), 0, 1024, 0, false)
        };
        collector
            .on_lost_data_out(&lost, 1024)
            .expect("in sequence");
        assert!(collector.is_lost());
        assert_eq!(collector.data.capacity(), 0);
        assert!(!collector.is_drained());
        collector
            .on_data_out(&data_out(Ttt(1), 1, 2048, 1024, true))
            .expect("the rest of the first R2T");
        assert!(!collector.is_drained());
        collector
            .on_data_out(&data_out(Ttt(2), 0, 3072, 2048, true))
            .expect("the second R2T");
        assert!(collector.is_drained());
        assert!(!collector.wants_r2t());
        assert!(!collector.is_ready());
        // A lost PDU out of sequence is still a violation.
        let mut collector =
            DataOutCollector::new(LIMITS, 4096, 4096, &[], false, true).expect("no immediate data");
        let early = DataOut {
            data: Vec::new(),
            ..data_out(Ttt::RESERVED, 1, 0, 0, false)
        };
        assert!(collector.on_lost_data_out(&early, 512).is_err());
    }

    #[test]
    fn violations_are_errors() {
        let mut collector =
            DataOutCollector::new(LIMITS, 4096, 4096, &[], false, true).expect("no immediate data");
        assert_eq!(
            collector.on_data_out(&data_out(Ttt::RESERVED, 1, 0, 512, false)),
            Err(TransferError::DataSn {
                received: 1,
                expected: 0
            })
        );
        assert_eq!(
            collector.on_data_out(&data_out(Ttt::RESERVED, 0, 512, 512, false)),
            Err(TransferError::Offset {
                received: 512,
                expected: 0
            })
        );
        assert!(matches!(
            collector.on_data_out(&data_out(Ttt::RESERVED, 0, 0, 2048, true)),
            Err(TransferError::UnsolicitedTooLong { .. })
        ));
        assert!(matches!(
            collector.on_data_out(&data_out(Ttt(9), 0, 0, 512, true)),
            Err(TransferError::UnknownTransfer { ttt: 9 })
        ));
        let strict = TransferLimits {
            initial_r2t: true,
            ..LIMITS
        };
        assert_eq!(
            DataOutCollector::new(strict, 4096, 4096, &[], false, true).err(),
            Some(TransferError::UnsolicitedNotAllowed)
        );
        let mut collector =
            DataOutCollector::new(strict, 4096, 4096, &[], true, true).expect("F bit set");
        let r2t = collector.issue_r2t(Ttt(4));
        assert_eq!(r2t.len, 2048);
        assert!(matches!(
            collector.on_data_out(&data_out(Ttt(4), 0, 0, 1024, true)),
            Err(TransferError::EarlyFinal { .. })
        ));
    }
}
