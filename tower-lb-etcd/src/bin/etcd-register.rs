//! `etcd-register ENDPOINT KEY ADDR [WEIGHT] [TTL_SECS]`: registers `ADDR` under `KEY`
//! with a lease and keeps it alive until killed (a sidecar for a process that cannot
//! register itself; the tests kill it to check lease expiry). Prints `registered` once
//! the key is in etcd.

use std::time::Duration;

use tower_lb::Weight;
use tower_lb_etcd::{Member, Registration};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, key, addr, rest @ ..] = args.as_slice() else {
        return Err("usage: etcd-register ENDPOINT KEY ADDR [WEIGHT] [TTL_SECS]".into());
    };
    let weight = Weight::new(rest.first().map_or(Ok(1), |w| w.parse())?)?;
    let ttl = Duration::from_secs(rest.get(1).map_or(Ok(5), |t| t.parse())?);
    let member = Member::new(addr.parse()?).with_weight(weight);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let _registration = Registration::register(&[endpoint], key.clone(), &member, ttl).await?;
        println!("registered");
        std::future::pending::<()>().await;
        Ok(())
    })
}
