//! Text key=value segments (RFC 7143 section 6): parsing with limits, encoding,
//! and the value grammars (numbers, booleans, lists, binary).

/// Longest key name (RFC 7143 section 6).
pub const KEY_LEN_MAX: usize = 63;
/// Longest ordinary value (RFC 7143 section 6: 255 bytes).
pub const VALUE_LEN_MAX: usize = 255;
/// Longest value of a key RFC 7143 types as a large binary value (CHAP_C, CHAP_R): 8192 bytes.
pub const LARGE_VALUE_LEN_MAX: usize = 8192;
/// Most pairs in one text (possibly spread over Continue PDUs). open-iscsi sends about 20 in
/// its largest PDU; 64 leaves room while bounding the answers we build to well under the
/// 8192 bytes a login response may carry.
pub const PAIRS_MAX: usize = 64;
/// Most text bytes accumulated over Continue PDUs before we give up. 64 pairs of maximum
/// ordinary size plus two large binary values fit: 64 * 320 + 2 * 8200 < 64 KiB.
pub const TEXT_LEN_MAX: usize = 64 * 1024;

const _: () = assert!(
    PAIRS_MAX * (KEY_LEN_MAX + VALUE_LEN_MAX + 2) + 2 * (LARGE_VALUE_LEN_MAX + 8) <= TEXT_LEN_MAX
);

/// The value meaning "your value is not acceptable".
pub const REJECT: &str = "Reject";
/// The value meaning "this key does not apply here".
pub const IRRELEVANT: &str = "Irrelevant";
/// The value meaning "I do not know this key".
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";

/// What is wrong with a text segment.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// The text (accumulated over Continue PDUs) exceeds [`TEXT_LEN_MAX`].
    #[error("text of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Bytes seen.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More than [`PAIRS_MAX`] pairs.
    #[error("more than {max} key=value pairs")]
    TooManyPairs {
        /// The limit.
        max: usize,
    },
    /// A pair without '='.
    #[error("pair {index} has no '='")]
    MissingEquals {
        /// Position of the pair, from 0.
        index: usize,
    },
    /// A key that is empty, longer than [`KEY_LEN_MAX`], or has characters outside RFC 7143's
    /// key-name set.
    #[error("pair {index}: malformed key")]
    BadKey {
        /// Position of the pair, from 0.
        index: usize,
    },
    /// A value longer than its key allows.
    #[error("key {key}: value of {len} bytes exceeds {max}")]
    ValueTooLong {
        /// The key.
        key: String,
        /// Bytes in the value.
        len: usize,
        /// The limit for this key.
        max: usize,
    },
    /// A value that is not UTF-8.
    #[error("key {key}: value is not UTF-8")]
    ValueNotUtf8 {
        /// The key.
        key: String,
    },
    /// The same key twice in one text (RFC 7143 section 6 forbids it).
    #[error("key {key} appears twice")]
    DuplicateKey {
        /// The key.
        key: String,
    },
}

/// Key=value pairs in the order received.
pub type Pairs = Vec<(String, String)>;

/// The value of `key` in `pairs`, if present.
pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The longest value `key` may carry.
pub fn value_len_max(key: &str) -> usize {
    match key {
        "CHAP_C" | "CHAP_R" => LARGE_VALUE_LEN_MAX,
        _ => VALUE_LEN_MAX,
    }
}

/// Whether `key` is a well-formed key name: 1..=63 letters, digits or `.-+@_#` (`#` for the
/// IANA-registered `X#` extension keys).
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= KEY_LEN_MAX
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-+@_#".contains(&b))
}

/// Parses a complete text (all Continue PDUs joined): NUL-terminated `key=value` pairs.
///
/// Lenient where it costs nothing: empty entries (stray NULs) are skipped and a final pair
/// missing its NUL is accepted. Strict where it matters: limits, key syntax, UTF-8 values,
/// no duplicate keys.
pub fn parse(text: &[u8]) -> Result<Pairs, TextError> {
    if text.len() > TEXT_LEN_MAX {
        return Err(TextError::TooLong {
            len: text.len(),
            max: TEXT_LEN_MAX,
        });
    }
    let mut pairs: Pairs = Vec::new();
    for (index, entry) in text
        .split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        if pairs.len() == PAIRS_MAX {
            return Err(TextError::TooManyPairs { max: PAIRS_MAX });
        }
        let equals = entry
            .iter()
            .position(|&b| b == b'=')
            .ok_or(TextError::MissingEquals { index })?;
        let key = std::str::from_utf8(&entry[..equals])
            .ok()
            .filter(|key| is_valid_key(key))
            .ok_or(TextError::BadKey { index })?;
        let value = &entry[equals + 1..];
        let max = value_len_max(key);
        if value.len() > max {
            return Err(TextError::ValueTooLong {
                key: key.to_owned(),
                len: value.len(),
                max,
            });
        }
        let value = std::str::from_utf8(value).map_err(|_| TextError::ValueNotUtf8 {
            key: key.to_owned(),
        })?;
        if get(&pairs, key).is_some() {
            return Err(TextError::DuplicateKey {
                key: key.to_owned(),
            });
        }
        pairs.push((key.to_owned(), value.to_owned()));
    }
    assert!(pairs.len() <= PAIRS_MAX);
    Ok(pairs)
}

/// Appends `key=value\0` for each pair. Panics on a malformed key or a value with a NUL: the
/// target only encodes what it built or already validated.
pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)], out: &mut Vec<u8>) {
    for (key, value) in pairs {
        let (key, value) = (key.as_ref(), value.as_ref());
        assert!(is_valid_key(key), "malformed key {key:?}");
        assert!(
            !value.as_bytes().contains(&0),
            "value of {key} contains NUL"
        );
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
}

/// Items of a list value (`CRC32C,None`).
pub fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',')
}

/// A boolean value: `Yes` or `No`.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

/// The text form of a boolean.
pub fn bool_value(value: bool) -> &'static str {
    if value { "Yes" } else { "No" }
}

/// A numerical value: decimal, or hexadecimal with `0x` (RFC 7143 section 6 allows both).
pub fn parse_number(value: &str) -> Option<u64> {
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        // str::from_str_radix would accept a leading '+'; the grammar does not.
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// A binary value: `0x` + hex digits or `0b` + base64 (RFC 7143 section 6, binary-value).
/// An odd number of hex digits is read with an implied leading zero.
pub fn parse_binary(value: &str) -> Option<Vec<u8>> {
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        return decode_hex(hex);
    }
    if let Some(base64) = value
        .strip_prefix("0b")
        .or_else(|| value.strip_prefix("0B"))
    {
        return decode_base64(base64);
    }
    None
}

/// The `0x` hex form of binary data, as we send CHAP_C and CHAP_R.
pub fn hex_value(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("0x");
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() {
        return None;
    }
    let nibble = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let bytes = hex.as_bytes();
    let mut out = Vec::with_capacity(bytes.len().div_ceil(2));
    let mut rest = bytes;
    if bytes.len() % 2 == 1 {
        out.push(nibble(bytes[0])?);
        rest = &bytes[1..];
    }
    for pair in rest.chunks_exact(2) {
        out.push(nibble(pair[0])? << 4 | nibble(pair[1])?);
    }
    Some(out)
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn sextet(b: u8) -> Option<u32> {
        let value = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(value))
    }
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let groups = bytes.len() / 4;
    for (index, group) in bytes.chunks_exact(4).enumerate() {
        let last = index + 1 == groups;
        let padding = group.iter().rev().take_while(|&&b| b == b'=').count();
        // Padding only at the very end, at most two characters.
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut word = 0u32;
        for &b in &group[..4 - padding] {
            word = word << 6 | sextet(b)?;
        }
        word <<= 6 * padding as u32;
        let decoded = word.to_be_bytes();
        out.extend_from_slice(&decoded[1..4 - padding]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::{collection::vec, prelude::*};

    use super::*;

    #[test]
    fn parses_pairs_in_order() {
        let pairs =
            parse(b"HeaderDigest=CRC32C,None\0MaxBurstLength=262144\0X-com.a_b=\0").unwrap();
        assert_eq!(pairs.len(), 3);
        assert_eq!(get(&pairs, "HeaderDigest"), Some("CRC32C,None"));
        assert_eq!(list("CRC32C,None").collect::<Vec<_>>(), ["CRC32C", "None"]);
        assert_eq!(get(&pairs, "X-com.a_b"), Some(""));
        assert_eq!(pairs[1].0, "MaxBurstLength");
    }

    #[test]
    fn round_trips_through_encode() {
        let pairs = vec![
            ("TargetName", "iqn.2024-01.io.cairn:vol1"),
            ("TargetAddress", "10.0.0.1:3260,1"),
        ];
        let mut out = Vec::new();
        encode(&pairs, &mut out);
        assert_eq!(
            out,
            b"TargetName=iqn.2024-01.io.cairn:vol1\0TargetAddress=10.0.0.1:3260,1\0"
        );
        let parsed = parse(&out).unwrap();
        assert_eq!(
            parsed[0],
            (
                "TargetName".to_owned(),
                "iqn.2024-01.io.cairn:vol1".to_owned()
            )
        );
    }

    #[test]
    fn refuses_malformed_text() {
        assert_eq!(
            parse(b"a=1\0a=2\0"),
            Err(TextError::DuplicateKey { key: "a".into() })
        );
        assert_eq!(
            parse(b"novalue\0"),
            Err(TextError::MissingEquals { index: 0 })
        );
        assert_eq!(parse(b"=x\0"), Err(TextError::BadKey { index: 0 }));
        assert_eq!(parse(b"a b=x\0"), Err(TextError::BadKey { index: 0 }));
        let long_key = format!("{}=1\0", "K".repeat(64));
        assert_eq!(
            parse(long_key.as_bytes()),
            Err(TextError::BadKey { index: 0 })
        );
        let long_value = format!("K={}\0", "v".repeat(256));
        assert!(matches!(
            parse(long_value.as_bytes()),
            Err(TextError::ValueTooLong { max: 255, .. })
        ));
        // CHAP_C may be a large binary value.
        let challenge = format!("CHAP_C=0x{}\0", "ab".repeat(1024));
        assert!(parse(challenge.as_bytes()).is_ok());
        assert!(matches!(
            parse(b"K=\xff\0"),
            Err(TextError::ValueNotUtf8 { .. })
        ));
        let many: String = (0..=PAIRS_MAX).map(|i| format!("K{i}=1\0")).collect();
        assert_eq!(
            parse(many.as_bytes()),
            Err(TextError::TooManyPairs { max: PAIRS_MAX })
        );
        assert!(matches!(
            parse(&vec![b'a'; TEXT_LEN_MAX + 1]),
            Err(TextError::TooLong { .. })
        ));
    }

    #[test]
    fn tolerates_stray_nuls_and_a_missing_final_nul() {
        let pairs = parse(b"\0a=1\0\0b=2").unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(get(&pairs, "b"), Some("2"));
    }

    #[test]
    fn value_grammars() {
        assert_eq!(parse_number("8192"), Some(8192));
        assert_eq!(parse_number("0x2000"), Some(8192));
        assert_eq!(parse_number("+1"), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("18446744073709551616"), None);
        assert_eq!(parse_bool("Yes"), Some(true));
        assert_eq!(parse_bool("yes"), None);
        assert_eq!(parse_binary("0x0102ff"), Some(vec![1, 2, 0xff]));
        assert_eq!(parse_binary("0X102"), Some(vec![1, 2]));
        assert_eq!(parse_binary("0xzz"), None);
        assert_eq!(parse_binary("0bAQL/"), Some(vec![1, 2, 0xff]));
        assert_eq!(parse_binary("0bAQI="), Some(vec![1, 2]));
        assert_eq!(parse_binary("0bAQ=="), Some(vec![1]));
        assert_eq!(parse_binary("0bAQ==AQ=="), None);
        assert_eq!(parse_binary("0bAQ"), None);
        assert_eq!(parse_binary("0102"), None);
        assert_eq!(hex_value(&[0, 0xab]), "0x00ab");
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in vec(any::<u8>(), 0..2048)) {
            if let Ok(pairs) = parse(&text) {
                prop_assert!(pairs.len() <= PAIRS_MAX);
                let mut out = Vec::new();
                encode(&pairs, &mut out);
                prop_assert_eq!(parse(&out).unwrap(), pairs);
            }
        }

        #[test]
        fn keyish_text_never_panics(
            entries in vec(("[A-Za-z_]{0,3}", "[=a-z0-9,]{0,4}"), 0..80),
        ) {
            let text: String = entries.iter().map(|(k, v)| format!("{k}={v}\0")).collect();
            let _ = parse(text.as_bytes());
        }

        #[test]
        fn binary_values_round_trip(bytes in vec(any::<u8>(), 1..64)) {
            prop_assert_eq!(parse_binary(&hex_value(&bytes)), Some(bytes));
        }

        #[test]
        fn arbitrary_values_never_panic(value in ".{0,40}") {
            let _ = parse_number(&value);
            let _ = parse_binary(&value);
            let _ = parse_bool(&value);
        }
    }
}
