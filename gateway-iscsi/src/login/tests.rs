//! Login flows end to end (no auth, CHAP one-way and mutual, discovery, ACL, Continue), the
//! configuration checks, SendTargets and text exchanges, and property tests that arbitrary
//! request sequences never panic the state machine.

#![allow(clippy::unwrap_used)]

use std::{num::NonZeroU16, sync::Arc};

use md5::{Digest, Md5};
use proptest::{collection::vec, prelude::*};

use super::*;
use crate::pdu::{Digests, Itt, TextRequest, Ttt};

const OPEN: &str = "iqn.2024-01.io.cairn:open";
const ONE_WAY: &str = "iqn.2024-01.io.cairn:one-way";
const MUTUAL: &str = "iqn.2024-01.io.cairn:mutual";
const GUARDED: &str = "iqn.2024-01.io.cairn:guarded";
const INITIATOR: &str = "iqn.1994-05.com.redhat:host1";
const OTHER_INITIATOR: &str = "iqn.1994-05.com.redhat:host2";
const TSIH: u16 = 0x0042;
const RANDOM: [u8; 16] = [0x5a, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

fn credentials(user: &str, secret: &str) -> ChapCredentials {
    ChapCredentials {
        user: user.to_owned(),
        secret: ChapSecret::new(secret),
    }
}

fn target(name: &str, chap: Option<ChapAuth>, acl: &[&str]) -> TargetConfig {
    TargetConfig {
        name: name.to_owned(),
        alias: Some(format!("alias of {name}")),
        chap,
        allowed_initiators: acl.iter().map(|name| (*name).to_owned()).collect(),
    }
}

fn config_with(discovery_chap: Option<ChapAuth>) -> Arc<CheckedConfig> {
    LoginConfig {
        targets: vec![
            target(OPEN, None, &[]),
            target(
                ONE_WAY,
                Some(ChapAuth {
                    initiator: credentials("alice", "alice-secret-1"),
                    target: None,
                }),
                &[],
            ),
            target(
                MUTUAL,
                Some(ChapAuth {
                    initiator: credentials("alice", "alice-secret-1"),
                    target: Some(credentials("cairn", "target-secret-9")),
                }),
                &[],
            ),
            target(GUARDED, None, &[INITIATOR]),
        ],
        discovery_chap,
        ..LoginConfig::default()
    }
    .check()
    .unwrap()
}

fn config() -> Arc<CheckedConfig> {
    config_with(None)
}

fn login(config: &Arc<CheckedConfig>) -> Login {
    Login::new(Arc::clone(config), NonZeroU16::new(TSIH).unwrap())
}

fn request(csg: Stage, transit_to: Option<Stage>, pairs: &[(&str, &str)]) -> LoginRequest {
    let mut data = Vec::new();
    text::encode(pairs, &mut data);
    LoginRequest {
        transit: transit_to.is_some(),
        cont: false,
        csg,
        nsg: transit_to.unwrap_or(Stage::Security),
        version_max: 0,
        version_min: 0,
        isid: Isid([0x00, 0x02, 0x3d, 0, 0, 1]),
        tsih: 0,
        itt: Itt(1),
        cid: 0,
        cmd_sn: 100,
        exp_stat_sn: 0,
        data,
    }
}

fn answers(step: &LoginStep) -> Vec<(String, String)> {
    text::parse(&step.response.data).unwrap()
}

fn answer<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    text::get(pairs, key)
}

fn complete(step: LoginStep) -> LoginComplete {
    match step.outcome {
        LoginOutcome::Complete(done) => *done,
        other => panic!("expected completion, got {other:?}"),
    }
}

fn failed(step: &LoginStep) -> (LoginStatus, &LoginError) {
    match &step.outcome {
        LoginOutcome::Failed(error) => {
            assert_eq!(step.response.status, error.status());
            assert!(!step.response.transit);
            assert_eq!(step.response.tsih, 0);
            (step.response.status, error)
        }
        other => panic!("expected failure, got {other:?}"),
    }
}

fn in_progress(step: &LoginStep) {
    assert_eq!(step.outcome, LoginOutcome::InProgress, "{:?}", step.outcome);
    assert!(step.response.status.is_success());
}

/// MD5(id || secret || challenge), computed here without the chap module.
fn md5_response(identifier: u8, secret: &str, challenge: &[u8]) -> Vec<u8> {
    let mut hasher = Md5::new();
    hasher.update([identifier]);
    hasher.update(secret.as_bytes());
    hasher.update(challenge);
    hasher.finalize().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    let digits: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("0x{digits}")
}

fn operational_keys() -> Vec<(&'static str, &'static str)> {
    vec![
        ("HeaderDigest", "CRC32C,None"),
        ("DataDigest", "None"),
        ("MaxRecvDataSegmentLength", "65536"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("ImmediateData", "Yes"),
        ("InitialR2T", "No"),
        ("MaxOutstandingR2T", "1"),
        ("ErrorRecoveryLevel", "0"),
        ("MaxConnections", "1"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("X-com.example.knob", "1"),
    ]
}

#[test]
fn no_auth_normal_session_through_both_stages() {
    let config = config();
    let mut login = login(&config);
    let step = login.on_request(
        &request(
            Stage::Security,
            Some(Stage::Operational),
            &[
                ("InitiatorName", INITIATOR),
                ("InitiatorAlias", "host1"),
                ("SessionType", "Normal"),
                ("TargetName", OPEN),
                ("AuthMethod", "None"),
            ],
        ),
        &RANDOM,
    );
    in_progress(&step);
    let response = &step.response;
    assert!(response.transit);
    assert_eq!(
        (response.csg, response.nsg),
        (Stage::Security, Stage::Operational)
    );
    assert_eq!((response.version_max, response.version_active), (0, 0));
    assert_eq!(response.tsih, 0);
    assert_eq!(response.stat_sn, INITIAL_STAT_SN);
    assert_eq!((response.exp_cmd_sn, response.max_cmd_sn), (100, 100 + 127));
    let first = answers(&step);
    assert_eq!(answer(&first, "TargetPortalGroupTag"), Some("1"));
    assert_eq!(answer(&first, "AuthMethod"), Some("None"));
    assert_eq!(first.len(), 2, "{first:?}");

    let step = login.on_request(
        &request(
            Stage::Operational,
            Some(Stage::FullFeature),
            &operational_keys(),
        ),
        &RANDOM,
    );
    let second = answers(&step);
    assert!(step.response.transit);
    assert_eq!(step.response.nsg, Stage::FullFeature);
    assert_eq!(step.response.tsih, TSIH);
    assert_eq!(step.response.stat_sn, INITIAL_STAT_SN + 1);
    assert_eq!(answer(&second, "HeaderDigest"), Some("CRC32C"));
    assert_eq!(answer(&second, "DataDigest"), Some("None"));
    assert_eq!(answer(&second, "MaxBurstLength"), Some("262144"));
    assert_eq!(answer(&second, "InitialR2T"), Some("No"));
    assert_eq!(answer(&second, "MaxOutstandingR2T"), Some("1"));
    assert_eq!(answer(&second, "X-com.example.knob"), Some("NotUnderstood"));
    assert_eq!(answer(&second, "MaxRecvDataSegmentLength"), Some("262144"));
    assert_eq!(
        answer(&second, "TargetAlias"),
        Some("alias of iqn.2024-01.io.cairn:open")
    );
    let done = complete(step);
    assert_eq!(done.session_type, SessionType::Normal);
    assert_eq!(done.initiator_name, INITIATOR);
    assert_eq!(done.initiator_alias.as_deref(), Some("host1"));
    assert_eq!(done.target_name.as_deref(), Some(OPEN));
    assert_eq!(done.chap_user, None);
    assert_eq!(done.tsih, TSIH);
    assert_eq!(done.exp_cmd_sn, 100);
    assert_eq!(done.next_stat_sn, INITIAL_STAT_SN + 2);
    assert_eq!(
        done.params.digests,
        Digests {
            header: true,
            data: false
        }
    );
    assert_eq!(done.params.initiator_max_recv_data_segment_len, 65536);
    assert_eq!(done.params.target_max_recv_data_segment_len, 262_144);
    assert!(!done.params.initial_r2t);
    assert!(done.params.immediate_data);

    // The login is over: anything more is refused.
    let step = login.on_request(&request(Stage::Operational, None, &[]), &RANDOM);
    assert_eq!(failed(&step).1, &LoginError::Finished);
}

#[test]
fn login_may_start_in_operational_when_no_auth_is_required() {
    let config = config();
    let mut login = login(&config);
    let mut keys = vec![("InitiatorName", INITIATOR), ("TargetName", OPEN)];
    keys.extend(operational_keys());
    let step = login.on_request(
        &request(Stage::Operational, Some(Stage::FullFeature), &keys),
        &RANDOM,
    );
    let pairs = answers(&step);
    assert_eq!(answer(&pairs, "TargetPortalGroupTag"), Some("1"));
    assert_eq!(answer(&pairs, "MaxRecvDataSegmentLength"), Some("262144"));
    let done = complete(step);
    assert!(done.params.digests.header);
}

#[test]
fn security_straight_to_full_feature_keeps_defaults_and_declares() {
    let config = config();
    let mut login = login(&config);
    let step = login.on_request(
        &request(
            Stage::Security,
            Some(Stage::FullFeature),
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", OPEN),
                ("AuthMethod", "None"),
            ],
        ),
        &RANDOM,
    );
    assert_eq!(
        answer(&answers(&step), "MaxRecvDataSegmentLength"),
        Some("262144")
    );
    let done = complete(step);
    let expected = SessionParams {
        target_max_recv_data_segment_len: 262_144,
        ..SessionParams::default()
    };
    assert_eq!(done.params, expected);
}

#[test]
fn operational_stage_may_take_several_requests() {
    let config = config();
    let mut login = login(&config);
    let step = login.on_request(
        &request(
            Stage::Operational,
            None,
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", OPEN),
                ("MaxBurstLength", "8192"),
            ],
        ),
        &RANDOM,
    );
    in_progress(&step);
    assert!(!step.response.transit);
    // Declared once, in the first operational response.
    assert_eq!(
        answer(&answers(&step), "MaxRecvDataSegmentLength"),
        Some("262144")
    );
    let step = login.on_request(
        &request(
            Stage::Operational,
            Some(Stage::FullFeature),
            &[("FirstBurstLength", "65536")],
        ),
        &RANDOM,
    );
    assert_eq!(answer(&answers(&step), "FirstBurstLength"), Some("8192"));
    assert_eq!(answer(&answers(&step), "MaxRecvDataSegmentLength"), None);
    let done = complete(step);
    assert_eq!(
        (done.params.max_burst_len, done.params.first_burst_len),
        (8192, 8192)
    );
}

/// Runs the CHAP exchange up to the challenge; returns the login and the challenge values.
fn chap_until_challenge(config: &Arc<CheckedConfig>, target_name: &str) -> (Login, u8, Vec<u8>) {
    let mut login = login(config);
    let mut first = vec![("InitiatorName", INITIATOR), ("AuthMethod", "CHAP,None")];
    if target_name == "discovery" {
        first.push(("SessionType", "Discovery"));
    } else {
        first.push(("TargetName", target_name));
    }
    let step = login.on_request(
        &request(Stage::Security, Some(Stage::Operational), &first),
        &RANDOM,
    );
    in_progress(&step);
    // Mid-authentication the target does not transit yet.
    assert!(!step.response.transit);
    assert_eq!(answer(&answers(&step), "AuthMethod"), Some("CHAP"));

    let step = login.on_request(
        &request(
            Stage::Security,
            Some(Stage::Operational),
            &[("CHAP_A", "7,5")],
        ),
        &RANDOM,
    );
    in_progress(&step);
    assert!(!step.response.transit);
    let pairs = answers(&step);
    assert_eq!(answer(&pairs, "CHAP_A"), Some("5"));
    let identifier: u8 = answer(&pairs, "CHAP_I").unwrap().parse().unwrap();
    let challenge = text::parse_binary(answer(&pairs, "CHAP_C").unwrap()).unwrap();
    assert!(answer(&pairs, "CHAP_C").unwrap().starts_with("0x"));
    assert_eq!(challenge.len(), 16);
    assert_eq!(challenge, RANDOM);
    (login, identifier, challenge)
}

fn finish_operational(login: &mut Login) -> LoginComplete {
    let step = login.on_request(
        &request(
            Stage::Operational,
            Some(Stage::FullFeature),
            &operational_keys(),
        ),
        &RANDOM,
    );
    complete(step)
}

#[test]
fn one_way_chap_success() {
    let config = config();
    let (mut login, identifier, challenge) = chap_until_challenge(&config, ONE_WAY);
    let response = md5_response(identifier, "alice-secret-1", &challenge);
    let step = login.on_request(
        &request(
            Stage::Security,
            Some(Stage::Operational),
            &[("CHAP_N", "alice"), ("CHAP_R", &hex(&response))],
        ),
        &RANDOM,
    );
    in_progress(&step);
    assert!(step.response.transit);
    assert_eq!(step.response.nsg, Stage::Operational);
    // No mutual CHAP asked: the target sends no CHAP_N/CHAP_R of its own.
    assert_eq!(answer(&answers(&step), "CHAP_R"), None);
    let done = finish_operational(&mut login);
    assert_eq!(done.chap_user.as_deref(), Some("alice"));
    assert_eq!(done.target_name.as_deref(), Some(ONE_WAY));
}

#[test]
fn one_way_chap_accepts_base64_responses() {
    const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let config = config();
    let (mut login, identifier, challenge) = chap_until_challenge(&config, ONE_WAY);
    let response = md5_response(identifier, "alice-secret-1", &challenge);
    // 16 bytes = five full groups of three and one byte: "==" padding.
    let mut encoded = String::from("0b");
    for group in response.chunks(3) {
        let mut word = [0u8; 3];
        word[..group.len()].copy_from_slice(group);
        let bits = u32::from_be_bytes([0, word[0], word[1], word[2]]);
        for index in 0..4 {
            if index <= group.len() {
                encoded.push(char::from(BASE64[(bits >> (18 - 6 * index) & 63) as usize]));
            } else {
                encoded.push('=');
            }
        }
    }
    let step = login.on_request(
        &request(
            Stage::Security,
            Some(Stage::Operational),
            &[("CHAP_N", "alice"), ("CHAP_R", &encoded)],
        ),
        &RANDOM,
    );
    in_progress(&step);
    assert!(step.response.transit);
}

#[test]
fn one_way_chap_wrong_secret_never_logs_in() {
    let config = config();
    let (mut login, identifier, challenge) = chap_until_challenge(&config, ONE_WAY);
    let response = md5_response(identifier, "wrong-secret-1", &challenge);
    let step = login.on_request(
        &request(
            Stage::Security,
            Some(Stage::Operational),
            &[("CHAP_N", "alice"), ("CHAP_R", &hex(&response))],
        ),
        &RANDOM,
    );
    let (status, _) = failed(&step);
    assert_eq!(status, LoginStatus::AUTHENTICATION_FAILURE);
    assert_eq!(status.as_u16(), 0x0201);
    // Nothing after the failure gets anywhere.
    let step = login.on_request(
        &request(
            Stage::Operational,
            Some(Stage::FullFeature),
            &operational_keys(),
        ),
        &RANDOM,
    );
    assert_eq!(failed(&step).1, &LoginError::Finished);
}

#[test]
fn one_way_chap_wrong_user_fails() {
    let config = config();
    let (mut login, identifier, challenge) = chap_until_challenge(&config, ONE_WAY);
    let response = md5_response(identifier, "alice-secret-1", &challenge);
    let step = login.on_request(
        &request(
            Stage::Security,
            Some(Stage::Operational),
            &[("CHAP_N", "mallory"), ("CHAP_R", &hex(&response))],
        ),
        &RANDOM,
    );
    assert_eq!(failed(&step).0, LoginStatus::AUTHENTICATION_FAILURE);
}

#[test]
fn chap_required_cannot_be_avoided() {
    let config = config();
    // Offering only None.
    let mut attempt = login(&config);
    let step = attempt.on_request(
        &request(
            Stage::Security,
            Some(Stage::Operational),
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", ONE_WAY),
                ("AuthMethod", "None"),
            ],
        ),
        &RANDOM,
    );
    assert_eq!(failed(&step).0, LoginStatus::AUTHENTICATION_FAILURE);
    // Skipping the security stage.
    let mut attempt = login(&config);
    let step = attempt.on_request(
        &request(
            Stage::Operational,
            Some(Stage::FullFeature),
            &[("InitiatorName", INITIATOR), ("TargetName", ONE_WAY)],
        ),
        &RANDOM,
    );
    assert_eq!(failed(&step).0, LoginStatus::AUTHENTICATION_FAILURE);
    // Transiting without negotiating AuthMethod.
    let mut attempt = login(&config);
    let step = attempt.on_request(
        &request(
            Stage::Security,
            Some(Stage::FullFeature),
            &[("InitiatorName", INITIATOR), ("TargetName", ONE_WAY)],
        ),
        &RANDOM,
    );
    assert_eq!(failed(&step).0, LoginStatus::AUTHENTICATION_FAILURE);
    // Sending the response before the challenge.
    let mut attempt = login(&config);
    let step = attempt.on_request(
        &request(
            Stage::Security,
            None,
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", ONE_WAY),
                ("AuthMethod", "CHAP"),
            ],
        ),
        &RANDOM,
    );
    in_progress(&step);
    let step = attempt.on_request(
        &request(
            Stage::Security,
            None,
            &[("CHAP_N", "alice"), ("CHAP_R", "0x00")],
        ),
        &RANDOM,
    );
    assert_eq!(failed(&step).0, LoginStatus::INITIATOR_ERROR);
    // Offering only algorithms other than MD5.
    let mut attempt = login(&config);
    let step = attempt.on_request(
        &request(
            Stage::Security,
            None,
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", ONE_WAY),
                ("AuthMethod", "CHAP"),
                ("CHAP_A", "6,7"),
            ],
        ),
        &RANDOM,
    );
    assert_eq!(failed(&step).0, LoginStatus::AUTHENTICATION_FAILURE);
}

#[test]
fn mutual_chap_success_with_independently_checked_target_answer() {
    let config = config();
    let (mut login, identifier, challenge) = chap_until_challenge(&config, MUTUAL);
    let response = md5_response(identifier, "alice-secret-1", &challenge);
    let our_challenge = [0xc0u8; 16];
    let step = login.on_request(
        &request(
            Stage::Security,
            Some(Stage::Operational),
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &hex(&response)),
                ("CHAP_I", "77"),
                ("CHAP_C", &hex(&our_challenge)),
            ],
        ),
        &RANDOM,
    );
    in_progress(&step);
    assert!(step.response.transit);
    let pairs = answers(&step);
    assert_eq!(answer(&pairs, "CHAP_N"), Some("cairn"));
    let target_answer = text::parse_binary(answer(&pairs, "CHAP_R").unwrap()).unwrap();
    // The initiator's own check, with the secret it was given for the target.
    assert_eq!(
        target_answer,
        md5_response(77, "target-secret-9", &our_challenge)
    );
    // An initiator configured with another secret for the target rejects the answer.
    assert_ne!(
        target_answer,
        md5_response(77, "alice-secret-1", &our_challenge)
    );
    let done = finish_operational(&mut login);
    assert_eq!(done.chap_user.as_deref(), Some("alice"));
}

#[test]
fn mutual_chap_refusals() {
    let config = config();
    // Reflection: the initiator hands our own challenge back.
    let (mut attempt, identifier, challenge) = chap_until_challenge(&config, MUTUAL);
    let response = md5_response(identifier, "alice-secret-1", &challenge);
    let step = attempt.on_request(
        &request(
            Stage::Security,
            Some(Stage::Operational),
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &hex(&response)),
                ("CHAP_I", "1"),
                ("CHAP_C", &hex(&challenge)),
            ],
        ),
        &RANDOM,
    );
    let (status, error) = failed(&step);
    assert_eq!(status, LoginStatus::AUTHENTICATION_FAILURE);
    assert_eq!(
        error,
        &LoginError::Authentication("initiator reflected our challenge")
    );
    // Mutual CHAP asked of a target without target credentials.
    let (mut attempt, identifier, challenge) = chap_until_challenge(&config, ONE_WAY);
    let response = md5_response(identifier, "alice-secret-1", &challenge);
    let step = attempt.on_request(
        &request(
            Stage::Security,
            Some(Stage::Operational),
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &hex(&response)),
                ("CHAP_I", "1"),
                ("CHAP_C", "0x0102030405060708"),
            ],
        ),
        &RANDOM,
    );
    assert_eq!(failed(&step).0, LoginStatus::AUTHENTICATION_FAILURE);
    // CHAP_C without CHAP_I.
    let (mut attempt, identifier, challenge) = chap_until_challenge(&config, MUTUAL);
    let response = md5_response(identifier, "alice-secret-1", &challenge);
    let step = attempt.on_request(
        &request(
            Stage::Security,
            None,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &hex(&response)),
                ("CHAP_C", "0x01020304"),
            ],
        ),
        &RANDOM,
    );
    assert_eq!(failed(&step).0, LoginStatus::AUTHENTICATION_FAILURE);
    // A wrong one-way response fails before any mutual answer is computed.
    let (mut attempt, _, _) = chap_until_challenge(&config, MUTUAL);
    let step = attempt.on_request(
        &request(
            Stage::Security,
            None,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &hex(&[0; 16])),
                ("CHAP_I", "1"),
                ("CHAP_C", "0x01020304"),
            ],
        ),
        &RANDOM,
    );
    assert_eq!(failed(&step).0, LoginStatus::AUTHENTICATION_FAILURE);
    assert!(step.response.data.is_empty());
}

#[test]
fn discovery_without_chap() {
    let config = config();
    let mut login = login(&config);
    let step = login.on_request(
        &request(
            Stage::Security,
            Some(Stage::Operational),
            &[
                ("InitiatorName", INITIATOR),
                ("SessionType", "Discovery"),
                ("AuthMethod", "None"),
            ],
        ),
        &RANDOM,
    );
    in_progress(&step);
    // No portal group tag for discovery sessions.
    assert_eq!(answer(&answers(&step), "TargetPortalGroupTag"), None);
    let step = login.on_request(
        &request(
            Stage::Operational,
            Some(Stage::FullFeature),
            &[
                ("MaxBurstLength", "4096"),
                ("HeaderDigest", "None"),
                ("MaxRecvDataSegmentLength", "32768"),
            ],
        ),
        &RANDOM,
    );
    let pairs = answers(&step);
    assert_eq!(answer(&pairs, "MaxBurstLength"), Some("Irrelevant"));
    assert_eq!(answer(&pairs, "HeaderDigest"), Some("None"));
    assert_eq!(answer(&pairs, "TargetAlias"), None);
    let done = complete(step);
    assert_eq!(done.session_type, SessionType::Discovery);
    assert_eq!(done.target_name, None);
    assert_eq!(done.params.initiator_max_recv_data_segment_len, 32768);
}

#[test]
fn discovery_with_chap() {
    let auth = ChapAuth {
        initiator: credentials("finder", "discovery-secret"),
        target: None,
    };
    let config = config_with(Some(auth));
    let (mut login, identifier, challenge) = chap_until_challenge(&config, "discovery");
    let response = md5_response(identifier, "discovery-secret", &challenge);
    let step = login.on_request(
        &request(
            Stage::Security,
            Some(Stage::FullFeature),
            &[("CHAP_N", "finder"), ("CHAP_R", &hex(&response))],
        ),
        &RANDOM,
    );
    let done = complete(step);
    assert_eq!(done.session_type, SessionType::Discovery);
    assert_eq!(done.chap_user.as_deref(), Some("finder"));

    // The wrong secret fails; so does trying to skip CHAP.
    let (mut login, identifier, challenge) = chap_until_challenge(&config, "discovery");
    let response = md5_response(identifier, "alice-secret-1", &challenge);
    let step = login.on_request(
        &request(
            Stage::Security,
            Some(Stage::FullFeature),
            &[("CHAP_N", "finder"), ("CHAP_R", &hex(&response))],
        ),
        &RANDOM,
    );
    assert_eq!(failed(&step).0, LoginStatus::AUTHENTICATION_FAILURE);
    let mut attempt = self::login(&config);
    let step = attempt.on_request(
        &request(
            Stage::Operational,
            Some(Stage::FullFeature),
            &[("InitiatorName", INITIATOR), ("SessionType", "Discovery")],
        ),
        &RANDOM,
    );
    assert_eq!(failed(&step).0, LoginStatus::AUTHENTICATION_FAILURE);
}

fn first_step(pairs: &[(&str, &str)]) -> LoginStep {
    let config = config();
    let mut login = login(&config);
    login.on_request(
        &request(Stage::Security, Some(Stage::Operational), pairs),
        &RANDOM,
    )
}

#[test]
fn who_and_what_errors() {
    let step = first_step(&[
        ("InitiatorName", OTHER_INITIATOR),
        ("TargetName", GUARDED),
        ("AuthMethod", "None"),
    ]);
    assert_eq!(failed(&step).0.as_u16(), 0x0202);
    let step = first_step(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", GUARDED),
        ("AuthMethod", "None"),
    ]);
    in_progress(&step);
    // iSCSI names compare without regard to ASCII case.
    let step = first_step(&[
        ("InitiatorName", "IQN.1994-05.com.redhat:HOST1"),
        ("TargetName", "IQN.2024-01.io.cairn:Guarded"),
        ("AuthMethod", "None"),
    ]);
    in_progress(&step);
    let step = first_step(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", "iqn.2024-01.io.cairn:nope"),
    ]);
    assert_eq!(failed(&step).0.as_u16(), 0x0203);
    let step = first_step(&[("TargetName", OPEN)]);
    assert_eq!(failed(&step).0.as_u16(), 0x0207);
    let step = first_step(&[("InitiatorName", INITIATOR)]);
    assert_eq!(failed(&step).0.as_u16(), 0x0207);
    let step = first_step(&[("InitiatorName", INITIATOR), ("SessionType", "Bogus")]);
    assert_eq!(failed(&step).0.as_u16(), 0x0209);
}

#[test]
fn header_field_errors() {
    let config = config();
    let base = request(
        Stage::Security,
        Some(Stage::Operational),
        &[("InitiatorName", INITIATOR), ("TargetName", OPEN)],
    );
    let status = |request: LoginRequest| {
        let mut login = login(&config);
        let step = login.on_request(&request, &RANDOM);
        failed(&step).0.as_u16()
    };
    assert_eq!(
        status(LoginRequest {
            version_min: 1,
            version_max: 2,
            ..base.clone()
        }),
        0x0205
    );
    assert_eq!(
        status(LoginRequest {
            tsih: 7,
            ..base.clone()
        }),
        0x020a
    );
    assert_eq!(
        status(LoginRequest {
            cont: true,
            ..base.clone()
        }),
        0x0200
    );
    assert_eq!(
        status(LoginRequest {
            csg: Stage::FullFeature,
            ..base.clone()
        }),
        0x0200
    );
    assert_eq!(
        status(LoginRequest {
            nsg: Stage::Security,
            ..base.clone()
        }),
        0x0200
    );
    assert_eq!(
        status(LoginRequest {
            data: b"no-equals\0".to_vec(),
            ..base.clone()
        }),
        0x0200
    );
    // A later request in a stage other than the agreed one.
    let mut login = login(&config);
    in_progress(&login.on_request(
        &LoginRequest {
            transit: false,
            ..base.clone()
        },
        &RANDOM,
    ));
    let step = login.on_request(
        &request(Stage::Operational, Some(Stage::FullFeature), &[]),
        &RANDOM,
    );
    assert_eq!(failed(&step).0.as_u16(), 0x0200);
}

#[test]
fn renegotiating_a_key_fails() {
    let config = config();
    let mut login = login(&config);
    in_progress(&login.on_request(
        &request(
            Stage::Operational,
            None,
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", OPEN),
                ("MaxBurstLength", "8192"),
            ],
        ),
        &RANDOM,
    ));
    let step = login.on_request(
        &request(Stage::Operational, None, &[("MaxBurstLength", "4096")]),
        &RANDOM,
    );
    assert_eq!(
        failed(&step).1,
        &LoginError::Protocol("operational key negotiated twice")
    );
    // Changing the identity mid-login is refused too.
    let mut login = self::login(&config);
    in_progress(&login.on_request(
        &request(
            Stage::Operational,
            None,
            &[("InitiatorName", INITIATOR), ("TargetName", OPEN)],
        ),
        &RANDOM,
    ));
    let step = login.on_request(
        &request(Stage::Operational, None, &[("TargetName", ONE_WAY)]),
        &RANDOM,
    );
    assert_eq!(failed(&step).0, LoginStatus::INITIATOR_ERROR);
}

#[test]
fn text_split_across_two_pdus_with_continue() {
    let config = config();
    let mut login = login(&config);
    let mut keys = vec![("InitiatorName", INITIATOR), ("TargetName", OPEN)];
    keys.extend(operational_keys());
    let whole = request(Stage::Operational, Some(Stage::FullFeature), &keys);
    // Cut in the middle of a pair.
    let cut = whole.data.iter().position(|&b| b == b'=').unwrap() + 5;
    let first = LoginRequest {
        transit: false,
        cont: true,
        data: whole.data[..cut].to_vec(),
        ..whole.clone()
    };
    let step = login.on_request(&first, &RANDOM);
    in_progress(&step);
    assert!(step.response.data.is_empty());
    assert!(!step.response.transit && !step.response.cont);
    assert_eq!(step.response.csg, Stage::Operational);
    let second = LoginRequest {
        data: whole.data[cut..].to_vec(),
        ..whole
    };
    let step = login.on_request(&second, &RANDOM);
    assert_eq!(answer(&answers(&step), "HeaderDigest"), Some("CRC32C"));
    assert_eq!(step.response.stat_sn, INITIAL_STAT_SN + 1);
    let done = complete(step);
    assert_eq!(done.initiator_name, INITIATOR);
}

#[test]
fn continued_text_is_capped() {
    let config = config();
    let mut login = login(&config);
    let piece = LoginRequest {
        transit: false,
        cont: true,
        data: vec![b'a'; 8192],
        ..request(Stage::Operational, None, &[])
    };
    for _ in 0..text::TEXT_LEN_MAX / 8192 {
        in_progress(&login.on_request(&piece, &RANDOM));
    }
    let step = login.on_request(&piece, &RANDOM);
    assert_eq!(failed(&step).0, LoginStatus::OUT_OF_RESOURCES);
}

#[test]
fn config_checks() {
    let mutual_reused = ChapAuth {
        initiator: credentials("alice", "same-secret-12"),
        target: Some(credentials("cairn", "same-secret-12")),
    };
    let config = LoginConfig {
        targets: vec![target(OPEN, Some(mutual_reused), &[])],
        ..LoginConfig::default()
    };
    assert!(matches!(
        config.check(),
        Err(ConfigError::MutualSecretReused { .. })
    ));
    let short = ChapAuth {
        initiator: credentials("alice", "short"),
        target: None,
    };
    let config = LoginConfig {
        discovery_chap: Some(short),
        ..LoginConfig::default()
    };
    assert!(matches!(
        config.check(),
        Err(ConfigError::ChapSecretLength { len: 5, .. })
    ));
    let config = LoginConfig {
        targets: vec![
            target(OPEN, None, &[]),
            target(&OPEN.to_uppercase(), None, &[]),
        ],
        ..LoginConfig::default()
    };
    assert!(matches!(
        config.check(),
        Err(ConfigError::DuplicateTarget { .. })
    ));
    let config = LoginConfig {
        targets: vec![target("", None, &[])],
        ..LoginConfig::default()
    };
    assert!(matches!(config.check(), Err(ConfigError::BadName { .. })));
    let mut limits = OperationalLimits::default();
    limits.first_burst_len = limits.max_burst_len + 1;
    let config = LoginConfig {
        limits,
        ..LoginConfig::default()
    };
    assert!(matches!(
        config.check(),
        Err(ConfigError::LimitOutOfRange {
            key: "FirstBurstLength",
            ..
        })
    ));
    let config = LoginConfig {
        cmd_window: 0,
        ..LoginConfig::default()
    };
    assert!(config.check().is_err());
    // Errors and configurations never show secrets.
    let shown = format!("{:?}", config_with(None));
    assert!(!shown.contains("alice-secret-1"), "{shown}");
}

const PORTAL: &str = "127.0.0.1:3260,1";

#[test]
fn send_targets_lists_only_accessible_targets() {
    let config = config();
    let listed: Vec<_> = send_targets(&config, OTHER_INITIATOR, "All", PORTAL);
    let names: Vec<_> = listed
        .iter()
        .filter(|(k, _)| k == "TargetName")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(names, [OPEN, ONE_WAY, MUTUAL]);
    assert_eq!(listed[1], ("TargetAddress".to_owned(), PORTAL.to_owned()));
    let listed = send_targets(&config, INITIATOR, "All", PORTAL);
    assert_eq!(listed.len(), 8);
    assert_eq!(send_targets(&config, INITIATOR, GUARDED, PORTAL).len(), 2);
    assert!(send_targets(&config, OTHER_INITIATOR, GUARDED, PORTAL).is_empty());
    assert!(send_targets(&config, INITIATOR, "iqn.nope", PORTAL).is_empty());
}

fn text_request(ttt: Ttt, cont: bool, pairs: &[(&str, &str)]) -> TextRequest {
    let mut data = Vec::new();
    text::encode(pairs, &mut data);
    TextRequest {
        fin: !cont,
        cont,
        itt: Itt(9),
        ttt,
        data,
        ..TextRequest::default()
    }
}

fn context<'a>(config: &'a CheckedConfig, session_type: SessionType, max: u32) -> TextContext<'a> {
    TextContext {
        config,
        session_type,
        initiator_name: INITIATOR,
        target_name: (session_type == SessionType::Normal).then_some(OPEN),
        portal: PORTAL,
        max_send_data_segment_len: max,
    }
}

#[test]
fn text_exchange_answers_send_targets_in_one_pdu() {
    let config = config();
    let mut exchange = TextExchange::new();
    let seq = StatusSeq {
        stat_sn: 5,
        exp_cmd_sn: 6,
        max_cmd_sn: 7,
    };
    let context = context(&config, SessionType::Discovery, 8192);
    let response = exchange
        .on_request(
            &text_request(Ttt::RESERVED, false, &[("SendTargets", "All")]),
            &context,
            seq,
        )
        .unwrap();
    assert!(response.fin && !response.cont);
    assert_eq!(response.ttt, Ttt::RESERVED);
    assert_eq!(
        (
            response.itt,
            response.stat_sn,
            response.exp_cmd_sn,
            response.max_cmd_sn
        ),
        (Itt(9), 5, 6, 7)
    );
    let pairs = text::parse(&response.data);
    // SendTargets repeats keys, which a request parser would refuse; check the raw text.
    assert!(pairs.is_err());
    let shown = String::from_utf8(response.data).unwrap();
    assert_eq!(shown.matches("TargetName=").count(), 4);
    assert!(shown.contains(&format!("TargetName={GUARDED}\0TargetAddress={PORTAL}\0")));
}

#[test]
fn text_exchange_splits_long_answers_and_accepts_continued_requests() {
    // Twenty targets: about 1.4 KiB of answer, three pieces of at most 512 bytes.
    let config = LoginConfig {
        targets: (0..20)
            .map(|index| {
                target(
                    &format!("iqn.2024-01.io.cairn:volume-{index:02}"),
                    None,
                    &[],
                )
            })
            .collect(),
        ..LoginConfig::default()
    }
    .check()
    .unwrap();
    let seq = StatusSeq::default();
    let context = context(&config, SessionType::Discovery, 512);
    // The request itself arrives in two pieces, cut inside the key.
    let mut exchange = TextExchange::new();
    let mut whole = Vec::new();
    text::encode(&[("SendTargets", "All")], &mut whole);
    let piece = TextRequest {
        cont: true,
        fin: false,
        itt: Itt(9),
        ttt: Ttt::RESERVED,
        data: whole[..7].to_vec(),
        ..TextRequest::default()
    };
    let ack = exchange.on_request(&piece, &context, seq).unwrap();
    assert!(!ack.fin && !ack.cont && ack.data.is_empty());
    assert_ne!(ack.ttt, Ttt::RESERVED);
    let rest = TextRequest {
        fin: true,
        itt: Itt(9),
        ttt: ack.ttt,
        data: whole[7..].to_vec(),
        ..TextRequest::default()
    };
    let mut response = exchange.on_request(&rest, &context, seq).unwrap();
    let mut received = Vec::new();
    let mut pieces = 1;
    while response.cont {
        assert!(!response.fin);
        assert!(response.data.len() <= 512);
        assert_ne!(response.ttt, Ttt::RESERVED);
        received.extend_from_slice(&response.data);
        let next = TextRequest {
            fin: true,
            itt: Itt(9),
            ttt: response.ttt,
            ..TextRequest::default()
        };
        response = exchange.on_request(&next, &context, seq).unwrap();
        pieces += 1;
    }
    assert!(response.fin);
    assert_eq!(response.ttt, Ttt::RESERVED);
    received.extend_from_slice(&response.data);
    assert_eq!(pieces, 3);
    let shown = String::from_utf8(received).unwrap();
    assert_eq!(shown.matches("TargetName=").count(), 20);
    assert!(shown.ends_with(&format!("volume-19\0TargetAddress={PORTAL}\0")));
    // The finished exchange's tag no longer continues anything.
    let stale = TextRequest {
        itt: Itt(9),
        ttt: ack.ttt,
        ..TextRequest::default()
    };
    assert!(matches!(
        exchange.on_request(&stale, &context, seq),
        Err(TextExchangeError::UnknownTransfer { .. })
    ));
}

#[test]
fn text_exchange_in_a_normal_session() {
    let config = config();
    let mut exchange = TextExchange::new();
    let context = context(&config, SessionType::Normal, 8192);
    let seq = StatusSeq::default();
    let response = exchange
        .on_request(
            &text_request(Ttt::RESERVED, false, &[("SendTargets", "")]),
            &context,
            seq,
        )
        .unwrap();
    assert_eq!(
        String::from_utf8(response.data).unwrap(),
        format!("TargetName={OPEN}\0TargetAddress={PORTAL}\0")
    );
    let response = exchange
        .on_request(
            &text_request(
                Ttt::RESERVED,
                false,
                &[
                    ("SendTargets", "All"),
                    ("MaxBurstLength", "4096"),
                    ("X-y", "1"),
                ],
            ),
            &context,
            seq,
        )
        .unwrap();
    let pairs = text::parse(&response.data).unwrap();
    assert_eq!(text::get(&pairs, "SendTargets"), Some("Reject"));
    assert_eq!(text::get(&pairs, "MaxBurstLength"), Some("Reject"));
    assert_eq!(text::get(&pairs, "X-y"), Some("NotUnderstood"));
    let bad = exchange.on_request(
        &TextRequest {
            data: b"junk\0".to_vec(),
            ..TextRequest::default()
        },
        &context,
        seq,
    );
    assert_eq!(
        bad.unwrap_err().reject_reason(),
        crate::pdu::reject_reason::PROTOCOL_ERROR
    );
}

/// Plausible and hostile keys for the login property test.
fn any_pair() -> impl Strategy<Value = (String, String)> {
    let keys = prop::sample::select(vec![
        "InitiatorName",
        "TargetName",
        "SessionType",
        "AuthMethod",
        "CHAP_A",
        "CHAP_N",
        "CHAP_R",
        "CHAP_I",
        "CHAP_C",
        "HeaderDigest",
        "DataDigest",
        "MaxBurstLength",
        "FirstBurstLength",
        "MaxRecvDataSegmentLength",
        "ImmediateData",
        "InitialR2T",
        "TargetAlias",
        "X-a",
        "ErrorRecoveryLevel",
        "MaxConnections",
        "DefaultTime2Wait",
        "SendTargets",
    ]);
    let values = prop::sample::select(vec![
        INITIATOR,
        OTHER_INITIATOR,
        OPEN,
        ONE_WAY,
        MUTUAL,
        GUARDED,
        "Discovery",
        "Normal",
        "CHAP,None",
        "None",
        "CHAP",
        "5",
        "alice",
        "0x00",
        "0b",
        "0x",
        "CRC32C",
        "Yes",
        "No",
        "512",
        "0",
        "99999999999",
        "Reject",
        "",
        "1",
        "0x5a0102030405060708090a0b0c0d0e0f",
    ]);
    (keys, values).prop_map(|(k, v)| (k.to_owned(), v.to_owned()))
}

fn any_request() -> impl Strategy<Value = LoginRequest> {
    (
        0u8..4,
        0u8..4,
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(0u8), any::<u8>()],
        prop_oneof![4 => Just(0u16), 1 => any::<u16>()],
        prop_oneof![
            vec(any_pair(), 0..6).prop_map(|pairs| {
                let mut data = Vec::new();
                // Duplicate keys are fine here: they must simply be refused, not panic.
                for (k, v) in pairs {
                    data.extend_from_slice(format!("{k}={v}\0").as_bytes());
                }
                data
            }),
            vec(any::<u8>(), 0..64),
        ],
    )
        .prop_map(|(csg, nsg, transit, cont, version_min, tsih, data)| {
            let stage = |bits| match bits {
                0 => Stage::Security,
                1 => Stage::Operational,
                2 => Stage::Reserved,
                _ => Stage::FullFeature,
            };
            LoginRequest {
                transit,
                cont,
                csg: stage(csg),
                nsg: stage(nsg),
                version_max: 0,
                version_min,
                isid: Isid([0; 6]),
                tsih,
                itt: Itt(1),
                cid: 0,
                cmd_sn: 1,
                exp_stat_sn: 0,
                data,
            }
        })
}

fn stage_from(bits: u8) -> Stage {
    match bits % 4 {
        0 => Stage::Security,
        1 => Stage::Operational,
        2 => Stage::Reserved,
        _ => Stage::FullFeature,
    }
}

/// A valid login of one of several kinds; `CHAP_R=COMPUTE` is replaced by the right answer
/// to the latest challenge while the script runs.
fn scenario(kind: usize) -> Vec<LoginRequest> {
    let sec = Stage::Security;
    let op = Stage::Operational;
    let ffp = Some(Stage::FullFeature);
    let operational = operational_keys();
    match kind % 6 {
        0 => vec![
            request(
                sec,
                Some(op),
                &[
                    ("InitiatorName", INITIATOR),
                    ("TargetName", OPEN),
                    ("AuthMethod", "None"),
                ],
            ),
            request(op, ffp, &operational),
        ],
        1 | 2 => {
            let target = if kind % 6 == 1 { ONE_WAY } else { MUTUAL };
            vec![
                request(
                    sec,
                    None,
                    &[
                        ("InitiatorName", INITIATOR),
                        ("TargetName", target),
                        ("AuthMethod", "CHAP,None"),
                    ],
                ),
                request(sec, None, &[("CHAP_A", "5")]),
                // Mutual CHAP only where the target has credentials of its own.
                if target == MUTUAL {
                    request(
                        sec,
                        Some(op),
                        &[
                            ("CHAP_N", "alice"),
                            ("CHAP_R", "COMPUTE"),
                            ("CHAP_I", "3"),
                            ("CHAP_C", "0x0a0b0c0d"),
                        ],
                    )
                } else {
                    request(sec, Some(op), &[("CHAP_N", "alice"), ("CHAP_R", "COMPUTE")])
                },
                request(op, ffp, &operational),
            ]
        }
        3 => vec![request(
            sec,
            ffp,
            &[
                ("InitiatorName", INITIATOR),
                ("SessionType", "Discovery"),
                ("AuthMethod", "CHAP,None"),
            ],
        )],
        4 => vec![
            request(
                sec,
                None,
                &[
                    ("InitiatorName", INITIATOR),
                    ("SessionType", "Discovery"),
                    ("AuthMethod", "CHAP,None"),
                ],
            ),
            request(sec, None, &[("CHAP_A", "5")]),
            request(sec, ffp, &[("CHAP_N", "finder"), ("CHAP_R", "COMPUTE")]),
        ],
        _ => vec![request(
            op,
            ffp,
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", GUARDED),
                ("MaxBurstLength", "4096"),
            ],
        )],
    }
}

/// Valid scripts with a few random mutations: they reach deep states and then go wrong.
fn scripted_requests() -> impl Strategy<Value = Vec<LoginRequest>> {
    let mutation = (
        any::<prop::sample::Index>(),
        0u8..9,
        any_pair(),
        any::<u8>(),
    );
    (0usize..6, vec(mutation, 0..4)).prop_map(|(kind, mutations)| {
        let mut script = scenario(kind);
        for (at, what, (key, value), bits) in mutations {
            let index = at.index(script.len());
            let request = &mut script[index];
            match what {
                0 => request.transit = !request.transit,
                1 => request.cont = !request.cont,
                2 => request.csg = stage_from(bits),
                3 => request.nsg = stage_from(bits),
                4 | 5 => request
                    .data
                    .extend_from_slice(format!("{key}={value}\0").as_bytes()),
                6 => {
                    let len = request.data.len();
                    request.data.truncate(usize::from(bits) % (len + 1));
                }
                7 => request.version_min = bits,
                _ => {
                    if script.len() > 1 {
                        script.remove(index);
                    }
                }
            }
        }
        script
    })
}

/// Replaces `CHAP_R=COMPUTE` with the right response to the challenge in `last`.
fn fill_in_chap(request: &LoginRequest, last: Option<(u8, Vec<u8>)>) -> LoginRequest {
    let placeholder = b"CHAP_R=COMPUTE";
    let Some(at) = request
        .data
        .windows(placeholder.len())
        .position(|w| w == placeholder)
    else {
        return request.clone();
    };
    let Some((identifier, challenge)) = last else {
        return request.clone();
    };
    let secret = if request.data.starts_with(b"CHAP_N=finder") {
        "discovery-secret"
    } else {
        "alice-secret-1"
    };
    let answer = format!(
        "CHAP_R={}",
        hex(&md5_response(identifier, secret, &challenge))
    );
    let mut data = request.data[..at].to_vec();
    data.extend_from_slice(answer.as_bytes());
    data.extend_from_slice(&request.data[at + placeholder.len()..]);
    LoginRequest {
        data,
        ..request.clone()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_login_sequences_never_panic(
        requests in prop_oneof![vec(any_request(), 1..12), scripted_requests()],
        randoms in vec(any::<[u8; 16]>(), 12),
        discovery_chap in any::<bool>(),
    ) {
        let auth = discovery_chap.then(|| ChapAuth { initiator: credentials("finder", "discovery-secret"), target: None });
        let config = config_with(auth);
        let mut login = login(&config);
        let mut ended = false;
        let mut challenge = None;
        for (request, random) in requests.iter().zip(&randoms) {
            let request = fill_in_chap(request, challenge.take());
            let step = login.on_request(&request, random);
            if let Ok(pairs) = text::parse(&step.response.data)
                && let (Some(identifier), Some(value)) = (text::get(&pairs, "CHAP_I"), text::get(&pairs, "CHAP_C"))
            {
                challenge = Some((identifier.parse().unwrap(), text::parse_binary(value).unwrap()));
            }
            prop_assert!(step.response.data.len() <= LOGIN_DATA_SEGMENT_LEN_MAX as usize);
            match &step.outcome {
                LoginOutcome::InProgress => {
                    prop_assert!(!ended);
                    prop_assert!(step.response.status.is_success());
                }
                LoginOutcome::Complete(done) => {
                    prop_assert!(!ended);
                    prop_assert!(step.response.transit);
                    prop_assert_eq!(step.response.nsg, Stage::FullFeature);
                    prop_assert_eq!(done.tsih, TSIH);
                    // Completion implies CHAP passed wherever it is required.
                    let target = done.target_name.as_deref().and_then(|name| config.target(name));
                    let required = match done.session_type {
                        SessionType::Discovery => config.get().discovery_chap.as_ref(),
                        SessionType::Normal => target.unwrap().chap.as_ref(),
                    };
                    if let Some(required) = required {
                        prop_assert_eq!(done.chap_user.as_deref(), Some(required.initiator.user.as_str()));
                    }
                    // And the ACL held.
                    if let Some(target) = target {
                        prop_assert!(target.allows(&done.initiator_name));
                    }
                    ended = true;
                }
                LoginOutcome::Failed(error) => {
                    prop_assert_eq!(step.response.status, error.status());
                    prop_assert!(!step.response.status.is_success());
                    if ended {
                        prop_assert_eq!(error, &LoginError::Finished);
                    }
                    ended = true;
                }
            }
        }
    }

    #[test]
    fn arbitrary_text_requests_never_panic(
        requests in vec((any::<bool>(), prop_oneof![Just(Ttt::RESERVED), (0u32..4).prop_map(Ttt)], vec(any::<u8>(), 0..300)), 1..10),
        max in 512u32..2048,
        normal in any::<bool>(),
    ) {
        let config = config();
        let session_type = if normal { SessionType::Normal } else { SessionType::Discovery };
        let context = context(&config, session_type, max);
        let mut exchange = TextExchange::new();
        for (cont, ttt, data) in requests {
            let request = TextRequest { cont, fin: !cont, itt: Itt(1), ttt, data, ..TextRequest::default() };
            if let Ok(response) = exchange.on_request(&request, &context, StatusSeq::default()) {
                prop_assert!(response.data.len() <= max as usize);
                prop_assert!(!(response.fin && response.cont));
            }
        }
    }
}
