//! The sticky-cookie codec, through `Sticky` over in-process backends: arbitrary
//! `Cookie` headers never panic, never fail the request, never reach a drained backend.
//!
//! Input: three bytes of setup (backends, a valid cookie for, a drained backend; a byte
//! with its top bit set means none), then `Cookie` header values separated by `\n`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_lb_fuzz::{CookieCase, sticky_cookie};

fuzz_target!(|data: &[u8]| {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let optional = |b: u8| (b & 0x80 == 0).then_some(b);
    let case = CookieCase {
        backends: byte(0),
        valid_for: optional(byte(1)),
        drained: optional(byte(2)),
        headers: data
            .get(3..)
            .unwrap_or_default()
            .split(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect(),
    };
    sticky_cookie(&case);
});
