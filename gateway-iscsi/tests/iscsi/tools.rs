//! libiscsi's command-line initiators against the server: discovery, ACLs, CHAP, INQUIRY
//! and READ CAPACITY (16).

use std::time::Duration;

use crate::harness::{
    LUN_SIZE_BYTES, TestServer, TestTargetConfig, chap, have_tool, mutual_chap, run_tool, stdout,
};

const TOOL_DEADLINE: Duration = Duration::from_secs(30);
const OPEN: &str = "iqn.2026-12.io.cairn:open";
const FENCED: &str = "iqn.2026-12.io.cairn:fenced";
const ALLOWED: &str = "iqn.2026-12.io.cairn:allowed-host";
const OTHER: &str = "iqn.2026-12.io.cairn:other-host";

/// `iscsi-ls -s` lists every target (and its LUN) an initiator may see; a target whose
/// ACL leaves the initiator out is not shown to it.
#[test]
fn iscsi_ls_lists_targets_and_respects_acls() {
    if !have_tool("iscsi-ls") {
        return;
    }
    let server = TestServer::start(vec![
        TestTargetConfig::open(OPEN),
        TestTargetConfig {
            allowed_initiators: vec![ALLOWED.to_owned()],
            ..TestTargetConfig::open(FENCED)
        },
    ]);
    let url = server.url();
    let allowed = run_tool("iscsi-ls", &["-s", "-i", ALLOWED, &url], TOOL_DEADLINE);
    assert!(allowed.status.success());
    let listed = stdout(&allowed);
    assert!(listed.contains(OPEN) && listed.contains(FENCED), "{listed}");
    assert!(listed.contains("Lun:0"), "{listed}");
    let other = run_tool("iscsi-ls", &["-s", "-i", OTHER, &url], TOOL_DEADLINE);
    assert!(other.status.success());
    let listed = stdout(&other);
    assert!(listed.contains(OPEN), "{listed}");
    assert!(!listed.contains(FENCED), "{listed}");
    server.assert_no_panics();
}

/// Discovery CHAP: the right secret lists the targets, a wrong one or none fails.
#[test]
fn iscsi_ls_with_discovery_chap() {
    if !have_tool("iscsi-ls") {
        return;
    }
    let server = TestServer::start_with(
        vec![TestTargetConfig::open(OPEN)],
        Some(chap("discoverer", "discovery-secret-1")),
        |_| {},
    );
    let port = server.port();
    let good = format!("iscsi://discoverer%discovery-secret-1@127.0.0.1:{port}");
    let output = run_tool("iscsi-ls", &[&good], TOOL_DEADLINE);
    assert!(output.status.success());
    assert!(stdout(&output).contains(OPEN));
    let bad = format!("iscsi://discoverer%wrong-secret-000@127.0.0.1:{port}");
    let output = run_tool("iscsi-ls", &[&bad], TOOL_DEADLINE);
    assert!(!output.status.success());
    assert!(!stdout(&output).contains(OPEN));
    let output = run_tool("iscsi-ls", &[&server.url()], TOOL_DEADLINE);
    assert!(!output.status.success());
    assert!(!stdout(&output).contains(OPEN));
}

/// `iscsi-inq` shows our vendor and product; `iscsi-readcapacity16` the LUN's size.
#[test]
fn iscsi_inq_and_readcapacity16() {
    if !have_tool("iscsi-inq") || !have_tool("iscsi-readcapacity16") {
        return;
    }
    let server = TestServer::start(vec![TestTargetConfig::open(OPEN)]);
    let url = format!("{}/{OPEN}/0", server.url());
    let output = run_tool("iscsi-inq", &[&url], TOOL_DEADLINE);
    assert!(output.status.success());
    let inquiry = stdout(&output);
    assert!(inquiry.contains("CAIRN"), "{inquiry}");
    assert!(inquiry.contains("VOLUME"), "{inquiry}");
    let output = run_tool("iscsi-readcapacity16", &[&url], TOOL_DEADLINE);
    assert!(output.status.success());
    let capacity = stdout(&output);
    let last_lba = LUN_SIZE_BYTES / 512 - 1;
    assert!(
        capacity.contains(&format!("RETURNED LOGICAL BLOCK ADDRESS:{last_lba}")),
        "{capacity}"
    );
    assert!(
        capacity.contains(&format!("Total size:{LUN_SIZE_BYTES}")),
        "{capacity}"
    );
}

/// Target CHAP: the right secret logs in, a wrong one fails with a non-zero exit; mutual
/// CHAP through libiscsi's `target_user`/`target_password` URL arguments.
#[test]
fn chap_logins() {
    if !have_tool("iscsi-inq") {
        return;
    }
    let server = TestServer::start(vec![
        TestTargetConfig {
            chap: Some(chap("alice", "alice-secret-12")),
            ..TestTargetConfig::open(OPEN)
        },
        TestTargetConfig {
            chap: Some(mutual_chap(
                "bob",
                "bob-secret-1234",
                "target",
                "target-secret-1",
            )),
            ..TestTargetConfig::open(FENCED)
        },
    ]);
    let port = server.port();
    let good = format!("iscsi://alice%alice-secret-12@127.0.0.1:{port}/{OPEN}/0");
    assert!(
        run_tool("iscsi-inq", &[&good], TOOL_DEADLINE)
            .status
            .success()
    );
    let bad = format!("iscsi://alice%alice-secret-99@127.0.0.1:{port}/{OPEN}/0");
    assert!(
        !run_tool("iscsi-inq", &[&bad], TOOL_DEADLINE)
            .status
            .success()
    );
    let none = format!("iscsi://127.0.0.1:{port}/{OPEN}/0");
    assert!(
        !run_tool("iscsi-inq", &[&none], TOOL_DEADLINE)
            .status
            .success()
    );
    let mutual = format!(
        "iscsi://bob%bob-secret-1234@127.0.0.1:{port}/{FENCED}/0\
         ?target_user=target&target_password=target-secret-1"
    );
    assert!(
        run_tool("iscsi-inq", &[&mutual], TOOL_DEADLINE)
            .status
            .success()
    );
    let mutual_bad = format!(
        "iscsi://bob%bob-secret-1234@127.0.0.1:{port}/{FENCED}/0\
         ?target_user=target&target_password=not-the-secret"
    );
    assert!(
        !run_tool("iscsi-inq", &[&mutual_bad], TOOL_DEADLINE)
            .status
            .success()
    );
    server.assert_no_panics();
}
