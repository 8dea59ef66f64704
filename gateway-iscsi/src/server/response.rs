//! The PDUs that end a SCSI task (RFC 7143 sections 11.4 and 11.7), sans IO: Data-In
//! segmented by the initiator's MaxRecvDataSegmentLength and MaxBurstLength, the status
//! collapsed into the last Data-In when there is no sense data, otherwise a SCSI Response
//! with the sense after its 2-byte length; residuals against the expected length.
//!
//! StatSN, ExpCmdSN and MaxCmdSN are left at zero: the connection's writer stamps them as it
//! sends, so they are in order on the wire.

use crate::{
    pdu::{DataIn, DataInStatus, Itt, Lun, Pdu, Residual, ScsiResponse, Ttt},
    scsi::Outcome,
};

/// The residual of a transfer of `actual` bytes against an expected `expected` bytes.
pub(crate) fn residual(actual: u32, expected: u32) -> Residual {
    match actual.cmp(&expected) {
        std::cmp::Ordering::Greater => Residual::Overflow(actual - expected),
        std::cmp::Ordering::Less => Residual::Underflow(expected - actual),
        std::cmp::Ordering::Equal => Residual::None,
    }
}

/// How a task's data and status go to the initiator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// The command's ITT.
    pub(crate) itt: Itt,
    /// The command's LUN.
    pub(crate) lun: Lun,
    /// Data-In bytes the initiator expects (its Expected Data Transfer Length with the R bit,
    /// or the bidirectional read length; 0 otherwise).
    pub(crate) expected_in_len: u32,
    /// The largest data segment the initiator accepts.
    pub(crate) segment_len_max: u32,
    /// MaxBurstLength: the F bit ends every Data-In sequence of this length.
    pub(crate) max_burst_len: u32,
}

/// The PDUs that answer a task: Data-In, then the status (on the last Data-In or in a SCSI
/// Response). `residual` is the task's residual (computed by the caller, which knows whether
/// the task's data flowed in or out).
pub(crate) fn task_response(
    outcome: &Outcome,
    residual: Residual,
    delivery: &Delivery,
) -> Vec<Pdu> {
    assert!(delivery.segment_len_max >= 1 && delivery.max_burst_len >= 1);
    let send_len = outcome.data_in.len().min(delivery.expected_in_len as usize);
    let data = &outcome.data_in[..send_len];
    let status = outcome.status.code();
    let sense = outcome.sense.map(|sense| sense.to_fixed().to_vec());
    let mut pdus = Vec::with_capacity(1 + send_len / delivery.segment_len_max as usize);
    let mut offset = 0usize;
    let mut burst_len = 0usize;
    let mut data_sn = 0u32;
    while offset < data.len() {
        let segment_len = (delivery.segment_len_max as usize)
            .min(delivery.max_burst_len as usize - burst_len)
            .min(data.len() - offset);
        let end = offset + segment_len;
        burst_len += segment_len;
        let last = end == data.len();
        let fin = last || burst_len == delivery.max_burst_len as usize;
        if fin {
            burst_len = 0;
        }
        pdus.push(Pdu::DataIn(DataIn {
            fin,
            ack: false,
            lun: delivery.lun,
            itt: delivery.itt,
            ttt: Ttt::RESERVED,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            data_sn,
            buffer_offset: u32::try_from(offset).expect("invariant: below the expected length"),
            status: (last && sense.is_none()).then_some(DataInStatus {
                status,
                stat_sn: 0,
                residual,
            }),
            data: data[offset..end].to_vec(),
        }));
        data_sn += 1;
        offset = end;
    }
    if sense.is_some() || data.is_empty() {
        pdus.push(Pdu::ScsiResponse(ScsiResponse {
            bidi_read_residual: Residual::None,
            residual,
            response: ScsiResponse::COMMAND_COMPLETED,
            status,
            itt: delivery.itt,
            snack_tag: 0,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            exp_data_sn: data_sn,
            sense: sense.unwrap_or_default(),
            response_data: Vec::new(),
        }));
    }
    assert!(!pdus.is_empty());
    pdus
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::{Sense, Status};

    fn delivery(expected_in_len: u32) -> Delivery {
        Delivery {
            itt: Itt(7),
            lun: Lun(0),
            expected_in_len,
            segment_len_max: 1000,
            max_burst_len: 1500,
        }
    }

    #[test]
    fn residuals() {
        assert_eq!(residual(512, 0), Residual::Overflow(512));
        assert_eq!(residual(512, 10000), Residual::Underflow(9488));
        assert_eq!(residual(512, 512), Residual::None);
    }

    /// 2500 bytes in segments of at most 1000 and bursts of 1500: 1000, 500 (F), 1000 (F,
    /// status); DataSN and offsets count up.
    #[test]
    fn data_in_is_segmented_and_carries_the_status() {
        let outcome = Outcome {
            status: Status::Good,
            sense: None,
            data_in: vec![1u8; 2500],
        };
        let pdus = task_response(&outcome, Residual::Underflow(10), &delivery(2510));
        let shape: Vec<(u32, u32, usize, bool, bool)> = pdus
            .iter()
            .map(|pdu| match pdu {
                Pdu::DataIn(data_in) => (
                    data_in.data_sn,
                    data_in.buffer_offset,
                    data_in.data.len(),
                    data_in.fin,
                    data_in.status.is_some(),
                ),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, 0, 1000, false, false),
                (1, 1000, 500, true, false),
                (2, 1500, 1000, true, true)
            ]
        );
    }

    /// Sense data goes in a SCSI Response; data the initiator did not expect is not sent.
    #[test]
    fn sense_and_truncation() {
        let outcome = Outcome {
            status: Status::CheckCondition,
            sense: Some(Sense::invalid_opcode()),
            data_in: Vec::new(),
        };
        let pdus = task_response(&outcome, Residual::None, &delivery(0));
        let [Pdu::ScsiResponse(response)] = pdus.as_slice() else {
            panic!("one SCSI Response expected, got {pdus:?}");
        };
        assert_eq!(response.status, 0x02);
        assert_eq!(response.sense.len(), 18);
        let outcome = Outcome {
            status: Status::Good,
            sense: None,
            data_in: vec![0u8; 512],
        };
        let pdus = task_response(&outcome, Residual::Overflow(312), &delivery(200));
        let [Pdu::DataIn(data_in)] = pdus.as_slice() else {
            panic!("one Data-In expected, got {pdus:?}");
        };
        assert_eq!(data_in.data.len(), 200);
        assert_eq!(
            data_in.status.map(|status| status.residual),
            Some(Residual::Overflow(312))
        );
    }
}
