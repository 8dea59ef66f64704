//! `cairn disk`: format a data directory, show what disks a set of directories holds (by label,
//! wherever they are mounted now), and scrub a disk by reading and checking every stored block.

use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use cairn_common::CHUNK_SIZE_DEFAULT;
use cairn_storage_node::{
    ChunkStore, ChunkStoreOptions, Error,
    label::{self, Label},
};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum DiskCommand {
    /// Writes a new disk label (fresh UUID) into an empty data directory.
    Format {
        /// The data directory.
        dir: PathBuf,
        /// Chunk size in KiB (a multiple of 4, at most 65536).
        #[arg(long, default_value_t = CHUNK_SIZE_DEFAULT / 1024)]
        chunk_size_kib: u32,
    },
    /// Shows the disks found among the given directories: UUID, path, chunk size, usage.
    Show {
        /// Data directories to look at.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Reads every written block of every chunk and verifies its checksum.
    Scrub {
        /// The data directory.
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: DiskCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cairn: cannot start a runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        DiskCommand::Format {
            dir,
            chunk_size_kib,
        } => format(&dir, chunk_size_kib),
        DiskCommand::Show { dirs, json } => runtime.block_on(show(&dirs, json)),
        DiskCommand::Scrub { dir, json } => runtime.block_on(scrub(&dir, json)),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cairn: {error}");
            ExitCode::FAILURE
        }
    }
}

fn format(dir: &std::path::Path, chunk_size_kib: u32) -> Result<ExitCode, Error> {
    let chunk_size_bytes = chunk_size_kib.checked_mul(1024).unwrap_or(0);
    if cairn_storage_node::chunk::Geometry::new(chunk_size_bytes).is_none() {
        eprintln!(
            "cairn: chunk size {chunk_size_kib} KiB: must be a multiple of 4 KiB up to 64 MiB"
        );
        return Ok(ExitCode::from(2));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        op: "mkdir",
        path: dir.into(),
        source: e,
    })?;
    let label = label::format(dir, chunk_size_bytes)?;
    println!("formatted {} as disk {}", dir.display(), label.disk_id);
    Ok(ExitCode::SUCCESS)
}

fn open_options() -> ChunkStoreOptions {
    ChunkStoreOptions {
        create: false,
        ..ChunkStoreOptions::default()
    }
}

struct DiskRow {
    label: Label,
    dir: PathBuf,
    chunks: usize,
    free_slots: usize,
    damaged_slots: usize,
}

async fn show(dirs: &[PathBuf], json: bool) -> Result<ExitCode, Error> {
    let mut rows = Vec::new();
    for (_, dir) in label::find_disks(dirs)? {
        let store = ChunkStore::open(&dir, &open_options()).await?;
        rows.push(DiskRow {
            label: *store.label(),
            dir,
            chunks: store.chunk_ids().len(),
            free_slots: store.free_slot_count(),
            damaged_slots: store.damaged_slots().len(),
        });
    }
    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|row| {
                format!(
                    "{{\"disk_id\":\"{}\",\"path\":{},\"chunk_size_bytes\":{},\"chunks\":{},\"free_slots\":{},\"damaged_slots\":{}}}",
                    row.label.disk_id,
                    json_string(&row.dir.display().to_string()),
                    row.label.chunk_size_bytes,
                    row.chunks,
                    row.free_slots,
                    row.damaged_slots
                )
            })
            .collect();
        println!("[{}]", items.join(","));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36}  {:>10}  {:>8}  {:>10}  {:>7}  PATH",
        "DISK", "CHUNK", "CHUNKS", "FREE SLOTS", "DAMAGED"
    );
    for row in &rows {
        println!(
            "{:<36}  {:>7} KiB  {:>8}  {:>10}  {:>7}  {}",
            row.label.disk_id.to_string(),
            row.label.chunk_size_bytes / 1024,
            row.chunks,
            row.free_slots,
            row.damaged_slots,
            row.dir.display()
        );
    }
    if rows.is_empty() {
        eprintln!("no Cairn disk label in the given directories");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

async fn scrub(dir: &std::path::Path, json: bool) -> Result<ExitCode, Error> {
    let store = ChunkStore::open(dir, &open_options()).await?;
    let mut ids = store.chunk_ids();
    ids.sort();
    let step = store.io_size_max() as u64;
    let chunk_size = u64::from(store.chunk_size_bytes());
    let (mut bytes, mut corrupt) = (0u64, Vec::new());
    for id in ids.iter().copied() {
        let mut offset = 0;
        while offset < chunk_size {
            let len = step.min(chunk_size - offset);
            match store.read(id, offset, len as usize).await {
                Ok(_) => bytes += len,
                Err(Error::Corrupt { chunk, block_index }) => {
                    corrupt.push((chunk, block_index));
                    // Skip past the bad block and go on with the rest of the chunk.
                    let block = u64::from(cairn_common::BLOCK_SIZE);
                    offset = (u64::from(block_index) + 1) * block;
                    continue;
                }
                Err(error) => return Err(error),
            }
            offset += len;
        }
    }
    if json {
        let mut list = String::new();
        for (i, (chunk, block)) in corrupt.iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            let _ = write!(
                list,
                "{comma}{{\"chunk\":\"{chunk}\",\"block_index\":{block}}}"
            );
        }
        println!(
            "{{\"disk_id\":\"{}\",\"chunks\":{},\"bytes_verified\":{bytes},\"corrupt_blocks\":[{list}]}}",
            store.disk_id(),
            ids.len()
        );
    } else {
        for (chunk, block) in &corrupt {
            println!("corrupt: chunk {chunk} block {block}");
        }
        println!(
            "scrubbed disk {}: {} chunks, {} MiB verified, {} corrupt blocks",
            store.disk_id(),
            ids.len(),
            bytes >> 20,
            corrupt.len()
        );
    }
    Ok(if corrupt.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A JSON string literal.
fn json_string(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
