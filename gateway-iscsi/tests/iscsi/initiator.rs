//! A blocking test initiator on the crate's own PDU codec: enough of RFC 7143 to log in,
//! run SCSI commands with R2Ts, ping, abort and log out, and to misbehave on purpose.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use cairn_gateway_iscsi::{
    login::text,
    pdu::{
        BHS_LEN, DataOut, Digests, Isid, Itt, LoginRequest, LoginResponse, Lun, NopOut, Pdu,
        ScsiCommand, Stage, Ttt, pdu_len,
    },
};

pub const INITIATOR_NAME: &str = "iqn.2026-12.io.cairn:test-initiator";

/// A connection to the target under test.
pub struct Client {
    stream: TcpStream,
    pub digests: Digests,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    next_itt: u32,
    isid: Isid,
    /// The target's declared MaxRecvDataSegmentLength.
    pub target_max_recv: u32,
    /// Text pairs of the last login response.
    pub login_pairs: Vec<(String, String)>,
}

/// What a SCSI command ended with.
#[derive(Debug)]
pub struct Completion {
    pub status: u8,
    pub data_in: Vec<u8>,
    pub sense: Vec<u8>,
    pub residual: cairn_gateway_iscsi::pdu::Residual,
    pub r2ts: u32,
}

impl Client {
    pub fn connect(address: SocketAddr) -> Client {
        let stream = TcpStream::connect(address).expect("connect to the target");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            digests: Digests::NONE,
            cmd_sn: 1,
            exp_stat_sn: 0,
            next_itt: 0x10,
            isid: Isid([0x80, 0, 0, 0, 0x12, 0x34]),
            target_max_recv: 8192,
            login_pairs: Vec::new(),
        }
    }

    /// Another ISID: a second session of the same initiator to the same target.
    pub fn set_isid(&mut self, isid: [u8; 6]) {
        self.isid = Isid(isid);
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn itt(&mut self) -> Itt {
        self.next_itt += 1;
        Itt(self.next_itt)
    }

    pub fn send(&mut self, pdu: &Pdu) {
        let mut bytes = Vec::new();
        pdu.encode(self.digests, &mut bytes);
        self.send_raw(&bytes);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to the target");
    }

    /// The next PDU, or `None` when the target closed the connection (or a read failed).
    pub fn try_recv(&mut self) -> Option<Pdu> {
        let mut bhs = [0u8; BHS_LEN];
        self.stream.read_exact(&mut bhs).ok()?;
        let len = pdu_len(&bhs, self.digests).expect("a PDU length");
        let mut frame = bhs.to_vec();
        frame.resize(len, 0);
        self.stream.read_exact(&mut frame[BHS_LEN..]).ok()?;
        let pdu = Pdu::decode(&frame, self.digests, u32::MAX).expect("a valid target PDU");
        if let Some(stat_sn) = stat_sn_of(&pdu) {
            self.exp_stat_sn = stat_sn.wrapping_add(1);
        }
        Some(pdu)
    }

    /// Sends a NOP-Out and returns the PDUs that came before its answer: the target handles
    /// PDUs in order, so everything it did for earlier PDUs is among them.
    pub fn barrier(&mut self) -> Vec<Pdu> {
        let itt = Itt(0x7fff_0000 | self.cmd_sn);
        self.send(&Pdu::NopOut(NopOut {
            immediate: true,
            lun: Lun(0),
            itt,
            ttt: Ttt::RESERVED,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: Vec::new(),
        }));
        let mut before = Vec::new();
        loop {
            match self.recv() {
                Pdu::NopIn(nop_in) if nop_in.itt == itt => return before,
                other => before.push(other),
            }
            assert!(before.len() < 1000, "no answer to the NOP-Out");
        }
    }

    pub fn recv(&mut self) -> Pdu {
        self.try_recv().expect("a PDU from the target")
    }

    /// Whether the target closed the connection within the read timeout (reading nothing
    /// else but PDUs, which are returned).
    pub fn wait_closed(&mut self) -> Vec<Pdu> {
        let mut seen = Vec::new();
        while let Some(pdu) = self.try_recv() {
            seen.push(pdu);
            assert!(seen.len() < 1000, "the target keeps talking");
        }
        seen
    }

    /// A one-request login from the operational stage, with `keys` added to the identity.
    pub fn login(&mut self, target: Option<&str>, keys: &[(&str, &str)]) -> LoginResponse {
        let mut pairs: Vec<(String, String)> =
            vec![("InitiatorName".to_owned(), INITIATOR_NAME.to_owned())];
        match target {
            Some(target) => pairs.push(("TargetName".to_owned(), target.to_owned())),
            None => pairs.push(("SessionType".to_owned(), "Discovery".to_owned())),
        }
        for (key, value) in keys {
            pairs.push(((*key).to_owned(), (*value).to_owned()));
        }
        let mut data = Vec::new();
        text::encode(&pairs, &mut data);
        let request = LoginRequest {
            transit: true,
            cont: false,
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            version_max: 0,
            version_min: 0,
            isid: self.isid,
            tsih: 0,
            itt: self.itt(),
            cid: 1,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
            data,
        };
        self.send(&Pdu::LoginRequest(request));
        let Pdu::LoginResponse(response) = self.recv() else {
            panic!("expected a login response");
        };
        self.login_pairs = text::parse(&response.data).expect("login response text");
        if let Some(value) = text::get(&self.login_pairs, "MaxRecvDataSegmentLength") {
            self.target_max_recv = value.parse().expect("a number");
        }
        let header = text::get(&self.login_pairs, "HeaderDigest") == Some("CRC32C");
        let data = text::get(&self.login_pairs, "DataDigest") == Some("CRC32C");
        if response.status.is_success() {
            self.digests = Digests { header, data };
        }
        response
    }

    /// Logs in to `target` with everything solicited by R2T (no immediate or unsolicited
    /// data) and bursts of `max_burst` bytes.
    pub fn login_normal(&mut self, target: &str, max_burst: u32) {
        let max_burst = max_burst.to_string();
        let response = self.login(
            Some(target),
            &[
                ("HeaderDigest", "None"),
                ("DataDigest", "None"),
                ("MaxRecvDataSegmentLength", "65536"),
                ("ImmediateData", "No"),
                ("InitialR2T", "Yes"),
                ("MaxBurstLength", &max_burst),
                ("FirstBurstLength", "65536"),
            ],
        );
        assert!(
            response.status.is_success(),
            "login failed: {:?}",
            response.status
        );
        assert_eq!(response.nsg, Stage::FullFeature);
    }

    /// A SCSI command (non-immediate), with `data_out` sent by R2T; returns its end.
    pub fn command(&mut self, cdb: &[u8], read_len: u32, data_out: &[u8]) -> Completion {
        let itt = self.send_command(cdb, read_len, data_out.len() as u32, false);
        self.complete(itt, data_out)
    }

    pub fn send_command(
        &mut self,
        cdb: &[u8],
        read_len: u32,
        write_len: u32,
        immediate: bool,
    ) -> Itt {
        let mut cdb16 = [0u8; 16];
        cdb16[..cdb.len()].copy_from_slice(cdb);
        let itt = self.itt();
        let command = ScsiCommand {
            immediate,
            fin: true,
            read: read_len > 0,
            write: write_len > 0,
            lun: Lun(0),
            itt,
            expected_data_len: read_len.max(write_len),
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: cdb16,
            ..ScsiCommand::default()
        };
        if !immediate {
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
        }
        self.send(&Pdu::ScsiCommand(command));
        itt
    }

    /// Answers R2Ts for `itt` from `data_out` and gathers Data-In until the status.
    pub fn complete(&mut self, itt: Itt, data_out: &[u8]) -> Completion {
        let mut completion = Completion {
            status: 0xff,
            data_in: Vec::new(),
            sense: Vec::new(),
            residual: Default::default(),
            r2ts: 0,
        };
        loop {
            match self.recv() {
                Pdu::R2t(r2t) => {
                    assert_eq!(r2t.itt, itt);
                    assert_eq!(r2t.r2t_sn, completion.r2ts);
                    completion.r2ts += 1;
                    let start = r2t.buffer_offset as usize;
                    let end = start + r2t.desired_len as usize;
                    self.send_data_out(itt, r2t.ttt, &data_out[start..end], r2t.buffer_offset);
                }
                Pdu::DataIn(data_in) => {
                    assert_eq!(data_in.itt, itt);
                    assert_eq!(data_in.buffer_offset as usize, completion.data_in.len());
                    completion.data_in.extend_from_slice(&data_in.data);
                    if let Some(status) = data_in.status {
                        completion.status = status.status;
                        completion.residual = status.residual;
                        return completion;
                    }
                }
                Pdu::ScsiResponse(response) => {
                    assert_eq!(response.itt, itt);
                    completion.status = response.status;
                    completion.sense = response.sense;
                    completion.residual = response.residual;
                    return completion;
                }
                other => panic!("unexpected PDU while completing a command: {other:?}"),
            }
        }
    }

    /// Sends `data` for one R2T, split by the target's MaxRecvDataSegmentLength.
    pub fn send_data_out(&mut self, itt: Itt, ttt: Ttt, data: &[u8], offset: u32) {
        let segment = self.target_max_recv as usize;
        let chunks: Vec<&[u8]> = data.chunks(segment).collect();
        let count = chunks.len();
        for (data_sn, chunk) in chunks.into_iter().enumerate() {
            let pdu = DataOut {
                fin: data_sn + 1 == count,
                lun: Lun(0),
                itt,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn: data_sn as u32,
                buffer_offset: offset + (data_sn * segment) as u32,
                data: chunk.to_vec(),
            };
            self.send(&Pdu::DataOut(pdu));
        }
    }
}

fn stat_sn_of(pdu: &Pdu) -> Option<u32> {
    match pdu {
        Pdu::ScsiResponse(p) => Some(p.stat_sn),
        Pdu::DataIn(p) => p.status.map(|status| status.stat_sn),
        Pdu::NopIn(p) if p.itt != Itt::RESERVED => Some(p.stat_sn),
        Pdu::TaskMgmtResponse(p) => Some(p.stat_sn),
        Pdu::TextResponse(p) => Some(p.stat_sn),
        Pdu::LogoutResponse(p) => Some(p.stat_sn),
        Pdu::Reject(p) => Some(p.stat_sn),
        Pdu::LoginResponse(p) => Some(p.stat_sn),
        _ => None,
    }
}

/// A READ (10) or WRITE (10) CDB.
pub fn rw10(opcode: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = opcode;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

pub const READ_10: u8 = 0x28;
pub const WRITE_10: u8 = 0x2A;

/// A deterministic pseudo-random byte stream (xorshift64*), to replay from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// A seed from the clock, printed so a failure replays.
pub fn seed() -> u64 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(1);
    let seed = std::env::var("ISCSI_TEST_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(seed);
    println!("seed {seed} (replay with ISCSI_TEST_SEED={seed})");
    seed
}
