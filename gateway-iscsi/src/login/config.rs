//! What the login layer needs to know about this portal's targets (plain data the server
//! fills from metadata), and the checks that make it safe to use.

use std::sync::Arc;

use super::{
    chap::{self, ChapAuth, ChapCredentials},
    negotiate::{OperationalLimits, SEGMENT_LEN_MAX, SEGMENT_LEN_MIN, TIME2_MAX},
    text,
};

/// Most targets behind one portal. Bounds the SendTargets answer: 1024 targets of at most
/// 223-byte names and 255-byte portal addresses stay under [`super::TEXT_RESPONSE_LEN_MAX`].
pub const TARGETS_MAX: usize = 1024;
/// Most initiator names in one target's ACL.
pub const ACL_LEN_MAX: usize = 1024;
/// Longest iSCSI name (RFC 7143 iSCSI names: 223 bytes).
pub const NAME_LEN_MAX: usize = 223;
/// Largest command window (MaxCmdSN - ExpCmdSN + 1) we advertise: half the serial number
/// space would make comparisons ambiguous; far less is plenty.
pub const CMD_WINDOW_MAX: u32 = 1 << 16;

/// One target behind the portal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetConfig {
    /// TargetName (an IQN such as `iqn.2024-01.io.cairn:volume-1`), compared ignoring ASCII
    /// case as iSCSI names are case-insensitive.
    pub name: String,
    /// TargetAlias, declared to initiators at login when set.
    pub alias: Option<String>,
    /// CHAP required for this target; `None` lets initiators in without authentication.
    pub chap: Option<ChapAuth>,
    /// Initiator names allowed to log in and to see this target in SendTargets; empty means
    /// every initiator.
    pub allowed_initiators: Vec<String>,
}

impl TargetConfig {
    /// Whether `initiator` may access this target.
    pub fn allows(&self, initiator: &str) -> bool {
        self.allowed_initiators.is_empty()
            || self
                .allowed_initiators
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(initiator))
    }
}

/// Everything login and discovery need, as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginConfig {
    /// Targets behind this portal.
    pub targets: Vec<TargetConfig>,
    /// CHAP required for discovery sessions; `None` lets anyone discover.
    pub discovery_chap: Option<ChapAuth>,
    /// TargetPortalGroupTag declared in the first login response of normal sessions.
    pub portal_group_tag: u16,
    /// What we offer in operational negotiation.
    pub limits: OperationalLimits,
    /// Commands the initiator may have outstanding at the end of login: login responses
    /// advertise MaxCmdSN = ExpCmdSN + `cmd_window` - 1.
    pub cmd_window: u32,
}

impl Default for LoginConfig {
    fn default() -> LoginConfig {
        LoginConfig {
            targets: Vec::new(),
            discovery_chap: None,
            portal_group_tag: 1,
            limits: OperationalLimits::default(),
            cmd_window: 128,
        }
    }
}

/// What is wrong with a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// More than [`TARGETS_MAX`] targets.
    #[error("{count} targets exceed the limit of {max}")]
    TooManyTargets {
        /// Targets configured.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A target or initiator name that is empty, too long, or not a valid text value.
    #[error("invalid iSCSI name {name:?}")]
    BadName {
        /// The name.
        name: String,
    },
    /// Two targets with the same name.
    #[error("target {name} is configured twice")]
    DuplicateTarget {
        /// The name.
        name: String,
    },
    /// An alias that is too long or not a valid text value.
    #[error("target {target}: invalid alias")]
    BadAlias {
        /// The target.
        target: String,
    },
    /// An ACL longer than [`ACL_LEN_MAX`].
    #[error("target {target}: ACL of {count} names exceeds {max}")]
    AclTooLong {
        /// The target.
        target: String,
        /// Names in the ACL.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A CHAP user name that is empty, too long, or not a valid text value.
    #[error("{scope}: invalid CHAP user name")]
    BadChapUser {
        /// The target name, or "discovery".
        scope: String,
    },
    /// A CHAP secret outside [`chap::SECRET_LEN_MIN`]..=[`chap::SECRET_LEN_MAX`] bytes.
    #[error("{scope}: CHAP secret of {len} bytes, want {min}..={max}")]
    ChapSecretLength {
        /// The target name, or "discovery".
        scope: String,
        /// Bytes in the secret.
        len: usize,
        /// Minimum.
        min: usize,
        /// Maximum.
        max: usize,
    },
    /// Mutual CHAP with the same secret both ways: a reflection attack could then make the
    /// target answer its own challenge for the attacker.
    #[error("{scope}: the mutual CHAP secret equals the initiator's secret")]
    MutualSecretReused {
        /// The target name, or "discovery".
        scope: String,
    },
    /// An operational limit outside RFC 7143's range or inconsistent with another.
    #[error("operational limit {key}={value} is out of range")]
    LimitOutOfRange {
        /// The key.
        key: &'static str,
        /// The configured value.
        value: u32,
    },
}

/// A configuration that passed [`LoginConfig::check`]; the only kind [`super::Login`] takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedConfig(LoginConfig);

impl CheckedConfig {
    /// The configuration.
    pub fn get(&self) -> &LoginConfig {
        &self.0
    }

    /// The target named `name` (ignoring ASCII case).
    pub fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.0
            .targets
            .iter()
            .find(|target| target.name.eq_ignore_ascii_case(name))
    }
}

impl LoginConfig {
    /// Checks limits and credentials and wraps the configuration for [`super::Login::new`].
    pub fn check(self) -> Result<Arc<CheckedConfig>, ConfigError> {
        if self.targets.len() > TARGETS_MAX {
            return Err(ConfigError::TooManyTargets {
                count: self.targets.len(),
                max: TARGETS_MAX,
            });
        }
        for (index, target) in self.targets.iter().enumerate() {
            check_name(&target.name)?;
            if self.targets[..index]
                .iter()
                .any(|other| other.name.eq_ignore_ascii_case(&target.name))
            {
                return Err(ConfigError::DuplicateTarget {
                    name: target.name.clone(),
                });
            }
            if let Some(alias) = &target.alias
                && !is_text_value(alias, text::VALUE_LEN_MAX)
            {
                return Err(ConfigError::BadAlias {
                    target: target.name.clone(),
                });
            }
            if target.allowed_initiators.len() > ACL_LEN_MAX {
                return Err(ConfigError::AclTooLong {
                    target: target.name.clone(),
                    count: target.allowed_initiators.len(),
                    max: ACL_LEN_MAX,
                });
            }
            for initiator in &target.allowed_initiators {
                check_name(initiator)?;
            }
            if let Some(auth) = &target.chap {
                check_chap(auth, &target.name)?;
            }
        }
        if let Some(auth) = &self.discovery_chap {
            check_chap(auth, "discovery")?;
        }
        self.check_limits()?;
        Ok(Arc::new(CheckedConfig(self)))
    }

    fn check_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        let segment = SEGMENT_LEN_MIN..=SEGMENT_LEN_MAX;
        let out_of_range = |key, value| Err(ConfigError::LimitOutOfRange { key, value });
        if !segment.contains(&limits.max_recv_data_segment_len) {
            return out_of_range("MaxRecvDataSegmentLength", limits.max_recv_data_segment_len);
        }
        if !segment.contains(&limits.max_burst_len) {
            return out_of_range("MaxBurstLength", limits.max_burst_len);
        }
        if !segment.contains(&limits.first_burst_len)
            || limits.first_burst_len > limits.max_burst_len
        {
            return out_of_range("FirstBurstLength", limits.first_burst_len);
        }
        if limits.max_outstanding_r2t == 0 {
            return out_of_range("MaxOutstandingR2T", 0);
        }
        if limits.max_connections == 0 {
            return out_of_range("MaxConnections", 0);
        }
        if limits.default_time2wait > TIME2_MAX {
            return out_of_range("DefaultTime2Wait", u32::from(limits.default_time2wait));
        }
        if limits.default_time2retain > TIME2_MAX {
            return out_of_range("DefaultTime2Retain", u32::from(limits.default_time2retain));
        }
        if self.cmd_window == 0 || self.cmd_window > CMD_WINDOW_MAX {
            return out_of_range("cmd_window", self.cmd_window);
        }
        Ok(())
    }
}

/// A string we can send as a text value: no NUL, within `max` bytes.
fn is_text_value(value: &str, max: usize) -> bool {
    value.len() <= max && !value.contains('\0')
}

fn check_name(name: &str) -> Result<(), ConfigError> {
    // Names go into SendTargets answers and login keys; ',' would split them as a list.
    let valid = !name.is_empty() && is_text_value(name, NAME_LEN_MAX) && !name.contains(',');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::BadName {
            name: name.to_owned(),
        })
    }
}

fn check_chap(auth: &ChapAuth, scope: &str) -> Result<(), ConfigError> {
    check_credentials(&auth.initiator, scope)?;
    if let Some(target) = &auth.target {
        check_credentials(target, scope)?;
        if target.secret.same_as(&auth.initiator.secret) {
            return Err(ConfigError::MutualSecretReused {
                scope: scope.to_owned(),
            });
        }
    }
    Ok(())
}

fn check_credentials(credentials: &ChapCredentials, scope: &str) -> Result<(), ConfigError> {
    if credentials.user.is_empty() || !is_text_value(&credentials.user, text::VALUE_LEN_MAX) {
        return Err(ConfigError::BadChapUser {
            scope: scope.to_owned(),
        });
    }
    let len = credentials.secret.len();
    if !(chap::SECRET_LEN_MIN..=chap::SECRET_LEN_MAX).contains(&len) {
        return Err(ConfigError::ChapSecretLength {
            scope: scope.to_owned(),
            len,
            min: chap::SECRET_LEN_MIN,
            max: chap::SECRET_LEN_MAX,
        });
    }
    Ok(())
}
