//! The disk label: a small file at the root of every data directory naming the disk.
//!
//! The label carries the disk's UUID and its chunk size. Because the cluster knows a disk by that
//! UUID, not by its path, a disk moved to another slot or mount point is recognised as the same
//! disk (disk roaming), and a disk that is not ours is never used by accident.
//!
//! Format, version 1 (4096 bytes, little endian):
//!
//! ```text
//!  0   8  magic "CAIRNDSK"
//!  8   4  label version (1)
//! 12   4  chunk size in bytes
//! 16  16  disk UUID
//! 32   8  created, seconds since the Unix epoch
//! ...     zero
//! 4092 4  CRC-32C of bytes 0..4092
//! ```
//!
//! Crash ordering: the label is written to a temporary file, synced, renamed into place and the
//! directory synced, so a crash leaves either no label or a complete one.

use std::{
    fs::{self, File},
    io::{Read, Write},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use cairn_common::DiskId;

use crate::{
    checksum::crc32c,
    error::{Error, Result},
};

/// The label's file name inside a data directory.
pub const LABEL_FILE: &str = "cairn-disk.label";

const LABEL_MAGIC: [u8; 8] = *b"CAIRNDSK";
const LABEL_VERSION: u32 = 1;
const LABEL_BYTES: usize = 4096;

/// What a disk label says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    /// The disk's identity.
    pub disk_id: DiskId,
    /// The chunk size the disk was formatted with.
    pub chunk_size_bytes: u32,
    /// When the disk was formatted, in seconds since the Unix epoch.
    pub created_unix_secs: u64,
}

impl Label {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; LABEL_BYTES];
        out[0..8].copy_from_slice(&LABEL_MAGIC);
        out[8..12].copy_from_slice(&LABEL_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.chunk_size_bytes.to_le_bytes());
        out[16..32].copy_from_slice(&self.disk_id.0);
        out[32..40].copy_from_slice(&self.created_unix_secs.to_le_bytes());
        let crc = crc32c(&out[..LABEL_BYTES - 4]);
        out[LABEL_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Label, String> {
        if bytes.len() != LABEL_BYTES {
            return Err(format!(
                "label is {} bytes, expected {LABEL_BYTES}",
                bytes.len()
            ));
        }
        if bytes[0..8] != LABEL_MAGIC {
            return Err("not a Cairn disk label".into());
        }
        let stored = u32::from_le_bytes(bytes[LABEL_BYTES - 4..].try_into().expect("4 bytes"));
        if crc32c(&bytes[..LABEL_BYTES - 4]) != stored {
            return Err("label checksum mismatch".into());
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != LABEL_VERSION {
            return Err(format!(
                "label version {version}, this build reads {LABEL_VERSION}"
            ));
        }
        Ok(Label {
            chunk_size_bytes: u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")),
            disk_id: DiskId(bytes[16..32].try_into().expect("16 bytes")),
            created_unix_secs: u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes")),
        })
    }
}

/// Reads the label of the data directory `dir`; `Ok(None)` if it has none.
pub fn read(dir: &Path) -> Result<Option<Label>> {
    let path = dir.join(LABEL_FILE);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", &path, e)),
    };
    let mut bytes = Vec::with_capacity(LABEL_BYTES);
    // Read one byte more than a label so that an oversized file is refused, not truncated.
    (&mut file)
        .take(LABEL_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", &path, e))?;
    Label::decode(&bytes)
        .map(Some)
        .map_err(|reason| Error::BadFormat { path, reason })
}

/// Writes a new label with a fresh UUID into `dir`, which must not have one.
pub fn format(dir: &Path, chunk_size_bytes: u32) -> Result<Label> {
    if read(dir)?.is_some() {
        return Err(Error::BadFormat {
            path: dir.join(LABEL_FILE),
            reason: "already formatted; refusing to relabel a disk".into(),
        });
    }
    let created_unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let label = Label {
        disk_id: random_uuid()?,
        chunk_size_bytes,
        created_unix_secs,
    };
    let temporary = dir.join(format!("{LABEL_FILE}.tmp"));
    let path = dir.join(LABEL_FILE);
    let mut file = File::create(&temporary).map_err(|e| Error::io("create", &temporary, e))?;
    file.write_all(&label.encode())
        .map_err(|e| Error::io("write", &temporary, e))?;
    file.sync_all()
        .map_err(|e| Error::io("fsync", &temporary, e))?;
    fs::rename(&temporary, &path).map_err(|e| Error::io("rename", &path, e))?;
    sync_dir(dir)?;
    Ok(label)
}

/// Finds the labelled disks among `dirs`: each found disk's id and where it is now. Two
/// directories with the same UUID (a cloned disk) are an error, since they cannot both be it.
pub fn find_disks(dirs: &[PathBuf]) -> Result<Vec<(DiskId, PathBuf)>> {
    let mut found: Vec<(DiskId, PathBuf)> = Vec::new();
    for dir in dirs {
        let Some(label) = read(dir)? else { continue };
        if let Some((_, other)) = found.iter().find(|(id, _)| *id == label.disk_id) {
            return Err(Error::BadFormat {
                path: dir.join(LABEL_FILE),
                reason: format!("disk {} is also at {}", label.disk_id, other.display()),
            });
        }
        found.push((label.disk_id, dir.clone()));
    }
    Ok(found)
}

/// Syncs a directory, making the creation, rename or removal of its entries durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let handle = File::open(dir).map_err(|e| Error::io("open", dir, e))?;
    handle.sync_all().map_err(|e| Error::io("fsync", dir, e))
}

/// A version-4 UUID from the kernel's random source.
fn random_uuid() -> Result<DiskId> {
    let mut bytes = [0u8; 16];
    let path = Path::new("/dev/urandom");
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io("read", path, e))?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Ok(DiskId(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_read_and_refuse_relabel() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()).expect("read"), None);
        let label = format(dir.path(), 4 << 20).expect("format");
        assert_eq!(read(dir.path()).expect("read"), Some(label));
        assert!(
            format(dir.path(), 4 << 20).is_err(),
            "relabel must be refused"
        );
        assert_eq!(label.disk_id.0[6] >> 4, 4, "version-4 UUID");
    }

    proptest::proptest! {
        /// Goal: no label file content makes reading panic. Method: mutate a valid label,
        /// re-seal its checksum half the time, and decode.
        #[test]
        fn decode_of_mutated_labels_never_panics(
            mutations in proptest::collection::vec((0usize..LABEL_BYTES, proptest::prelude::any::<u8>()), 1..8),
            reseal in proptest::prelude::any::<bool>(),
            truncate in 0usize..LABEL_BYTES + 2,
        ) {
            let label = Label { disk_id: DiskId([7; 16]), chunk_size_bytes: 4 << 20, created_unix_secs: 1 };
            let mut bytes = label.encode();
            for (at, value) in mutations {
                bytes[at] = value;
            }
            if reseal {
                let crc = crc32c(&bytes[..LABEL_BYTES - 4]);
                bytes[LABEL_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
            }
            if let Ok(decoded) = Label::decode(&bytes) {
                proptest::prop_assert_eq!(Label::decode(&decoded.encode()), Ok(decoded));
            }
            bytes.resize(truncate, 0);
            let _ = Label::decode(&bytes);
        }
    }

    #[test]
    fn corrupt_label_is_an_error_not_a_new_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        format(dir.path(), 4 << 20).expect("format");
        let path = dir.path().join(LABEL_FILE);
        let mut bytes = fs::read(&path).expect("read");
        bytes[20] ^= 1;
        fs::write(&path, &bytes).expect("write");
        let error = read(dir.path()).expect_err("corrupt label");
        assert!(error.to_string().contains("checksum"), "{error}");
        fs::write(&path, b"short").expect("write");
        assert!(read(dir.path()).is_err());
    }
}
