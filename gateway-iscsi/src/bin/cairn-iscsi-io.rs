//! Reads or writes blocks of an iSCSI LUN (LUN 0 of a target), with this crate's initiator.
//!
//! ```text
//! cairn-iscsi-io write PORTAL TARGET_IQN LBA FILE     # FILE's bytes at LBA
//! cairn-iscsi-io read  PORTAL TARGET_IQN LBA BLOCKS   # BLOCKS blocks from LBA to stdout
//! ```
//!
//! PORTAL is `host[:port]` (port 3260 by default). CHAP credentials come from
//! `ISCSI_CHAP_USER` and `ISCSI_CHAP_SECRET` (as `cairn dev` writes them in endpoints.env),
//! the initiator name from `ISCSI_INITIATOR_NAME`. Commands move at most 1 MiB each.
//! Exit status: 0 done, 1 failed (the reason on stderr), 2 usage error.

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    process::ExitCode,
    time::Duration,
};

use cairn_gateway_iscsi::initiator::{Initiator, InitiatorError};

/// Initiator name when `ISCSI_INITIATOR_NAME` is not set.
const INITIATOR_NAME_DEFAULT: &str = "iqn.2026-12.io.cairn:cli";
/// The iSCSI well-known port (RFC 7143 section 13).
const PORT_DEFAULT: u16 = 3260;
/// Bytes per SCSI command: 1 MiB, under the 4 MiB a Cairn target accepts and the memory one
/// command pins on both sides.
const COMMAND_BYTES_MAX: u32 = 1 << 20;
/// Connect timeout and the longest wait for any answer from the target.
const TIMEOUT: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: cairn-iscsi-io write PORTAL TARGET_IQN LBA FILE
       cairn-iscsi-io read  PORTAL TARGET_IQN LBA BLOCKS
environment: ISCSI_CHAP_USER, ISCSI_CHAP_SECRET (CHAP, both or neither),
             ISCSI_INITIATOR_NAME (default iqn.2026-12.io.cairn:cli)";

/// What to do.
enum Operation {
    Write { file: String },
    Read { blocks: u64 },
}

struct Args {
    operation: Operation,
    portal: String,
    target: String,
    lba: u64,
    initiator_name: String,
    chap: Option<(String, Vec<u8>)>,
}

/// Why the tool failed: usage (exit 2) or the operation (exit 1).
enum Failure {
    Usage(String),
    Failed(String),
}

impl From<InitiatorError> for Failure {
    fn from(error: InitiatorError) -> Failure {
        Failure::Failed(error.to_string())
    }
}

fn main() -> ExitCode {
    let words: Vec<String> = std::env::args().skip(1).collect();
    if words.iter().any(|word| word == "-h" || word == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = parse_args(&words).and_then(|args| run(&args));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(why)) => {
            eprintln!("cairn-iscsi-io: {why}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(why)) => {
            eprintln!("cairn-iscsi-io: error: {why}");
            ExitCode::from(1)
        }
    }
}

fn parse_args(words: &[String]) -> Result<Args, Failure> {
    let [operation, portal, target, lba, last] = words else {
        return Err(Failure::Usage(format!(
            "expected 5 arguments, got {}",
            words.len()
        )));
    };
    let lba = lba
        .parse()
        .map_err(|_| Failure::Usage(format!("LBA {lba:?} is not a number")))?;
    let operation = match operation.as_str() {
        "write" => Operation::Write { file: last.clone() },
        "read" => Operation::Read {
            blocks: last
                .parse()
                .map_err(|_| Failure::Usage(format!("BLOCKS {last:?} is not a number")))?,
        },
        other => return Err(Failure::Usage(format!("unknown operation {other:?}"))),
    };
    let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let chap = match (env("ISCSI_CHAP_USER"), env("ISCSI_CHAP_SECRET")) {
        (Some(user), Some(secret)) => Some((user, secret.into_bytes())),
        (None, None) => None,
        _ => {
            return Err(Failure::Usage(
                "set both ISCSI_CHAP_USER and ISCSI_CHAP_SECRET, or neither".to_owned(),
            ));
        }
    };
    Ok(Args {
        operation,
        portal: portal.clone(),
        target: target.clone(),
        lba,
        initiator_name: env("ISCSI_INITIATOR_NAME")
            .unwrap_or_else(|| INITIATOR_NAME_DEFAULT.to_owned()),
        chap,
    })
}

fn run(args: &Args) -> Result<(), Failure> {
    let address = resolve(&args.portal)?;
    let mut initiator = Initiator::connect(address, TIMEOUT)?;
    let chap = args
        .chap
        .as_ref()
        .map(|(user, secret)| (user.as_str(), secret.as_slice()));
    initiator.login(&args.initiator_name, &args.target, chap)?;
    let (block_count, block_size) = initiator.read_capacity()?;
    let lun = Lun {
        block_count,
        block_size,
    };
    match &args.operation {
        Operation::Write { file } => write(&mut initiator, args.lba, file, lun)?,
        Operation::Read { blocks } => {
            lun.check_extent(args.lba, *blocks)?;
            read(&mut initiator, args.lba, *blocks, block_size)?;
        }
    }
    initiator.logout()?;
    Ok(())
}

/// The first address of `host[:port]`.
fn resolve(portal: &str) -> Result<SocketAddr, Failure> {
    if let Ok(ip) = portal.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, PORT_DEFAULT));
    }
    let with_port = |portal: &str| portal.to_socket_addrs().map(|mut all| all.next());
    let found = match with_port(portal) {
        Ok(found) => found,
        // No port given: the well-known one.
        Err(_) => with_port(&format!("{portal}:{PORT_DEFAULT}"))
            .map_err(|error| Failure::Failed(format!("portal {portal:?}: {error}")))?,
    };
    found.ok_or_else(|| Failure::Failed(format!("portal {portal:?} has no address")))
}

/// Bytes per command for `block_size`: whole blocks, at most [`COMMAND_BYTES_MAX`] unless
/// one block is larger.
fn command_bytes(block_size: u32) -> u32 {
    (COMMAND_BYTES_MAX / block_size).max(1) * block_size
}

/// The LUN's shape, from READ CAPACITY (16).
#[derive(Clone, Copy)]
struct Lun {
    block_count: u64,
    block_size: u32,
}

impl Lun {
    fn check_extent(self, lba: u64, blocks: u64) -> Result<(), Failure> {
        let end = lba.checked_add(blocks);
        if end.is_none_or(|end| end > self.block_count) {
            return Err(Failure::Failed(format!(
                "{blocks} blocks at LBA {lba} run past the LUN's {} blocks",
                self.block_count
            )));
        }
        Ok(())
    }
}

fn write(initiator: &mut Initiator, lba: u64, path: &str, lun: Lun) -> Result<(), Failure> {
    let block_size = lun.block_size;
    let failed = |error: std::io::Error| Failure::Failed(format!("{path}: {error}"));
    let mut file = File::open(path).map_err(failed)?;
    let len = file.metadata().map_err(failed)?.len();
    if !len.is_multiple_of(u64::from(block_size)) {
        return Err(Failure::Failed(format!(
            "{path}: {len} bytes is not a multiple of the {block_size}-byte block size"
        )));
    }
    lun.check_extent(lba, len / u64::from(block_size))?;
    let step = command_bytes(block_size);
    let mut buffer = vec![0u8; step as usize];
    let mut done = 0u64;
    while done < len {
        let piece = (len - done).min(u64::from(step)) as usize;
        file.read_exact(&mut buffer[..piece]).map_err(failed)?;
        initiator.write(lba + done / u64::from(block_size), &buffer[..piece])?;
        done += piece as u64;
    }
    Ok(())
}

fn read(initiator: &mut Initiator, lba: u64, blocks: u64, block_size: u32) -> Result<(), Failure> {
    let step_blocks = u64::from(command_bytes(block_size) / block_size);
    let mut stdout = std::io::stdout().lock();
    let mut done = 0u64;
    while done < blocks {
        let count = (blocks - done).min(step_blocks) as u32;
        let data = initiator.read(lba + done, count)?;
        stdout
            .write_all(&data)
            .map_err(|error| Failure::Failed(format!("stdout: {error}")))?;
        done += u64::from(count);
    }
    stdout
        .flush()
        .map_err(|error| Failure::Failed(format!("stdout: {error}")))
}
