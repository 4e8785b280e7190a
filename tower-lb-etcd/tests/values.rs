//! Registry values: any bytes give a member or a typed error, never a panic; a record is
//! accepted exactly when its weight is in 1..=u32::MAX and its address is ip:port.

use proptest::prelude::*;
use tower_lb_etcd::{Member, ValueError};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Member::from_json(&bytes);
    }

    #[test]
    fn a_record_is_accepted_exactly_when_it_is_valid(
        weight in prop_oneof![Just(0u64), 1..=u64::from(u32::MAX), u64::from(u32::MAX) + 1..=u64::MAX],
        port in any::<u16>(),
        ip in any::<[u8; 4]>(),
        garbage in "[a-z:.]{0,12}",
        good_addr in any::<bool>(),
    ) {
        let addr = if good_addr { format!("{}.{}.{}.{}:{port}", ip[0], ip[1], ip[2], ip[3]) } else { garbage.clone() };
        let json = format!(r#"{{"addr":"{addr}","weight":{weight},"metadata":{{"zone":"z"}}}}"#);
        let parsed = Member::from_json(json.as_bytes());
        let addr_ok = addr.parse::<std::net::SocketAddr>().is_ok();
        let weight_ok = (1..=u64::from(u32::MAX)).contains(&weight);
        match parsed {
            Ok(m) => {
                prop_assert!(addr_ok && weight_ok);
                prop_assert_eq!(u64::from(m.weight.get()), weight);
                prop_assert_eq!(m.addr.to_string(), addr);
                prop_assert_eq!(m.metadata.get("zone").map(String::as_str), Some("z"));
            }
            Err(ValueError::Addr(a)) => {
                prop_assert!(!addr_ok);
                prop_assert_eq!(a, addr);
            }
            Err(ValueError::Weight(w)) => {
                prop_assert!(addr_ok && !weight_ok);
                prop_assert_eq!(w, weight);
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }
}
