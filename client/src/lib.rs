//! Client library (PG map cache, leader routing, retries, chunk splitting, QoS) shared by every gateway: filled by issue 4 (the replicated data plane).
