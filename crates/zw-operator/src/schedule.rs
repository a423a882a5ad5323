//! The scheduler loop: after every store change, and four times a second for liveness, it marks
//! silent agent nodes suspect then lost, and runs one scheduling pass
//! ([`zw_store::Store::schedule`]): replicas placed, scaled down, moved off lost nodes, and
//! rolled to a deployment's new release.

use std::time::Duration;

use tokio::sync::watch;
use zw_store::Store;

pub(crate) async fn run(
    store: Store,
    suspect_after: Duration,
    lost_after: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = store.changes();
    let mut acks = store.acks();
    // A node is declared lost at most a tick after its timeout.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unplaced_logged = std::collections::BTreeMap::new();
    let mut first = true;
    // A rollout in progress waits on things that are not store changes (a rollout
    // deadline, edges' acknowledgements): it is looked at again every tick.
    let mut pending = false;
    let since = zw_proto::time::unix_millis();
    loop {
        // The first pass runs at once: work may have waited for a restarted operator.
        if !first {
            tokio::select! {
                _ = stop.changed() => return,
                r = changes.changed() => if r.is_err() { return },
                // an edge let go of a drained instance, perhaps
                r = acks.changed(), if pending => if r.is_err() { return },
                _ = tick.tick() => {
                    // A state change is a store change: it wakes the scheduling pass below.
                    match store
                        .mark_silent_nodes(
                            suspect_after.as_millis() as i64,
                            lost_after.as_millis() as i64,
                            since,
                        )
                        .await
                    {
                        Ok(changed) => {
                            for (node, state) in changed {
                                tracing::warn!(%node, %state, "node stopped heartbeating");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "checking node heartbeats failed"),
                    }
                    if !pending {
                        continue;
                    }
                }
            }
        }
        first = false;
        changes.borrow_and_update();
        match store.schedule().await {
            Ok(s) => {
                for (instance, node) in &s.placed {
                    tracing::info!(%instance, %node, "instance placed");
                }
                for instance in &s.removed {
                    tracing::info!(%instance, "instance removed");
                }
                for instance in &s.drained {
                    tracing::info!(%instance, "instance draining: out of the edges' snapshots");
                }
                for (deployment, version) in &s.completed {
                    tracing::info!(%deployment, release = version, "release rolled out");
                }
                for (deployment, version, reason) in &s.halted {
                    tracing::warn!(%deployment, release = version, %reason, "release halted; the deployment stays on its running release");
                }
                pending = s.pending;
                // Say it once per new reason, not every second.
                for (deployment, why) in &s.unplaced {
                    if unplaced_logged.get(deployment) != Some(why) {
                        tracing::warn!(%deployment, reason = %why, "replicas not placed");
                    }
                }
                unplaced_logged = s.unplaced;
            }
            Err(e) => {
                pending = true;
                tracing::error!(error = %e, "scheduling failed")
            }
        }
    }
}
