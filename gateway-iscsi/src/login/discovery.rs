//! Text negotiation in full feature phase: SendTargets (RFC 7143 appendix C) and the Text
//! Request/Response exchange with its Continue bit and target transfer tags (RFC 7143, Text Request/Response).

use super::{
    CheckedConfig, SessionType, TEXT_RESPONSE_LEN_MAX, negotiate,
    text::{self, TextError},
};
use crate::pdu::{Lun, TextRequest, TextResponse, Ttt, reject_reason};

/// The SendTargets answer: `TargetName` and `TargetAddress` pairs for every target named by
/// `value` ("All", or one target's name) that `initiator_name` may access. `portal` is the
/// TargetAddress value, `host:port,tpgt` (e.g. `127.0.0.1:3260,1`). Targets the initiator's
/// ACL excludes are left out, so their existence is not revealed.
pub fn send_targets(
    config: &CheckedConfig,
    initiator_name: &str,
    value: &str,
    portal: &str,
) -> Vec<(String, String)> {
    assert!(!portal.is_empty() && portal.len() <= text::VALUE_LEN_MAX && !portal.contains('\0'));
    let mut pairs = Vec::new();
    for target in &config.get().targets {
        let named = value == "All" || target.name.eq_ignore_ascii_case(value);
        if named && target.allows(initiator_name) {
            pairs.push(("TargetName".to_owned(), target.name.clone()));
            pairs.push(("TargetAddress".to_owned(), portal.to_owned()));
        }
    }
    pairs
}

/// What a text exchange needs to know about its session.
#[derive(Clone, Copy, Debug)]
pub struct TextContext<'a> {
    /// The portal's configuration.
    pub config: &'a CheckedConfig,
    /// Discovery sessions may ask SendTargets=All; normal sessions only about their target.
    pub session_type: SessionType,
    /// The session's InitiatorName.
    pub initiator_name: &'a str,
    /// The session's target (normal sessions).
    pub target_name: Option<&'a str>,
    /// TargetAddress value for SendTargets, `host:port,tpgt`.
    pub portal: &'a str,
    /// The initiator's MaxRecvDataSegmentLength (at least 512, as negotiation guarantees):
    /// longer answers go out in pieces.
    pub max_send_data_segment_len: u32,
}

/// Sequence numbers the session layer stamps on a response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusSeq {
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
}

/// Why a Text Request could not be answered; the session sends a Reject PDU.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextExchangeError {
    /// Malformed text.
    #[error("malformed text: {0}")]
    Text(#[from] TextError),
    /// A target transfer tag that names no exchange of ours, or an ITT that changed mid-way.
    #[error("text request with TTT {ttt:#x} continues no exchange")]
    UnknownTransfer {
        /// The TTT received.
        ttt: u32,
    },
    /// Text accumulated over Continue PDUs exceeds [`text::TEXT_LEN_MAX`].
    #[error("text request exceeds {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
}

impl TextExchangeError {
    /// Reject reason for the offending Text Request.
    pub fn reject_reason(&self) -> u8 {
        reject_reason::PROTOCOL_ERROR
    }
}

/// Where an exchange stands.
#[derive(Clone, Debug, Default)]
enum State {
    /// No exchange in progress.
    #[default]
    Idle,
    /// The initiator is sending text with the C bit; `text` holds what arrived.
    Receiving { itt: u32, ttt: Ttt, text: Vec<u8> },
    /// We are sending a long answer; `text[sent..]` is still to go.
    Sending {
        itt: u32,
        ttt: Ttt,
        text: Vec<u8>,
        sent: usize,
    },
}

/// Text Request/Response exchanges of one connection. An initiator may have one text request
/// outstanding per connection (RFC 7143, Text Request), so one exchange is tracked; a request
/// with TTT 0xffffffff starts afresh and abandons any earlier exchange.
#[derive(Clone, Debug, Default)]
pub struct TextExchange {
    state: State,
    /// Last target transfer tag handed out.
    last_ttt: u32,
}

impl TextExchange {
    /// A connection with no exchange in progress.
    pub fn new() -> TextExchange {
        TextExchange::default()
    }

    /// Answers one Text Request.
    pub fn on_request(
        &mut self,
        request: &TextRequest,
        context: &TextContext<'_>,
        seq: StatusSeq,
    ) -> Result<TextResponse, TextExchangeError> {
        assert!(context.max_send_data_segment_len >= negotiate::SEGMENT_LEN_MIN);
        let mut response = TextResponse {
            fin: false,
            cont: false,
            lun: Lun::default(),
            itt: request.itt,
            ttt: Ttt::RESERVED,
            stat_sn: seq.stat_sn,
            exp_cmd_sn: seq.exp_cmd_sn,
            max_cmd_sn: seq.max_cmd_sn,
            data: Vec::new(),
        };
        let mut received = if request.ttt == Ttt::RESERVED {
            // A new exchange; per RFC 7143 (Text Request, TTT) it also resets any earlier one.
            self.state = State::Idle;
            Vec::new()
        } else {
            match std::mem::take(&mut self.state) {
                State::Receiving { itt, ttt, text }
                    if itt == request.itt.0 && ttt == request.ttt =>
                {
                    text
                }
                State::Sending {
                    itt,
                    ttt,
                    text,
                    sent,
                } if itt == request.itt.0 && ttt == request.ttt => {
                    return Ok(self.send_piece(response, itt, ttt, text, sent, context));
                }
                _ => return Err(TextExchangeError::UnknownTransfer { ttt: request.ttt.0 }),
            }
        };
        if received.len() + request.data.len() > text::TEXT_LEN_MAX {
            return Err(TextExchangeError::TooLong {
                max: text::TEXT_LEN_MAX,
            });
        }
        received.extend_from_slice(&request.data);
        if request.cont {
            // More text follows: acknowledge with an empty, non-final response and a tag.
            let ttt = self.next_ttt();
            self.state = State::Receiving {
                itt: request.itt.0,
                ttt,
                text: received,
            };
            response.ttt = ttt;
            return Ok(response);
        }
        let pairs = text::parse(&received)?;
        let answers = answer(&pairs, context);
        let mut encoded = Vec::new();
        text::encode(&answers, &mut encoded);
        // Holds by construction: SendTargets over at most TARGETS_MAX targets and at most
        // PAIRS_MAX short answers.
        assert!(
            encoded.len() <= TEXT_RESPONSE_LEN_MAX,
            "text answer of {} bytes",
            encoded.len()
        );
        let ttt = if encoded.len() > context.max_send_data_segment_len as usize {
            self.next_ttt()
        } else {
            Ttt::RESERVED
        };
        Ok(self.send_piece(response, request.itt.0, ttt, encoded, 0, context))
    }

    /// Sends `text[sent..]`, as much as the initiator accepts; keeps the rest for later.
    fn send_piece(
        &mut self,
        mut response: TextResponse,
        itt: u32,
        ttt: Ttt,
        text: Vec<u8>,
        sent: usize,
        context: &TextContext<'_>,
    ) -> TextResponse {
        assert!(sent <= text.len());
        let end = text
            .len()
            .min(sent + context.max_send_data_segment_len as usize);
        response.data = text[sent..end].to_vec();
        if end < text.len() {
            assert_ne!(ttt, Ttt::RESERVED);
            response.cont = true;
            response.ttt = ttt;
            self.state = State::Sending {
                itt,
                ttt,
                text,
                sent: end,
            };
        } else {
            response.fin = true;
            response.ttt = Ttt::RESERVED;
            self.state = State::Idle;
        }
        response
    }

    fn next_ttt(&mut self) -> Ttt {
        self.last_ttt = self.last_ttt.wrapping_add(1);
        if self.last_ttt == Ttt::RESERVED.0 {
            self.last_ttt = 1;
        }
        Ttt(self.last_ttt)
    }
}

/// Answers the keys of a full-feature text request.
fn answer(pairs: &[(String, String)], context: &TextContext<'_>) -> Vec<(String, String)> {
    let mut answers = Vec::new();
    for (key, value) in pairs {
        match key.as_str() {
            "SendTargets" => {
                let scope = match (context.session_type, value.as_str()) {
                    (SessionType::Discovery, value) => Some(value),
                    // RFC 7143 appendix C: in a normal session only the session's own target,
                    // named or by an empty value.
                    (SessionType::Normal, "") => context.target_name,
                    (SessionType::Normal, value)
                        if context
                            .target_name
                            .is_some_and(|name| name.eq_ignore_ascii_case(value)) =>
                    {
                        Some(value)
                    }
                    (SessionType::Normal, _) => None,
                };
                match scope {
                    Some(scope) => answers.extend(send_targets(
                        context.config,
                        context.initiator_name,
                        scope,
                        context.portal,
                    )),
                    None => answers.push((key.clone(), text::REJECT.to_owned())),
                }
            }
            // Renegotiation in full feature phase is not supported.
            key if negotiate::is_operational_key(key) => {
                answers.push((key.to_owned(), text::REJECT.to_owned()));
            }
            key => answers.push((key.to_owned(), text::NOT_UNDERSTOOD.to_owned())),
        }
    }
    answers
}
