//! iSCSI target for EVS volumes: filled by issue 5 (EVS over iSCSI).
