//! `examples/discovery`: a balancer that follows its registry.

use super::*;

// Discovery from a channel

/// `examples/discovery`: the first request waits for the first backend, weights arrive
/// through discovery, and membership follows the registry while no request comes.
#[tokio::test]
async fn discovery_example_follows_its_registry() -> Result<(), Error> {
    bounded(async {
        let summary = discovery::run().await?;
        assert_eq!(summary.first, "a", "served once a backend arrived");
        assert_eq!(summary.before, BTreeMap::from([("a", 30), ("b", 10)]));
        assert_eq!(summary.members_while_idle, ["b", "c"]);
        assert_eq!(summary.after, BTreeMap::from([("b", 10), ("c", 20)]));
        Ok(())
    })
    .await
}
