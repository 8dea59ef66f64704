//! The server's data-out budget: the write data all sessions hold at once never exceeds it,
//! commands that do not fit wait (no R2T) in the order they came and are served as budget
//! comes back, and aborts and dropped connections give their budget back.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use cairn_gateway_iscsi::{
    initiator::Initiator,
    pdu::{Itt, Lun, Pdu, R2t, TaskMgmtFunction, TaskMgmtRequest, TaskMgmtResponseCode},
    scsi::BlockDevice,
    server::DATA_OUT_BUDGET_BYTES_MIN,
};

use crate::{
    harness::{BLOCK_SIZE, TestServer, TestTargetConfig},
    initiator::{Client, READ_10, Rng, WRITE_10, rw10, seed},
};

const TARGET: &str = "iqn.2026-12.io.cairn:budget";
/// The budget of these tests: the smallest allowed, two of [`WRITE_BYTES`].
const BUDGET_BYTES: u64 = DATA_OUT_BUDGET_BYTES_MIN;
/// The largest WRITE the logical unit takes: half the budget.
const WRITE_BYTES: u32 = 4 << 20;
const WRITE_BLOCKS: u16 = (WRITE_BYTES / BLOCK_SIZE) as u16;

const _: () = assert!(BUDGET_BYTES == 2 * WRITE_BYTES as u64);

fn server() -> TestServer {
    TestServer::start_with(vec![TestTargetConfig::open(TARGET)], None, |config| {
        config.data_out_budget_bytes = BUDGET_BYTES;
    })
}

/// A session that sends every byte by R2T, one R2T of 1 MiB at a time per command.
fn solicited_client(server: &TestServer) -> Client {
    let mut client = Client::connect(server.address);
    client.login_normal(TARGET, 1 << 20);
    client
}

fn r2t_itts(pdus: &[Pdu]) -> Vec<Itt> {
    pdus.iter()
        .filter_map(|pdu| match pdu {
            Pdu::R2t(r2t) => Some(r2t.itt),
            _ => None,
        })
        .collect()
}

/// Sends `count` WRITE (10)s of [`WRITE_BYTES`] at LBAs 0, 8192, ... without their data.
fn send_writes(client: &mut Client, count: u32) -> Vec<Itt> {
    (0..count)
        .map(|index| {
            let lba = index * u32::from(WRITE_BLOCKS);
            let cdb = rw10(WRITE_10, lba, WRITE_BLOCKS);
            client.send_command(&cdb, 0, WRITE_BYTES, false)
        })
        .collect()
}

/// When a command was first asked for data.
#[derive(Debug)]
struct FirstR2t {
    itt: Itt,
    /// Commands of the test completed before it.
    completed_before: usize,
}

/// Answers R2Ts (those in `pending` first) from `data` until every command in `data` has its
/// status, which must be GOOD. Returns the commands in the order their first R2T came.
fn pump(client: &mut Client, pending: Vec<Pdu>, data: &HashMap<Itt, Vec<u8>>) -> Vec<FirstR2t> {
    let mut first_r2ts: Vec<FirstR2t> = Vec::new();
    let mut completed = Vec::new();
    let answer = |client: &mut Client, r2t: R2t, first: &mut Vec<FirstR2t>, done: usize| {
        if !first.iter().any(|seen| seen.itt == r2t.itt) {
            first.push(FirstR2t {
                itt: r2t.itt,
                completed_before: done,
            });
        }
        let bytes = data
            .get(&r2t.itt)
            .expect("an R2T for a command of the test");
        let start = r2t.buffer_offset as usize;
        let end = start + r2t.desired_len as usize;
        client.send_data_out(r2t.itt, r2t.ttt, &bytes[start..end], r2t.buffer_offset);
    };
    for pdu in pending {
        match pdu {
            Pdu::R2t(r2t) => answer(client, r2t, &mut first_r2ts, 0),
            other => panic!("unexpected PDU: {other:?}"),
        }
    }
    while completed.len() < data.len() {
        match client.recv() {
            Pdu::R2t(r2t) => answer(client, r2t, &mut first_r2ts, completed.len()),
            Pdu::ScsiResponse(response) => {
                assert_eq!(response.status, 0, "{response:?}");
                completed.push(response.itt);
            }
            other => panic!("unexpected PDU: {other:?}"),
        }
    }
    first_r2ts
}

/// Polls the budget until no byte is granted, for at most 10 s: a connection's end is seen by
/// the server on its own time.
fn wait_for_empty_budget(server: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.budget().in_use_bytes != 0 {
        assert!(Instant::now() < deadline, "{:?}", server.budget());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn concurrent_large_writes_stay_within_the_budget() {
    // Goal: six sessions each writing 4 MiB commands against a budget of two such commands
    // all complete, with the right bytes on the device and read back, and the bytes granted
    // never exceed the budget. Method: one thread and one library initiator per session,
    // each on its own 8 MiB of the LUN; the server's gauge is read at the end.
    const SESSIONS: u64 = 6;
    const WRITES: u64 = 2;
    let server = server();
    let seed = seed();
    let region_bytes = WRITES * u64::from(WRITE_BYTES);
    let written: Vec<(u64, Vec<u8>)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..SESSIONS)
            .map(|session| {
                let server = &server;
                scope.spawn(move || {
                    let mut rng = Rng::new(seed ^ (session + 1));
                    let mut initiator = Initiator::connect(server.address, Duration::from_secs(30))
                        .expect("connect");
                    let name = format!("iqn.2026-12.io.cairn:budget-{session}");
                    initiator.login(&name, TARGET, None).expect("login");
                    let data = rng.bytes(region_bytes as usize);
                    let lba = session * region_bytes / u64::from(BLOCK_SIZE);
                    for (index, piece) in data.chunks(WRITE_BYTES as usize).enumerate() {
                        let at = lba + index as u64 * u64::from(WRITE_BLOCKS);
                        initiator.write(at, piece).expect("write 4 MiB");
                    }
                    for (index, piece) in data.chunks(WRITE_BYTES as usize).enumerate() {
                        let at = lba + index as u64 * u64::from(WRITE_BLOCKS);
                        let read = initiator
                            .read(at, u32::from(WRITE_BLOCKS))
                            .expect("read back");
                        assert!(read == piece, "session {session} reads back other bytes");
                    }
                    initiator.logout().expect("logout");
                    (lba, data)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().expect("a session thread"))
            .collect()
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    for (lba, data) in &written {
        let offset = lba * u64::from(BLOCK_SIZE);
        let on_device = runtime
            .block_on(server.devices[0].read(offset, data.len() as u32))
            .expect("device read");
        assert!(
            on_device == *data,
            "the device holds other bytes at LBA {lba}"
        );
    }
    let stats = server.budget();
    println!("{stats:?}");
    assert_eq!(stats.capacity_bytes, BUDGET_BYTES);
    assert!(stats.peak_bytes <= BUDGET_BYTES, "{stats:?}");
    assert!(stats.peak_bytes >= u64::from(WRITE_BYTES), "{stats:?}");
    assert_eq!(stats.in_use_bytes, 0);
    server.assert_no_panics();
}

#[test]
fn a_write_beyond_the_budget_waits_for_it_without_r2t() {
    // Goal: with the budget full, a third 4 MiB write gets no R2T until a granted one
    // completes, then runs; all three land. Method: three WRITEs sent without data on one
    // session; a NOP-Out barrier shows which ones the target asked data for.
    let server = server();
    let mut client = solicited_client(&server);
    let itts = send_writes(&mut client, 3);
    let before = client.barrier();
    assert_eq!(r2t_itts(&before), itts[..2].to_vec(), "{before:?}");
    let stats = server.budget();
    assert_eq!(stats.in_use_bytes, BUDGET_BYTES);
    assert_eq!(stats.waits, 1);

    let mut rng = Rng::new(seed());
    let data: HashMap<Itt, Vec<u8>> = itts
        .iter()
        .map(|itt| (*itt, rng.bytes(WRITE_BYTES as usize)))
        .collect();
    let first_r2ts = pump(&mut client, before, &data);
    let order: Vec<Itt> = first_r2ts.iter().map(|first| first.itt).collect();
    assert_eq!(order, itts);
    // The third write was asked for its data only after one of the first two completed.
    assert!(first_r2ts[2].completed_before >= 1, "{first_r2ts:?}");
    for (index, itt) in itts.iter().enumerate() {
        let lba = index as u32 * u32::from(WRITE_BLOCKS);
        let read = client.command(&rw10(READ_10, lba, WRITE_BLOCKS), WRITE_BYTES, &[]);
        assert_eq!(read.status, 0);
        assert!(
            read.data_in == data[itt],
            "write {index} reads back other bytes"
        );
    }
    let stats = server.budget();
    assert_eq!(stats.peak_bytes, BUDGET_BYTES);
    assert_eq!(stats.in_use_bytes, 0);
    server.assert_no_panics();
}

#[test]
fn aborts_and_dropped_connections_give_the_budget_back() {
    // Goal: aborting a waiting command takes it out of line, aborting a granted one lets the
    // next in line in, and closing a connection returns everything it held. Method: WRITEs
    // without data on one session, ABORT TASK, NOP-Out barriers, then a hang-up.
    let server = server();
    let mut client = solicited_client(&server);
    let itts = send_writes(&mut client, 3);
    assert_eq!(r2t_itts(&client.barrier()), itts[..2].to_vec());

    // The waiting third write goes; a fourth takes its place in line.
    abort(&mut client, itts[2]);
    let fourth = send_writes(&mut client, 1)[0];
    assert!(r2t_itts(&client.barrier()).is_empty());
    // Aborting the first write, granted and collecting, lets the fourth in.
    abort(&mut client, itts[0]);
    let after = client.barrier();
    assert_eq!(r2t_itts(&after), vec![fourth], "{after:?}");
    assert_eq!(server.budget().in_use_bytes, BUDGET_BYTES);

    // Hanging up with two granted writes returns their budget.
    drop(client);
    wait_for_empty_budget(&server);
    let mut client = solicited_client(&server);
    let itts = send_writes(&mut client, 2);
    assert_eq!(r2t_itts(&client.barrier()), itts);
    assert!(server.budget().peak_bytes <= BUDGET_BYTES);
    server.assert_no_panics();
}

/// ABORT TASK for `itt`, which must be found and stopped. An R2T for a command the abort let
/// in comes after the answer, for the caller's next barrier.
fn abort(client: &mut Client, itt: Itt) {
    let tmf_itt = Itt(0x7ffe_0000 | client.cmd_sn);
    client.send(&Pdu::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function: TaskMgmtFunction::AbortTask,
        lun: Lun(0),
        itt: tmf_itt,
        referenced_task_tag: itt,
        cmd_sn: client.cmd_sn,
        exp_stat_sn: client.exp_stat_sn,
        ref_cmd_sn: 0,
        exp_data_sn: 0,
    }));
    // The target answers the abort before it grants the bytes freed to anyone.
    match client.recv() {
        Pdu::TaskMgmtResponse(response) => {
            assert_eq!(response.itt, tmf_itt);
            assert_eq!(response.response, TaskMgmtResponseCode::FunctionComplete);
        }
        other => panic!("expected the abort's answer: {other:?}"),
    }
}
