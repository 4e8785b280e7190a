//! Registration: an instance's key under a lease, kept alive in the background.
//!
//! etcd leases are the registry's failure detector (as ZooKeeper's ephemeral nodes are
//! Finagle's): the key is attached to a lease of TTL seconds and a background task
//! renews it every TTL/3. When the process dies, renewals stop, etcd deletes the key
//! when the lease expires — within the TTL — and every watcher sees the delete.
//! [`Registration::deregister`] revokes the lease, which deletes the key at once; a
//! server shuts down cleanly by stopping new work, draining what it has, then
//! deregistering (or deregistering first when its clients should stop sending at once
//! and it can still finish in-flight requests: the clients' pools drop it from the
//! next pick, while requests already sent run to completion).

use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::task::JoinHandle;

use crate::member::Member;

/// Why registering failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The TTL is under one second (etcd counts leases in whole seconds).
    #[error("etcd registration: ttl {0:?} is under one second")]
    Ttl(Duration),
    /// etcd refused or could not be reached.
    #[error("etcd registration: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// A live registration: the key stays while this value lives and the process runs.
/// Dropping it stops the renewals (the key then expires within the TTL, as after a
/// crash); [`deregister`](Registration::deregister) removes the key at once.
pub struct Registration {
    key: String,
    lease: i64,
    client: Client,
    keeper: JoinHandle<()>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// Registers `member` under `key` with a lease of `ttl` (whole seconds, at least 1)
    /// and starts renewing it.
    pub async fn register(
        endpoints: &[impl AsRef<str>],
        key: impl Into<String>,
        member: &Member,
        ttl: Duration,
    ) -> Result<Registration, RegisterError> {
        let secs = ttl.as_secs();
        if secs == 0 {
            return Err(RegisterError::Ttl(ttl));
        }
        let secs = i64::try_from(secs).unwrap_or(i64::MAX);
        let key = key.into();
        let mut client = Client::connect(endpoints, None).await?;
        let lease = client.lease_grant(secs, None).await?.id();
        let value = member.to_json();
        client
            .put(
                key.as_bytes(),
                value.as_bytes(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        let keeper = tokio::spawn(keep_alive(client.clone(), key.clone(), value, lease, secs));
        Ok(Registration {
            key,
            lease,
            client,
            keeper,
        })
    }

    /// The registered key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Removes the key now (revokes the lease).
    pub async fn deregister(mut self) -> Result<(), RegisterError> {
        self.keeper.abort();
        self.client.lease_revoke(self.lease).await?;
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Renews `lease` every ttl/3; if etcd says the lease is gone (it expired during an
/// outage), grants a new one and puts the key again.
async fn keep_alive(mut client: Client, key: String, value: String, mut lease: i64, ttl: i64) {
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(100));
    loop {
        let renewed: Result<bool, etcd_client::Error> = async {
            let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
            loop {
                keeper.keep_alive().await?;
                match stream.message().await? {
                    Some(resp) if resp.ttl() > 0 => {}
                    _ => return Ok(false),
                }
                tokio::time::sleep(period).await;
            }
        }
        .await;
        match renewed {
            Ok(_) => {
                tracing::warn!(key, lease, "etcd lease lost; registering again");
                let again = async {
                    let new = client.lease_grant(ttl, None).await?.id();
                    let options = PutOptions::new().with_lease(new);
                    client
                        .put(key.as_bytes(), value.as_bytes(), Some(options))
                        .await?;
                    Ok::<_, etcd_client::Error>(new)
                };
                match again.await {
                    Ok(new) => lease = new,
                    Err(error) => tracing::warn!(key, %error, "etcd registration failed; retrying"),
                }
            }
            Err(error) => tracing::warn!(key, %error, "etcd lease renewal failed; retrying"),
        }
        tokio::time::sleep(period).await;
    }
}
