//! Admin API routes for block volumes' QoS and iSCSI: what the iSCSI gateways read (their
//! targets with credentials, persistent reservations, portals) and what operators set.
//!
//! ```text
//! PUT    /volumes/{name}/qos             {tier?, iops_max?, bytes_per_s_max?}: the tier (kept
//!                                        when absent) and custom limits (absent: none)
//! PUT    /volumes/{name}/iscsi-access    {chap_user?, chap_secret?, mutual_user?,
//!                                        mutual_secret?, initiators?}   DELETE: back to defaults
//! GET    /volumes/{name}/reservation     {version, state (hex)}: version 0 means none yet
//! PUT    /volumes/{name}/reservation     {expected, state (hex)}: 412 if the version moved on
//! GET    /volumes/{name}/attach-info     portals, target name, LUN, CHAP user
//! GET    /iscsi/targets                  every volume with its owner id, limits and access,
//!                                        secrets included (gateways only)
//! GET    /iscsi/portals                  PUT|DELETE /iscsi/portals/{address} {group_tag}
//! ```

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Api, body, error, parse_tier, read, write};
use crate::state::{ChapCredential, Command, IscsiAccess, MetaError, MetaState, Portal, SecretKey};

/// The IQN every volume's target name starts with (RFC 7143: `iqn.`, the month the naming
/// authority owned its domain, the reversed domain, then our own part).
pub const IQN_PREFIX: &str = "iqn.2026-12.io.cairn:";

/// The CHAP user a target asks for when its volume sets none (the gateway's own credential).
pub const DEFAULT_CHAP_USER: &str = "cairn";

/// The target name of `volume` (chunks keyed by `owner`). A volume name that is already a
/// valid iSCSI name part (a-z, 0-9, '-', '.') is used as it is; any other is lowercased, '_'
/// becomes '-', and the owner id follows after a ':' (a character volume names never hold),
/// so two volumes never share a target name although iSCSI names ignore case.
pub fn target_name(volume: &str, owner: cairn_common::OwnerId) -> String {
    let plain = volume
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if plain {
        return format!("{IQN_PREFIX}{volume}");
    }
    let mapped: String = volume
        .chars()
        .map(|c| match c {
            '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    format!("{IQN_PREFIX}{mapped}:{}", owner.0)
}

fn not_found(kind: &'static str, name: String) -> MetaError {
    MetaError::NotFound { kind, name }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetQos {
    tier: Option<String>,
    iops_max: Option<u32>,
    bytes_per_s_max: Option<u64>,
}

pub(super) async fn set_qos(
    State(api): State<Api>,
    Path(name): Path<String>,
    parsed: Result<Json<SetQos>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let tier = match &request.tier {
        Some(tier) => parse_tier(tier)?,
        None => {
            let wanted = name.clone();
            let current = super::read_value(&api, move |state| {
                let volume = state
                    .volume(&wanted)
                    .ok_or_else(|| not_found("volume", wanted.clone()))?;
                Ok(json!(super::tier_name(volume.tier)))
            })
            .await?;
            parse_tier(current.as_str().unwrap_or("normal"))?
        }
    };
    let command = Command::SetVolumeQos {
        name: name.clone(),
        tier,
        iops_max: request.iops_max,
        bytes_per_s_max: request.bytes_per_s_max,
    };
    write(&api, command).await?;
    let shown = name.clone();
    Ok(read(&api, move |state| {
        let volume = state
            .volume(&shown)
            .ok_or_else(|| not_found("volume", shown.clone()))?;
        Ok(super::volume_json(&shown, volume))
    })
    .await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetAccess {
    chap_user: Option<String>,
    chap_secret: Option<String>,
    mutual_user: Option<String>,
    mutual_secret: Option<String>,
    #[serde(default)]
    initiators: Vec<String>,
}

/// A credential from a user and a secret given together (or neither).
fn credential(
    which: &str,
    user: Option<String>,
    secret: Option<String>,
) -> Result<Option<ChapCredential>, Response> {
    match (user, secret) {
        (Some(user), Some(secret)) => Ok(Some(ChapCredential {
            user,
            secret: SecretKey::new(secret),
        })),
        (None, None) => Ok(None),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            format!("{which}: give the user and the secret together"),
        )),
    }
}

pub(super) async fn set_access(
    State(api): State<Api>,
    Path(name): Path<String>,
    parsed: Result<Json<SetAccess>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let access = IscsiAccess {
        chap: credential("CHAP", request.chap_user, request.chap_secret)?,
        mutual: credential("mutual CHAP", request.mutual_user, request.mutual_secret)?,
        initiators: request.initiators,
    };
    let view = access_json(Some(&access), false);
    let command = Command::SetVolumeAccess {
        name: name.clone(),
        access: Some(access),
    };
    write(&api, command).await?;
    Ok(Json(json!({ "name": name, "iscsi_access": view })).into_response())
}

pub(super) async fn clear_access(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Response, Response> {
    let command = Command::SetVolumeAccess {
        name: name.clone(),
        access: None,
    };
    write(&api, command).await?;
    Ok(Json(json!({ "name": name, "iscsi_access": null })).into_response())
}

/// A volume's access rules as JSON; secrets only when `secrets` (the gateways' listing).
pub(super) fn access_json(access: Option<&IscsiAccess>, secrets: bool) -> Value {
    let Some(access) = access else {
        return Value::Null;
    };
    let credential = |c: &Option<ChapCredential>| match c {
        Some(c) if secrets => json!({ "user": c.user, "secret": c.secret.expose() }),
        Some(c) => json!({ "user": c.user }),
        None => Value::Null,
    };
    json!({
        "chap": credential(&access.chap),
        "mutual": credential(&access.mutual),
        "initiators": access.initiators,
    })
}

pub(super) async fn targets(State(api): State<Api>) -> Response {
    read(&api, |state| {
        let targets: Vec<Value> = state
            .volumes()
            .map(|(name, volume)| {
                json!({
                    "name": name,
                    "id": format!("{:x}", volume.id.0),
                    "target": target_name(name, volume.id),
                    "iops_max": volume.iops_limit(),
                    "bytes_per_s_max": volume.bytes_per_s_max,
                    "access": access_json(volume.iscsi.as_ref(), true),
                })
            })
            .collect();
        Ok(Value::Array(targets))
    })
    .await
}

/// Bytes as lowercase hexadecimal (how reservation states travel in JSON).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What [`hex`] wrote; `None` for anything else.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

pub(super) async fn reservation(State(api): State<Api>, Path(name): Path<String>) -> Response {
    read(&api, move |state| {
        let volume = state
            .volume(&name)
            .ok_or_else(|| not_found("volume", name.clone()))?;
        Ok(match &volume.reservation {
            Some(r) => json!({ "version": r.version, "state": hex(&r.state) }),
            None => json!({ "version": 0, "state": "" }),
        })
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetReservation {
    expected: u64,
    state: String,
}

pub(super) async fn set_reservation(
    State(api): State<Api>,
    Path(name): Path<String>,
    parsed: Result<Json<SetReservation>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let state = unhex(&request.state)
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "state: hexadecimal bytes"))?;
    let command = Command::SetReservation {
        name: name.clone(),
        expected: request.expected,
        state,
    };
    write(&api, command).await?;
    Ok(Json(json!({ "name": name, "version": request.expected + 1 })).into_response())
}

fn portals_json(state: &MetaState) -> Value {
    let portals: Vec<Value> = state
        .portals()
        .map(|(address, p)| json!({ "address": address, "group_tag": p.group_tag }))
        .collect();
    Value::Array(portals)
}

pub(super) async fn portals(State(api): State<Api>) -> Response {
    read(&api, |state| Ok(portals_json(state))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddPortal {
    #[serde(default = "one")]
    group_tag: u16,
}

fn one() -> u16 {
    1
}

pub(super) async fn add_portal(
    State(api): State<Api>,
    Path(address): Path<String>,
    parsed: Result<Json<AddPortal>, JsonRejection>,
) -> Result<Response, Response> {
    let request = body(parsed)?;
    let command = Command::AddPortal {
        address: address.clone(),
        portal: Portal {
            group_tag: request.group_tag,
        },
    };
    write(&api, command).await?;
    Ok(Json(json!({ "address": address, "group_tag": request.group_tag })).into_response())
}

pub(super) async fn remove_portal(
    State(api): State<Api>,
    Path(address): Path<String>,
) -> Result<Response, Response> {
    write(
        &api,
        Command::RemovePortal {
            address: address.clone(),
        },
    )
    .await?;
    Ok(Json(json!({ "removed": address })).into_response())
}

pub(super) async fn attach_info(State(api): State<Api>, Path(name): Path<String>) -> Response {
    read(&api, move |state| {
        let volume = state
            .volume(&name)
            .ok_or_else(|| not_found("volume", name.clone()))?;
        let access = volume.iscsi.as_ref();
        let chap_user = access
            .and_then(|a| a.chap.as_ref())
            .map_or(DEFAULT_CHAP_USER, |c| c.user.as_str());
        let portals: Vec<&String> = state.portals().map(|(address, _)| address).collect();
        Ok(json!({
            "volume": name,
            "protocol": "iscsi",
            "portal": portals.first(),
            "portals": portals,
            "target": target_name(&name, volume.id),
            "lun": 0,
            "chap_user": chap_user,
            "mutual_chap_user": access.and_then(|a| a.mutual.as_ref()).map(|c| &c.user),
            "initiators": access.map(|a| &a.initiators),
        }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use cairn_common::OwnerId;

    use super::*;

    #[test]
    fn target_names_are_valid_and_distinct() {
        assert_eq!(
            target_name("vol-1.a", OwnerId(9)),
            "iqn.2026-12.io.cairn:vol-1.a"
        );
        let upper = target_name("Vol_1", OwnerId(9));
        let lower = target_name("vol-1", OwnerId(10));
        assert_eq!(upper, "iqn.2026-12.io.cairn:vol-1:9");
        assert_ne!(upper.to_ascii_lowercase(), lower.to_ascii_lowercase());
        for name in [upper, lower] {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b)),
                "{name}"
            );
        }
    }

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        assert_eq!(
            unhex(&hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(unhex(""), Some(vec![]));
        for junk in ["a", "zz", "0g", "éé"] {
            assert_eq!(unhex(junk), None, "{junk}");
        }
    }

    #[test]
    fn listings_hide_secrets_unless_asked() {
        let access = IscsiAccess {
            chap: Some(ChapCredential {
                user: "u".into(),
                secret: SecretKey::new("top-secret-value".into()),
            }),
            mutual: None,
            initiators: vec![],
        };
        assert!(
            !access_json(Some(&access), false)
                .to_string()
                .contains("top-secret")
        );
        assert!(
            access_json(Some(&access), true)
                .to_string()
                .contains("top-secret")
        );
    }
}
