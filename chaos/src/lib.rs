//! Real-process fault harness and deterministic simulation: grows with issue 3 (Raft simulation) and issue 4 (`chaos/run.sh`).
