//! Persistent reservations (SPC-4 5.12): registrations, the reservation, the access rules and
//! the PERSISTENT RESERVE IN data.
//!
//! Every gateway of the cluster must see the same reservations for a volume, so the state
//! lives behind [`ReservationStore`]; the in-memory [`MemReservationStore`] serves one
//! gateway and the tests. The state machine itself, [`ReservationState::apply`], is pure, so
//! the metadata service can run the very same transition inside its replicated log.
//!
//! Not implemented: REGISTER AND MOVE, REPLACE LOST RESERVATION, SPEC_I_PT, ALL_TG_PT, APTPL
//! (REPORT CAPABILITIES says so), and unit attentions to the registrants that lose a
//! reservation or a registration.

use std::{
    collections::HashMap,
    fmt,
    future::{self, Future},
    sync::{Arc, Mutex, PoisonError},
};

use crate::scsi::{
    cdb::PrOutAction,
    sense::{AdditionalSense, Sense, SenseKey},
};

mod codec;

pub use codec::{RESERVATION_STATE_ENCODED_LEN_MAX, ReservationDecodeError};

/// Registrations one volume holds at most. Each initiator port registers once per target
/// port; 64 covers a 16-host cluster with four paths each. Past it, REGISTER fails with
/// INSUFFICIENT REGISTRATION RESOURCES.
pub const REGISTRATIONS_MAX: usize = 64;

/// The longest iSCSI name (RFC 7143 4.2.7.1: 223 bytes).
pub const ISCSI_NAME_BYTES_MAX: usize = 223;

/// The per-volume 16-byte identifier that keys reservations and names the logical unit in
/// the device identification VPD page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId(pub [u8; 16]);

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A name given to the SCSI layer was not a usable iSCSI name.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{field} is empty")]
    Empty {
        /// Which name.
        field: &'static str,
    },
    /// The name is longer than [`ISCSI_NAME_BYTES_MAX`].
    #[error("{field} is {length_bytes} bytes, more than {ISCSI_NAME_BYTES_MAX}")]
    TooLong {
        /// Which name.
        field: &'static str,
        /// Its length.
        length_bytes: usize,
    },
    /// The name holds a comma or a NUL, which would break the port names and TransportIDs
    /// built from it.
    #[error("{field} holds a comma or a NUL")]
    BadCharacter {
        /// Which name.
        field: &'static str,
    },
}

/// Checks an iSCSI name well enough to embed it in port names and designators. Full
/// validation (stringprep, iqn/eui/naa forms) is the login layer's job.
pub fn check_iscsi_name(field: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { field });
    }
    if name.len() > ISCSI_NAME_BYTES_MAX {
        return Err(NameError::TooLong {
            field,
            length_bytes: name.len(),
        });
    }
    if name.contains([',', '\0']) {
        return Err(NameError::BadCharacter { field });
    }
    Ok(())
}

/// An I_T nexus: the initiator port and target port a command arrived through (RFC 7143
/// 4.2.7: "name,i,0xISID" and "name,t,0xTPGT").
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Nexus {
    initiator_port: String,
    target_port: String,
    target_portal_group_tag: u16,
    /// The ISID, also spelled out in `initiator_port`: kept to encode the nexus.
    isid: [u8; 6],
}

impl Nexus {
    /// The nexus of a session of `initiator_name` with session id `isid` logged in to
    /// `target_name` through portal group `target_portal_group_tag`.
    pub fn new(
        initiator_name: &str,
        isid: [u8; 6],
        target_name: &str,
        target_portal_group_tag: u16,
    ) -> Result<Nexus, NameError> {
        check_iscsi_name("initiator name", initiator_name)?;
        check_iscsi_name("target name", target_name)?;
        let mut initiator_port = format!("{initiator_name},i,0x");
        for byte in isid {
            initiator_port.push_str(&format!("{byte:02x}"));
        }
        let target_port = format!("{target_name},t,0x{target_portal_group_tag:04x}");
        Ok(Nexus {
            initiator_port,
            target_port,
            target_portal_group_tag,
            isid,
        })
    }

    /// The initiator's iSCSI name: the initiator port name up to its first comma (names
    /// hold none).
    pub fn initiator_name(&self) -> &str {
        name_before_comma(&self.initiator_port)
    }

    /// The initiator's session id.
    pub fn isid(&self) -> [u8; 6] {
        self.isid
    }

    /// The target's iSCSI name.
    pub fn target_name(&self) -> &str {
        name_before_comma(&self.target_port)
    }

    /// The target portal group tag of the session.
    pub fn target_portal_group_tag(&self) -> u16 {
        self.target_portal_group_tag
    }

    /// The initiator port name, "initiator name,i,0x" + ISID in hex.
    pub fn initiator_port(&self) -> &str {
        &self.initiator_port
    }

    /// The target port name, "target name,t,0x" + TPGT in hex.
    pub fn target_port(&self) -> &str {
        &self.target_port
    }

    /// The relative target port identifier reported in READ FULL STATUS: we use the target
    /// portal group tag, one port per portal group.
    pub fn relative_target_port(&self) -> u16 {
        self.target_portal_group_tag
    }
}

/// The name a port name starts with: [`Nexus::new`] put it before the first comma.
fn name_before_comma(port: &str) -> &str {
    let (name, _) = port
        .split_once(',')
        .expect("invariant: port names are built as name,i|t,...");
    name
}

/// The TYPE of a persistent reservation (SPC-4 table 170).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReservationType {
    /// 1h: only the holder writes; everyone reads.
    WriteExclusive,
    /// 3h: only the holder reads or writes.
    ExclusiveAccess,
    /// 5h: registrants write; everyone reads.
    WriteExclusiveRegistrantsOnly,
    /// 6h: only registrants read or write.
    ExclusiveAccessRegistrantsOnly,
    /// 7h: like 5h, and every registrant is a holder.
    WriteExclusiveAllRegistrants,
    /// 8h: like 6h, and every registrant is a holder.
    ExclusiveAccessAllRegistrants,
}

impl ReservationType {
    /// The type for a TYPE field value, if it is one we implement.
    pub fn from_code(code: u8) -> Option<ReservationType> {
        match code {
            0x1 => Some(ReservationType::WriteExclusive),
            0x3 => Some(ReservationType::ExclusiveAccess),
            0x5 => Some(ReservationType::WriteExclusiveRegistrantsOnly),
            0x6 => Some(ReservationType::ExclusiveAccessRegistrantsOnly),
            0x7 => Some(ReservationType::WriteExclusiveAllRegistrants),
            0x8 => Some(ReservationType::ExclusiveAccessAllRegistrants),
            _ => None,
        }
    }

    /// The TYPE field value.
    pub fn code(self) -> u8 {
        match self {
            ReservationType::WriteExclusive => 0x1,
            ReservationType::ExclusiveAccess => 0x3,
            ReservationType::WriteExclusiveRegistrantsOnly => 0x5,
            ReservationType::ExclusiveAccessRegistrantsOnly => 0x6,
            ReservationType::WriteExclusiveAllRegistrants => 0x7,
            ReservationType::ExclusiveAccessAllRegistrants => 0x8,
        }
    }

    /// Every registrant holds the reservation.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            ReservationType::WriteExclusiveAllRegistrants
                | ReservationType::ExclusiveAccessAllRegistrants
        )
    }

    /// Access is granted to every registrant, not only to the holder.
    pub fn registrants_have_access(self) -> bool {
        !matches!(
            self,
            ReservationType::WriteExclusive | ReservationType::ExclusiveAccess
        )
    }

    /// Reads from outside the reservation conflict too.
    pub fn exclusive_access(self) -> bool {
        matches!(
            self,
            ReservationType::ExclusiveAccess
                | ReservationType::ExclusiveAccessRegistrantsOnly
                | ReservationType::ExclusiveAccessAllRegistrants
        )
    }
}

/// How a command relates to reservations (SPC-4 table 62, SBC-4 table 15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Allowed whatever the reservation: INQUIRY, REPORT LUNS, REQUEST SENSE, TEST UNIT
    /// READY, READ CAPACITY, REPORT SUPPORTED OPERATION CODES and the PERSISTENT RESERVE
    /// commands (PERSISTENT RESERVE OUT applies its own rules).
    Always,
    /// Reads the medium or the mode pages: conflicts only with exclusive access types.
    Read,
    /// Changes the medium or the mode pages (or SYNCHRONIZE CACHE): conflicts with every
    /// type.
    Write,
}

/// One registered I_T nexus and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The registered nexus.
    pub nexus: Nexus,
    /// Its reservation key, never zero.
    pub key: u64,
}

/// The persistent reservation on a logical unit (always LU_SCOPE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The nexus that created it. For all-registrants types every registrant holds it.
    pub holder: Nexus,
    /// Its type.
    pub reservation_type: ReservationType,
}

/// The reservation state of one volume. [`ReservationState::encode`] gives its stable bytes
/// for a store shared by gateways.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReservationState {
    /// PRGENERATION: bumped by every successful REGISTER, CLEAR and PREEMPT. Not by RESERVE
    /// or RELEASE (SPC-4, READ KEYS), so two gateways may change the state from one generation:
    /// a store's compare-and-set compares the whole encoding (canonical: one state, one byte
    /// string), or a version of its own, never this alone.
    pub generation: u32,
    /// Registrations in order of registration.
    pub registrations: Vec<Registration>,
    /// The reservation, if any.
    pub reservation: Option<Reservation>,
}

/// The parameter list of a PERSISTENT RESERVE OUT, with the CDB fields that matter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrOutRequest {
    /// The service action.
    pub action: PrOutAction,
    /// The TYPE, for RESERVE, RELEASE and PREEMPT.
    pub reservation_type: Option<ReservationType>,
    /// RESERVATION KEY: the key the nexus is registered with.
    pub key: u64,
    /// SERVICE ACTION RESERVATION KEY: the new key (REGISTER) or the key to preempt.
    pub service_action_key: u64,
}

impl PrOutRequest {
    /// Parses the 24-byte basic parameter list (SPC-4 6.15.3) of a PERSISTENT RESERVE OUT.
    pub fn parse(
        action: PrOutAction,
        reservation_type: Option<ReservationType>,
        parameters: &[u8],
    ) -> Result<PrOutRequest, Sense> {
        if parameters.len() < 24 {
            return Err(Sense::parameter_list_length_error());
        }
        let flags = parameters[20];
        // SPEC_I_PT: SIP_C=0 in REPORT CAPABILITIES.
        if flags & 0x08 != 0 {
            return Err(Sense::invalid_field_in_parameter_list(20, Some(3)));
        }
        let registering = matches!(
            action,
            PrOutAction::Register | PrOutAction::RegisterAndIgnoreExistingKey
        );
        // ALL_TG_PT (ATP_C=0) and APTPL (PTPL_C=0) only mean something when registering.
        if registering && flags & 0x04 != 0 {
            return Err(Sense::invalid_field_in_parameter_list(20, Some(2)));
        }
        if registering && flags & 0x01 != 0 {
            return Err(Sense::invalid_field_in_parameter_list(20, Some(0)));
        }
        Ok(PrOutRequest {
            action,
            reservation_type,
            key: be_u64(&parameters[0..8]),
            service_action_key: be_u64(&parameters[8..16]),
        })
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(bytes);
    u64::from_be_bytes(array)
}

/// Why a PERSISTENT RESERVE OUT was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrRefusal {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Sense(Sense),
}

impl ReservationState {
    /// The key `nexus` is registered with.
    pub fn key_of(&self, nexus: &Nexus) -> Option<u64> {
        self.registrations
            .iter()
            .find(|registration| registration.nexus == *nexus)
            .map(|r| r.key)
    }

    /// Whether `nexus` holds the reservation.
    pub fn is_holder(&self, nexus: &Nexus) -> bool {
        match &self.reservation {
            None => false,
            Some(reservation) if reservation.reservation_type.all_registrants() => {
                self.key_of(nexus).is_some()
            }
            Some(reservation) => reservation.holder == *nexus,
        }
    }

    /// Whether a command of class `access` from `nexus` may run (SPC-4 5.12.1).
    pub fn allows(&self, nexus: &Nexus, access: Access) -> bool {
        let Some(reservation) = &self.reservation else {
            return true;
        };
        if access == Access::Always || self.is_holder(nexus) {
            return true;
        }
        let kind = reservation.reservation_type;
        if kind.registrants_have_access() && self.key_of(nexus).is_some() {
            return true;
        }
        access == Access::Read && !kind.exclusive_access()
    }

    /// Applies a PERSISTENT RESERVE OUT from `nexus`. On refusal the state is unchanged.
    pub fn apply(&mut self, nexus: &Nexus, request: &PrOutRequest) -> Result<(), PrRefusal> {
        let before = self.clone();
        let result = match request.action {
            PrOutAction::Register => self.register(nexus, request, false),
            PrOutAction::RegisterAndIgnoreExistingKey => self.register(nexus, request, true),
            PrOutAction::Reserve => self.reserve(nexus, request),
            PrOutAction::Release => self.release(nexus, request),
            PrOutAction::Clear => self.clear(nexus, request),
            PrOutAction::Preempt | PrOutAction::PreemptAndAbort => self.preempt(nexus, request),
        };
        if result.is_err() {
            *self = before;
        }
        self.check_invariants();
        result
    }

    fn check_invariants(&self) {
        if let Err(violation) = self.validate() {
            panic!("reservation state invariant broken: {violation}");
        }
    }

    /// Checks what every state must satisfy: at most [`REGISTRATIONS_MAX`] registrations,
    /// none with key zero, one per nexus, and a reservation only while its holder (for the
    /// all-registrants types, any registrant) is registered. [`ReservationState::apply`]
    /// keeps these; [`ReservationState::decode`] refuses bytes that break them.
    pub fn validate(&self) -> Result<(), ReservationDecodeError> {
        let count = self.registrations.len();
        if count > REGISTRATIONS_MAX {
            return Err(ReservationDecodeError::TooManyRegistrations {
                count,
                max: REGISTRATIONS_MAX,
            });
        }
        for (index, registration) in self.registrations.iter().enumerate() {
            if registration.key == 0 {
                return Err(ReservationDecodeError::ZeroKey { index });
            }
            let later = &self.registrations[index + 1..];
            if later.iter().any(|other| other.nexus == registration.nexus) {
                return Err(ReservationDecodeError::DuplicateNexus { index });
            }
        }
        // A reservation never outlives its last holder's registration.
        let Some(reservation) = &self.reservation else {
            return Ok(());
        };
        if reservation.reservation_type.all_registrants() {
            if self.registrations.is_empty() {
                return Err(ReservationDecodeError::NoRegistrants);
            }
        } else if self.key_of(&reservation.holder).is_none() {
            return Err(ReservationDecodeError::HolderNotRegistered);
        }
        Ok(())
    }

    fn require_registered(&self, nexus: &Nexus, key: u64) -> Result<(), PrRefusal> {
        match self.key_of(nexus) {
            Some(registered) if registered == key => Ok(()),
            _ => Err(PrRefusal::Conflict),
        }
    }

    fn register(
        &mut self,
        nexus: &Nexus,
        request: &PrOutRequest,
        ignore_existing_key: bool,
    ) -> Result<(), PrRefusal> {
        let new_key = request.service_action_key;
        match self.key_of(nexus) {
            None => {
                if !ignore_existing_key && request.key != 0 {
                    return Err(PrRefusal::Conflict);
                }
                if new_key == 0 {
                    // Unregistering an unregistered nexus does nothing.
                    return Ok(());
                }
                if self.registrations.len() >= REGISTRATIONS_MAX {
                    return Err(PrRefusal::Sense(Sense::new(
                        SenseKey::IllegalRequest,
                        AdditionalSense::InsufficientRegistrationResources,
                    )));
                }
                self.registrations.push(Registration {
                    nexus: nexus.clone(),
                    key: new_key,
                });
            }
            Some(registered) => {
                if !ignore_existing_key && request.key != registered {
                    return Err(PrRefusal::Conflict);
                }
                if new_key == 0 {
                    self.unregister(nexus);
                } else {
                    for registration in &mut self.registrations {
                        if registration.nexus == *nexus {
                            registration.key = new_key;
                        }
                    }
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(())
    }

    /// Removes the registration of `nexus`, releasing the reservation if it held it alone.
    fn unregister(&mut self, nexus: &Nexus) {
        self.registrations
            .retain(|registration| registration.nexus != *nexus);
        self.drop_orphaned_reservation();
    }

    fn drop_orphaned_reservation(&mut self) {
        let orphaned = match &self.reservation {
            None => false,
            Some(reservation) if reservation.reservation_type.all_registrants() => {
                self.registrations.is_empty()
            }
            Some(reservation) => self.key_of(&reservation.holder).is_none(),
        };
        if orphaned {
            self.reservation = None;
        }
    }

    fn reserve(&mut self, nexus: &Nexus, request: &PrOutRequest) -> Result<(), PrRefusal> {
        self.require_registered(nexus, request.key)?;
        let kind = request
            .reservation_type
            .expect("invariant: parse sets RESERVE's type");
        match &self.reservation {
            None => {
                self.reservation = Some(Reservation {
                    holder: nexus.clone(),
                    reservation_type: kind,
                });
                Ok(())
            }
            // Reserving again what one already holds is a no-op; anything else conflicts.
            Some(reservation) if self.is_holder(nexus) && reservation.reservation_type == kind => {
                Ok(())
            }
            Some(_) => Err(PrRefusal::Conflict),
        }
    }

    fn release(&mut self, nexus: &Nexus, request: &PrOutRequest) -> Result<(), PrRefusal> {
        self.require_registered(nexus, request.key)?;
        let kind = request
            .reservation_type
            .expect("invariant: parse sets RELEASE's type");
        let Some(reservation) = &self.reservation else {
            return Ok(());
        };
        if !self.is_holder(nexus) {
            // A registrant that does not hold the reservation releases nothing, successfully.
            return Ok(());
        }
        if reservation.reservation_type != kind {
            return Err(PrRefusal::Sense(Sense::new(
                SenseKey::IllegalRequest,
                AdditionalSense::InvalidReleaseOfPersistentReservation,
            )));
        }
        self.reservation = None;
        Ok(())
    }

    fn clear(&mut self, nexus: &Nexus, request: &PrOutRequest) -> Result<(), PrRefusal> {
        self.require_registered(nexus, request.key)?;
        self.registrations.clear();
        self.reservation = None;
        self.generation = self.generation.wrapping_add(1);
        Ok(())
    }

    /// PREEMPT (SPC-4 5.12.11.4). The issuing nexus never loses its own registration, even
    /// when it preempts its own key.
    fn preempt(&mut self, nexus: &Nexus, request: &PrOutRequest) -> Result<(), PrRefusal> {
        self.require_registered(nexus, request.key)?;
        let kind = request
            .reservation_type
            .expect("invariant: parse sets PREEMPT's type");
        let victim_key = request.service_action_key;
        let zero_key_refusal = PrRefusal::Sense(Sense::invalid_field_in_parameter_list(8, None));
        match self.reservation.clone() {
            None => {
                if victim_key == 0 {
                    return Err(zero_key_refusal);
                }
                self.remove_key(nexus, victim_key)?;
            }
            Some(reservation) if reservation.reservation_type.all_registrants() => {
                if victim_key == 0 {
                    // Every other registration goes and the issuer takes a new reservation.
                    self.registrations
                        .retain(|registration| registration.nexus == *nexus);
                    self.reservation = Some(Reservation {
                        holder: nexus.clone(),
                        reservation_type: kind,
                    });
                } else {
                    self.remove_key(nexus, victim_key)?;
                }
            }
            Some(reservation) => {
                let holder_key = self.key_of(&reservation.holder);
                let holder_key = holder_key.expect("invariant: the holder is registered");
                if victim_key == holder_key {
                    self.registrations.retain(|registration| {
                        registration.key != victim_key || registration.nexus == *nexus
                    });
                    self.reservation = Some(Reservation {
                        holder: nexus.clone(),
                        reservation_type: kind,
                    });
                } else if victim_key == 0 {
                    return Err(zero_key_refusal);
                } else {
                    self.remove_key(nexus, victim_key)?;
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(())
    }

    /// Removes every registration with `key` but the issuer's; a key nobody else holds is a
    /// conflict.
    fn remove_key(&mut self, issuer: &Nexus, key: u64) -> Result<(), PrRefusal> {
        let count_before = self.registrations.len();
        self.registrations
            .retain(|registration| registration.key != key || registration.nexus == *issuer);
        if self.registrations.len() == count_before {
            return Err(PrRefusal::Conflict);
        }
        self.drop_orphaned_reservation();
        Ok(())
    }
}

/// The store failed; the command gets BUSY and the initiator retries.
#[derive(Debug, thiserror::Error)]
#[error("reservation store failed for volume {volume}")]
pub struct StoreError {
    /// The volume whose state was asked for.
    pub volume: VolumeId,
    /// The store's error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Where the persistent reservation state of every volume lives. Implementations apply
/// [`ReservationState::apply`] atomically: two gateways applying operations to one volume
/// see them in one order.
pub trait ReservationStore: Send + Sync {
    /// The current state of `volume` (empty if it never had any).
    fn load(
        &self,
        volume: VolumeId,
    ) -> impl Future<Output = Result<Arc<ReservationState>, StoreError>> + Send;

    /// Applies `request` from `nexus` to `volume`'s state atomically. The outer error is the
    /// store's; the inner one is the protocol's refusal, which leaves the state unchanged.
    fn apply(
        &self,
        volume: VolumeId,
        nexus: &Nexus,
        request: &PrOutRequest,
    ) -> impl Future<Output = Result<Result<(), PrRefusal>, StoreError>> + Send;
}

/// One store serves every logical unit of a gateway.
impl<T: ReservationStore> ReservationStore for Arc<T> {
    fn load(
        &self,
        volume: VolumeId,
    ) -> impl Future<Output = Result<Arc<ReservationState>, StoreError>> + Send {
        T::load(self, volume)
    }

    fn apply(
        &self,
        volume: VolumeId,
        nexus: &Nexus,
        request: &PrOutRequest,
    ) -> impl Future<Output = Result<Result<(), PrRefusal>, StoreError>> + Send {
        T::apply(self, volume, nexus, request)
    }
}

/// A [`ReservationStore`] in memory: per gateway, lost on restart.
#[derive(Default)]
pub struct MemReservationStore {
    volumes: Mutex<HashMap<VolumeId, Arc<ReservationState>>>,
}

impl MemReservationStore {
    fn volumes(&self) -> std::sync::MutexGuard<'_, HashMap<VolumeId, Arc<ReservationState>>> {
        // Every update replaces one map entry whole, so a poisoned lock is consistent.
        self.volumes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ReservationStore for MemReservationStore {
    fn load(
        &self,
        volume: VolumeId,
    ) -> impl Future<Output = Result<Arc<ReservationState>, StoreError>> + Send {
        let state = self.volumes().get(&volume).cloned().unwrap_or_default();
        future::ready(Ok(state))
    }

    fn apply(
        &self,
        volume: VolumeId,
        nexus: &Nexus,
        request: &PrOutRequest,
    ) -> impl Future<Output = Result<Result<(), PrRefusal>, StoreError>> + Send {
        let mut volumes = self.volumes();
        let state = volumes.entry(volume).or_default();
        let result = Arc::make_mut(state).apply(nexus, request);
        future::ready(Ok(result))
    }
}

/// PERSISTENT RESERVE IN, READ KEYS data (SPC-4 6.14.2).
pub fn read_keys(state: &ReservationState) -> Vec<u8> {
    let mut data = Vec::with_capacity(8 + 8 * state.registrations.len());
    data.extend_from_slice(&state.generation.to_be_bytes());
    data.extend_from_slice(&(8 * state.registrations.len() as u32).to_be_bytes());
    for registration in &state.registrations {
        data.extend_from_slice(&registration.key.to_be_bytes());
    }
    data
}

/// PERSISTENT RESERVE IN, READ RESERVATION data (SPC-4 6.14.3).
pub fn read_reservation(state: &ReservationState) -> Vec<u8> {
    let mut data = Vec::with_capacity(24);
    data.extend_from_slice(&state.generation.to_be_bytes());
    let Some(reservation) = &state.reservation else {
        data.extend_from_slice(&0u32.to_be_bytes());
        return data;
    };
    data.extend_from_slice(&16u32.to_be_bytes());
    // All-registrants reservations report key zero (SPC-4 5.12.10).
    let key = if reservation.reservation_type.all_registrants() {
        0
    } else {
        state
            .key_of(&reservation.holder)
            .expect("invariant: the holder is registered")
    };
    data.extend_from_slice(&key.to_be_bytes());
    data.extend_from_slice(&[0; 4]); // Obsolete scope-specific address.
    data.push(0);
    data.push(reservation.reservation_type.code()); // SCOPE 0h (LU_SCOPE) | TYPE.
    data.extend_from_slice(&[0; 2]);
    assert_eq!(data.len(), 24);
    data
}

/// PERSISTENT RESERVE IN, REPORT CAPABILITIES data (SPC-4 6.14.4): no CRH, SIP_C, ATP_C or
/// PTPL_C; the type mask lists the six types we implement.
pub fn report_capabilities() -> Vec<u8> {
    vec![
        0x00, 0x08, // LENGTH.
        0x00, // RLR_C, CRH, SIP_C, ATP_C, PTPL_C all zero.
        0x80, // TMV: the type mask is valid. ALLOW COMMANDS 0, PTPL_A 0.
        0xEA, // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX.
        0x01, // EX_AC_AR.
        0x00, 0x00,
    ]
}

/// PERSISTENT RESERVE IN, READ FULL STATUS data (SPC-4 6.14.5), with iSCSI TransportIDs in
/// the initiator-port form (format 01b: name,i,0xISID).
pub fn read_full_status(state: &ReservationState) -> Vec<u8> {
    let mut descriptors = Vec::new();
    for registration in &state.registrations {
        descriptors.extend_from_slice(&registration.key.to_be_bytes());
        descriptors.extend_from_slice(&[0; 4]);
        let holder = state.is_holder(&registration.nexus);
        descriptors.push(u8::from(holder)); // R_HOLDER; ALL_TG_PT is never set.
        let scope_type = match &state.reservation {
            Some(reservation) if holder => reservation.reservation_type.code(),
            _ => 0,
        };
        descriptors.push(scope_type);
        descriptors.extend_from_slice(&[0; 4]);
        descriptors.extend_from_slice(&registration.nexus.relative_target_port().to_be_bytes());
        let transport_id = iscsi_transport_id(registration.nexus.initiator_port());
        descriptors.extend_from_slice(&(transport_id.len() as u32).to_be_bytes());
        descriptors.extend_from_slice(&transport_id);
    }
    let mut data = Vec::with_capacity(8 + descriptors.len());
    data.extend_from_slice(&state.generation.to_be_bytes());
    data.extend_from_slice(&(descriptors.len() as u32).to_be_bytes());
    data.extend_from_slice(&descriptors);
    data
}

/// An iSCSI TransportID naming an initiator port (SPC-4 7.6.4.6, format 01b): the name is
/// NUL-terminated and padded to a multiple of 4 bytes, at least 20.
fn iscsi_transport_id(initiator_port: &str) -> Vec<u8> {
    let mut name = initiator_port.as_bytes().to_vec();
    name.push(0);
    while name.len() < 20 || !name.len().is_multiple_of(4) {
        name.push(0);
    }
    let mut id = vec![0x45, 0x00]; // FORMAT CODE 01b, PROTOCOL IDENTIFIER 5h (iSCSI).
    id.extend_from_slice(&(name.len() as u16).to_be_bytes());
    id.extend_from_slice(&name);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nexus(initiator: &str) -> Nexus {
        Nexus::new(
            initiator,
            [0x23, 0x3D, 0, 0, 0, 1],
            "iqn.2026-01.io.cairn:vol",
            1,
        )
        .expect("valid names")
    }

    fn request(action: PrOutAction, key: u64, service_action_key: u64) -> PrOutRequest {
        PrOutRequest {
            action,
            reservation_type: Some(ReservationType::WriteExclusive),
            key,
            service_action_key,
        }
    }

    #[test]
    fn port_names() {
        let nexus = nexus("iqn.1993-08.org.debian:01:abc");
        assert_eq!(
            nexus.initiator_port(),
            "iqn.1993-08.org.debian:01:abc,i,0x233d00000001"
        );
        assert_eq!(nexus.target_port(), "iqn.2026-01.io.cairn:vol,t,0x0001");
        assert!(matches!(
            Nexus::new("a,b", [0; 6], "t", 1),
            Err(NameError::BadCharacter {
                field: "initiator name"
            })
        ));
    }

    /// Walks REGISTER with wrong and right keys, key change and unregister, and checks the
    /// generation moves only on success.
    #[test]
    fn register_rules() {
        let a = nexus("iqn.a");
        let mut state = ReservationState::default();
        let register = |key, new| request(PrOutAction::Register, key, new);
        assert_eq!(state.apply(&a, &register(5, 7)), Err(PrRefusal::Conflict));
        assert_eq!(state.generation, 0);
        assert_eq!(state.apply(&a, &register(0, 7)), Ok(()));
        assert_eq!(state.key_of(&a), Some(7));
        assert_eq!(state.apply(&a, &register(8, 9)), Err(PrRefusal::Conflict));
        assert_eq!(state.apply(&a, &register(7, 9)), Ok(()));
        let ignore = request(PrOutAction::RegisterAndIgnoreExistingKey, 1234, 11);
        assert_eq!(state.apply(&a, &ignore), Ok(()));
        assert_eq!(state.key_of(&a), Some(11));
        assert_eq!(state.generation, 3);
        assert_eq!(state.apply(&a, &register(11, 0)), Ok(()));
        assert_eq!(state.key_of(&a), None);
    }

    /// The access table for each type, from a holder, a registrant and a stranger.
    #[test]
    fn access_table() {
        let (holder, registrant, stranger) = (nexus("iqn.h"), nexus("iqn.r"), nexus("iqn.s"));
        for code in [1u8, 3, 5, 6, 7, 8] {
            let kind = ReservationType::from_code(code).expect("valid type");
            let mut state = ReservationState::default();
            for (nexus, key) in [(&holder, 1), (&registrant, 2)] {
                state
                    .apply(nexus, &request(PrOutAction::Register, 0, key))
                    .expect("register");
            }
            let mut reserve = request(PrOutAction::Reserve, 1, 0);
            reserve.reservation_type = Some(kind);
            state.apply(&holder, &reserve).expect("reserve");
            for access in [Access::Always, Access::Read, Access::Write] {
                assert!(state.allows(&holder, access));
                assert!(state.allows(&stranger, Access::Always));
            }
            let exclusive = code == 3 || code >= 6 && code != 7;
            assert_eq!(
                state.allows(&stranger, Access::Read),
                !exclusive,
                "type {code}"
            );
            assert!(!state.allows(&stranger, Access::Write), "type {code}");
            let registrants = code >= 5;
            assert_eq!(
                state.allows(&registrant, Access::Write),
                registrants,
                "type {code}"
            );
            assert_eq!(
                state.allows(&registrant, Access::Read),
                registrants || code == 1,
                "type {code}"
            );
        }
    }

    /// PREEMPT of the holder's key moves the reservation and removes the holder; PREEMPT of
    /// a key nobody has conflicts; RELEASE with the wrong type is an invalid release.
    #[test]
    fn preempt_and_release() {
        let (a, b) = (nexus("iqn.a"), nexus("iqn.b"));
        let mut state = ReservationState::default();
        state
            .apply(&a, &request(PrOutAction::Register, 0, 1))
            .expect("register a");
        state
            .apply(&b, &request(PrOutAction::Register, 0, 2))
            .expect("register b");
        state
            .apply(&a, &request(PrOutAction::Reserve, 1, 0))
            .expect("reserve");
        assert_eq!(
            state.apply(&b, &request(PrOutAction::Preempt, 2, 9)),
            Err(PrRefusal::Conflict)
        );
        let mut preempt = request(PrOutAction::Preempt, 2, 1);
        preempt.reservation_type = Some(ReservationType::ExclusiveAccess);
        state.apply(&b, &preempt).expect("preempt");
        assert_eq!(state.key_of(&a), None);
        assert!(state.is_holder(&b));
        let release = request(PrOutAction::Release, 2, 0);
        assert!(matches!(
            state.apply(&b, &release),
            Err(PrRefusal::Sense(_))
        ));
        let mut release = release;
        release.reservation_type = Some(ReservationType::ExclusiveAccess);
        state.apply(&b, &release).expect("release");
        assert_eq!(state.reservation, None);
    }

    #[test]
    fn full_status_transport_id() {
        let id = iscsi_transport_id("iqn.a,i,0x000000000001");
        assert_eq!(&id[..4], &[0x45, 0x00, 0x00, 24]);
        assert_eq!(id.len(), 28);
        assert_eq!(&id[4..26], b"iqn.a,i,0x000000000001");
        assert_eq!(&id[26..], &[0, 0]);
    }
}
