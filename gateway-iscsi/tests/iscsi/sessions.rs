//! Session-level behaviour: reinstatement, the session limit, a volume that fails to open,
//! and the unit attention a LUN reset leaves on every session of the logical unit.

use cairn_gateway_iscsi::{
    login::{LoginConfig, TargetConfig},
    pdu::{Itt, LoginStatus, Lun, Pdu, TaskMgmtFunction, TaskMgmtRequest, TaskMgmtResponseCode},
    server::MemVolumes,
};

use crate::{
    harness::{TestServer, TestTargetConfig},
    initiator::Client,
};

const TARGET: &str = "iqn.2026-12.io.cairn:sessions";

/// A second login with the same initiator name and ISID reinstates the session: the old
/// connection is closed, the new one works.
#[test]
fn same_isid_reinstates_the_session() {
    let server = TestServer::start(vec![TestTargetConfig::open(TARGET)]);
    let mut first = Client::connect(server.address);
    first.login_normal(TARGET, 256 * 1024);
    let mut second = Client::connect(server.address);
    second.login_normal(TARGET, 256 * 1024);
    assert!(first.wait_closed().is_empty());
    assert_eq!(second.command(&[0u8; 6], 0, &[]).status, 0);
    server.assert_no_panics();
}

/// Beyond `sessions_max` a login fails with "out of resources".
#[test]
fn session_limit() {
    let server = TestServer::start_with(vec![TestTargetConfig::open(TARGET)], None, |config| {
        config.sessions_max = 1;
    });
    let mut first = Client::connect(server.address);
    first.login_normal(TARGET, 256 * 1024);
    let mut second = Client::connect(server.address);
    let response = second.login(Some(TARGET), &[]);
    assert_eq!(response.status, LoginStatus::OUT_OF_RESOURCES);
    assert!(second.wait_closed().is_empty());
    assert_eq!(first.command(&[0u8; 6], 0, &[]).status, 0);
}

/// A target whose volume cannot be opened fails the login with a target error (0x0300).
#[test]
fn volume_open_failure_is_a_target_error() {
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
    let server = TestServer::spawn(login, MemVolumes::new(), |_| {});
    let mut client = Client::connect(server.address);
    let response = client.login(Some(TARGET), &[]);
    assert_eq!(response.status, LoginStatus::TARGET_ERROR);
    assert!(client.wait_closed().is_empty());
}

fn lun_reset(client: &mut Client) -> TaskMgmtResponseCode {
    let itt = client.itt();
    client.send(&Pdu::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function: TaskMgmtFunction::LogicalUnitReset,
        lun: Lun(0),
        itt,
        referenced_task_tag: Itt::RESERVED,
        cmd_sn: client.cmd_sn,
        exp_stat_sn: client.exp_stat_sn,
        ref_cmd_sn: 0,
        exp_data_sn: 0,
    }));
    let Pdu::TaskMgmtResponse(response) = client.recv() else {
        panic!("expected a TMF response");
    };
    response.response
}

/// After a LUN reset on one session, each session's next command (INQUIRY aside) gets
/// UNIT ATTENTION 29h/03h once.
#[test]
fn lun_reset_raises_a_unit_attention_on_every_session() {
    let server = TestServer::start(vec![TestTargetConfig::open(TARGET)]);
    let mut resetter = Client::connect(server.address);
    resetter.login_normal(TARGET, 256 * 1024);
    let mut other = Client::connect(server.address);
    other.set_isid([0x80, 0, 0, 0, 0x56, 0x78]);
    other.login_normal(TARGET, 256 * 1024);
    assert_eq!(
        lun_reset(&mut resetter),
        TaskMgmtResponseCode::FunctionComplete
    );
    for client in [&mut resetter, &mut other] {
        let inquiry = client.command(&[0x12, 0, 0, 0, 36, 0], 36, &[]);
        assert_eq!(inquiry.status, 0, "INQUIRY does not report unit attentions");
        let first = client.command(&[0u8; 6], 0, &[]);
        assert_eq!(first.status, 0x02);
        assert_eq!(first.sense[2] & 0x0f, 0x06, "UNIT ATTENTION");
        assert_eq!((first.sense[12], first.sense[13]), (0x29, 0x03));
        assert_eq!(client.command(&[0u8; 6], 0, &[]).status, 0);
    }
}
