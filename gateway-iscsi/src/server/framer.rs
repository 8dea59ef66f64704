//! Reads whole PDUs from a byte stream: the 48-byte BHS, then the length it announces,
//! refused beyond the data segment length we declared.
//!
//! [`Framer::fill`] is cancel safe: every byte read is stored in the framer before the next
//! await, so the caller may race it against timers and call it again.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::pdu::{BHS_LEN, Digests, PduError, pdu_len_within};

/// Bytes asked of the socket per read when the buffer has room: small PDUs arrive in a few
/// reads without growing the buffer beyond what the largest PDU needs.
const READ_CHUNK_LEN: usize = 64 * 1024;

/// Why no PDU could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The peer closed the connection (possibly mid-PDU).
    #[error("connection closed by the initiator")]
    Closed,
    /// The socket failed.
    #[error("socket read failed")]
    Io(#[from] std::io::Error),
    /// The header announced a PDU we refuse to read.
    #[error("unreadable PDU header")]
    Pdu(#[from] PduError),
}

/// A receive buffer holding at most one PDU beyond the bytes of the next ones already read.
#[derive(Debug)]
pub(crate) struct Framer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Framer {
    /// An empty framer.
    pub(crate) fn new() -> Framer {
        Framer {
            buf: vec![0u8; READ_CHUNK_LEN],
            start: 0,
            end: 0,
        }
    }

    /// Reads until a whole PDU is buffered and returns its length; [`Framer::frame`] then
    /// shows it and [`Framer::consume`] drops it.
    pub(crate) async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        digests: Digests,
        max_data: u32,
    ) -> Result<usize, ReadError> {
        self.fill_to(reader, BHS_LEN).await?;
        let bhs = self.buf[self.start..self.end]
            .first_chunk::<BHS_LEN>()
            .expect("invariant: BHS_LEN bytes buffered");
        let len = pdu_len_within(bhs, digests, max_data)?;
        self.fill_to(reader, len).await?;
        Ok(len)
    }

    /// The buffered PDU of `len` bytes returned by [`Framer::fill`].
    pub(crate) fn frame(&self, len: usize) -> &[u8] {
        assert!(len <= self.end - self.start);
        &self.buf[self.start..self.start + len]
    }

    /// Drops the buffered PDU of `len` bytes.
    pub(crate) fn consume(&mut self, len: usize) {
        assert!(len <= self.end - self.start);
        self.start += len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Whether part of a PDU is buffered.
    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    async fn fill_to<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        want: usize,
    ) -> Result<(), ReadError> {
        while self.end - self.start < want {
            if self.buf.len() - self.start < want || self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() < want {
                    self.buf.resize(want, 0);
                }
            }
            let read = reader.read(&mut self.buf[self.end..]).await?;
            if read == 0 {
                return Err(ReadError::Closed);
            }
            self.end += read;
            assert!(self.end <= self.buf.len());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{NopOut, Pdu};

    /// Two PDUs written in one go and a third split across reads come out whole, in order.
    #[tokio::test(flavor = "current_thread")]
    async fn frames_split_and_joined_pdus() {
        let mut wire = Vec::new();
        for index in 0..3u8 {
            let pdu = Pdu::NopOut(NopOut {
                data: vec![index; 100 + usize::from(index)],
                ..NopOut::default()
            });
            pdu.encode(Digests::NONE, &mut wire);
        }
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            client.write_all(&wire).await.expect("duplex write");
        });
        let mut framer = Framer::new();
        for index in 0..3u8 {
            let len = framer
                .fill(&mut server, Digests::NONE, 8192)
                .await
                .expect("a whole PDU");
            let pdu = Pdu::decode(framer.frame(len), Digests::NONE, 8192).expect("valid");
            framer.consume(len);
            let Pdu::NopOut(nop) = pdu else {
                panic!("unexpected {pdu:?}")
            };
            assert_eq!(nop.data, vec![index; 100 + usize::from(index)]);
        }
        writer.await.expect("writer task");
        assert!(matches!(
            framer.fill(&mut server, Digests::NONE, 8192).await,
            Err(ReadError::Closed)
        ));
    }
}
