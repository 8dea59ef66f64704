//! A fault-injecting engine that wraps any other: the disk faults that tests and `chaos/` need.
//!
//! Faults are rules matched against each request's file path and byte range; a rule's path
//! may name a directory, and then covers every file under it (a whole disk). They can be added
//! and removed while IO runs, and count how often they fired, so a test can assert that its
//! fault was actually exercised.
//!
//! | fault      | effect                                                                       |
//! |------------|------------------------------------------------------------------------------|
//! | ReadError  | a read overlapping the range fails with EIO; nothing is read                 |
//! | WriteError | a write overlapping the range fails with EIO; nothing is written             |
//! | SyncError  | fdatasync of the file fails with EIO                                         |
//! | BitFlip    | a read covering the byte returns it with one bit flipped (media rot)         |
//! | TornWrite  | a write overlapping the range persists only its first `keep_blocks` blocks   |
//! |            | and reports success, as a write torn by power loss looks after restart       |
//! | Latency    | the request completes `delay` later than it would have                       |

use std::{
    collections::BinaryHeap,
    io,
    ops::Range,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use cairn_common::BLOCK_SIZE;

use super::{BufferPool, Callback, EngineFile, EngineKind, IoDone, IoEngine, IoOp};
use crate::error::Result;

/// One fault rule.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Reads of `path` overlapping `range` fail with EIO.
    ReadError {
        /// The file.
        path: PathBuf,
        /// File byte range.
        range: Range<u64>,
    },
    /// Writes of `path` overlapping `range` fail with EIO.
    WriteError {
        /// The file.
        path: PathBuf,
        /// File byte range.
        range: Range<u64>,
    },
    /// fdatasync of `path` fails with EIO.
    SyncError {
        /// The file.
        path: PathBuf,
    },
    /// Reads covering byte `offset_bytes` of `path` see bit `bit` of that byte flipped.
    BitFlip {
        /// The file.
        path: PathBuf,
        /// File offset of the byte.
        offset_bytes: u64,
        /// Which bit, 0-7.
        bit: u8,
    },
    /// Writes of `path` overlapping `range` persist only their first `keep_blocks` blocks.
    TornWrite {
        /// The file.
        path: PathBuf,
        /// File byte range.
        range: Range<u64>,
        /// Blocks of the write that reach the disk.
        keep_blocks: u32,
    },
    /// Requests on `path` (all files if `None`) complete `delay` late.
    Latency {
        /// The file, or every file.
        path: Option<PathBuf>,
        /// The added delay.
        delay: Duration,
    },
}

/// Names an injected fault, to remove it or read its hit count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultId(u64);

struct Rule {
    id: FaultId,
    fault: Fault,
    hits: u64,
}

#[derive(Default)]
struct Rules {
    next_id: u64,
    rules: Vec<Rule>,
}

/// What the rules decided for one request.
#[derive(Default)]
struct Decision {
    fail: bool,
    flips: Vec<(u64, u8)>,
    keep_blocks: Option<u32>,
    delay: Option<Duration>,
}

/// Wraps an engine and injects faults into its requests.
pub struct FaultyEngine {
    inner: Arc<dyn IoEngine>,
    rules: Arc<Mutex<Rules>>,
    delayer: Arc<Delayer>,
    delayer_thread: Option<JoinHandle<()>>,
}

impl FaultyEngine {
    /// Wraps `inner`; no fault is active until one is injected.
    pub fn new(inner: Arc<dyn IoEngine>) -> FaultyEngine {
        let delayer = Arc::new(Delayer::default());
        let thread_delayer = delayer.clone();
        let delayer_thread = std::thread::Builder::new()
            .name("cairn-fault-delay".into())
            .spawn(move || thread_delayer.run())
            .expect("spawning the fault delay thread");
        FaultyEngine {
            inner,
            rules: Arc::new(Mutex::new(Rules::default())),
            delayer,
            delayer_thread: Some(delayer_thread),
        }
    }

    /// Activates a fault and returns its id.
    pub fn inject(&self, fault: Fault) -> FaultId {
        let mut rules = self
            .rules
            .lock()
            .expect("invariant: rules lock not poisoned");
        rules.next_id += 1;
        let id = FaultId(rules.next_id);
        rules.rules.push(Rule { id, fault, hits: 0 });
        id
    }

    /// Removes a fault; returns how often it fired.
    pub fn remove(&self, id: FaultId) -> u64 {
        let mut rules = self
            .rules
            .lock()
            .expect("invariant: rules lock not poisoned");
        let position = rules.rules.iter().position(|rule| rule.id == id);
        position.map_or(0, |i| rules.rules.remove(i).hits)
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.rules
            .lock()
            .expect("invariant: rules lock not poisoned")
            .rules
            .clear();
    }

    /// How often the fault fired so far.
    pub fn hits(&self, id: FaultId) -> u64 {
        let rules = self
            .rules
            .lock()
            .expect("invariant: rules lock not poisoned");
        rules
            .rules
            .iter()
            .find(|rule| rule.id == id)
            .map_or(0, |rule| rule.hits)
    }

    fn decide(&self, op: &IoOp) -> Decision {
        let mut rules = self
            .rules
            .lock()
            .expect("invariant: rules lock not poisoned");
        let mut decision = Decision::default();
        let path = op.file().path();
        let extent = match op {
            IoOp::Read {
                offset_bytes, buf, ..
            }
            | IoOp::Write {
                offset_bytes, buf, ..
            } => *offset_bytes..*offset_bytes + buf.len() as u64,
            IoOp::Sync { .. } => 0..0,
        };
        for rule in &mut rules.rules {
            let fired = match (&rule.fault, op) {
                (Fault::ReadError { path: p, range }, IoOp::Read { .. })
                | (Fault::WriteError { path: p, range }, IoOp::Write { .. }) => {
                    decision.fail |= path.starts_with(p) && overlaps(range, &extent);
                    path.starts_with(p) && overlaps(range, &extent)
                }
                (Fault::SyncError { path: p }, IoOp::Sync { .. }) => {
                    decision.fail |= path.starts_with(p);
                    path.starts_with(p)
                }
                (
                    Fault::BitFlip {
                        path: p,
                        offset_bytes,
                        bit,
                    },
                    IoOp::Read { .. },
                ) => {
                    let hit = path.starts_with(p) && extent.contains(offset_bytes);
                    if hit {
                        decision.flips.push((offset_bytes - extent.start, *bit));
                    }
                    hit
                }
                (
                    Fault::TornWrite {
                        path: p,
                        range,
                        keep_blocks,
                    },
                    IoOp::Write { .. },
                ) => {
                    let hit = path.starts_with(p) && overlaps(range, &extent);
                    if hit {
                        decision.keep_blocks = Some(*keep_blocks);
                    }
                    hit
                }
                (Fault::Latency { path: p, delay }, _) => {
                    let hit = p.as_deref().is_none_or(|p| path.starts_with(p));
                    if hit {
                        decision.delay = Some(decision.delay.unwrap_or_default().max(*delay));
                    }
                    hit
                }
                _ => false,
            };
            rule.hits += u64::from(fired);
        }
        decision
    }
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

impl IoEngine for FaultyEngine {
    fn kind(&self) -> EngineKind {
        self.inner.kind()
    }

    fn pool(&self) -> &BufferPool {
        self.inner.pool()
    }

    fn open(&self, path: &Path, create: bool) -> Result<Arc<EngineFile>> {
        self.inner.open(path, create)
    }

    fn caller_spin(&self) -> Option<Duration> {
        self.inner.caller_spin()
    }

    fn poll_completions(&self) {
        self.inner.poll_completions();
    }

    fn spin_outcome(&self, caught: bool) {
        self.inner.spin_outcome(caught);
    }

    fn submit(&self, mut op: IoOp, done: Callback) {
        let decision = self.decide(&op);
        let delayer = self.delayer.clone();
        let delay = decision.delay;
        let finish = move |result: IoDone| match delay {
            Some(delay) => delayer.schedule(Instant::now() + delay, Box::new(move || done(result))),
            None => done(result),
        };
        if decision.fail {
            let result = Err(io::Error::from_raw_os_error(libc::EIO));
            finish(IoDone {
                buf: op.into_buf(),
                result,
            });
            return;
        }
        let mut restore_len = None;
        if let (Some(keep_blocks), IoOp::Write { buf, .. }) = (decision.keep_blocks, &mut op) {
            let keep_bytes = (keep_blocks as usize * BLOCK_SIZE as usize).min(buf.len());
            if keep_bytes == 0 {
                // Nothing of the write reaches the disk: a lost write.
                finish(IoDone {
                    buf: op.into_buf(),
                    result: Ok(()),
                });
                return;
            }
            restore_len = Some(buf.len());
            buf.set_len(keep_bytes);
        }
        let flips = decision.flips;
        self.inner.submit(
            op,
            Box::new(move |mut result: IoDone| {
                if let Some(buf) = result.buf.as_mut() {
                    if let Some(len) = restore_len {
                        buf.set_len(len);
                    }
                    if result.result.is_ok() {
                        for (index, bit) in flips {
                            buf[index as usize] ^= 1 << bit;
                        }
                    }
                }
                finish(result);
            }),
        );
    }
}

impl Drop for FaultyEngine {
    fn drop(&mut self) {
        self.delayer.stop();
        if let Some(thread) = self.delayer_thread.take() {
            let _ = thread.join();
        }
    }
}

type Deferred = Box<dyn FnOnce() + Send>;

struct Timer {
    at: Instant,
    sequence: u64,
    run: Deferred,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap and the earliest timer must come out first.
        (other.at, other.sequence).cmp(&(self.at, self.sequence))
    }
}

#[derive(Default)]
struct DelayerState {
    timers: BinaryHeap<Timer>,
    sequence: u64,
    stopping: bool,
}

/// Runs deferred completions at their time, on its own thread, so latency faults never block
/// an engine thread.
#[derive(Default)]
struct Delayer {
    state: Mutex<DelayerState>,
    changed: Condvar,
}

impl Delayer {
    fn schedule(&self, at: Instant, run: Deferred) {
        let mut state = self
            .state
            .lock()
            .expect("invariant: delayer lock not poisoned");
        state.sequence += 1;
        let sequence = state.sequence;
        state.timers.push(Timer { at, sequence, run });
        self.changed.notify_one();
    }

    fn stop(&self) {
        self.state
            .lock()
            .expect("invariant: delayer lock not poisoned")
            .stopping = true;
        self.changed.notify_one();
    }

    fn run(&self) {
        let mut state = self
            .state
            .lock()
            .expect("invariant: delayer lock not poisoned");
        loop {
            let now = Instant::now();
            let due = match state.timers.peek() {
                None if state.stopping => return,
                None => false,
                // Stopping runs what is left at once: every callback still runs exactly once.
                Some(timer) => state.stopping || timer.at <= now,
            };
            if due {
                let timer = state.timers.pop().expect("invariant: peeked");
                drop(state);
                (timer.run)();
                state = self
                    .state
                    .lock()
                    .expect("invariant: delayer lock not poisoned");
                continue;
            }
            state = match state.timers.peek().map(|timer| timer.at - now) {
                Some(wait) => {
                    self.changed
                        .wait_timeout(state, wait)
                        .expect("not poisoned")
                        .0
                }
                None => self.changed.wait(state).expect("invariant: not poisoned"),
            };
        }
    }
}
