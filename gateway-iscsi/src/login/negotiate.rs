//! Operational parameter negotiation as a target (RFC 7143 sections 6.2 and 13).
//!
//! The initiator proposes; the target answers each key with the result of the key's function
//! (minimum, maximum, AND, OR, first acceptable list item) applied to the proposal and what
//! this target offers ([`OperationalLimits`]). Keys the initiator never sends keep the RFC 7143
//! defaults ([`SessionParams::default`]); the target never originates negotiable keys, only
//! declarations (MaxRecvDataSegmentLength, TargetAlias, TargetPortalGroupTag).

use super::text::{self, IRRELEVANT, REJECT};
use crate::pdu::Digests;

/// Smallest MaxRecvDataSegmentLength, MaxBurstLength and FirstBurstLength (RFC 7143 section 13).
pub const SEGMENT_LEN_MIN: u32 = 512;
/// Largest MaxRecvDataSegmentLength, MaxBurstLength and FirstBurstLength: 2^24 - 1.
pub const SEGMENT_LEN_MAX: u32 = (1 << 24) - 1;
/// Largest DefaultTime2Wait and DefaultTime2Retain, seconds.
pub const TIME2_MAX: u16 = 3600;

/// Whether a session serves SendTargets only or carries SCSI commands (RFC 7143 SessionType key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionType {
    /// SessionType=Discovery: text requests (SendTargets) only.
    Discovery,
    /// SessionType=Normal: SCSI commands to one target.
    Normal,
}

/// What this target offers in operational negotiation (plain configuration data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationalLimits {
    /// MaxRecvDataSegmentLength we declare: the largest data segment we accept. Also the
    /// `max_data` to pass to [`crate::pdu::Pdu::decode`] after login.
    pub max_recv_data_segment_len: u32,
    /// Our MaxBurstLength offer (Minimum function).
    pub max_burst_len: u32,
    /// Our FirstBurstLength offer (Minimum function); at most `max_burst_len`.
    pub first_burst_len: u32,
    /// Our MaxOutstandingR2T offer (Minimum function), at least 1.
    pub max_outstanding_r2t: u16,
    /// Our MaxConnections offer (Minimum function), at least 1.
    pub max_connections: u16,
    /// Our ImmediateData offer (AND function).
    pub immediate_data: bool,
    /// Our InitialR2T offer (OR function): false lets initiators send unsolicited data.
    pub initial_r2t: bool,
    /// Our DefaultTime2Wait offer in seconds (Maximum function).
    pub default_time2wait: u16,
    /// Our DefaultTime2Retain offer in seconds (Minimum function).
    pub default_time2retain: u16,
}

impl Default for OperationalLimits {
    fn default() -> OperationalLimits {
        OperationalLimits {
            // 256 KiB segments: large enough for 1 MiB bursts in four PDUs, small enough that
            // one buffer per connection stays cheap.
            max_recv_data_segment_len: 256 * 1024,
            max_burst_len: 1024 * 1024,
            first_burst_len: 64 * 1024,
            max_outstanding_r2t: 16,
            max_connections: 1,
            immediate_data: true,
            initial_r2t: false,
            default_time2wait: 2,
            // ErrorRecoveryLevel 0 and no session reinstatement: nothing is retained after a
            // connection drops, so promise nothing.
            default_time2retain: 0,
        }
    }
}

/// Negotiated session and connection parameters, RFC 7143 section 13 defaults until a key
/// changes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    /// HeaderDigest and DataDigest results; in effect from the first full-feature PDU.
    pub digests: Digests,
    /// The initiator's MaxRecvDataSegmentLength: the largest data segment we may send it.
    pub initiator_max_recv_data_segment_len: u32,
    /// Our declared MaxRecvDataSegmentLength: the largest data segment it may send us.
    pub target_max_recv_data_segment_len: u32,
    /// MaxBurstLength.
    pub max_burst_len: u32,
    /// FirstBurstLength (at most `max_burst_len`).
    pub first_burst_len: u32,
    /// ImmediateData.
    pub immediate_data: bool,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u16,
    /// ErrorRecoveryLevel (always 0 here: we offer 0 and the function is Minimum).
    pub error_recovery_level: u8,
    /// MaxConnections.
    pub max_connections: u16,
    /// DefaultTime2Wait, seconds.
    pub default_time2wait: u16,
    /// DefaultTime2Retain, seconds.
    pub default_time2retain: u16,
    /// DataPDUInOrder.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder.
    pub data_sequence_in_order: bool,
}

impl Default for SessionParams {
    fn default() -> SessionParams {
        SessionParams {
            digests: Digests::NONE,
            initiator_max_recv_data_segment_len: 8192,
            target_max_recv_data_segment_len: 8192,
            max_burst_len: 262_144,
            first_burst_len: 65_536,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            error_recovery_level: 0,
            max_connections: 1,
            default_time2wait: 2,
            default_time2retain: 20,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
        }
    }
}

/// How the target answers one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyAnswer {
    /// Send `key=value` back.
    Respond(String),
    /// A declaration that needs no answer (MaxRecvDataSegmentLength, InitiatorAlias).
    Declared,
    /// Not an operational key; the caller handles it (identity, security, unknown).
    NotOperational,
}

/// Keys RFC 7143 declares irrelevant in discovery sessions.
const DISCOVERY_IRRELEVANT: &[&str] = &[
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
];

/// Answers one operational key proposed by the initiator and records the result in `params`.
/// Malformed or out-of-range values are answered `Reject` and leave the default in place
/// (RFC 7143 section 6, text mode negotiation).
pub fn negotiate_key(
    key: &str,
    value: &str,
    limits: &OperationalLimits,
    session_type: SessionType,
    params: &mut SessionParams,
) -> KeyAnswer {
    if session_type == SessionType::Discovery && DISCOVERY_IRRELEVANT.contains(&key) {
        return KeyAnswer::Respond(IRRELEVANT.to_owned());
    }
    let respond =
        |result: Option<String>| KeyAnswer::Respond(result.unwrap_or_else(|| REJECT.to_owned()));
    match key {
        "HeaderDigest" => respond(digest(value).map(|crc| {
            params.digests.header = crc;
            digest_name(crc)
        })),
        "DataDigest" => respond(digest(value).map(|crc| {
            params.digests.data = crc;
            digest_name(crc)
        })),
        "MaxRecvDataSegmentLength" => match number_in(value, SEGMENT_LEN_MIN, SEGMENT_LEN_MAX) {
            Some(len) => {
                params.initiator_max_recv_data_segment_len = len;
                KeyAnswer::Declared
            }
            None => respond(None),
        },
        "MaxBurstLength" => respond(number_in(value, SEGMENT_LEN_MIN, SEGMENT_LEN_MAX).map(
            |len| {
                params.max_burst_len = len.min(limits.max_burst_len);
                params.first_burst_len = params.first_burst_len.min(params.max_burst_len);
                params.max_burst_len.to_string()
            },
        )),
        "FirstBurstLength" => respond(number_in(value, SEGMENT_LEN_MIN, SEGMENT_LEN_MAX).map(
            |len| {
                // RFC 7143 (FirstBurstLength key): FirstBurstLength must not exceed MaxBurstLength.
                params.first_burst_len = len.min(limits.first_burst_len).min(params.max_burst_len);
                params.first_burst_len.to_string()
            },
        )),
        "ImmediateData" => respond(text::parse_bool(value).map(|offer| {
            params.immediate_data = offer && limits.immediate_data;
            text::bool_value(params.immediate_data).to_owned()
        })),
        "InitialR2T" => respond(text::parse_bool(value).map(|offer| {
            params.initial_r2t = offer || limits.initial_r2t;
            text::bool_value(params.initial_r2t).to_owned()
        })),
        "MaxOutstandingR2T" => respond(number_in(value, 1, 65_535).map(|count| {
            params.max_outstanding_r2t = u16::try_from(count)
                .expect("invariant: range checked")
                .min(limits.max_outstanding_r2t);
            params.max_outstanding_r2t.to_string()
        })),
        "ErrorRecoveryLevel" => respond(number_in(value, 0, 2).map(|_| {
            // We implement level 0 only; the function is Minimum.
            params.error_recovery_level = 0;
            "0".to_owned()
        })),
        "MaxConnections" => respond(number_in(value, 1, 65_535).map(|count| {
            params.max_connections = u16::try_from(count)
                .expect("invariant: range checked")
                .min(limits.max_connections);
            params.max_connections.to_string()
        })),
        "DefaultTime2Wait" => respond(number_in(value, 0, u32::from(TIME2_MAX)).map(|seconds| {
            params.default_time2wait = u16::try_from(seconds)
                .expect("invariant: range checked")
                .max(limits.default_time2wait);
            params.default_time2wait.to_string()
        })),
        "DefaultTime2Retain" => respond(number_in(value, 0, u32::from(TIME2_MAX)).map(|seconds| {
            params.default_time2retain = u16::try_from(seconds)
                .expect("invariant: range checked")
                .min(limits.default_time2retain);
            params.default_time2retain.to_string()
        })),
        // OR functions with our value Yes: the result is always Yes, which is all we support.
        "DataPDUInOrder" | "DataSequenceInOrder" => {
            respond(text::parse_bool(value).map(|_| "Yes".to_owned()))
        }
        // RFC 7143 obsoletes markers: answering No to IFMarker/OFMarker is allowed and
        // what RFC 3720 initiators expect; the interval keys must be answered Reject.
        "IFMarker" | "OFMarker" => respond(text::parse_bool(value).map(|_| "No".to_owned())),
        "IFMarkInt" | "OFMarkInt" => respond(None),
        "InitiatorAlias" => KeyAnswer::Declared,
        _ => KeyAnswer::NotOperational,
    }
}

/// Whether `key` is one [`negotiate_key`] handles (used to refuse renegotiation).
pub fn is_operational_key(key: &str) -> bool {
    let mut scratch = SessionParams::default();
    negotiate_key(
        key,
        "",
        &OperationalLimits::default(),
        SessionType::Normal,
        &mut scratch,
    ) != KeyAnswer::NotOperational
}

/// First item of the initiator's digest list that we support: `Some(true)` for CRC32C,
/// `Some(false)` for None, `None` when nothing is acceptable.
fn digest(value: &str) -> Option<bool> {
    text::list(value).find_map(|item| match item {
        "CRC32C" => Some(true),
        "None" => Some(false),
        _ => None,
    })
}

fn digest_name(crc: bool) -> String {
    if crc { "CRC32C" } else { "None" }.to_owned()
}

fn number_in(value: &str, min: u32, max: u32) -> Option<u32> {
    let number = text::parse_number(value)?;
    let number = u32::try_from(number).ok()?;
    (min..=max).contains(&number).then_some(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(key: &str, value: &str, params: &mut SessionParams) -> KeyAnswer {
        negotiate_key(
            key,
            value,
            &OperationalLimits::default(),
            SessionType::Normal,
            params,
        )
    }

    fn respond(value: &str) -> KeyAnswer {
        KeyAnswer::Respond(value.to_owned())
    }

    #[test]
    fn digests_take_the_first_item_we_support() {
        let mut params = SessionParams::default();
        assert_eq!(
            answer("HeaderDigest", "CRC32C,None", &mut params),
            respond("CRC32C")
        );
        assert_eq!(
            answer("DataDigest", "None,CRC32C", &mut params),
            respond("None")
        );
        assert_eq!(
            params.digests,
            Digests {
                header: true,
                data: false
            }
        );
        assert_eq!(
            answer("DataDigest", "MD5,CRC32C", &mut params),
            respond("CRC32C")
        );
        assert!(params.digests.data);
        let mut params = SessionParams::default();
        assert_eq!(
            answer("HeaderDigest", "MD5,SHA1", &mut params),
            respond("Reject")
        );
        assert_eq!(params.digests, Digests::NONE);
    }

    #[test]
    fn max_recv_data_segment_length_is_declarative() {
        let mut params = SessionParams::default();
        assert_eq!(
            answer("MaxRecvDataSegmentLength", "65536", &mut params),
            KeyAnswer::Declared
        );
        assert_eq!(params.initiator_max_recv_data_segment_len, 65536);
        assert_eq!(
            answer("MaxRecvDataSegmentLength", "511", &mut params),
            respond("Reject")
        );
        assert_eq!(
            answer("MaxRecvDataSegmentLength", "16777216", &mut params),
            respond("Reject")
        );
        assert_eq!(params.initiator_max_recv_data_segment_len, 65536);
    }

    #[test]
    fn burst_lengths_take_the_minimum_and_first_stays_below_max() {
        let mut params = SessionParams::default();
        assert_eq!(
            answer("MaxBurstLength", "16776192", &mut params),
            respond("1048576")
        );
        assert_eq!(
            answer("MaxBurstLength", "4096", &mut SessionParams::default()),
            respond("4096")
        );
        assert_eq!(
            answer("FirstBurstLength", "262144", &mut params),
            respond("65536")
        );
        assert_eq!(
            answer("FirstBurstLength", "1024", &mut params),
            respond("1024")
        );
        let mut params = SessionParams::default();
        assert_eq!(
            answer("MaxBurstLength", "2048", &mut params),
            respond("2048")
        );
        assert_eq!(
            answer("FirstBurstLength", "65536", &mut params),
            respond("2048")
        );
        assert_eq!(params.first_burst_len, 2048);
        assert_eq!(
            answer("MaxBurstLength", "abc", &mut params),
            respond("Reject")
        );
    }

    #[test]
    fn immediate_data_is_and_initial_r2t_is_or() {
        let limits = OperationalLimits {
            immediate_data: false,
            initial_r2t: true,
            ..OperationalLimits::default()
        };
        let mut params = SessionParams::default();
        let mut ask =
            |key, value| negotiate_key(key, value, &limits, SessionType::Normal, &mut params);
        assert_eq!(ask("ImmediateData", "Yes"), respond("No"));
        assert_eq!(ask("InitialR2T", "No"), respond("Yes"));
        let limits = OperationalLimits::default(); // ImmediateData Yes, InitialR2T No
        let mut params = SessionParams::default();
        let mut ask =
            |key, value| negotiate_key(key, value, &limits, SessionType::Normal, &mut params);
        assert_eq!(ask("ImmediateData", "Yes"), respond("Yes"));
        assert_eq!(ask("InitialR2T", "No"), respond("No"));
        assert_eq!(ask("InitialR2T", "Maybe"), respond("Reject"));
        assert_eq!(ask("ImmediateData", "No"), respond("No"));
        assert!(!params.immediate_data);
    }

    #[test]
    fn counts_and_times() {
        let mut params = SessionParams::default();
        assert_eq!(
            answer("MaxOutstandingR2T", "64", &mut params),
            respond("16")
        );
        assert_eq!(
            answer("MaxOutstandingR2T", "0", &mut params),
            respond("Reject")
        );
        assert_eq!(answer("ErrorRecoveryLevel", "2", &mut params), respond("0"));
        assert_eq!(
            answer("ErrorRecoveryLevel", "3", &mut params),
            respond("Reject")
        );
        assert_eq!(answer("MaxConnections", "8", &mut params), respond("1"));
        assert_eq!(answer("DefaultTime2Wait", "0", &mut params), respond("2"));
        assert_eq!(answer("DefaultTime2Wait", "10", &mut params), respond("10"));
        assert_eq!(
            answer("DefaultTime2Retain", "20", &mut params),
            respond("0")
        );
        assert_eq!(
            answer("DefaultTime2Retain", "3601", &mut params),
            respond("Reject")
        );
        assert_eq!(params.max_outstanding_r2t, 16);
        assert_eq!(params.default_time2wait, 10);
        assert_eq!(params.default_time2retain, 0);
    }

    #[test]
    fn ordering_and_markers() {
        let mut params = SessionParams::default();
        assert_eq!(answer("DataPDUInOrder", "No", &mut params), respond("Yes"));
        assert_eq!(
            answer("DataSequenceInOrder", "Yes", &mut params),
            respond("Yes")
        );
        assert_eq!(answer("IFMarker", "Yes", &mut params), respond("No"));
        assert_eq!(answer("OFMarker", "No", &mut params), respond("No"));
        assert_eq!(
            answer("OFMarkInt", "2048~8192", &mut params),
            respond("Reject")
        );
        assert_eq!(
            answer("InitiatorAlias", "host1", &mut params),
            KeyAnswer::Declared
        );
        assert_eq!(
            answer("X-vendor.key", "1", &mut params),
            KeyAnswer::NotOperational
        );
        assert!(is_operational_key("MaxBurstLength"));
        assert!(!is_operational_key("TargetName"));
    }

    #[test]
    fn discovery_sessions_answer_irrelevant() {
        let mut params = SessionParams::default();
        let limits = OperationalLimits::default();
        let answer = negotiate_key(
            "MaxBurstLength",
            "4096",
            &limits,
            SessionType::Discovery,
            &mut params,
        );
        assert_eq!(answer, respond("Irrelevant"));
        assert_eq!(params.max_burst_len, 262_144);
        let answer = negotiate_key(
            "HeaderDigest",
            "CRC32C",
            &limits,
            SessionType::Discovery,
            &mut params,
        );
        assert_eq!(answer, respond("CRC32C"));
    }
}
