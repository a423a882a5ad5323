//! The reconcile loop's working half: one task per instance that starts it through its
//! driver, waits for its health check, reports every state change, restarts it with
//! backoff when it crashes or fails its checks, and stops it when it is no longer wanted.
//!
//! States reported: starting → started (health check passed: routable) → stopping →
//! stopped → destroyed, or failed with a reason (then starting again after a backoff).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use zw_proto::agent::{Assignment, InstanceReport};
use zw_proto::api::{InstanceState, Runtime};
use zw_proto::backoff::Backoff;

use crate::driver::{Driver, Launch, Running};
use crate::records::{Record, Records};

/// Instance id → where it is served, for the ingress: replaced whole on change, read
/// without a lock on the request path. Every instance the node holds has an entry; `addr`
/// is set only while it is started.
pub type Routes = Arc<ArcSwap<HashMap<String, Route>>>;

#[derive(Debug, Clone)]
pub struct Route {
    pub deployment: Arc<str>,
    pub addr: Option<std::net::SocketAddr>,
    /// Requests the ingress has sent to the instance whose response has not ended: a
    /// stopping instance is signalled only once this is zero (or its drain time is up).
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a request in flight to an instance until dropped (with the response body).
#[derive(Debug)]
pub struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    pub fn new(counter: &Arc<std::sync::atomic::AtomicUsize>) -> InFlight {
        counter.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[derive(Debug, Clone)]
pub struct Timing {
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Before SIGTERM, how long a stopping instance may take to finish the requests the
    /// ingress sent it (it gets no new ones meanwhile).
    pub drain: Duration,
    /// A starting instance must pass its health check within this.
    pub startup_timeout: Duration,
    /// Restart delays: full-jitter exponential backoff between these.
    pub restart_min: Duration,
    pub restart_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            grace: Duration::from_secs(10),
            drain: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(60),
            restart_min: Duration::from_millis(200),
            restart_max: Duration::from_secs(30),
        }
    }
}

struct Slot {
    assignment: Assignment,
    state: InstanceState,
    reason: Option<String>,
    permanent: bool,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    drivers: Vec<Arc<dyn Driver>>,
    records: Records,
    state_dir: PathBuf,
    events: mpsc::UnboundedSender<InstanceReport>,
    routes: Routes,
    slots: Mutex<HashMap<String, Slot>>,
    timing: Timing,
    cgroups: Option<crate::cgroup::Cgroups>,
    /// Instances that failed after they had started (crashed, or failed their checks).
    failures: std::sync::atomic::AtomicU64,
    /// When each log line was first seen.
    log_clock: crate::logs::LogClock,
}

#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    pub fn new(
        drivers: Vec<Arc<dyn Driver>>,
        state_dir: PathBuf,
        timing: Timing,
        cgroups: Option<crate::cgroup::Cgroups>,
    ) -> std::io::Result<(Supervisor, mpsc::UnboundedReceiver<InstanceReport>)> {
        let records = Records::open(&state_dir)?;
        std::fs::create_dir_all(state_dir.join("logs"))?;
        std::fs::create_dir_all(state_dir.join("work"))?;
        let (events, rx) = mpsc::unbounded_channel();
        Ok((
            Supervisor {
                inner: Arc::new(Inner {
                    drivers,
                    records,
                    state_dir,
                    events,
                    routes: Routes::default(),
                    slots: Mutex::new(HashMap::new()),
                    timing,
                    cgroups,
                    failures: Default::default(),
                    log_clock: Default::default(),
                }),
            },
            rx,
        ))
    }

    pub fn routes(&self) -> Routes {
        self.inner.routes.clone()
    }

    pub fn log_file(&self, id: &str) -> PathBuf {
        self.inner.state_dir.join("logs").join(format!("{id}.log"))
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.inner.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes how far each held instance's log has grown (the log clock's tick).
    pub fn observe_logs(&self) {
        let ids: Vec<String> = self.slots().keys().cloned().collect();
        let now = zw_proto::time::unix_millis();
        for id in &ids {
            if let Ok(m) = std::fs::metadata(self.log_file(id)) {
                self.inner.log_clock.observe(id, m.len(), now);
            }
        }
        self.inner.log_clock.keep(&ids);
    }

    /// Reads the logs the operator asks for, within one answer's budget.
    pub fn read_logs(
        &self,
        cursors: &[zw_proto::agent::LogCursor],
    ) -> Vec<zw_proto::agent::LogChunk> {
        let mut budget = crate::logs::MAX_ANSWER;
        let mut out = Vec::with_capacity(cursors.len());
        for c in cursors {
            // ids name files here: only what an instance id can be
            if zw_proto::api::check_id("instance", &c.instance).is_err() || budget == 0 {
                continue;
            }
            let chunk = crate::logs::read(
                &self.log_file(&c.instance),
                c,
                &self.inner.log_clock,
                budget,
            );
            let used: u64 = chunk.lines.iter().map(|l| l.text.len() as u64 + 1).sum();
            budget = budget.saturating_sub(used);
            out.push(chunk);
        }
        out
    }

    /// Adopts the instances of the records whose process still runs; they are kept until
    /// the first assignments say whether they are still wanted.
    pub fn adopt(&self) -> usize {
        let mut n = 0;
        for record in self.inner.records.load_all() {
            let driver = self.inner.driver(record.assignment.runtime);
            match driver.and_then(|d| d.adopt(&record)) {
                Some(running) => {
                    tracing::info!(instance = %record.id(), pid = running.pid, "adopted a running instance");
                    self.spawn(record, Some(running));
                    n += 1;
                }
                None => {
                    tracing::info!(instance = %record.id(), "recorded instance is not running; it starts again if still assigned")
                }
            }
        }
        n
    }

    /// Every instance this node holds, as the hello reports them.
    pub fn reports(&self) -> Vec<InstanceReport> {
        let mut out: Vec<InstanceReport> = self
            .slots()
            .iter()
            .map(|(id, s)| InstanceReport {
                id: id.clone(),
                state: s.state,
                reason: s.reason.clone(),
                permanent: s.permanent,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// How many times instances failed after starting, since the agent started.
    pub fn failures(&self) -> u64 {
        self.inner
            .failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where each instance answers while it is started.
    pub fn addresses(&self) -> HashMap<String, Option<std::net::SocketAddr>> {
        self.inner
            .routes
            .load()
            .iter()
            .map(|(id, r)| (id.clone(), r.addr))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.slots().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Brings the node in line with `desired`: starts what is missing, stops what is no
    /// longer listed, restarts what changed.
    pub fn reconcile(&self, desired: Vec<Assignment>) {
        let wanted: HashMap<String, Assignment> =
            desired.into_iter().map(|a| (a.id.clone(), a)).collect();
        let mut slots = self.slots();
        for (id, slot) in slots.iter() {
            if !wanted
                .get(id)
                .is_some_and(|a| same_work(a, &slot.assignment))
            {
                let _ = slot.stop.send(true);
            }
        }
        // Records left by instances that are gone and no longer wanted.
        let records = self.inner.records.load_all();
        for record in &records {
            if !wanted.contains_key(record.id()) && !slots.contains_key(record.id()) {
                let _ = self.inner.records.remove(record.id());
            }
        }
        let mut known_ports: Vec<u16> = records.iter().map(|r| r.port).collect();
        let mut to_start = Vec::new();
        for (id, a) in wanted {
            match slots.get(&id) {
                Some(s) if same_work(&s.assignment, &a) => continue,
                Some(_) => {
                    // Changed: the old task stops (signalled above); start anew after it.
                    tracing::info!(instance = %id, "assignment changed; restarting the instance");
                    if let Some(old) = slots.remove(&id) {
                        to_start.push((a, Some(old.task)));
                    }
                }
                None => to_start.push((a, None)),
            }
        }
        drop(slots);
        for (a, previous) in to_start {
            // A restarted instance keeps its port: the ingress and its record agree.
            let port = records
                .iter()
                .find(|r| r.id() == a.id)
                .map(|r| r.port)
                .or_else(|| free_port(&known_ports));
            let Some(port) = port else {
                tracing::error!(instance = %a.id, "no free port for the instance");
                continue;
            };
            known_ports.push(port);
            let record = Record {
                assignment: a,
                port,
                pid: None,
                start_ticks: None,
                control: None,
                target: None,
            };
            match previous {
                None => self.spawn(record, None),
                Some(task) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _ = task.await;
                        me.spawn(record, None);
                    });
                }
            }
        }
    }

    fn spawn(&self, record: Record, running: Option<Running>) {
        let (stop, stop_rx) = watch::channel(false);
        let id = record.id().to_string();
        let assignment = record.assignment.clone();
        let inner = self.inner.clone();
        // An adopted instance was serving when the last agent left: it stays routable
        // while its first health check here confirms it (or fails it).
        let state = if running.is_some() {
            let addr = running.as_ref().map(|r| target(&record, r));
            inner.route(&id, &assignment.deployment, addr, false);
            InstanceState::Started
        } else {
            InstanceState::Created
        };
        // Hold the lock across the spawn so the task's first report finds its slot.
        let mut slots = self.slots();
        let task = tokio::spawn(run(inner, record, running, stop_rx));
        slots.insert(
            id,
            Slot {
                assignment,
                state,
                reason: None,
                permanent: false,
                stop,
                task,
            },
        );
    }

    /// Stops every instance and waits for them (`zeitwork up` on Ctrl-C).
    pub async fn stop_all(&self) {
        let tasks: Vec<_> = {
            let mut slots = self.slots();
            slots
                .drain()
                .map(|(_, s)| {
                    let _ = s.stop.send(true);
                    s.task
                })
                .collect()
        };
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Leaves instances running for the next agent to adopt (`zeitwork agent` stopping).
    pub fn detach_all(&self) {
        for (_, s) in self.slots().drain() {
            s.task.abort();
        }
        self.inner.routes.store(Arc::new(HashMap::new()));
    }
}

/// Whether two assignments run the same thing. A record written before releases existed
/// says release 0: the same instance under its first release is not a change (an agent
/// upgraded beside a migrated operator must not restart every instance).
fn same_work(a: &Assignment, b: &Assignment) -> bool {
    a == b
        || ((a.release == 0 || b.release == 0)
            && Assignment {
                release: b.release,
                ..a.clone()
            } == *b)
}

/// Where a started instance answers: the driver's address (a VM on its own network), or
/// its port on the loopback interface.
fn target(record: &Record, running: &Running) -> std::net::SocketAddr {
    running
        .target
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], record.port)))
}

fn free_port(avoid: &[u16]) -> Option<u16> {
    for _ in 0..20 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        if !avoid.contains(&port) {
            return Some(port);
        }
    }
    None
}

impl Inner {
    fn driver(&self, runtime: Runtime) -> Option<Arc<dyn Driver>> {
        self.drivers
            .iter()
            .find(|d| d.runtime() == runtime)
            .cloned()
    }

    fn report(&self, id: &str, state: InstanceState, reason: Option<String>) {
        self.report_with(id, state, reason, false)
    }

    /// A failure; `permanent` when waiting cannot mend it.
    fn report_failure(&self, id: &str, reason: String, permanent: bool) {
        self.report_with(id, InstanceState::Failed, Some(reason), permanent)
    }

    fn report_with(&self, id: &str, state: InstanceState, reason: Option<String>, permanent: bool) {
        if let Some(slot) = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(id)
        {
            slot.state = state;
            slot.reason = reason.clone();
            slot.permanent = permanent;
        }
        match &reason {
            Some(r) if state == InstanceState::Failed => {
                tracing::warn!(instance = id, %state, reason = %r, "instance state")
            }
            _ => tracing::info!(instance = id, %state, "instance state"),
        }
        let _ = self.events.send(InstanceReport {
            id: id.to_string(),
            state,
            reason,
            permanent,
        });
    }

    /// `Some(addr)`: serving there; `None`: held but not serving; `forget`: gone.
    fn route(&self, id: &str, deployment: &str, addr: Option<std::net::SocketAddr>, forget: bool) {
        self.routes.rcu(|m| {
            let mut m = HashMap::clone(m);
            if forget {
                m.remove(id);
            } else {
                // the count of requests in flight lives as long as the entry
                let in_flight = m.get(id).map(|r| r.in_flight.clone()).unwrap_or_default();
                m.insert(
                    id.to_string(),
                    Route {
                        deployment: Arc::from(deployment),
                        addr,
                        in_flight,
                    },
                );
            }
            m
        });
    }

    /// Waits until the requests the ingress sent to `id` have ended, or `drain` is up.
    async fn drained(&self, id: &str) {
        let Some(count) = self.routes.load().get(id).map(|r| r.in_flight.clone()) else {
            return;
        };
        let until = tokio::time::Instant::now() + self.timing.drain;
        let mut waited = false;
        while count.load(std::sync::atomic::Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= until {
                tracing::warn!(instance = id, left = count.load(std::sync::atomic::Ordering::Acquire), drain = ?self.timing.drain, "requests still in flight when the drain time ran out; stopping the instance anyway");
                return;
            }
            waited = true;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if waited {
            tracing::info!(
                instance = id,
                "requests in flight finished; stopping the instance"
            );
        }
    }

    /// Kills whatever is left in the instance's cgroups and waits until they are empty.
    async fn reap(&self, id: &str) {
        let Some(cg) = &self.cgroups else { return };
        let left = cg.kill_all(id, Duration::from_secs(10)).await;
        if !left.is_empty() {
            tracing::error!(instance = id, pids = ?left, "processes of the instance survived SIGKILL for 10 s (uninterruptible sleep?); its cgroup stays");
        }
    }

    fn save(&self, record: &Record) {
        if let Err(e) = self.records.save(record) {
            tracing::error!(instance = %record.id(), error = %e, "writing the instance record failed");
        }
    }
}

/// Waits for `d` unless a stop comes first; true when stopped.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

enum Outcome {
    Stop,
    /// Failed: restart after the backoff; `true` when waiting cannot mend it.
    Failed(String, bool),
    /// Failed before its first passed health check (exited, or never answered).
    Early(String, bool),
}

/// Starts in a row that end before the instance is healthy, after which waiting is no
/// longer expected to mend it: the failure is reported permanent (the agent still
/// retries with backoff, but a deploy stops waiting and a rolling release is halted).
const EARLY_FAILURES_PERMANENT: u32 = 3;

async fn run(
    inner: Arc<Inner>,
    mut record: Record,
    mut running: Option<Running>,
    mut stop: watch::Receiver<bool>,
) {
    let id = record.id().to_string();
    let t = inner.timing.clone();
    let mut backoff = Backoff::new(t.restart_min, t.restart_max);
    let mut early = 0u32;
    let driver = inner.driver(record.assignment.runtime);
    let launch_base = Launch {
        record: record.clone(),
        log_file: inner.state_dir.join("logs").join(format!("{id}.log")),
        work_dir: inner.state_dir.join("work").join(&id),
    };
    loop {
        let Some(driver) = driver.as_ref().filter(|d| d.status().available) else {
            let why = match &driver {
                Some(d) => format!(
                    "the {} runtime does not work on this node: {}",
                    record.assignment.runtime,
                    d.status().detail
                ),
                None => format!("this node has no {} runtime", record.assignment.runtime),
            };
            inner.report_failure(&id, why, true);
            crate::stopped(&mut stop).await;
            break;
        };
        if running.is_none() {
            inner.report(&id, InstanceState::Starting, None);
            record.pid = None;
            record.start_ticks = None;
            record.control = None;
            record.target = None;
            inner.save(&record);
            let _ = std::fs::create_dir_all(&launch_base.work_dir);
            let launch = Launch {
                record: record.clone(),
                ..launch_base.clone()
            };
            match driver.start(&launch).await {
                Ok(r) => {
                    record.pid = Some(r.pid);
                    record.start_ticks = r.start_ticks;
                    record.control = r.control.clone();
                    record.target = r.target;
                    inner.save(&record);
                    running = Some(r);
                }
                Err(e) => {
                    inner.report_failure(&id, e.message, e.permanent);
                    if sleep_or_stop(backoff.next_delay(fastrand::f64()), &mut stop).await {
                        break;
                    }
                    continue;
                }
            }
        }
        let Some(r) = running.as_mut() else { continue };
        let outcome = serve(&inner, &id, &record, r, &mut stop, &mut backoff).await;
        inner.route(&id, &record.assignment.deployment, None, false);
        let (why, permanent) = match outcome {
            Outcome::Stop => break,
            Outcome::Failed(why, permanent) => {
                early = 0;
                (why, permanent)
            }
            Outcome::Early(why, permanent) => {
                early += 1;
                if early >= EARLY_FAILURES_PERMANENT && !permanent {
                    (
                        format!(
                            "{why} ({early} starts in a row ended before the instance was healthy)"
                        ),
                        true,
                    )
                } else {
                    (why, permanent)
                }
            }
        };
        inner
            .failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        inner.report_failure(&id, why, permanent);
        if let Some(mut r) = running.take() {
            if r.is_alive() {
                driver.stop(&mut r, t.grace).await;
            } else {
                // The process we watched is gone, but what it started may not be
                // (an app that outlived its init would hold the port, and the
                // restart would fail on it).
                r.signal(nix::sys::signal::Signal::SIGKILL);
            }
        }
        inner.reap(&id).await;
        if sleep_or_stop(backoff.next_delay(fastrand::f64()), &mut stop).await {
            break;
        }
    }
    // No new requests (the ingress sends any to a sibling), then the ones in flight end,
    // then the signal.
    inner.route(&id, &record.assignment.deployment, None, false);
    inner.report(&id, InstanceState::Stopping, None);
    inner.drained(&id).await;
    inner.route(&id, &record.assignment.deployment, None, true);
    if let (Some(mut r), Some(d)) = (running.take(), driver.as_ref()) {
        let exit = d.stop(&mut r, t.grace).await;
        tracing::info!(instance = %id, how = %exit.0, "instance process ended");
    }
    // Stopped means no process of the instance is left, not that its first one exited.
    inner.reap(&id).await;
    inner.report(&id, InstanceState::Stopped, None);
    if let Some(cg) = &inner.cgroups {
        cg.remove(&id);
    }
    let _ = inner.records.remove(&id);
    let _ = std::fs::remove_dir_all(&launch_base.work_dir);
    inner.report(&id, InstanceState::Destroyed, None);
    inner
        .slots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
}

/// One life of a started process: health-checked into service, then watched until it
/// exits, fails its checks, or is told to stop.
async fn serve(
    inner: &Inner,
    id: &str,
    record: &Record,
    r: &mut Running,
    stop: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Outcome {
    let spec = &record.assignment.health_check;
    let http_only = record.assignment.runtime != Runtime::Process;
    let addr = target(record, r);
    let deadline = tokio::time::Instant::now() + inner.timing.startup_timeout;
    let mut last_error = String::from("no check ran yet");
    // Starting: check often, so the instance is routable as soon as it answers.
    loop {
        if tokio::time::Instant::now() > deadline {
            return Outcome::Early(
                format!(
                    "not healthy within {:?}: {last_error}",
                    inner.timing.startup_timeout
                ),
                false,
            );
        }
        tokio::select! {
            _ = crate::stopped(stop) => return Outcome::Stop,
            exit = r.wait() => return exited_before_healthy(&exit, &record.assignment.deployment),
            res = async {
                let res = crate::health::check(addr, spec, Duration::from_secs(2), http_only).await;
                if res.is_err() {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                res
            } => match res {
                Ok(()) => break,
                Err(e) => last_error = e.to_string(),
            },
        }
    }
    inner.route(id, &record.assignment.deployment, Some(addr), false);
    inner.report(id, InstanceState::Started, None);
    backoff.reset();
    let every = Duration::from_secs(u64::from(spec.interval_secs.unwrap_or(5).max(1)));
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = crate::stopped(stop) => return Outcome::Stop,
            exit = r.wait() => return Outcome::Failed(exit.0, false),
            _ = tokio::time::sleep(every) => {
                match crate::health::check(addr, spec, Duration::from_secs(2), http_only).await {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        if failures >= 3 {
                            return Outcome::Failed(format!("health check failed 3 times: {e}"), false);
                        }
                    }
                }
            }
        }
    }
}

/// An exit before the first passed health check. Statuses 126 and 127 are what a shell,
/// and `zeitwork-init`, exit with when the command cannot be executed or is not there:
/// that does not mend by restarting.
fn exited_before_healthy(exit: &crate::driver::Exit, deployment: &str) -> Outcome {
    let not_runnable = exit.0 == "exited with status 127" || exit.0 == "exited with status 126";
    if not_runnable {
        Outcome::Early(
            format!("{}: the command could not be executed (not found, or not executable in the instance's root); its log says which: `zeitwork logs {deployment}`", exit.0),
            true,
        )
    } else {
        Outcome::Early(format!("{} before it was healthy", exit.0), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(release: u64, command: &str) -> Assignment {
        Assignment {
            id: "inst-1".into(),
            deployment: "web".into(),
            release,
            runtime: Runtime::Process,
            command: vec![command.into()],
            env: Default::default(),
            rootfs: None,
            port: 8080,
            health_check: Default::default(),
        }
    }

    #[test]
    fn a_record_from_before_releases_is_the_same_work() {
        assert!(same_work(
            &assignment(0, "/bin/app"),
            &assignment(1, "/bin/app")
        ));
        assert!(same_work(
            &assignment(3, "/bin/app"),
            &assignment(3, "/bin/app")
        ));
        assert!(!same_work(
            &assignment(0, "/bin/app"),
            &assignment(1, "/bin/other")
        ));
        assert!(!same_work(
            &assignment(1, "/bin/app"),
            &assignment(2, "/bin/app")
        ));
    }
}
