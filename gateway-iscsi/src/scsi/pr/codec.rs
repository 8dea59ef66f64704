//! The stable binary encoding of a [`ReservationState`], the bytes a metadata store keeps so
//! that every gateway sees the same registrations and reservation. Sans IO.
//!
//! Version 1, every integer big-endian:
//!
//! ```text
//! magic       4 bytes  "CPRS" (Cairn Persistent Reservation State)
//! version     1 byte   1
//! generation  4 bytes  PRGENERATION
//! count       2 bytes  registrations, at most REGISTRATIONS_MAX
//! count times:
//!   key       8 bytes  never zero
//!   nexus              (below)
//! reserved    1 byte   0: no reservation, 1: a reservation follows
//! if 1:
//!   type      1 byte   the TYPE code (SPC-4 table 170), one of 1, 3, 5, 6, 7, 8
//!   holder             nexus
//! crc32c      4 bytes  CRC-32C of every byte before it
//!
//! nexus:
//!   initiator name length 1 byte (1..=223), initiator name (UTF-8, no comma or NUL)
//!   ISID                  6 bytes
//!   target name length    1 byte (1..=223), target name (UTF-8, no comma or NUL)
//!   TPGT                  2 bytes
//! ```
//!
//! Decoding is strict: the magic, a known version, the checksum, every field, the invariants
//! of [`ReservationState::validate`], and no byte after the checksum's input; so a state
//! decodes from exactly one byte string, its encoding. A new layout takes a new version, and
//! decode keeps reading the old ones.
//!
//! A store applying PERSISTENT RESERVE OUTs from several gateways reads the bytes, decodes,
//! applies, encodes, and writes only if the stored bytes are still the ones it read: the
//! encoding being canonical, equal bytes mean an equal state. PRGENERATION is not enough for
//! that compare-and-set, since RESERVE and RELEASE leave it alone.

use cairn_common::checksum::crc32c;

use super::{
    ISCSI_NAME_BYTES_MAX, NameError, Nexus, REGISTRATIONS_MAX, Registration, Reservation,
    ReservationState, ReservationType,
};

/// The first bytes of every encoding.
const MAGIC: [u8; 4] = *b"CPRS";
/// The layout [`ReservationState::encode`] writes.
const VERSION: u8 = 1;
const CHECKSUM_LEN: usize = 4;
/// Magic, version, generation and registration count.
const HEADER_LEN: usize = MAGIC.len() + 1 + 4 + 2;
/// The longest nexus: two names of the most bytes, their lengths, the ISID and the TPGT.
const NEXUS_LEN_MAX: usize = 1 + ISCSI_NAME_BYTES_MAX + 6 + 1 + ISCSI_NAME_BYTES_MAX + 2;

/// The longest encoding: every registration and the reservation with the longest names.
/// Decoding refuses anything longer before reading it.
pub const RESERVATION_STATE_ENCODED_LEN_MAX: usize =
    HEADER_LEN + REGISTRATIONS_MAX * (8 + NEXUS_LEN_MAX) + 2 + NEXUS_LEN_MAX + CHECKSUM_LEN;

// Names and counts fit their length fields.
const _: () = assert!(ISCSI_NAME_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(REGISTRATIONS_MAX <= u16::MAX as usize);

/// Why bytes are not the encoding of a [`ReservationState`] (or why a state breaks its
/// invariants, from [`ReservationState::validate`]).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReservationDecodeError {
    /// Longer than [`RESERVATION_STATE_ENCODED_LEN_MAX`].
    #[error("{len} bytes exceed the longest encoding of {max}")]
    TooLong {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes end inside a field.
    #[error("truncated inside the {field}")]
    Truncated {
        /// The field cut short.
        field: &'static str,
    },
    /// The bytes do not start with the magic.
    #[error("not a reservation state: magic {found:02x?}")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A layout this code does not know (written by a newer gateway).
    #[error("unknown encoding version {version}")]
    UnknownVersion {
        /// The version byte.
        version: u8,
    },
    /// The checksum does not match: the bytes were damaged.
    #[error("checksum {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The checksum stored.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// Bytes left between the last field and the checksum.
    #[error("{count} bytes after the last field")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// More registrations than [`REGISTRATIONS_MAX`].
    #[error("{count} registrations exceed the limit of {max}")]
    TooManyRegistrations {
        /// Registrations in the state.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A registration with key zero, which REGISTER never stores.
    #[error("registration {index} has key zero")]
    ZeroKey {
        /// Its position.
        index: usize,
    },
    /// A nexus registered twice.
    #[error("registration {index} repeats the nexus of a later one")]
    DuplicateNexus {
        /// The position of the first of the two.
        index: usize,
    },
    /// The reservation of a non-all-registrants type whose holder is not registered.
    #[error("the reservation's holder is not registered")]
    HolderNotRegistered,
    /// An all-registrants reservation with nobody registered.
    #[error("an all-registrants reservation with no registration")]
    NoRegistrants,
    /// The reservation flag is neither 0 nor 1.
    #[error("reservation flag {flag}, expected 0 or 1")]
    BadReservationFlag {
        /// The byte read.
        flag: u8,
    },
    /// A TYPE code that is not one of the six implemented.
    #[error("unknown reservation type {code:#04x}")]
    UnknownReservationType {
        /// The code read.
        code: u8,
    },
    /// A name that is not UTF-8.
    #[error("the {field} is not UTF-8")]
    NameNotUtf8 {
        /// Which name.
        field: &'static str,
    },
    /// A name the SCSI layer refuses (empty, too long, with a comma or a NUL).
    #[error("unusable name")]
    BadName(#[from] NameError),
}

impl ReservationState {
    /// The stable binary form of this state (see the module's layout), at most
    /// [`RESERVATION_STATE_ENCODED_LEN_MAX`] bytes. [`ReservationState::decode`] reads it back
    /// equal. Panics on a state that breaks its invariants (a programmer error:
    /// [`ReservationState::apply`] never makes one).
    pub fn encode(&self) -> Vec<u8> {
        if let Err(violation) = self.validate() {
            panic!("encoding a reservation state that breaks its invariants: {violation}");
        }
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.generation.to_be_bytes());
        let count = u16::try_from(self.registrations.len())
            .expect("invariant: at most REGISTRATIONS_MAX registrations");
        out.extend_from_slice(&count.to_be_bytes());
        for registration in &self.registrations {
            out.extend_from_slice(&registration.key.to_be_bytes());
            encode_nexus(&registration.nexus, &mut out);
        }
        match &self.reservation {
            None => out.push(0),
            Some(reservation) => {
                out.push(1);
                out.push(reservation.reservation_type.code());
                encode_nexus(&reservation.holder, &mut out);
            }
        }
        let checksum = crc32c(&out);
        out.extend_from_slice(&checksum.to_be_bytes());
        assert_eq!(out.len(), self.encoded_len());
        assert!(out.len() <= RESERVATION_STATE_ENCODED_LEN_MAX);
        out
    }

    /// The state whose encoding is `bytes`; refuses anything else (see the module's docs).
    /// Never panics, and allocates at most what `bytes` describes, which is bounded by
    /// [`RESERVATION_STATE_ENCODED_LEN_MAX`].
    pub fn decode(bytes: &[u8]) -> Result<ReservationState, ReservationDecodeError> {
        if bytes.len() > RESERVATION_STATE_ENCODED_LEN_MAX {
            return Err(ReservationDecodeError::TooLong {
                len: bytes.len(),
                max: RESERVATION_STATE_ENCODED_LEN_MAX,
            });
        }
        let mut reader = Reader { rest: bytes };
        let magic = reader.array::<4>("magic")?;
        if magic != MAGIC {
            return Err(ReservationDecodeError::BadMagic { found: magic });
        }
        let [version] = reader.array::<1>("version")?;
        if version != VERSION {
            return Err(ReservationDecodeError::UnknownVersion { version });
        }
        // The magic and version were read, so the checksum must come after them.
        let Some(body_len) = bytes
            .len()
            .checked_sub(CHECKSUM_LEN)
            .filter(|len| *len > MAGIC.len())
        else {
            return Err(ReservationDecodeError::Truncated { field: "checksum" });
        };
        let (body, stored) = bytes.split_at(body_len);
        let stored = u32::from_be_bytes(stored.try_into().expect("invariant: 4 bytes split"));
        let computed = crc32c(body);
        if stored != computed {
            return Err(ReservationDecodeError::Checksum { stored, computed });
        }
        let mut reader = Reader {
            rest: &body[MAGIC.len() + 1..],
        };
        let state = decode_fields(&mut reader)?;
        if !reader.rest.is_empty() {
            return Err(ReservationDecodeError::TrailingBytes {
                count: reader.rest.len(),
            });
        }
        state.validate()?;
        Ok(state)
    }

    fn encoded_len(&self) -> usize {
        let registrations: usize = self
            .registrations
            .iter()
            .map(|registration| 8 + nexus_len(&registration.nexus))
            .sum();
        let reservation = self
            .reservation
            .as_ref()
            .map_or(0, |reservation| 1 + nexus_len(&reservation.holder));
        HEADER_LEN + registrations + 1 + reservation + CHECKSUM_LEN
    }
}

/// The fields after the version, up to the checksum.
fn decode_fields(reader: &mut Reader<'_>) -> Result<ReservationState, ReservationDecodeError> {
    let generation = u32::from_be_bytes(reader.array::<4>("generation")?);
    let count = usize::from(u16::from_be_bytes(reader.array::<2>("registration count")?));
    if count > REGISTRATIONS_MAX {
        return Err(ReservationDecodeError::TooManyRegistrations {
            count,
            max: REGISTRATIONS_MAX,
        });
    }
    let mut registrations = Vec::with_capacity(count);
    for _ in 0..count {
        let key = u64::from_be_bytes(reader.array::<8>("registration key")?);
        let nexus = decode_nexus(reader)?;
        registrations.push(Registration { nexus, key });
    }
    let reservation = match reader.array::<1>("reservation flag")? {
        [0] => None,
        [1] => {
            let [code] = reader.array::<1>("reservation type")?;
            let reservation_type = ReservationType::from_code(code)
                .ok_or(ReservationDecodeError::UnknownReservationType { code })?;
            let holder = decode_nexus(reader)?;
            Some(Reservation {
                holder,
                reservation_type,
            })
        }
        [flag] => return Err(ReservationDecodeError::BadReservationFlag { flag }),
    };
    Ok(ReservationState {
        generation,
        registrations,
        reservation,
    })
}

fn nexus_len(nexus: &Nexus) -> usize {
    1 + nexus.initiator_name().len() + 6 + 1 + nexus.target_name().len() + 2
}

fn encode_nexus(nexus: &Nexus, out: &mut Vec<u8>) {
    for (name, isid) in [
        (nexus.initiator_name(), Some(nexus.isid())),
        (nexus.target_name(), None),
    ] {
        let len = u8::try_from(name.len()).expect("invariant: Nexus::new checked the length");
        out.push(len);
        out.extend_from_slice(name.as_bytes());
        if let Some(isid) = isid {
            out.extend_from_slice(&isid);
        }
    }
    out.extend_from_slice(&nexus.target_portal_group_tag().to_be_bytes());
}

fn decode_nexus(reader: &mut Reader<'_>) -> Result<Nexus, ReservationDecodeError> {
    let initiator_name = reader.name("initiator name")?;
    let isid = reader.array::<6>("ISID")?;
    let target_name = reader.name("target name")?;
    let tpgt = u16::from_be_bytes(reader.array::<2>("target portal group tag")?);
    Ok(Nexus::new(initiator_name, isid, target_name, tpgt)?)
}

/// Reads fields off the front of the bytes, each checked for length.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], ReservationDecodeError> {
        let Some((head, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(ReservationDecodeError::Truncated { field });
        };
        self.rest = rest;
        Ok(*head)
    }

    /// A length byte and that many bytes of UTF-8.
    fn name(&mut self, field: &'static str) -> Result<&'a str, ReservationDecodeError> {
        let [len] = self.array::<1>(field)?;
        let len = usize::from(len);
        if self.rest.len() < len {
            return Err(ReservationDecodeError::Truncated { field });
        }
        let (name, rest) = self.rest.split_at(len);
        self.rest = rest;
        std::str::from_utf8(name).map_err(|_| ReservationDecodeError::NameNotUtf8 { field })
    }
}

#[cfg(test)]
mod tests;
