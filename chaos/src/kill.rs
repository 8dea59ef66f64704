//! The kill -9 loop shared by the real-process scenarios: start a worker (this binary, another
//! subcommand), let it run a random while, SIGKILL it, verify what it left behind; repeat.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use crate::chunkstore_kill::Rng;

/// Runs kill rounds for `seconds` (at least one). Each round starts `exe worker dir journal
/// <seed>`, kills it after `pause_ms_min` plus up to 600 ms, and calls `verify(round)`, which
/// returns the round's verdict or an error that ends the run.
pub fn kill_rounds<V>(
    worker: &str,
    dir: &Path,
    journal: &Path,
    seconds: f64,
    seed: u64,
    pause_ms_min: u64,
    mut verify: impl FnMut(u64) -> Result<V, String>,
) -> Result<Vec<V>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut rng = Rng::new(seed);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut verdicts = Vec::new();
    while Instant::now() < deadline || verdicts.is_empty() {
        let mut child = Command::new(&exe)
            .arg(worker)
            .arg(dir)
            .arg(journal)
            .arg(rng.next_u64().to_string())
            .spawn()
            .map_err(|e| format!("spawn {worker}: {e}"))?;
        std::thread::sleep(Duration::from_millis(pause_ms_min + rng.below(600)));
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{worker} exited by itself: {status}"));
        }
        child.kill().map_err(|e| format!("kill -9 {worker}: {e}"))?;
        child.wait().map_err(|e| e.to_string())?;
        verdicts.push(verify(verdicts.len() as u64 + 1)?);
    }
    Ok(verdicts)
}
