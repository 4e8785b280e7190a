//! The affinity extractors (`HeaderKey`, `CookieKey`, `PathKey`, `QueryKey`, `Or`) on
//! arbitrary requests: never a panic, always the same key, exactly the key where it is
//! simple to state.
//!
//! Input: one byte of path segments, then lines separated by `\n`: the request target,
//! the key name, then headers as `name:value`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_lb_fuzz::{RequestCase, affinity_extractors};

fuzz_target!(|data: &[u8]| {
    let segments = usize::from(data.first().copied().unwrap_or(0) % 8);
    let mut lines = data.get(1..).unwrap_or_default().split(|&b| b == b'\n');
    let uri = lines.next().unwrap_or_default().to_vec();
    let key_name = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let headers = lines
        .map(|line| match line.iter().position(|&b| b == b':') {
            Some(at) => (line[..at].to_vec(), line[at + 1..].to_vec()),
            None => (line.to_vec(), Vec::new()),
        })
        .collect();
    affinity_extractors(&RequestCase {
        uri,
        headers,
        key_name,
        segments,
    });
});
