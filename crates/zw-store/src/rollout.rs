//! The rollout step: given a deployment's instances, its target release and its replica
//! count, what one scheduling pass does next. A plain function, so every case is a unit
//! test; the scheduler ([`crate::Store::schedule`]) reads the rows and writes the plan.
//!
//! Rolling (Kubernetes' `maxSurge` with `maxUnavailable: 0`): new instances start first,
//! at most `surge` beyond the replica count; an old instance that serves is taken out of
//! the edges' snapshots (drained) only when a new one is healthy to replace it, so the
//! started instances never number fewer than the replicas. Old instances that do not
//! serve are removed at once. Immediate: the old ones go at once, the new ones start.

use zw_proto::api::Strategy;

/// One instance of the deployment, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub release: u64,
    /// Health-checked and routed.
    pub started: bool,
    /// Already taken out of the snapshots, waiting for the edges and then its agent.
    pub draining: bool,
    /// Instances on its node: removals prefer the busiest node.
    pub load: u64,
}

/// What to do in this pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// New instances of the target release to place.
    pub place: usize,
    /// Instances to take out of the snapshots, then stop once the edges no longer use them.
    pub drain: Vec<String>,
    /// Instances to stop now (they serve no traffic).
    pub remove: Vec<String>,
    /// Every replica runs the target release, started, and nothing else is left.
    pub complete: bool,
}

/// `max_surge` as written (`2`, `25%`) for `replicas` replicas: at least one, so a
/// rolling release always makes progress.
pub fn surge(spec: &str, replicas: usize) -> Option<usize> {
    let spec = spec.trim();
    let n = match spec.strip_suffix('%') {
        Some(p) => {
            let p: usize = p.trim().parse().ok().filter(|p| (1..=100).contains(p))?;
            (replicas * p).div_ceil(100)
        }
        None => spec
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))?,
    };
    Some(n.max(1))
}

/// Picks `n` ids out of `pool` to let go of: ones not serving first, then from the
/// busiest node, then by id (so a plan is the same for the same input).
fn pick(pool: &mut Vec<&Member>, n: usize) -> Vec<String> {
    pool.sort_by(|a, b| {
        (a.started, std::cmp::Reverse(a.load), &a.id).cmp(&(
            b.started,
            std::cmp::Reverse(b.load),
            &b.id,
        ))
    });
    pool.drain(..n.min(pool.len()))
        .map(|m| m.id.clone())
        .collect()
}

pub fn plan(
    target: u64,
    replicas: usize,
    strategy: Strategy,
    surge: usize,
    members: &[Member],
) -> Plan {
    let live = members.iter().filter(|m| !m.draining);
    let mut new: Vec<&Member> = live.clone().filter(|m| m.release == target).collect();
    let old: Vec<&Member> = live.filter(|m| m.release != target).collect();
    let mut out = Plan::default();
    // More of the target than wanted: a scale-down.
    if new.len() > replicas {
        let extra = new.len() - replicas;
        out.remove.extend(pick(&mut new, extra));
    }
    let new_started = new.iter().filter(|m| m.started).count();
    let (mut old_serving, old_idle): (Vec<&Member>, Vec<&Member>) =
        old.into_iter().partition(|m| m.started);
    out.remove.extend(old_idle.iter().map(|m| m.id.clone()));
    match strategy {
        Strategy::Immediate => {
            out.remove.extend(old_serving.iter().map(|m| m.id.clone()));
            out.place = replicas.saturating_sub(new.len());
            old_serving.clear();
        }
        Strategy::Rolling => {
            let room = (replicas + surge).saturating_sub(new.len() + old_serving.len());
            out.place = replicas.saturating_sub(new.len()).min(room);
            // Each new started instance beyond the replica count frees an old one.
            let excess = (new_started + old_serving.len()).saturating_sub(replicas);
            let n = excess.min(old_serving.len());
            out.drain = pick(&mut old_serving, n);
        }
    }
    out.complete = out.place == 0
        && out.drain.is_empty()
        && old_serving.is_empty()
        && out.remove.is_empty()
        && new_started == replicas
        && members.iter().all(|m| !m.draining && m.release == target);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, release: u64, started: bool) -> Member {
        Member {
            id: id.into(),
            release,
            started,
            draining: false,
            load: 0,
        }
    }

    /// Applies a plan the way the scheduler and the agents would, with every placed
    /// instance becoming healthy by the next pass and every drained one gone by then.
    fn step(members: &mut Vec<Member>, p: &Plan, target: u64, next: &mut u32) {
        members.retain(|x| !p.remove.contains(&x.id) && !x.draining);
        for x in members.iter_mut() {
            if p.drain.contains(&x.id) {
                x.draining = true;
            }
            x.started = true;
        }
        for _ in 0..p.place {
            *next += 1;
            members.push(m(&format!("n{next}"), target, false));
        }
    }

    #[test]
    fn surge_counts_and_percentages() {
        assert_eq!(surge("1", 10), Some(1));
        assert_eq!(surge("3", 2), Some(3));
        assert_eq!(surge("25%", 10), Some(3));
        assert_eq!(surge("25%", 1), Some(1));
        assert_eq!(surge("100%", 4), Some(4));
        for bad in ["0", "0%", "101%", "-1", "x", "", "1001"] {
            assert_eq!(surge(bad, 10), None, "{bad}");
        }
    }

    #[test]
    fn a_rolling_release_never_has_fewer_serving_than_the_replicas() {
        for replicas in 1..=6usize {
            for s in 1..=3usize {
                let mut members: Vec<Member> = (0..replicas)
                    .map(|i| m(&format!("o{i}"), 1, true))
                    .collect();
                let mut next = 0;
                let mut passes = 0;
                loop {
                    let p = plan(2, replicas, Strategy::Rolling, s, &members);
                    if p.complete {
                        break;
                    }
                    // serving = started and not draining, after this pass's drains
                    let serving = members
                        .iter()
                        .filter(|x| x.started && !x.draining && !p.drain.contains(&x.id))
                        .count();
                    assert!(
                        serving >= replicas,
                        "{replicas} replicas, surge {s}: {members:?} {p:?}"
                    );
                    let total_live = members.iter().filter(|x| !x.draining).count() + p.place;
                    assert!(
                        total_live <= replicas + s,
                        "surge exceeded: {members:?} {p:?}"
                    );
                    step(&mut members, &p, 2, &mut next);
                    passes += 1;
                    assert!(passes < 100, "no progress");
                }
                assert_eq!(members.len(), replicas);
                assert!(members.iter().all(|x| x.release == 2 && x.started));
            }
        }
    }

    #[test]
    fn an_unhealthy_new_release_drains_nothing() {
        let members = vec![m("o1", 1, true), m("o2", 1, true), m("n1", 2, false)];
        let p = plan(2, 2, Strategy::Rolling, 1, &members);
        assert_eq!(p.place, 0, "surge used up by the one starting");
        assert!(p.drain.is_empty() && p.remove.is_empty() && !p.complete);
    }

    #[test]
    fn old_instances_that_do_not_serve_go_at_once() {
        let members = vec![m("o1", 1, false), m("o2", 1, true)];
        let p = plan(2, 2, Strategy::Rolling, 1, &members);
        assert_eq!(p.remove, vec!["o1".to_string()]);
        assert_eq!(p.place, 2);
        assert!(p.drain.is_empty());
    }

    #[test]
    fn immediate_replaces_everything_in_one_pass() {
        let members = vec![m("o1", 1, true), m("o2", 1, true)];
        let p = plan(2, 2, Strategy::Immediate, 1, &members);
        assert_eq!(p.remove, vec!["o1".to_string(), "o2".to_string()]);
        assert_eq!(p.place, 2);
    }

    #[test]
    fn going_back_keeps_what_still_runs_the_old_release() {
        // v2 halted with one v2 started and one v1 drained: back to v1, the v2 one drains
        // once a second v1 is healthy.
        let members = vec![m("o1", 1, true), m("n1", 2, true)];
        let p = plan(1, 2, Strategy::Rolling, 1, &members);
        assert_eq!(p.place, 1);
        assert!(p.drain.is_empty());
        let members = vec![m("o1", 1, true), m("n1", 2, true), m("o3", 1, true)];
        let p = plan(1, 2, Strategy::Rolling, 1, &members);
        assert_eq!(p.drain, vec!["n1".to_string()]);
    }

    #[test]
    fn scale_down_and_zero_replicas() {
        let members = vec![m("a", 1, true), m("b", 1, false), m("c", 1, true)];
        let p = plan(1, 2, Strategy::Rolling, 1, &members);
        assert_eq!(p.remove, vec!["b".to_string()]);
        let p = plan(1, 0, Strategy::Rolling, 1, &members);
        assert_eq!(p.remove.len(), 3);
        let p = plan(1, 0, Strategy::Rolling, 1, &[]);
        assert!(p.complete);
    }

    #[test]
    fn draining_members_hold_completion_back() {
        let mut d = m("o1", 1, true);
        d.draining = true;
        let p = plan(2, 1, Strategy::Rolling, 1, &[d, m("n1", 2, true)]);
        assert!(!p.complete && p.place == 0 && p.drain.is_empty());
        let p = plan(2, 1, Strategy::Rolling, 1, &[m("n1", 2, true)]);
        assert!(p.complete);
    }
}
