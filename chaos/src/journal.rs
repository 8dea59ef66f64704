//! The worker's journal: an append-only file of what it intends to write and what it knows is
//! durable, fsynced before the worker acts on it, so it survives the worker's kill -9.
//!
//! Records, one per line:
//!
//! ```text
//! intent <batch> <chunk> <block> <value>    a write the batch will make (logged before it)
//! durable <batch>                           the batch's flush returned: its writes are durable
//! ```
//!
//! A torn last line (the kill came mid-append) is ignored: nothing was acted on after it.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, Write},
    path::Path,
};

/// One block of the store: (chunk index, block index).
pub type BlockKey = (u32, u32);

/// Appends records and makes each group durable before returning.
pub struct JournalWriter {
    file: File,
}

impl JournalWriter {
    /// Opens `path` for appending, creating it if needed.
    pub fn open(path: &Path) -> io::Result<JournalWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(JournalWriter { file })
    }

    /// Logs the writes a batch is about to make.
    pub fn intent(&mut self, batch: u64, writes: &[(BlockKey, u64)]) -> io::Result<()> {
        let mut text = String::new();
        for ((chunk, block), value) in writes {
            text.push_str(&format!("intent {batch} {chunk} {block} {value}\n"));
        }
        self.append(&text)
    }

    /// Logs that a batch's flush returned.
    pub fn durable(&mut self, batch: u64) -> io::Result<()> {
        self.append(&format!("durable {batch}\n"))
    }

    fn append(&mut self, text: &str) -> io::Result<()> {
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()
    }
}

/// What the journal says about the store.
#[derive(Debug, Default)]
pub struct Expected {
    /// Per block, the value of its last durable write.
    pub durable: HashMap<BlockKey, u64>,
    /// Per block, values written by batches not known to be durable: any may be on disk.
    pub maybe: HashMap<BlockKey, Vec<u64>>,
    /// Durable block writes in total (the acknowledged count).
    pub acknowledged: u64,
    /// The highest batch number seen.
    pub last_batch: u64,
}

/// Reads a journal.
pub fn read(path: &Path) -> io::Result<Expected> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    // The batch being written: a worker runs one batch at a time, so a batch still pending when
    // the next one starts was interrupted by a kill.
    let mut pending: Option<(u64, Vec<(BlockKey, u64)>)> = None;
    let mut maybe: HashMap<BlockKey, Vec<(u64, u64)>> = HashMap::new();
    let mut expected = Expected::default();
    // Only complete lines count: a torn tail was never acted on.
    let complete = text.rsplit_once('\n').map_or("", |(head, _)| head);
    for line in complete.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("journal line {line:?}"));
        match (fields.first().copied(), number(1)) {
            (Some("intent"), Some(batch)) => {
                let (Some(chunk), Some(block), Some(value)) = (number(2), number(3), number(4))
                else {
                    return Err(bad());
                };
                if pending.as_ref().is_some_and(|(b, _)| *b != batch) {
                    let (dead, writes) = pending.take().expect("checked");
                    for (key, value) in writes {
                        maybe.entry(key).or_default().push((dead, value));
                    }
                }
                let key = (
                    u32::try_from(chunk).map_err(|_| bad())?,
                    u32::try_from(block).map_err(|_| bad())?,
                );
                pending
                    .get_or_insert_with(|| (batch, Vec::new()))
                    .1
                    .push((key, value));
                expected.last_batch = expected.last_batch.max(batch);
            }
            (Some("durable"), Some(batch)) => {
                let Some((pending_batch, writes)) = pending.take() else {
                    return Err(bad());
                };
                if pending_batch != batch {
                    return Err(bad());
                }
                for (key, value) in writes {
                    expected.durable.insert(key, value);
                    expected.acknowledged += 1;
                    // A durable write supersedes what interrupted batches may have left.
                    maybe.remove(&key);
                }
            }
            _ => return Err(bad()),
        }
    }
    if let Some((batch, writes)) = pending {
        for (key, value) in writes {
            maybe.entry(key).or_default().push((batch, value));
        }
    }
    expected.maybe = maybe
        .into_iter()
        .map(|(key, values)| (key, values.into_iter().map(|(_, value)| value).collect()))
        .collect();
    Ok(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the journal says exactly what the store must hold. Method: a durable batch, a
    /// batch killed before its flush, a durable batch overwriting one of its blocks, and a torn
    /// last line.
    #[test]
    fn durable_values_supersede_and_interrupted_batches_stay_possible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal");
        let mut journal = JournalWriter::open(&path).expect("open");
        journal
            .intent(1, &[((0, 1), 10), ((0, 2), 11)])
            .expect("intent");
        journal.durable(1).expect("durable");
        journal
            .intent(2, &[((0, 1), 20), ((0, 3), 21)])
            .expect("intent");
        // Killed before batch 2's flush; the worker restarts with batch 3.
        journal.intent(3, &[((0, 3), 30)]).expect("intent");
        journal.durable(3).expect("durable");
        journal.intent(4, &[((0, 2), 40)]).expect("intent");
        drop(journal);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"durable 4"))
            .expect("torn tail");

        let expected = read(&path).expect("read");
        assert_eq!(expected.acknowledged, 3);
        assert_eq!(expected.last_batch, 4);
        assert_eq!(expected.durable.get(&(0, 1)), Some(&10));
        assert_eq!(expected.durable.get(&(0, 3)), Some(&30));
        assert_eq!(
            expected.maybe.get(&(0, 1)),
            Some(&vec![20]),
            "batch 2 may have landed"
        );
        assert_eq!(
            expected.maybe.get(&(0, 3)),
            None,
            "superseded by durable batch 3"
        );
        assert_eq!(
            expected.maybe.get(&(0, 2)),
            Some(&vec![40]),
            "the torn durable mark does not count"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal");
        std::fs::write(&path, "intent 1 0 x 5\n").expect("write");
        assert!(read(&path).is_err());
        std::fs::write(&path, "durable 7\n").expect("write");
        assert!(read(&path).is_err(), "a durable mark without its batch");
    }
}
