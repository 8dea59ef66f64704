//! NFSv3 gateway for FSS file systems: filled by a later issue (FSS over NFS, roadmap step 6).
