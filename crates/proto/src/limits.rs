//! Size limits for untrusted firehose input, from the `subscribeRepos` spec. Decoders check these
//! before doing work proportional to the input and return typed errors when exceeded.

/// Largest frame (header + body) accepted, in bytes; checked before any parsing.
pub const MAX_FRAME_BYTES: usize = 5_000_000;
/// Largest `blocks` CAR slice in a `#commit`, in bytes.
pub const MAX_BLOCKS_BYTES: usize = 2_000_000;
/// Largest single record block, in bytes.
pub const MAX_RECORD_BYTES: usize = 1_000_000;
/// Most operations in one `#commit`.
pub const MAX_OPS_PER_COMMIT: usize = 200;
/// Largest `blocks` CAR slice in a `#sync`, in bytes.
pub const MAX_SYNC_BLOCKS_BYTES: usize = 10_000;
/// Most blocks in one frame's `blocks` CAR. A legal 200-op commit carries its records, the commit and the MST
/// proof nodes of every op (a few thousand blocks at most); without a bound, 2 MB of 5-byte sections would be
/// ~400,000 index entries (~124 MB) for one frame.
pub const MAX_CAR_BLOCKS: usize = 10_000;
/// Longest `time` string accepted (an RFC 3339 datetime is ~30 characters).
pub const MAX_TIME_LEN: usize = 64;
