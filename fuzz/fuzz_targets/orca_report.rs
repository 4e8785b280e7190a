//! The ORCA load-report readers on arbitrary input: the header value (TEXT and JSON
//! forms), the binary protobuf form, and a header map holding either. Never a panic; every
//! value read is finite and not negative.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_lb::orca::{HEADER, HEADER_BIN, LoadReport};

fn check(report: Option<LoadReport>) {
    if let Some(r) = report {
        for v in [
            r.cpu_utilization,
            r.mem_utilization,
            r.application_utilization,
            r.rps_fractional,
            r.eps,
        ]
        .into_iter()
        .flatten()
        {
            assert!(v.is_finite() && v >= 0.0, "{v}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(LoadReport::parse(&String::from_utf8_lossy(data)));
    check(LoadReport::from_protobuf(data));
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        for name in [HEADER, HEADER_BIN] {
            let mut headers = http::HeaderMap::new();
            headers.insert(name, value.clone());
            check(LoadReport::from_headers(&headers));
        }
    }
});
