//! A reader beside the volume writer of [`crate::dev_kill`]: random ranges through random
//! storage nodes, each checked against what its blocks may hold when the read began
//! ([`Writes::check_read`]). A refused read (an error, a timeout, any status but 200) is only
//! counted; bytes served must be allowed contents, so a node serving data it should not
//! (a flipped bit, a stale replica, a leader cut off from its PG) shows up as bad blocks.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use crate::{
    chunkstore_kill::Rng,
    dev_kill::{BLOCK, Endpoints, ReadCheck, VOLUME, VOLUME_BYTES, Writes, new_agent},
    utc_now,
};

/// Blocks per read at most (256 KiB): ranges cross chunk and PG boundaries now and then.
const READ_BLOCKS_MAX: u64 = 64;
/// Pause between two reads: the reader must not starve the writer of the two cores.
const READ_PAUSE_MS: u64 = 20;

/// What the reader counted.
#[derive(Debug, Default)]
pub(crate) struct ReadTally {
    /// Reads whose bytes were all checked.
    pub(crate) checked: u64,
    /// Reads answered other than 200, or whose body could not be read.
    pub(crate) refused: u64,
    /// Reads too slow to check (too many writes raced with them).
    pub(crate) unchecked: u64,
    /// Blocks reads served holding none of their allowed contents.
    pub(crate) bad_blocks: u64,
}

/// A [`reader`] thread a scenario starts once the volume exists and stops before its heal.
#[derive(Default)]
pub(crate) struct Reader {
    tally: Arc<Mutex<ReadTally>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Reader {
    /// Starts reading (once: a second call changes nothing).
    pub(crate) fn start(
        &mut self,
        scenario: &'static str,
        endpoints: Endpoints,
        writes: &Writes,
        seed: u64,
    ) {
        if self.thread.is_some() {
            return;
        }
        let (stop, tally, writes) = (self.stop.clone(), self.tally.clone(), writes.clone());
        self.thread = Some(thread::spawn(move || {
            reader(scenario, endpoints, writes, seed, stop, tally)
        }));
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(&mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| "reader panicked".into()),
            None => Ok(()),
        }
    }

    /// What it counted so far.
    pub(crate) fn take_tally(&self) -> ReadTally {
        std::mem::take(&mut *self.tally.lock().expect("not poisoned"))
    }
}

/// Reads until `stop`, counting into `tally`; `scenario` prefixes what it prints.
pub(crate) fn reader(
    scenario: &'static str,
    endpoints: Endpoints,
    writes: Writes,
    seed: u64,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<ReadTally>>,
) {
    let agent = new_agent();
    let auth = format!("Bearer {}", endpoints.token);
    let mut rng = Rng::new(seed ^ 0x4ead);
    let blocks = VOLUME_BYTES / BLOCK;
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(READ_PAUSE_MS));
        let url = &endpoints.data_urls[rng.below(endpoints.data_urls.len() as u64) as usize];
        let count = 1 + rng.below(READ_BLOCKS_MAX);
        let first = rng.below(blocks - count + 1);
        let expected = writes.before_read(first, count);
        let response = agent
            .get(&format!(
                "{url}/v1/volumes/{VOLUME}/data?offset={}&length={}",
                first * BLOCK,
                count * BLOCK
            ))
            .header("Authorization", &auth)
            .call();
        let data = match response {
            Ok(mut r) if r.status().as_u16() == 200 => r
                .body_mut()
                .with_config()
                .limit(count * BLOCK + 1)
                .read_to_vec()
                .ok(),
            _ => None,
        };
        let mut tally = tally.lock().expect("not poisoned");
        let Some(data) = data else {
            tally.refused += 1;
            continue;
        };
        if data.len() as u64 != count * BLOCK {
            eprintln!(
                "{} {scenario}: read of {count} blocks at block {first} from {url} served {} bytes",
                utc_now(),
                data.len()
            );
            tally.bad_blocks += count;
            continue;
        }
        match writes.check_read(&expected, &data) {
            ReadCheck::Good => tally.checked += 1,
            ReadCheck::Bad(bad) => {
                eprintln!(
                    "{} {scenario}: read at block {first} from {url}: {bad} blocks wrong",
                    utc_now()
                );
                tally.checked += 1;
                tally.bad_blocks += bad;
            }
            ReadCheck::Unchecked => tally.unchecked += 1,
        }
    }
}
