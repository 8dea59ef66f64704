//! Tasks that stay in flight: a device whose writes wait for the test to open a gate shows
//! that a WRITE's status follows the device's acknowledgement and that ABORT TASK on a
//! running task suppresses its answer; pipelined commands show the sequence numbers stay in
//! order while tasks run concurrently.

use std::{
    future::{self, Future},
    sync::Arc,
    time::Duration,
};

use cairn_gateway_iscsi::{
    login::{LoginConfig, TargetConfig},
    pdu::{Lun, NopOut, Pdu, TaskMgmtFunction, TaskMgmtRequest, TaskMgmtResponseCode, Ttt},
    scsi::{BlockDevice, DeviceError, MemDevice, VolumeId},
    server::Volumes,
};
use tokio::sync::Semaphore;

use crate::{
    harness::{TestServer, TestTargetConfig},
    initiator::{Client, READ_10, WRITE_10, rw10},
};

const TARGET: &str = "iqn.2026-12.io.cairn:gated";

/// A device whose every write waits for one permit of `gate`.
struct GatedDevice {
    inner: MemDevice,
    gate: Semaphore,
}

impl BlockDevice for GatedDevice {
    fn size_bytes(&self) -> impl Future<Output = Result<u64, DeviceError>> + Send {
        self.inner.size_bytes()
    }

    fn block_size(&self) -> impl Future<Output = Result<u32, DeviceError>> + Send {
        self.inner.block_size()
    }

    fn read(
        &self,
        offset_bytes: u64,
        length_bytes: u32,
    ) -> impl Future<Output = Result<Vec<u8>, DeviceError>> + Send {
        self.inner.read(offset_bytes, length_bytes)
    }

    async fn write(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.gate.acquire().await.expect("gate open").forget();
        self.inner.write(offset_bytes, data).await
    }

    fn flush(&self) -> impl Future<Output = Result<(), DeviceError>> + Send {
        self.inner.flush()
    }

    fn unmap(
        &self,
        offset_bytes: u64,
        length_bytes: u64,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send {
        self.inner.unmap(offset_bytes, length_bytes)
    }
}

struct GatedVolumes(Arc<GatedDevice>);

impl Volumes for GatedVolumes {
    type Device = Arc<GatedDevice>;

    fn open(
        &self,
        _target_name: &str,
    ) -> impl Future<Output = Result<(Self::Device, VolumeId), String>> + Send {
        future::ready(Ok((Arc::clone(&self.0), VolumeId([7; 16]))))
    }
}

fn gated_server() -> (TestServer, Arc<GatedDevice>) {
    let device = Arc::new(GatedDevice {
        inner: MemDevice::new(1 << 20, 512),
        gate: Semaphore::new(0),
    });
    let login = LoginConfig {
        targets: vec![TargetConfig {
            name: TARGET.to_owned(),
            alias: None,
            chap: None,
            allowed_initiators: Vec::new(),
        }],
        ..LoginConfig::default()
    };
    let login = login.check().expect("valid configuration");
    let server = TestServer::spawn(login, GatedVolumes(Arc::clone(&device)), |_| {});
    (server, device)
}

/// Sends a WRITE of one block and its data; the device holds it at the gate.
fn start_write(client: &mut Client) -> cairn_gateway_iscsi::pdu::Itt {
    let itt = client.send_command(&rw10(WRITE_10, 3, 1), 0, 512, false);
    let Pdu::R2t(r2t) = client.recv() else {
        panic!("expected an R2T");
    };
    client.send_data_out(itt, r2t.ttt, &[0x5a; 512], 0);
    itt
}

fn ping(client: &mut Client) {
    let itt = client.itt();
    client.send(&Pdu::NopOut(NopOut {
        immediate: true,
        lun: Lun(0),
        itt,
        ttt: Ttt::RESERVED,
        cmd_sn: client.cmd_sn,
        exp_stat_sn: client.exp_stat_sn,
        data: Vec::new(),
    }));
}

/// The WRITE's status comes only once the device let the write through; meanwhile the
/// session answers pings.
#[test]
fn write_status_waits_for_the_device() {
    let (server, device) = gated_server();
    let mut client = Client::connect(server.address);
    client.login_normal(TARGET, 256 * 1024);
    let itt = start_write(&mut client);
    ping(&mut client);
    let Pdu::NopIn(_) = client.recv() else {
        panic!("the write answered before the device acknowledged it");
    };
    device.gate.add_permits(1);
    let completion = client.complete(itt, &[]);
    assert_eq!(completion.status, 0);
    server.assert_no_panics();
}

/// ABORT TASK on a running WRITE waits for it, then answers Function Complete; the WRITE
/// itself is never answered.
#[test]
fn abort_of_a_running_task_suppresses_its_answer() {
    let (server, device) = gated_server();
    let mut client = Client::connect(server.address);
    client.login_normal(TARGET, 256 * 1024);
    let write_itt = start_write(&mut client);
    let itt = client.itt();
    client.send(&Pdu::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function: TaskMgmtFunction::AbortTask,
        lun: Lun(0),
        itt,
        referenced_task_tag: write_itt,
        cmd_sn: client.cmd_sn,
        exp_stat_sn: client.exp_stat_sn,
        ref_cmd_sn: client.cmd_sn - 1,
        exp_data_sn: 0,
    }));
    std::thread::sleep(Duration::from_millis(200));
    device.gate.add_permits(1);
    let Pdu::TaskMgmtResponse(response) = client.recv() else {
        panic!("expected the TMF response, and nothing for the aborted write");
    };
    assert_eq!(response.response, TaskMgmtResponseCode::FunctionComplete);
    ping(&mut client);
    let Pdu::NopIn(_) = client.recv() else {
        panic!("expected a NOP-In");
    };
    server.assert_no_panics();
}

/// 64 READs sent back to back: every one is answered, StatSN counts up by one per status
/// in arrival order, and MaxCmdSN never goes down.
#[test]
fn pipelined_commands_keep_sequence_numbers_in_order() {
    let server = TestServer::start(vec![TestTargetConfig::open(TARGET)]);
    let mut client = Client::connect(server.address);
    client.login_normal(TARGET, 256 * 1024);
    let count = 64u32;
    for index in 0..count {
        client.send_command(&rw10(READ_10, index * 8, 8), 4096, 0, false);
    }
    let mut answered = 0;
    let mut last_stat_sn = None;
    let mut last_max_cmd_sn = 0u32;
    while answered < count {
        let Pdu::DataIn(data_in) = client.recv() else {
            panic!("expected Data-In");
        };
        assert!(data_in.max_cmd_sn.wrapping_sub(last_max_cmd_sn) < 1 << 31 || answered == 0);
        last_max_cmd_sn = data_in.max_cmd_sn;
        if let Some(status) = data_in.status {
            assert_eq!(status.status, 0);
            if let Some(last) = last_stat_sn {
                assert_eq!(status.stat_sn, u32::wrapping_add(last, 1));
            }
            last_stat_sn = Some(status.stat_sn);
            answered += 1;
        }
    }
    assert_eq!(client.command(&[0u8; 6], 0, &[]).status, 0);
}
