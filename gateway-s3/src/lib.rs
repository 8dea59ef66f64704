//! S3 gateway for OBS buckets: filled by issue 6 (OBS over S3).
