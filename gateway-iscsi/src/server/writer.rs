//! The sending half of a connection: one task owns the socket's write half, stamps StatSN,
//! ExpCmdSN and MaxCmdSN on each PDU as it goes out (so they are in order on the wire), and
//! encodes with the negotiated digests. Batches queued meanwhile go out in one write.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

use super::window::CmdWindow;
use crate::pdu::{Digests, Itt, Pdu};

/// Bytes gathered into one socket write when several batches are queued.
const WRITE_BATCH_LEN_MAX: usize = 1024 * 1024;

/// Stamps the sequence numbers on `pdu`. Every PDU that carries a status (SCSI Response,
/// Data-In with S, responses to requests, Reject, Async) takes the next StatSN; R2T, Data-In
/// without status and our own NOP-In pings carry the next StatSN without taking it.
pub(crate) fn stamp(pdu: &mut Pdu, stat_sn: &mut u32, exp_cmd_sn: u32, max_cmd_sn: u32) {
    let opcode = pdu.opcode();
    let next = *stat_sn;
    let mut take = |field: &mut u32| {
        *field = next;
        *stat_sn = next.wrapping_add(1);
    };
    match pdu {
        Pdu::ScsiResponse(p) => {
            take(&mut p.stat_sn);
            (p.exp_cmd_sn, p.max_cmd_sn) = (exp_cmd_sn, max_cmd_sn);
        }
        Pdu::DataIn(p) => {
            if let Some(status) = &mut p.status {
                take(&mut status.stat_sn);
            }
            (p.exp_cmd_sn, p.max_cmd_sn) = (exp_cmd_sn, max_cmd_sn);
        }
        Pdu::NopIn(p) => {
            if p.itt == Itt::RESERVED {
                p.stat_sn = next;
            } else {
                take(&mut p.stat_sn);
            }
            (p.exp_cmd_sn, p.max_cmd_sn) = (exp_cmd_sn, max_cmd_sn);
        }
        Pdu::R2t(p) => {
            p.stat_sn = next;
            (p.exp_cmd_sn, p.max_cmd_sn) = (exp_cmd_sn, max_cmd_sn);
        }
        Pdu::TaskMgmtResponse(p) => {
            take(&mut p.stat_sn);
            (p.exp_cmd_sn, p.max_cmd_sn) = (exp_cmd_sn, max_cmd_sn);
        }
        Pdu::TextResponse(p) => {
            take(&mut p.stat_sn);
            (p.exp_cmd_sn, p.max_cmd_sn) = (exp_cmd_sn, max_cmd_sn);
        }
        Pdu::LogoutResponse(p) => {
            take(&mut p.stat_sn);
            (p.exp_cmd_sn, p.max_cmd_sn) = (exp_cmd_sn, max_cmd_sn);
        }
        Pdu::Reject(p) => {
            take(&mut p.stat_sn);
            (p.exp_cmd_sn, p.max_cmd_sn) = (exp_cmd_sn, max_cmd_sn);
        }
        Pdu::AsyncMessage(p) => {
            take(&mut p.stat_sn);
            (p.exp_cmd_sn, p.max_cmd_sn) = (exp_cmd_sn, max_cmd_sn);
        }
        Pdu::NopOut(_)
        | Pdu::ScsiCommand(_)
        | Pdu::TaskMgmtRequest(_)
        | Pdu::LoginRequest(_)
        | Pdu::LoginResponse(_)
        | Pdu::TextRequest(_)
        | Pdu::DataOut(_)
        | Pdu::LogoutRequest(_)
        | Pdu::SnackRequest(_) => {
            panic!("a target never sends opcode {opcode:#04x} in full feature phase")
        }
    }
}

/// Sends the batches from `queue` until every sender is gone or the socket fails or stays
/// blocked for `timeout`. StatSN starts at `stat_sn`.
pub(crate) async fn run<W: AsyncWrite + Unpin>(
    mut socket: W,
    mut queue: mpsc::Receiver<Vec<Pdu>>,
    window: Arc<Mutex<CmdWindow>>,
    digests: Digests,
    mut stat_sn: u32,
    timeout: Duration,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(batch) = queue.recv().await {
        buf.clear();
        let mut next = Some(batch);
        while let Some(batch) = next.take() {
            let (exp_cmd_sn, max_cmd_sn) = {
                let window = window.lock().unwrap_or_else(PoisonError::into_inner);
                (window.exp_cmd_sn(), window.max_cmd_sn())
            };
            for mut pdu in batch {
                stamp(&mut pdu, &mut stat_sn, exp_cmd_sn, max_cmd_sn);
                pdu.encode(digests, &mut buf);
            }
            if buf.len() < WRITE_BATCH_LEN_MAX {
                next = queue.try_recv().ok();
            }
        }
        match tokio::time::timeout(timeout, socket.write_all(&buf)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "initiator stopped reading",
                ));
            }
        }
    }
    // Best effort: the initiator may already have closed its side.
    let _ = tokio::time::timeout(timeout, socket.shutdown()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{NopIn, R2t, ScsiResponse};

    #[test]
    fn statsn_advances_only_with_status() {
        let mut stat_sn = 10;
        let mut r2t = Pdu::R2t(R2t::default());
        stamp(&mut r2t, &mut stat_sn, 5, 9);
        let mut ping = Pdu::NopIn(NopIn {
            itt: Itt::RESERVED,
            ..NopIn::default()
        });
        stamp(&mut ping, &mut stat_sn, 5, 9);
        let mut response = Pdu::ScsiResponse(ScsiResponse::default());
        stamp(&mut response, &mut stat_sn, 5, 9);
        assert_eq!(stat_sn, 11);
        let Pdu::R2t(r2t) = r2t else { unreachable!() };
        assert_eq!((r2t.stat_sn, r2t.exp_cmd_sn, r2t.max_cmd_sn), (10, 5, 9));
        let Pdu::ScsiResponse(response) = response else {
            unreachable!()
        };
        assert_eq!(response.stat_sn, 10);
    }
}
