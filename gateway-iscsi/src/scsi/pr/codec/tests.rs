//! Golden bytes, every refusal, and property tests: any state `apply` can reach round-trips,
//! and no byte string makes decoding panic or accept something it would not write.

use proptest::{collection::vec, prelude::*};

use super::*;
use crate::scsi::{PrOutRequest, cdb::PrOutAction};

fn nexus(initiator: &str, isid: [u8; 6], target: &str, tpgt: u16) -> Nexus {
    Nexus::new(initiator, isid, target, tpgt).expect("valid names")
}

/// Two registrations and a WRITE EXCLUSIVE reservation held by the first.
fn golden_state() -> ReservationState {
    let a = nexus("iqn.a", [0x80, 0, 0, 0, 0, 1], "iqn.t", 1);
    let b = nexus("iqn.b", [0x23, 0x3d, 0, 0, 0, 2], "iqn.t", 1);
    ReservationState {
        generation: 7,
        registrations: vec![
            Registration {
                nexus: a.clone(),
                key: 0x1122_3344_5566_7788,
            },
            Registration { nexus: b, key: 2 },
        ],
        reservation: Some(Reservation {
            holder: a,
            reservation_type: ReservationType::WriteExclusive,
        }),
    }
}

/// The version 1 encoding of [`golden_state`], written out by hand from the layout; the last
/// four bytes are its CRC-32C, computed apart from this crate (a bitwise Castagnoli CRC
/// checked against its "123456789" value 0xe3069283). These bytes may be in a metadata
/// store: they never change.
const GOLDEN: &[u8] = &[
    b'C', b'P', b'R', b'S', // magic
    1,    // version
    0, 0, 0, 7, // generation
    0, 2, // registrations
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // key
    5, b'i', b'q', b'n', b'.', b'a', // initiator name
    0x80, 0, 0, 0, 0, 1, // ISID
    5, b'i', b'q', b'n', b'.', b't', // target name
    0, 1, // TPGT
    0, 0, 0, 0, 0, 0, 0, 2, // key
    5, b'i', b'q', b'n', b'.', b'b', // initiator name
    0x23, 0x3d, 0, 0, 0, 2, // ISID
    5, b'i', b'q', b'n', b'.', b't', // target name
    0, 1, // TPGT
    1, // a reservation
    1, // WRITE EXCLUSIVE
    5, b'i', b'q', b'n', b'.', b'a', // holder: initiator name
    0x80, 0, 0, 0, 0, 1, // ISID
    5, b'i', b'q', b'n', b'.', b't', // target name
    0, 1, // TPGT
    0xb3, 0xa4, 0x83, 0x9c, // CRC-32C
];

/// The empty state: no registration, no reservation, generation 0.
const GOLDEN_EMPTY: &[u8] = &[
    b'C', b'P', b'R', b'S', 1, 0, 0, 0, 0, 0, 0, 0, 0xe5, 0xcb, 0xae, 0x14,
];

/// `body` (everything before the checksum) with its checksum appended.
fn with_checksum(mut body: Vec<u8>) -> Vec<u8> {
    let checksum = crc32c(&body);
    body.extend_from_slice(&checksum.to_be_bytes());
    body
}

/// The body of `state`'s encoding, to edit before [`with_checksum`].
fn body_of(state: &ReservationState) -> Vec<u8> {
    let mut bytes = state.encode();
    bytes.truncate(bytes.len() - CHECKSUM_LEN);
    bytes
}

#[test]
fn golden_bytes() {
    let state = golden_state();
    assert_eq!(state.encode(), GOLDEN, "the encoding of version 1 changed");
    assert_eq!(ReservationState::decode(GOLDEN), Ok(state));
    let empty = ReservationState::default();
    assert_eq!(empty.encode(), GOLDEN_EMPTY);
    assert_eq!(ReservationState::decode(GOLDEN_EMPTY), Ok(empty));
}

#[test]
fn the_generation_is_there_for_compare_and_set() {
    // A store compares the generation it read with the one it writes over.
    let mut state = golden_state();
    state.generation = u32::MAX;
    let decoded = ReservationState::decode(&state.encode()).expect("round trip");
    assert_eq!(decoded.generation, u32::MAX);
}

#[test]
fn framing_refusals() {
    use ReservationDecodeError as E;
    let decode = ReservationState::decode;
    assert_eq!(decode(&[]), Err(E::Truncated { field: "magic" }));
    assert_eq!(decode(b"CPRX\x01"), Err(E::BadMagic { found: *b"CPRX" }));
    assert_eq!(decode(b"CPRS"), Err(E::Truncated { field: "version" }));
    assert_eq!(
        decode(b"CPRS\x02anything"),
        Err(E::UnknownVersion { version: 2 })
    );
    assert_eq!(
        decode(b"CPRS\x01\0\0"),
        Err(E::Truncated { field: "checksum" })
    );
    let mut damaged = GOLDEN.to_vec();
    damaged[20] ^= 1;
    assert!(matches!(decode(&damaged), Err(E::Checksum { .. })));
    let too_long = vec![0u8; RESERVATION_STATE_ENCODED_LEN_MAX + 1];
    assert!(matches!(decode(&too_long), Err(E::TooLong { .. })));
    // A byte after the last field, under a valid checksum.
    let mut body = body_of(&golden_state());
    body.push(0);
    assert_eq!(
        decode(&with_checksum(body)),
        Err(E::TrailingBytes { count: 1 })
    );
    // The body cut inside the holder's TPGT, under a valid checksum.
    let mut body = body_of(&golden_state());
    body.pop();
    assert_eq!(
        decode(&with_checksum(body)),
        Err(E::Truncated {
            field: "target portal group tag"
        })
    );
}

#[test]
fn field_refusals() {
    use ReservationDecodeError as E;
    let decode = |body: Vec<u8>| ReservationState::decode(&with_checksum(body));
    let golden = body_of(&golden_state());
    // Offsets in GOLDEN: the first key at 11, its initiator name's length at 19, the second
    // registration's initiator name at 48 and ISID at 53, the reservation flag at 67, its
    // type at 68 and the holder's ISID at 75.
    let edit = |at: usize, value: u8| {
        let mut body = golden.clone();
        body[at] = value;
        body
    };
    assert_eq!(decode(edit(67, 2)), Err(E::BadReservationFlag { flag: 2 }));
    assert_eq!(
        decode(edit(68, 2)),
        Err(E::UnknownReservationType { code: 2 })
    );
    assert_eq!(
        decode(edit(20, 0xff)),
        Err(E::NameNotUtf8 {
            field: "initiator name"
        })
    );
    assert!(matches!(
        decode(edit(20, b',')),
        Err(E::BadName(NameError::BadCharacter { .. }))
    ));
    assert!(matches!(
        decode(edit(19, 0)),
        Err(E::BadName(NameError::Empty { .. }))
    ));
    let mut zero_key = golden.clone();
    zero_key[11..19].fill(0);
    assert_eq!(decode(zero_key), Err(E::ZeroKey { index: 0 }));
    // The second registration made the first's nexus: "iqn.b" -> "iqn.a", same ISID.
    let mut duplicate = edit(52, b'a');
    duplicate[53..59].copy_from_slice(&[0x80, 0, 0, 0, 0, 1]);
    assert_eq!(decode(duplicate), Err(E::DuplicateNexus { index: 0 }));
    // The holder's ISID changed: a nexus nobody registered.
    assert_eq!(decode(edit(80, 9)), Err(E::HolderNotRegistered));
}

#[test]
fn invariants_are_checked_after_the_fields() {
    use ReservationDecodeError as E;
    let mut state = golden_state();
    state.registrations.clear();
    let holder = state.reservation.as_ref().expect("reserved").holder.clone();
    state.reservation = Some(Reservation {
        holder,
        reservation_type: ReservationType::ExclusiveAccessAllRegistrants,
    });
    assert_eq!(state.validate(), Err(E::NoRegistrants));
    // Bytes for that state, built around the encoder: no registration, an AR reservation.
    let mut body = body_of(&ReservationState::default());
    body.pop();
    body.extend_from_slice(&[1, 8]);
    encode_nexus(&golden_state().registrations[0].nexus, &mut body);
    assert_eq!(
        ReservationState::decode(&with_checksum(body)),
        Err(E::NoRegistrants)
    );
}

#[test]
fn registrations_up_to_the_limit() {
    // REGISTRATIONS_MAX registrations of the longest names round-trip within the bound; one
    // more is refused by its count before anything is read.
    let long = "n".repeat(ISCSI_NAME_BYTES_MAX);
    let registrations: Vec<Registration> = (0..REGISTRATIONS_MAX)
        .map(|index| Registration {
            nexus: nexus(&long, [0x80, 0, 0, 0, 0, index as u8], &long, u16::MAX),
            key: index as u64 + 1,
        })
        .collect();
    let state = ReservationState {
        generation: 1,
        reservation: Some(Reservation {
            holder: registrations[0].nexus.clone(),
            reservation_type: ReservationType::ExclusiveAccessAllRegistrants,
        }),
        registrations,
    };
    let bytes = state.encode();
    assert_eq!(bytes.len(), RESERVATION_STATE_ENCODED_LEN_MAX);
    assert_eq!(ReservationState::decode(&bytes), Ok(state));
    let mut body = body_of(&ReservationState::default());
    body[9..11].copy_from_slice(&(REGISTRATIONS_MAX as u16 + 1).to_be_bytes());
    assert_eq!(
        ReservationState::decode(&with_checksum(body)),
        Err(ReservationDecodeError::TooManyRegistrations {
            count: REGISTRATIONS_MAX + 1,
            max: REGISTRATIONS_MAX
        })
    );
}

#[test]
#[should_panic(expected = "breaks its invariants")]
fn encoding_a_broken_state_is_a_programmer_error() {
    let mut state = golden_state();
    state.registrations[1].key = 0;
    let _ = state.encode();
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9.:é-]{1,60}",
        1 => Just("q".repeat(ISCSI_NAME_BYTES_MAX)),
    ]
}

fn any_nexus() -> impl Strategy<Value = Nexus> {
    (name(), any::<[u8; 6]>(), name(), any::<u16>())
        .prop_map(|(initiator, isid, target, tpgt)| nexus(&initiator, isid, &target, tpgt))
}

/// One PERSISTENT RESERVE OUT from one of the nexuses: its index, action, type and keys.
type Step = (usize, u8, u8, u64, u64);

fn key() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0..4u64, 1 => any::<u64>()]
}

fn step() -> impl Strategy<Value = Step> {
    (any::<usize>(), 0..7u8, 0..6u8, key(), key())
}

/// The state a sequence of PERSISTENT RESERVE OUTs from `nexuses` leaves (refusals change
/// nothing), with `generation` put in last (apply only counts up from zero).
fn reached(nexuses: &[Nexus], steps: &[Step], generation: u32) -> ReservationState {
    let actions = [
        PrOutAction::Register,
        PrOutAction::RegisterAndIgnoreExistingKey,
        PrOutAction::Reserve,
        PrOutAction::Release,
        PrOutAction::Clear,
        PrOutAction::Preempt,
        PrOutAction::PreemptAndAbort,
    ];
    let types = [1u8, 3, 5, 6, 7, 8];
    let mut state = ReservationState::default();
    for &(who, action, kind, key, service_action_key) in steps {
        let request = PrOutRequest {
            action: actions[usize::from(action)],
            reservation_type: ReservationType::from_code(types[usize::from(kind)]),
            key,
            service_action_key,
        };
        let _ = state.apply(&nexuses[who % nexuses.len()], &request);
    }
    state.generation = generation;
    state
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every state PERSISTENT RESERVE OUT can reach decodes from its encoding equal.
    #[test]
    fn states_round_trip(
        nexuses in vec(any_nexus(), 1..70),
        steps in vec(step(), 0..200),
        generation in any::<u32>(),
    ) {
        let state = reached(&nexuses, &steps, generation);
        let bytes = state.encode();
        prop_assert!(bytes.len() <= RESERVATION_STATE_ENCODED_LEN_MAX);
        prop_assert_eq!(ReservationState::decode(&bytes), Ok(state));
    }

    /// Any byte changed, dropped or added is refused: the checksum sees single-byte damage,
    /// the layout sees the rest.
    #[test]
    fn damage_is_refused(
        nexuses in vec(any_nexus(), 1..8),
        steps in vec(step(), 0..40),
        at in any::<usize>(),
        flip in 1..=255u8,
        extra in any::<u8>(),
    ) {
        let bytes = reached(&nexuses, &steps, 3).encode();
        let at = at % bytes.len();
        let mut flipped = bytes.clone();
        flipped[at] ^= flip;
        prop_assert!(ReservationState::decode(&flipped).is_err());
        prop_assert!(ReservationState::decode(&bytes[..at]).is_err());
        let mut longer = bytes.clone();
        longer.insert(at, extra);
        prop_assert!(ReservationState::decode(&longer).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes never make decoding panic; whatever it accepts encodes back to the
    /// very same bytes.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..400)) {
        if let Ok(state) = ReservationState::decode(&bytes) {
            prop_assert_eq!(state.encode(), bytes);
        }
    }

    /// The same past the checksum: bodies after a valid header and under a valid checksum,
    /// random or a valid body with one byte changed, reach every field check.
    #[test]
    fn arbitrary_bodies_never_panic(
        random in vec(any::<u8>(), 0..400),
        nexuses in vec(any_nexus(), 1..4),
        steps in vec(step(), 0..20),
        at in any::<usize>(),
        value in any::<u8>(),
    ) {
        let mut body = MAGIC.to_vec();
        body.push(VERSION);
        body.extend_from_slice(&random);
        let bytes = with_checksum(body);
        if let Ok(state) = ReservationState::decode(&bytes) {
            prop_assert_eq!(state.encode(), bytes);
        }
        let mut body = body_of(&reached(&nexuses, &steps, 0));
        // Past the magic and version, which decode checks before the checksum.
        let first = MAGIC.len() + 1;
        let at = first + at % (body.len() - first);
        body[at] = value;
        let bytes = with_checksum(body);
        if let Ok(state) = ReservationState::decode(&bytes) {
            prop_assert_eq!(state.encode(), bytes);
        }
    }
}
