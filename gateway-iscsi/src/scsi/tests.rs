//! Tests of the whole layer through [`Lun::execute`], over a [`MemDevice`]: command by
//! command, persistent reservation scenarios, and property tests (arbitrary CDBs, and a
//! model of the device as a byte vector).

use std::sync::Arc;

use proptest::prelude::*;

use crate::scsi::{
    cdb::{cdb_length, opcode::*},
    *,
};

type TestLun = Lun<Arc<MemDevice>, Arc<MemReservationStore>>;

struct Fixture {
    lun: TestLun,
    device: Arc<MemDevice>,
    alpha: Nexus,
    beta: Nexus,
}

const TARGET: &str = "iqn.2026-01.io.cairn:volume-1";

async fn fixture(block_size: u32, block_count: u64) -> Fixture {
    let device = Arc::new(MemDevice::new(
        block_count * u64::from(block_size),
        block_size,
    ));
    let identity =
        LunIdentity::new(VolumeId([7; 16]), "CAIRN0001", Some(TARGET)).expect("valid identity");
    let store = Arc::new(MemReservationStore::default());
    let lun = Lun::open(device.clone(), identity, store)
        .await
        .expect("valid block size");
    let alpha = Nexus::new("iqn.2026-01.host:alpha", [0x40, 0, 0, 0, 0, 1], TARGET, 1)
        .expect("valid names");
    let beta =
        Nexus::new("iqn.2026-01.host:beta", [0x40, 0, 0, 0, 0, 2], TARGET, 1).expect("valid names");
    Fixture {
        lun,
        device,
        alpha,
        beta,
    }
}

impl Fixture {
    async fn run(&self, cdb: &[u8], data_out: &[u8]) -> Outcome {
        self.lun.execute(&self.alpha, cdb, data_out).await
    }

    async fn good(&self, cdb: &[u8], data_out: &[u8]) -> Vec<u8> {
        let outcome = self.run(cdb, data_out).await;
        assert_eq!(
            outcome.status,
            Status::Good,
            "{cdb:02x?}: {:?}",
            outcome.sense
        );
        outcome.data_in
    }

    async fn sense(&self, cdb: &[u8], data_out: &[u8]) -> Sense {
        let outcome = self.run(cdb, data_out).await;
        assert_eq!(outcome.status, Status::CheckCondition, "{cdb:02x?}");
        assert!(outcome.data_in.is_empty());
        outcome.sense.expect("CHECK CONDITION carries sense")
    }
}

/// A block command CDB in the layout its opcode's group implies.
fn block_cdb(opcode: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let length = cdb_length(opcode).expect("block opcode");
    let mut cdb = vec![0u8; length];
    cdb[0] = opcode;
    match length {
        6 => {
            cdb[1..4].copy_from_slice(&(lba as u32).to_be_bytes()[1..]);
            cdb[1] &= 0x1F;
            cdb[4] = blocks as u8;
        }
        10 => {
            cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
            cdb[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
        }
        12 => {
            cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
            cdb[6..10].copy_from_slice(&blocks.to_be_bytes());
        }
        _ => {
            cdb[2..10].copy_from_slice(&lba.to_be_bytes());
            cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        }
    }
    cdb
}

fn compare_and_write_cdb(lba: u64, blocks: u8) -> Vec<u8> {
    let mut cdb = vec![0u8; 16];
    cdb[0] = COMPARE_AND_WRITE;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[13] = blocks;
    cdb
}

fn write_same_cdb(opcode: u8, lba: u64, blocks: u32, flags: u8) -> Vec<u8> {
    let mut cdb = block_cdb(opcode, lba, blocks);
    cdb[1] = flags;
    cdb
}

fn unmap_cdb(parameter_list_length: u16) -> Vec<u8> {
    let mut cdb = vec![0u8; 10];
    cdb[0] = UNMAP;
    cdb[7..9].copy_from_slice(&parameter_list_length.to_be_bytes());
    cdb
}

fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let length = (16 * ranges.len()) as u16;
    let mut list = (length + 6).to_be_bytes().to_vec();
    list.extend_from_slice(&length.to_be_bytes());
    list.extend_from_slice(&[0; 4]);
    for &(lba, blocks) in ranges {
        list.extend_from_slice(&lba.to_be_bytes());
        list.extend_from_slice(&blocks.to_be_bytes());
        list.extend_from_slice(&[0; 4]);
    }
    list
}

fn pattern(length: usize, seed: u8) -> Vec<u8> {
    (0..length)
        .map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

const READS: [u8; 4] = [READ_6, READ_10, READ_12, READ_16];
const WRITES: [u8; 4] = [WRITE_6, WRITE_10, WRITE_12, WRITE_16];

/// Every WRITE form followed by every READ form returns the written bytes, at both block
/// sizes.
#[tokio::test(flavor = "current_thread")]
async fn write_read_round_trips() {
    for block_size in [512u32, 4096] {
        let fixture = fixture(block_size, 256).await;
        for (index, write) in WRITES.into_iter().enumerate() {
            let lba = 10 * index as u64 + 3;
            let data = pattern(3 * block_size as usize, index as u8);
            fixture.good(&block_cdb(write, lba, 3), &data).await;
            for read in READS {
                let read_back = fixture.good(&block_cdb(read, lba, 3), &[]).await;
                assert_eq!(
                    read_back, data,
                    "block size {block_size} {write:#04x}/{read:#04x}"
                );
            }
        }
        // READ (10) of zero blocks moves nothing and succeeds.
        assert!(
            fixture
                .good(&block_cdb(READ_10, 0, 0), &[])
                .await
                .is_empty()
        );
    }
}

/// READ (6) with a zero length reads 256 blocks.
#[tokio::test(flavor = "current_thread")]
async fn read_6_zero_means_256_blocks() {
    let fixture = fixture(512, 300).await;
    let data = fixture.good(&block_cdb(READ_6, 0, 0), &[]).await;
    assert_eq!(data.len(), 256 * 512);
    let prepared = fixture
        .lun
        .prepare(&block_cdb(WRITE_6, 0, 0))
        .expect("valid WRITE (6)");
    assert_eq!(prepared.data_out_len, 256 * 512);
}

/// Every block command past the end fails with LBA OUT OF RANGE and touches nothing.
#[tokio::test(flavor = "current_thread")]
async fn out_of_range_for_every_variant() {
    let fixture = fixture(512, 64).await;
    let expected = Sense::lba_out_of_range();
    let block = vec![0xAB; 512];
    let opcodes = READS.into_iter().chain(WRITES).chain([
        WRITE_AND_VERIFY_10,
        WRITE_AND_VERIFY_16,
        VERIFY_10,
        VERIFY_16,
        WRITE_SAME_10,
        WRITE_SAME_16,
    ]);
    for opcode in opcodes {
        for (lba, blocks) in [(63u64, 2u32), (64, 1), (1 << 20, 1)] {
            let cdb = block_cdb(opcode, lba, blocks);
            let data_out = match opcode {
                WRITE_SAME_10 | WRITE_SAME_16 => block.clone(),
                _ => {
                    let prepared = fixture.lun.prepare(&cdb).expect("valid CDB");
                    vec![0xAB; prepared.data_out_len as usize]
                }
            };
            assert_eq!(
                fixture.sense(&cdb, &data_out).await,
                expected,
                "{opcode:#04x} {lba}"
            );
        }
    }
    let sense = fixture
        .sense(&compare_and_write_cdb(64, 1), &[0; 1024])
        .await;
    assert_eq!(sense, expected);
    for opcode in [SYNCHRONIZE_CACHE_10, SYNCHRONIZE_CACHE_16] {
        assert_eq!(
            fixture.sense(&block_cdb(opcode, 64, 0), &[]).await,
            expected
        );
        fixture.good(&block_cdb(opcode, 0, 0), &[]).await;
    }
    let list = unmap_list(&[(60, 8)]);
    assert_eq!(
        fixture.sense(&unmap_cdb(list.len() as u16), &list).await,
        expected
    );
    assert_eq!(fixture.device.mapped_blocks(), 0);
}

/// Transfers over the block limits fail with INVALID FIELD IN CDB at the length field.
#[tokio::test(flavor = "current_thread")]
async fn transfer_over_limits() {
    let fixture = fixture(4096, 4096).await;
    let sense = fixture.sense(&block_cdb(READ_16, 0, 1025), &[]).await;
    assert_eq!(sense, Sense::invalid_field_in_cdb(10, None));
    let sense = fixture.sense(&compare_and_write_cdb(0, 17), &[]).await;
    assert_eq!(sense, Sense::invalid_field_in_cdb(13, None));
    let sense = fixture
        .sense(&write_same_cdb(WRITE_SAME_10, 0, 0, 0), &[0; 4096])
        .await;
    assert_eq!(sense, Sense::invalid_field_in_cdb(7, None));
    fixture.good(&block_cdb(READ_16, 0, 1024), &[]).await;
}

#[tokio::test(flavor = "current_thread")]
async fn unknown_opcodes() {
    let fixture = fixture(512, 64).await;
    for opcode in [
        0x01u8,
        0x04,
        0x1B,
        0x25 + 1,
        0x3B,
        0x7F,
        0x84,
        0xB5,
        0xC0,
        0xFF,
    ] {
        let mut cdb = vec![0u8; 16];
        cdb[0] = opcode;
        let sense = fixture.sense(&cdb, &[]).await;
        assert_eq!(sense.key, SenseKey::IllegalRequest, "{opcode:#04x}");
        assert_eq!(
            sense.additional,
            AdditionalSense::InvalidCommandOperationCode
        );
        assert_eq!(sense.to_fixed()[12], 0x20);
    }
    // A known opcode with an unknown service action is an invalid field instead.
    let mut cdb = vec![0u8; 16];
    cdb[0] = SERVICE_ACTION_IN_16;
    cdb[1] = 0x12; // GET LBA STATUS.
    assert_eq!(
        fixture.sense(&cdb, &[]).await,
        Sense::invalid_field_in_cdb(1, Some(4))
    );
}

/// WRITE SAME without UNMAP writes the block everywhere; with UNMAP and a zero block it
/// deallocates; with UNMAP and a non-zero block it writes (the data must read back).
#[tokio::test(flavor = "current_thread")]
async fn write_same_with_and_without_unmap() {
    let fixture = fixture(512, 1 << 16).await;
    let block = pattern(512, 9);
    // 9000 blocks: more than one transfer-sized piece (8192 blocks).
    fixture
        .good(&write_same_cdb(WRITE_SAME_16, 100, 9000, 0), &block)
        .await;
    assert_eq!(fixture.device.mapped_blocks(), 9000);
    let data = fixture.good(&block_cdb(READ_16, 100 + 8190, 4), &[]).await;
    assert_eq!(data, block.repeat(4));
    fixture
        .good(&write_same_cdb(WRITE_SAME_10, 100, 1000, 0x08), &[0; 512])
        .await;
    assert_eq!(fixture.device.mapped_blocks(), 8000);
    let data = fixture.good(&block_cdb(READ_10, 100, 2), &[]).await;
    assert_eq!(data, vec![0; 1024]);
    fixture
        .good(&write_same_cdb(WRITE_SAME_10, 100, 2, 0x08), &block)
        .await;
    assert_eq!(
        fixture.good(&block_cdb(READ_10, 100, 2), &[]).await,
        block.repeat(2)
    );
    // NDOB: no data-out, zeros; with UNMAP it deallocates.
    let cdb = write_same_cdb(WRITE_SAME_16, 100, 9000, 0x09);
    assert_eq!(fixture.lun.prepare(&cdb).expect("valid").data_out_len, 0);
    fixture.good(&cdb, &[]).await;
    assert_eq!(fixture.device.mapped_blocks(), 0);
    // Zeros without UNMAP are written, not deallocated.
    fixture
        .good(&write_same_cdb(WRITE_SAME_16, 0, 4, 0), &[0; 512])
        .await;
    assert_eq!(fixture.device.mapped_blocks(), 4);
    // ANCHOR is refused (ANC_SUP=0).
    let sense = fixture
        .sense(&write_same_cdb(WRITE_SAME_16, 0, 4, 0x18), &[0; 512])
        .await;
    assert_eq!(sense, Sense::invalid_field_in_cdb(1, Some(4)));
}

#[tokio::test(flavor = "current_thread")]
async fn unmap_then_read_zeros() {
    let fixture = fixture(4096, 256).await;
    let data = pattern(16 * 4096, 3);
    fixture.good(&block_cdb(WRITE_10, 0, 16), &data).await;
    let list = unmap_list(&[(2, 3), (10, 2)]);
    fixture.good(&unmap_cdb(list.len() as u16), &list).await;
    assert_eq!(fixture.device.mapped_blocks(), 11);
    let read = fixture.good(&block_cdb(READ_10, 0, 16), &[]).await;
    let mut expected = data;
    expected[2 * 4096..5 * 4096].fill(0);
    expected[10 * 4096..12 * 4096].fill(0);
    assert_eq!(read, expected);
    // An empty parameter list is a no-op; a 4-byte one is a length error; data-out shorter
    // than the parameter list length is one too.
    fixture.good(&unmap_cdb(0), &[]).await;
    let sense = fixture.sense(&unmap_cdb(4), &[0; 4]).await;
    assert_eq!(sense, Sense::parameter_list_length_error());
    let sense = fixture
        .sense(&unmap_cdb(list.len() as u16), &list[..20])
        .await;
    assert_eq!(sense, Sense::parameter_list_length_error());
}

/// COMPARE AND WRITE writes on a match and, on a miscompare, writes nothing and reports the
/// offset of the first differing byte in INFORMATION.
#[tokio::test(flavor = "current_thread")]
async fn compare_and_write_match_and_miscompare() {
    let fixture = fixture(512, 64).await;
    let old = pattern(1024, 1);
    let new = pattern(1024, 2);
    fixture.good(&block_cdb(WRITE_10, 8, 2), &old).await;
    let data = [old.clone(), new.clone()].concat();
    fixture.good(&compare_and_write_cdb(8, 2), &data).await;
    assert_eq!(fixture.good(&block_cdb(READ_10, 8, 2), &[]).await, new);
    // Now the medium holds `new`; comparing against `old` with a change at 700 still
    // miscompares at the first difference, byte 0 (old[0] != new[0]).
    let sense = fixture.sense(&compare_and_write_cdb(8, 2), &data).await;
    assert_eq!(sense, Sense::miscompare(0));
    let mut expected = new.clone();
    expected[700] ^= 0xFF;
    let data = [expected, old.clone()].concat();
    let sense = fixture.sense(&compare_and_write_cdb(8, 2), &data).await;
    assert_eq!(sense.key, SenseKey::Miscompare);
    assert_eq!(sense.information, Some(700));
    let bytes = sense.to_fixed();
    assert_eq!((bytes[0], bytes[2], bytes[12]), (0xF0, 0x0E, 0x1D));
    assert_eq!(&bytes[3..7], &700u32.to_be_bytes());
    assert_eq!(fixture.good(&block_cdb(READ_10, 8, 2), &[]).await, new);
    // Zero blocks compares and writes nothing.
    fixture.good(&compare_and_write_cdb(8, 0), &[]).await;
}

#[tokio::test(flavor = "current_thread")]
async fn verify_and_write_and_verify() {
    let fixture = fixture(512, 64).await;
    let data = pattern(1024, 5);
    let mut cdb = block_cdb(WRITE_AND_VERIFY_10, 4, 2);
    cdb[1] = 0x02; // BYTCHK 01b.
    fixture.good(&cdb, &data).await;
    let mut verify = block_cdb(VERIFY_16, 4, 2);
    fixture.good(&verify, &[]).await; // BYTCHK 00b: readable.
    verify[1] = 0x02;
    fixture.good(&verify, &data).await;
    let mut other = data.clone();
    other[513] ^= 1;
    assert_eq!(fixture.sense(&verify, &other).await, Sense::miscompare(513));
    verify[1] = 0x06; // BYTCHK 11b: one block against each.
    fixture.good(&block_cdb(WRITE_16, 20, 3), &[7; 1536]).await;
    let mut verify = block_cdb(VERIFY_16, 20, 3);
    verify[1] = 0x06;
    fixture.good(&verify, &[7; 512]).await;
    fixture.good(&block_cdb(WRITE_16, 22, 1), &[8; 512]).await;
    assert_eq!(
        fixture.sense(&verify, &[7; 512]).await,
        Sense::miscompare(1024)
    );
    verify[1] = 0x04; // BYTCHK 10b is reserved.
    assert_eq!(
        fixture.sense(&verify, &[]).await,
        Sense::invalid_field_in_cdb(1, Some(2))
    );
}

/// Device faults: a read fault is MEDIUM ERROR / UNRECOVERED READ ERROR with the LBA; a
/// write fault MEDIUM ERROR / WRITE ERROR with the LBA.
#[tokio::test(flavor = "current_thread")]
async fn medium_errors() {
    let fixture = fixture(512, 64).await;
    fixture.device.fail_reads(5);
    let sense = fixture.sense(&block_cdb(READ_10, 4, 4), &[]).await;
    assert_eq!(sense.key, SenseKey::MediumError);
    assert_eq!(sense.additional.code(), (0x11, 0x00));
    assert_eq!(sense.information, Some(5));
    let sense = fixture.sense(&block_cdb(VERIFY_10, 0, 8), &[]).await;
    assert_eq!(sense.additional, AdditionalSense::UnrecoveredReadError);
    fixture.device.fail_writes(9);
    let sense = fixture.sense(&block_cdb(WRITE_10, 8, 2), &[1; 1024]).await;
    assert_eq!(
        (sense.key, sense.additional.code()),
        (SenseKey::MediumError, (0x0C, 0x00))
    );
    assert_eq!(sense.information, Some(9));
    fixture.device.clear_faults();
    fixture.good(&block_cdb(WRITE_10, 8, 2), &[1; 1024]).await;
}

/// INQUIRY standard data, VPD pages and allocation-length truncation.
#[tokio::test(flavor = "current_thread")]
async fn inquiry_and_truncation() {
    let fixture = fixture(512, 64).await;
    let standard = fixture.good(&[INQUIRY, 0, 0, 0, 96, 0], &[]).await;
    assert_eq!(standard.len(), 66);
    assert_eq!(&standard[8..16], b"CAIRN   ");
    let truncated = fixture.good(&[INQUIRY, 0, 0, 0, 5, 0], &[]).await;
    assert_eq!(truncated, standard[..5]);
    assert!(
        fixture
            .good(&[INQUIRY, 0, 0, 0, 0, 0], &[])
            .await
            .is_empty()
    );
    let serial = fixture.good(&[INQUIRY, 1, 0x80, 0, 255, 0], &[]).await;
    assert_eq!(serial, [&[0x00, 0x80, 0x00, 9][..], b"CAIRN0001"].concat());
    let identification = fixture.good(&[INQUIRY, 1, 0x83, 1, 0, 0], &[]).await;
    assert_eq!(&identification[4..8], &[0x02, 0x01, 0x00, 40]);
    assert_eq!(&identification[8..16], b"CAIRN   ");
    assert_eq!(&identification[16..48], "07".repeat(16).as_bytes());
    assert_eq!(&identification[48..52], &[0x53, 0xA8, 0x00, 32]);
    assert_eq!(&identification[52..52 + TARGET.len()], TARGET.as_bytes());
    let sense = fixture.sense(&[INQUIRY, 1, 0x89, 0, 255, 0], &[]).await;
    assert_eq!(sense, Sense::invalid_field_in_cdb(2, None));
    let sense = fixture.sense(&[INQUIRY, 0, 0x80, 0, 255, 0], &[]).await;
    assert_eq!(sense, Sense::invalid_field_in_cdb(2, None));
}

#[tokio::test(flavor = "current_thread")]
async fn read_capacity() {
    let fixture = fixture(4096, 1000).await;
    let data = fixture
        .good(&[READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[])
        .await;
    assert_eq!(
        data,
        [&999u32.to_be_bytes()[..], &4096u32.to_be_bytes()].concat()
    );
    let mut cdb = vec![0u8; 16];
    cdb[0] = SERVICE_ACTION_IN_16;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let data = fixture.good(&cdb, &[]).await;
    assert_eq!(&data[..8], &999u64.to_be_bytes());
    assert_eq!(&data[8..12], &4096u32.to_be_bytes());
    assert_eq!((data[13], data[14]), (0x00, 0xC0));
    cdb[13] = 12;
    assert_eq!(fixture.good(&cdb, &[]).await.len(), 12);
}

#[tokio::test(flavor = "current_thread")]
async fn mode_sense_and_select() {
    let fixture = fixture(512, 64).await;
    let data = fixture.good(&[MODE_SENSE_6, 0, 0x08, 0, 255, 0], &[]).await;
    assert_eq!(&data[..4], &[31, 0x00, 0x10, 0x08]);
    assert_eq!(&data[4..12], &[0, 0, 0, 64, 0, 0, 2, 0]);
    assert_eq!(&data[12..14], &[0x08, 0x12]);
    assert_eq!(data[14] & 0x04, 0, "WCE is off");
    let mut echo = data.clone();
    echo[0] = 0;
    fixture
        .good(&[MODE_SELECT_6, 0x10, 0, 0, echo.len() as u8, 0], &echo)
        .await;
    echo[14] |= 0x04;
    let sense = fixture
        .sense(&[MODE_SELECT_6, 0x10, 0, 0, echo.len() as u8, 0], &echo)
        .await;
    assert_eq!(sense, Sense::invalid_field_in_parameter_list(14, None));
    let sense = fixture
        .sense(&[MODE_SENSE_6, 0, 0xC8, 0, 255, 0], &[])
        .await;
    assert_eq!(
        sense.additional,
        AdditionalSense::SavingParametersNotSupported
    );
    let all = fixture
        .good(&[MODE_SENSE_10, 0x08, 0x3F, 0, 0, 0, 0, 0, 255, 0], &[])
        .await;
    assert_eq!(all.len(), 8 + 20 + 12 + 12);
    let long = fixture
        .good(&[MODE_SENSE_10, 0x10, 0x0A, 0, 0, 0, 0, 0, 255, 0], &[])
        .await;
    assert_eq!((long[4], long[7]), (0x01, 16));
    assert_eq!(
        fixture
            .good(&[MODE_SENSE_6, 0x08, 0x3F, 0, 3, 0], &[])
            .await,
        vec![47, 0, 0x10]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn report_luns_sense_and_opcodes() {
    let fixture = fixture(512, 64).await;
    let mut cdb = vec![REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0];
    assert_eq!(
        fixture.good(&cdb, &[]).await,
        [&[0, 0, 0, 8][..], &[0; 12]].concat()
    );
    cdb[9] = 4;
    assert_eq!(fixture.good(&cdb, &[]).await, vec![0, 0, 0, 8]);
    cdb[2] = 0x03;
    assert_eq!(
        fixture.sense(&cdb, &[]).await,
        Sense::invalid_field_in_cdb(2, None)
    );
    let sense = fixture.good(&[REQUEST_SENSE, 0, 0, 0, 252, 0], &[]).await;
    assert_eq!(
        sense,
        Sense::new(
            SenseKey::NoSense,
            AdditionalSense::NoAdditionalSenseInformation
        )
        .to_fixed()
    );
    assert_eq!(sense[2] & 0x0F, 0);
    let mut cdb = vec![MAINTENANCE_IN, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
    let all = fixture.good(&cdb, &[]).await;
    let length = u32::from_be_bytes([all[0], all[1], all[2], all[3]]) as usize;
    assert_eq!(length, 8 * opcodes::SUPPORTED.len());
    assert!(
        all[4..]
            .chunks_exact(8)
            .any(|descriptor| descriptor[0] == COMPARE_AND_WRITE)
    );
    cdb[2] = 0x01;
    cdb[3] = WRITE_SAME_16;
    let one = fixture.good(&cdb, &[]).await;
    assert_eq!(&one[..4], &[0, 0x03, 0, 16]);
    assert_eq!(one[5], 0xFF, "WRITE SAME (16) flags byte usage");
}

/// Two hosts: alpha registers and takes Write Exclusive; beta's writes conflict while its
/// reads work; beta registers and preempts alpha; alpha's writes now conflict; beta
/// releases and clears.
#[tokio::test(flavor = "current_thread")]
async fn persistent_reservation_scenario() {
    let fixture = fixture(512, 64).await;
    let (alpha, beta) = (&fixture.alpha, &fixture.beta);
    let lun = &fixture.lun;
    let write = block_cdb(WRITE_10, 0, 1);
    let read = block_cdb(READ_10, 0, 1);
    let block = [5u8; 512];
    let pr_out = |action: u8, kind: u8| {
        let mut cdb = vec![PERSISTENT_RESERVE_OUT, action, kind, 0, 0, 0, 0, 0, 24, 0];
        cdb.resize(10, 0);
        cdb
    };
    let parameters = |key: u64, service_action_key: u64| {
        let mut list = key.to_be_bytes().to_vec();
        list.extend_from_slice(&service_action_key.to_be_bytes());
        list.resize(24, 0);
        list
    };
    let status = |outcome: Outcome| outcome.status;
    let good = Status::Good;
    let conflict = Status::ReservationConflict;

    // REGISTER with a non-zero current key from an unregistered nexus conflicts.
    assert_eq!(
        status(lun.execute(alpha, &pr_out(0, 0), &parameters(1, 0xA)).await),
        conflict
    );
    assert_eq!(
        status(lun.execute(alpha, &pr_out(0, 0), &parameters(0, 0xA)).await),
        good
    );
    // RESERVE by an unregistered nexus conflicts; by alpha it succeeds.
    assert_eq!(
        status(lun.execute(beta, &pr_out(1, 1), &parameters(0xB, 0)).await),
        conflict
    );
    assert_eq!(
        status(lun.execute(alpha, &pr_out(1, 1), &parameters(0xA, 0)).await),
        good
    );
    assert_eq!(status(lun.execute(alpha, &write, &block).await), good);
    assert_eq!(status(lun.execute(beta, &write, &block).await), conflict);
    assert_eq!(status(lun.execute(beta, &read, &[]).await), good);
    assert_eq!(
        status(lun.execute(beta, &[INQUIRY, 0, 0, 0, 36, 0], &[]).await),
        good
    );

    // READ KEYS and READ RESERVATION as beta sees them.
    let read_keys = [PERSISTENT_RESERVE_IN, 0, 0, 0, 0, 0, 0, 0, 255, 0];
    let keys = lun.execute(beta, &read_keys, &[]).await.data_in;
    assert_eq!(
        keys,
        [
            &1u32.to_be_bytes()[..],
            &8u32.to_be_bytes(),
            &0xAu64.to_be_bytes()
        ]
        .concat()
    );
    let read_reservation = [PERSISTENT_RESERVE_IN, 1, 0, 0, 0, 0, 0, 0, 255, 0];
    let reservation = lun.execute(beta, &read_reservation, &[]).await.data_in;
    assert_eq!(reservation.len(), 24);
    assert_eq!(&reservation[8..16], &0xAu64.to_be_bytes());
    assert_eq!(reservation[21], 0x01);

    // Beta registers and preempts alpha's key, taking Exclusive Access.
    assert_eq!(
        status(lun.execute(beta, &pr_out(0, 0), &parameters(0, 0xB)).await),
        good
    );
    assert_eq!(
        status(lun.execute(beta, &write, &block).await),
        conflict,
        "registrant, WE"
    );
    assert_eq!(
        status(
            lun.execute(beta, &pr_out(4, 3), &parameters(0xB, 0xA))
                .await
        ),
        good
    );
    assert_eq!(status(lun.execute(beta, &write, &block).await), good);
    assert_eq!(status(lun.execute(alpha, &write, &block).await), conflict);
    assert_eq!(
        status(lun.execute(alpha, &read, &[]).await),
        conflict,
        "exclusive access"
    );
    // Alpha lost its registration: its old key no longer works.
    assert_eq!(
        status(lun.execute(alpha, &pr_out(1, 3), &parameters(0xA, 0)).await),
        conflict
    );

    let read_full_status = [PERSISTENT_RESERVE_IN, 3, 0, 0, 0, 0, 0, 0, 255, 0];
    let full = lun.execute(alpha, &read_full_status, &[]).await.data_in;
    assert_eq!(&full[8..16], &0xBu64.to_be_bytes());
    assert_eq!(
        (full[20], full[21]),
        (0x01, 0x03),
        "beta holds Exclusive Access"
    );
    assert_eq!(full[32], 0x45);
    let name = b"iqn.2026-01.host:beta,i,0x400000000002";
    assert_eq!(&full[36..36 + name.len()], name);

    // RELEASE with the wrong type is an invalid release; with the right type it works.
    let outcome = lun.execute(beta, &pr_out(2, 1), &parameters(0xB, 0)).await;
    let sense = outcome.sense.expect("invalid release");
    assert_eq!(
        sense.additional,
        AdditionalSense::InvalidReleaseOfPersistentReservation
    );
    assert_eq!(
        status(lun.execute(beta, &pr_out(2, 3), &parameters(0xB, 0)).await),
        good
    );
    assert_eq!(status(lun.execute(alpha, &write, &block).await), good);

    // CLEAR removes every registration.
    assert_eq!(
        status(lun.execute(beta, &pr_out(1, 1), &parameters(0xB, 0)).await),
        good
    );
    assert_eq!(
        status(lun.execute(beta, &pr_out(3, 0), &parameters(0xB, 0)).await),
        good
    );
    let keys = lun.execute(alpha, &read_keys, &[]).await.data_in;
    assert_eq!(&keys[4..8], &0u32.to_be_bytes());
    assert_eq!(status(lun.execute(alpha, &write, &block).await), good);

    // APTPL is refused: reservations do not persist through power loss here.
    let mut list = parameters(0, 0xC);
    list[20] = 0x01;
    let sense = lun
        .execute(alpha, &pr_out(0, 0), &list)
        .await
        .sense
        .expect("APTPL refused");
    assert_eq!(sense, Sense::invalid_field_in_parameter_list(20, Some(0)));
    let capabilities = [PERSISTENT_RESERVE_IN, 2, 0, 0, 0, 0, 0, 0, 8, 0];
    let data = lun.execute(alpha, &capabilities, &[]).await.data_in;
    assert_eq!(data, vec![0, 8, 0, 0x80, 0xEA, 0x01, 0, 0]);
}

/// The execute future is Send, so the server may run it on a multi-threaded runtime.
#[test]
fn execute_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let fixture = fixture(512, 8).await;
        let future = fixture.lun.execute(&fixture.alpha, &[0; 6], &[]);
        assert_send(&future);
        assert_eq!(future.await.status, Status::Good);
    });
}

#[tokio::test(flavor = "current_thread")]
async fn open_refuses_other_block_sizes() {
    struct OddDevice;
    impl BlockDevice for OddDevice {
        async fn size_bytes(&self) -> Result<u64, DeviceError> {
            Ok(0)
        }
        async fn block_size(&self) -> Result<u32, DeviceError> {
            Ok(520)
        }
        async fn read(&self, _: u64, _: u32) -> Result<Vec<u8>, DeviceError> {
            Err(DeviceError::Busy)
        }
        async fn write(&self, _: u64, _: &[u8]) -> Result<(), DeviceError> {
            Err(DeviceError::Busy)
        }
        async fn flush(&self) -> Result<(), DeviceError> {
            Ok(())
        }
        async fn unmap(&self, _: u64, _: u64) -> Result<(), DeviceError> {
            Ok(())
        }
    }
    let identity = LunIdentity::new(VolumeId([0; 16]), "S", None).expect("valid identity");
    let store = MemReservationStore::default();
    let result = Lun::open(OddDevice, identity, store).await;
    assert!(matches!(
        result,
        Err(LunError::BlockSize { block_size: 520 })
    ));
}

/// Yields to the executor once, so concurrent commands interleave at every device call.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        context.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// A [`MemDevice`] that yields before every operation.
struct YieldingDevice(Arc<MemDevice>);

impl BlockDevice for YieldingDevice {
    async fn size_bytes(&self) -> Result<u64, DeviceError> {
        YieldOnce(false).await;
        self.0.size_bytes().await
    }
    async fn block_size(&self) -> Result<u32, DeviceError> {
        self.0.block_size().await
    }
    async fn read(&self, offset_bytes: u64, length_bytes: u32) -> Result<Vec<u8>, DeviceError> {
        YieldOnce(false).await;
        self.0.read(offset_bytes, length_bytes).await
    }
    async fn write(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DeviceError> {
        YieldOnce(false).await;
        self.0.write(offset_bytes, data).await
    }
    async fn flush(&self) -> Result<(), DeviceError> {
        self.0.flush().await
    }
    async fn unmap(&self, offset_bytes: u64, length_bytes: u64) -> Result<(), DeviceError> {
        YieldOnce(false).await;
        self.0.unmap(offset_bytes, length_bytes).await
    }
}

/// A WRITE issued while a COMPARE AND WRITE is between its read and its write must not land
/// in between: it waits for the lock and lands after, so it is the last write. Without the
/// lock the WRITE would land between the compare and the write and be overwritten.
#[tokio::test(flavor = "current_thread")]
async fn compare_and_write_is_atomic_against_writes() {
    let memory = Arc::new(MemDevice::new(64 * 512, 512));
    let identity = LunIdentity::new(VolumeId([1; 16]), "S", None).expect("valid identity");
    let store = MemReservationStore::default();
    let lun = Lun::open(YieldingDevice(memory.clone()), identity, store)
        .await
        .expect("open");
    let nexus = Nexus::new("iqn.a", [0; 6], TARGET, 1).expect("valid names");
    let (old, new, other) = (vec![1u8; 512], vec![2u8; 512], vec![3u8; 512]);
    memory.write(0, &old).await.expect("in range");
    let caw_data = [old, new].concat();
    let caw_cdb = compare_and_write_cdb(0, 1);
    let write_cdb = block_cdb(WRITE_10, 0, 1);
    // Polled in a fixed order, COMPARE AND WRITE first, so it holds the lock and is
    // reading when the WRITE arrives (tokio::join! rotates its polling order).
    let mut caw_future = std::pin::pin!(lun.execute(&nexus, &caw_cdb, &caw_data));
    let mut write_future = std::pin::pin!(lun.execute(&nexus, &write_cdb, &other));
    let (mut caw, mut write) = (None, None);
    std::future::poll_fn(|context| {
        if caw.is_none()
            && let std::task::Poll::Ready(outcome) = caw_future.as_mut().poll(context)
        {
            caw = Some(outcome);
        }
        if write.is_none()
            && let std::task::Poll::Ready(outcome) = write_future.as_mut().poll(context)
        {
            write = Some(outcome);
        }
        if caw.is_some() && write.is_some() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    let (caw, write) = (caw.expect("done"), write.expect("done"));
    assert_eq!((caw.status, write.status), (Status::Good, Status::Good));
    assert_eq!(memory.read(0, 512).await.expect("in range"), other);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("current-thread runtime")
}

/// A CDB biased towards the opcodes we implement, so the fuzzing reaches execution.
fn arbitrary_cdb() -> impl Strategy<Value = Vec<u8>> {
    let known: Vec<u8> = opcodes::SUPPORTED.iter().map(|info| info.opcode).collect();
    (
        prop::collection::vec(any::<u8>(), 1..=32),
        prop::sample::select(known),
        any::<bool>(),
    )
        .prop_map(|(mut cdb, opcode, use_known)| {
            if use_known {
                cdb[0] = opcode;
            }
            cdb
        })
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Step {
    Write {
        lba: u64,
        blocks: u32,
        seed: u8,
    },
    Read {
        lba: u64,
        blocks: u32,
    },
    WriteSame {
        lba: u64,
        blocks: u32,
        unmap: bool,
        zero: bool,
        seed: u8,
    },
    Unmap {
        lba: u64,
        blocks: u32,
    },
    CompareAndWrite {
        lba: u64,
        blocks: u8,
        flip: Option<usize>,
        seed: u8,
    },
}

/// LBAs run a little past the 64-block device so out-of-range steps happen too.
fn arbitrary_step() -> impl Strategy<Value = Step> {
    let lba = 0u64..70;
    prop_oneof![
        (lba.clone(), 0u32..9, any::<u8>()).prop_map(|(lba, blocks, seed)| Step::Write {
            lba,
            blocks,
            seed
        }),
        (lba.clone(), 0u32..9).prop_map(|(lba, blocks)| Step::Read { lba, blocks }),
        (
            lba.clone(),
            1u32..12,
            any::<bool>(),
            any::<bool>(),
            any::<u8>()
        )
            .prop_map(|(lba, blocks, unmap, zero, seed)| Step::WriteSame {
                lba,
                blocks,
                unmap,
                zero,
                seed
            }),
        (lba.clone(), 1u32..12).prop_map(|(lba, blocks)| Step::Unmap { lba, blocks }),
        (lba, 1u8..4, prop::option::of(0usize..4 * 4096), any::<u8>()).prop_map(
            |(lba, blocks, flip, seed)| Step::CompareAndWrite {
                lba,
                blocks,
                flip,
                seed
            }
        ),
    ]
}

/// Runs `steps` against a 64-block LUN and a byte-vector model of it, checking every
/// outcome and every read against the model.
async fn run_model(block_size: u32, steps: &[Step]) -> Result<(), TestCaseError> {
    let fixture = fixture(block_size, 64).await;
    let size = block_size as usize;
    let mut model = vec![0u8; 64 * size];
    let in_range = |lba: u64, blocks: u64| lba < 64 && lba + blocks <= 64;
    let span = |lba: u64, blocks: u64| lba as usize * size..(lba + blocks) as usize * size;
    for step in steps {
        match *step {
            Step::Write { lba, blocks, seed } => {
                let data = pattern(blocks as usize * size, seed);
                let outcome = fixture.run(&block_cdb(WRITE_16, lba, blocks), &data).await;
                if in_range(lba, blocks.into()) {
                    prop_assert_eq!(outcome.status, Status::Good);
                    model[span(lba, blocks.into())].copy_from_slice(&data);
                } else {
                    prop_assert_eq!(outcome.sense, Some(Sense::lba_out_of_range()));
                }
            }
            Step::Read { lba, blocks } => {
                let outcome = fixture.run(&block_cdb(READ_10, lba, blocks), &[]).await;
                if in_range(lba, blocks.into()) {
                    prop_assert_eq!(outcome.status, Status::Good);
                    prop_assert!(outcome.data_in == model[span(lba, blocks.into())]);
                } else {
                    prop_assert_eq!(outcome.sense, Some(Sense::lba_out_of_range()));
                }
            }
            Step::WriteSame {
                lba,
                blocks,
                unmap,
                zero,
                seed,
            } => {
                let block = if zero {
                    vec![0; size]
                } else {
                    pattern(size, seed)
                };
                let flags = if unmap { 0x08 } else { 0 };
                let cdb = write_same_cdb(WRITE_SAME_16, lba, blocks, flags);
                let outcome = fixture.run(&cdb, &block).await;
                if in_range(lba, blocks.into()) {
                    prop_assert_eq!(outcome.status, Status::Good);
                    model[span(lba, blocks.into())].copy_from_slice(&block.repeat(blocks as usize));
                } else {
                    prop_assert_eq!(outcome.sense, Some(Sense::lba_out_of_range()));
                }
            }
            Step::Unmap { lba, blocks } => {
                let list = unmap_list(&[(lba, blocks)]);
                let outcome = fixture.run(&unmap_cdb(list.len() as u16), &list).await;
                if in_range(lba, blocks.into()) {
                    prop_assert_eq!(outcome.status, Status::Good);
                    model[span(lba, blocks.into())].fill(0);
                } else {
                    prop_assert_eq!(outcome.sense, Some(Sense::lba_out_of_range()));
                }
            }
            Step::CompareAndWrite {
                lba,
                blocks,
                flip,
                seed,
            } => {
                let length = blocks as usize * size;
                let range = span(lba, blocks.into());
                let mut expected = if in_range(lba, blocks.into()) {
                    model[range.clone()].to_vec()
                } else {
                    vec![0; length]
                };
                let flip = flip.map(|offset| offset % length);
                if let Some(offset) = flip {
                    expected[offset] ^= 0x5A;
                }
                let replacement = pattern(length, seed);
                let data = [expected, replacement.clone()].concat();
                let outcome = fixture
                    .run(&compare_and_write_cdb(lba, blocks), &data)
                    .await;
                if !in_range(lba, blocks.into()) {
                    prop_assert_eq!(outcome.sense, Some(Sense::lba_out_of_range()));
                } else if let Some(offset) = flip {
                    prop_assert_eq!(outcome.sense, Some(Sense::miscompare(offset as u64)));
                } else {
                    prop_assert_eq!(outcome.status, Status::Good);
                    model[range].copy_from_slice(&replacement);
                }
            }
        }
    }
    let whole = fixture.good(&block_cdb(READ_16, 0, 64), &[]).await;
    prop_assert!(whole == model);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary CDB bytes and data-out never panic, and data-in never exceeds what the CDB
    /// allows (nothing when the CDB does not parse). Sense comes with CHECK CONDITION only.
    #[test]
    fn arbitrary_cdbs_never_overrun(
        cdb in arbitrary_cdb(),
        data_out in prop::collection::vec(any::<u8>(), 0..1100),
        block_size in prop::sample::select(vec![512u32, 4096]),
    ) {
        runtime().block_on(async {
            let fixture = fixture(block_size, 64).await;
            let limit = match parse(&cdb) {
                Ok(command) => data_in_len(&command, block_size),
                Err(_) => 0,
            };
            let outcome = fixture.lun.execute(&fixture.alpha, &cdb, &data_out).await;
            prop_assert!(outcome.data_in.len() as u64 <= limit);
            prop_assert_eq!(outcome.sense.is_some(), outcome.status == Status::CheckCondition);
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random WRITE / READ / WRITE SAME / UNMAP / COMPARE AND WRITE sequences match a byte
    /// vector model, at both block sizes.
    #[test]
    fn block_commands_match_model(
        steps in prop::collection::vec(arbitrary_step(), 1..40),
        block_size in prop::sample::select(vec![512u32, 4096]),
    ) {
        runtime().block_on(run_model(block_size, &steps))?;
    }
}
