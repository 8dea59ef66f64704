//! Metadata service (cluster map, pools, PG map, volumes, placement, scheduler, admin API): filled by issue 3 (the Raft runtime and the metadata service).
