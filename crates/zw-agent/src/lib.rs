//! Zeitwork's node agent (`zeitwork agent`): it registers its node with the operator (a
//! join token buys a node certificate from the platform CA for a CSR made here), keeps a
//! WebSocket to the operator open (dialled out: the node needs no inbound connection
//! from it), heartbeats, reconciles the instances assigned to the node through runtime
//! drivers ([`driver`]), reports every instance state change at once, and serves the
//! worker ingress ([`ingress`]) that admits only edges with a platform certificate.
//!
//! Instance records are kept on the node ([`records`]) so that an agent restart adopts
//! what still runs instead of starting duplicates.

pub mod admin;
pub mod cgroup;
pub mod driver;
mod error;
pub mod health;
pub mod ingress;
pub mod init;
pub mod logs;
pub mod oci;
pub mod records;
pub mod supervise;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};

pub use error::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use zw_proto::agent::{AgentMessage, ControlMessage, InstanceReport, MAX_MESSAGE_BYTES};
use zw_proto::api::{Resources, TokenRole};
use zw_proto::backoff::Backoff;

use crate::driver::Driver;
use crate::supervise::{Supervisor, Timing};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The operator's API, `host:port`.
    pub operator: String,
    /// A join token with the `agent` role (or the admin token).
    pub token: String,
    pub region: String,
    pub hostname: String,
    /// The host edges reach this node at (its ingress certificate is for this name).
    pub address: String,
    pub ingress_listen: SocketAddr,
    /// `/health`, `/metrics`, `/debug/instances`; `None` serves none.
    pub admin_listen: Option<SocketAddr>,
    pub state_dir: PathBuf,
    pub heartbeat: Duration,
    /// `zeitwork-init`, for isolated instances (when the agent is root); `None` runs
    /// processes without isolation.
    pub init: Option<PathBuf>,
    pub timing: Timing,
    pub instance_memory_mb: u64,
    pub instance_cpu_millis: u64,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub qemu: QemuOptions,
}

/// Where the `qemu` driver finds its guest kernel, and how it accelerates.
#[derive(Debug, Clone, Default)]
pub struct QemuOptions {
    /// Default: the newest `/boot/vmlinuz-*`.
    pub kernel: Option<PathBuf>,
    /// Default: `/lib/modules/VERSION` of that kernel.
    pub modules: Option<PathBuf>,
    /// `None`: KVM if a canary VM boots with it, else emulation.
    pub accel: Option<driver::qemu::Accel>,
    pub memory_mb: u64,
    /// An uncompressed `vmlinux` for Firecracker (which boots only ELF kernels); it uses
    /// the same modules directory.
    pub firecracker_kernel: Option<PathBuf>,
}

/// A running agent.
pub struct Agent {
    pub node_id: String,
    pub ingress_address: SocketAddr,
    pub admin_address: Option<SocketAddr>,
    supervisor: Supervisor,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn node_id(state_dir: &std::path::Path) -> std::io::Result<String> {
    let file = state_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&file) {
        let id = id.trim();
        if zw_proto::api::check_id("node-id", id).is_ok() {
            return Ok(id.to_string());
        }
    }
    let mut buf = [0u8; 6];
    for b in &mut buf {
        *b = fastrand::u8(..);
    }
    let id = format!("node-{}", hex::encode(buf));
    std::fs::write(&file, format!("{id}\n"))?;
    Ok(id)
}

/// What this node offers.
pub fn resources(state_dir: &std::path::Path) -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024);
    let disk_mb = nix::sys::statvfs::statvfs(state_dir)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()) / (1 << 20))
        .unwrap_or(0);
    Resources {
        cpu_millis: cpus * 1000,
        memory_mb,
        disk_mb,
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Whether `path` is an ELF executable without a program interpreter (statically linked).
fn is_static_elf(path: &std::path::Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|x| u16::from_le_bytes([x[0], x[1]]) as usize)
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|x| x.try_into().ok())
            .map(|x: [u8; 8]| u64::from_le_bytes(x) as usize)
    };
    if b.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(size), Some(num)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..num).all(|i| {
        let at = phoff + i * size;
        // PT_INTERP = 3
        b.get(at..at + 4) != Some(&[3, 0, 0, 0][..])
    })
}

/// The newest `/boot/vmlinuz-*` and its modules directory.
fn default_kernel() -> Option<(PathBuf, PathBuf)> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    let kernel = kernels.pop()?;
    let version = kernel
        .file_name()?
        .to_str()?
        .strip_prefix("vmlinuz-")?
        .to_string();
    Some((kernel, PathBuf::from("/lib/modules").join(version)))
}

/// The drivers of this node, each with whether it works here (the qemu driver boots a
/// canary VM to decide between KVM and emulation).
pub async fn drivers(config: &Config, cgroups: Option<cgroup::Cgroups>) -> Vec<Arc<dyn Driver>> {
    let (kernel, modules) = match (&config.qemu.kernel, &config.qemu.modules) {
        (Some(k), Some(m)) => (Some(k.clone()), Some(m.clone())),
        (Some(k), None) => {
            let version = k
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(|v| PathBuf::from("/lib/modules").join(v));
            (Some(k.clone()), version)
        }
        _ => default_kernel().map_or((None, None), |(k, m)| (Some(k), Some(m))),
    };
    let busybox = on_path("busybox").filter(|p| is_static_elf(p));
    let firecracker = firecracker(config, modules.clone(), busybox.clone());
    let qemu = driver::qemu::QemuDriver::setup(
        on_path("qemu-system-x86_64"),
        kernel,
        modules,
        busybox,
        config.qemu.accel,
        config.qemu.memory_mb.max(192),
        config.state_dir.join("qemu"),
    )
    .await;
    vec![
        Arc::new(driver::process::ProcessDriver {
            init: config.init.clone(),
            cgroups,
            memory_limit_mb: config.instance_memory_mb,
            cpu_limit_millis: config.instance_cpu_millis,
        }),
        Arc::new(qemu),
        Arc::new(firecracker),
    ]
}

fn firecracker(
    config: &Config,
    modules: Option<PathBuf>,
    busybox: Option<PathBuf>,
) -> driver::firecracker::FirecrackerDriver {
    let setup = (|| {
        let firecracker = on_path("firecracker").ok_or("no firecracker binary on PATH")?;
        let kernel = config
            .qemu
            .firecracker_kernel
            .clone()
            .ok_or("no --firecracker-kernel (an uncompressed vmlinux)")?;
        let modules = modules.ok_or("no guest kernel modules (--qemu-modules)")?;
        let busybox =
            busybox.ok_or("no static busybox for the initramfs (Debian: busybox-static)")?;
        let dir = config.state_dir.join("firecracker");
        std::fs::create_dir_all(&dir)
            .and_then(|_| {
                driver::vm::write_initramfs(
                    &busybox,
                    &modules,
                    &dir.join("initramfs.cpio"),
                    driver::vm::GUEST_INIT,
                )
            })
            .map_err(|e| format!("building the initramfs: {e}"))?;
        Ok::<_, String>(driver::firecracker::FirecrackerConfig {
            firecracker,
            kernel,
            modules,
            busybox,
            memory_mb: config.qemu.memory_mb.max(192),
            dir,
        })
    })();
    driver::firecracker::FirecrackerDriver { setup }
}

impl Agent {
    /// Binds the ingress, gets the node certificate (the stored one while it is valid),
    /// adopts surviving instances, and starts the session with the operator.
    pub async fn start(config: Config) -> Result<Agent, Error> {
        std::fs::create_dir_all(&config.state_dir).map_err(Error::file(&config.state_dir))?;
        let node_id =
            node_id(&config.state_dir).map_err(Error::file(config.state_dir.join("node-id")))?;
        let bind = |what, address| {
            move |source| Error::Bind {
                what,
                address,
                source,
            }
        };
        let listener = TcpListener::bind(config.ingress_listen)
            .await
            .map_err(bind("the ingress", config.ingress_listen))?;
        let ingress_address = listener
            .local_addr()
            .map_err(bind("the ingress", config.ingress_listen))?;
        let admin = match config.admin_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(bind("the admin endpoint", a))?,
            ),
            None => None,
        };
        let admin_address = admin.as_ref().and_then(|l| l.local_addr().ok());
        let (stop, stop_rx) = watch::channel(false);

        let identity = enroll_until_done(&config, &node_id, stop_rx.clone()).await?;
        let server_tls = identity.server_config()?;
        let tls = Arc::new(arc_swap::ArcSwap::new(server_tls));

        let cgroups = if config.init.is_some() {
            cgroup::Cgroups::detect(std::path::Path::new("/sys/fs/cgroup"))
        } else {
            None
        };
        let drivers = drivers(&config, cgroups.clone()).await;
        for d in &drivers {
            let s = d.status();
            tracing::info!(runtime = %s.runtime, available = s.available, detail = %s.detail, "runtime driver");
        }
        let (supervisor, events) = Supervisor::new(
            drivers.clone(),
            config.state_dir.clone(),
            config.timing.clone(),
            cgroups,
        )
        .map_err(Error::file(&config.state_dir))?;
        let adopted = supervisor.adopt();
        tracing::info!(node = %node_id, ingress = %ingress_address, adopted, "agent started");

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(renew(
            config.clone(),
            node_id.clone(),
            identity.not_after(),
            tls.clone(),
            stop_rx.clone(),
        )));
        if let Some(admin) = admin {
            tasks.push(tokio::spawn(admin::serve(
                admin,
                supervisor.clone(),
                stop_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(log_clock(supervisor.clone(), stop_rx.clone())));
        tasks.push(tokio::spawn(ingress::serve(
            listener,
            tls.clone(),
            supervisor.routes(),
            stop_rx.clone(),
        )));
        let session = Session {
            config: config.clone(),
            node_id: node_id.clone(),
            ingress_address: format!("{}:{}", bracket(&config.address), ingress_address.port()),
            supervisor: supervisor.clone(),
            drivers,
        };
        tasks.push(tokio::spawn(session.run(events, stop_rx)));
        Ok(Agent {
            node_id,
            ingress_address,
            admin_address,
            supervisor,
            stop,
            tasks,
        })
    }

    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Stops the agent. With `stop_instances` its instances are stopped too (the
    /// one-process platform); without, they keep running for the next agent to adopt.
    pub async fn shutdown(self, stop_instances: bool) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if stop_instances {
            self.supervisor.stop_all().await;
        } else {
            self.supervisor.detach_all();
        }
    }
}

/// Ticks the log clock ([`logs`]) four times a second.
async fn log_clock(supervisor: Supervisor, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => supervisor.observe_logs(),
            _ = crate::stopped(&mut stop) => return,
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

async fn enroll_until_done(
    config: &Config,
    node_id: &str,
    mut stop: watch::Receiver<bool>,
) -> Result<zw_pki::Identity, Error> {
    let names = vec![config.address.clone()];
    let enrollment = zw_http::Enrollment {
        operator: &config.operator,
        token: &config.token,
        role: TokenRole::Agent,
        name: node_id,
        names: &names,
    };
    let dir = config.state_dir.join("tls");
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    loop {
        match zw_http::enroll(&enrollment, Some(&dir)).await {
            Ok(id) => return Ok(id),
            // A refusal is not going to change by retrying; say so and stop.
            Err(e) if e.is_refusal() => return Err(e.into()),
            Err(e) => {
                let delay = backoff.next_delay(fastrand::f64());
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "no node certificate yet");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = crate::stopped(&mut stop) => return Err(Error::Stopped("enrolling")),
                }
            }
        }
    }
}

/// Replaces the node certificate (and the ingress's TLS configuration) when a third of
/// its validity is left. New connections get the new one; open ones keep theirs.
async fn renew(
    config: Config,
    node_id: String,
    mut not_after: i64,
    tls: Arc<arc_swap::ArcSwap<zw_pki::rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    let margin = (zw_http::CERT_VALIDITY / 3).as_secs() as i64;
    loop {
        let now = zw_proto::time::unix_millis() / 1000;
        let wait = Duration::from_secs((not_after - margin - now).clamp(60, 3600) as u64);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = crate::stopped(&mut stop) => return,
        }
        let now = zw_proto::time::unix_millis() / 1000;
        if not_after - now >= margin {
            continue;
        }
        match enroll_until_done(&config, &node_id, stop.clone())
            .await
            .and_then(|id| Ok((id.server_config()?, id.not_after())))
        {
            Ok((server, expiry)) => {
                tls.store(server);
                not_after = expiry;
                tracing::info!(expires_unix = expiry, "node certificate renewed");
            }
            Err(e) => tracing::error!(error = %e, "renewing the node certificate failed"),
        }
    }
}

struct Session {
    config: Config,
    node_id: String,
    ingress_address: String,
    supervisor: Supervisor,
    drivers: Vec<Arc<dyn Driver>>,
}

/// The operator says nothing for this long (it pings every 5 s): the connection is dead.
const SILENCE: Duration = Duration::from_secs(30);

impl Session {
    async fn run(
        self,
        mut events: mpsc::UnboundedReceiver<InstanceReport>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new(self.config.reconnect_min, self.config.reconnect_max);
        loop {
            let end = tokio::select! {
                end = self.session(&mut events) => end,
                _ = crate::stopped(&mut stop) => return,
            };
            match end {
                Ok(()) => backoff.reset(),
                Err((connected, e)) => {
                    if connected {
                        backoff.reset();
                    }
                    tracing::warn!(operator = %self.config.operator, error = %e, "operator connection ended; instances keep running");
                }
            }
            let delay = backoff.next_delay(fastrand::f64());
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = crate::stopped(&mut stop) => return,
            }
        }
    }

    /// One connection. `Err((connected, why))`.
    async fn session(
        &self,
        events: &mut mpsc::UnboundedReceiver<InstanceReport>,
    ) -> Result<(), (bool, Error)> {
        let url = format!("ws://{}/api/v1/agent/connect", self.config.operator);
        let mut request = url
            .into_client_request()
            .map_err(|e| (false, Error::Session(format!("bad operator address: {e}"))))?;
        let auth = http::HeaderValue::from_str(&format!("Bearer {}", self.config.token)).map_err(
            |_| {
                (
                    false,
                    Error::Session("the join token is not a valid header value".into()),
                )
            },
        )?;
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, auth);
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true);
        let (mut ws, _) = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return Err((false, Error::Session(e.to_string()))),
            Err(_) => return Err((false, Error::Session("no connection within 10s".into()))),
        };
        // The hello carries every instance's current state: queued events are older.
        while events.try_recv().is_ok() {}
        let hello = AgentMessage::Hello {
            node_id: self.node_id.clone(),
            hostname: self.config.hostname.clone(),
            region: self.config.region.clone(),
            address: self.config.address.clone(),
            ingress_address: self.ingress_address.clone(),
            resources: resources(&self.config.state_dir),
            drivers: self.drivers.iter().map(|d| d.status()).collect(),
            instances: self.supervisor.reports(),
        };
        send(&mut ws, &hello).await.map_err(|e| (false, e))?;
        tracing::info!(operator = %self.config.operator, node = %self.node_id, "connected to the operator");
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    let hb = AgentMessage::Heartbeat {
                        resources: resources(&self.config.state_dir),
                        instances: self.supervisor.reports(),
                    };
                    send(&mut ws, &hb).await.map_err(|e| (true, e))?;
                }
                Some(report) = events.recv() => {
                    send(&mut ws, &AgentMessage::Instance(report)).await.map_err(|e| (true, e))?;
                }
                msg = tokio::time::timeout(SILENCE, ws.next()) => {
                    let msg = match msg {
                        Err(_) => return Err((true, Error::Session(format!("operator silent for {SILENCE:?}")))),
                        Ok(None) => return Err((true, Error::Session("operator closed the connection".into()))),
                        Ok(Some(Err(e))) => return Err((true, Error::Session(e.to_string()))),
                        Ok(Some(Ok(m))) => m,
                    };
                    match msg {
                        Message::Text(t) => match serde_json::from_str::<ControlMessage>(&t) {
                            Ok(ControlMessage::Assignments { version, instances }) => {
                                tracing::info!(version, instances = instances.len(), "assignments received");
                                self.supervisor.reconcile(instances);
                            }
                            Ok(ControlMessage::Logs { request, instances }) => {
                                let chunks = self.supervisor.read_logs(&instances);
                                send(&mut ws, &AgentMessage::Logs { request, chunks }).await.map_err(|e| (true, e))?;
                            }
                            Ok(ControlMessage::Error { message }) => {
                                return Err((false, Error::Session(format!("the operator refused this node: {message}"))));
                            }
                            Err(e) => return Err((true, Error::Session(format!("unreadable message from the operator: {e}")))),
                        },
                        Message::Close(_) => return Ok(()),
                        _ => {}
                    }
                }
            }
        }
    }
}

async fn send<S>(ws: &mut S, msg: &AgentMessage) -> Result<(), Error>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let text = serde_json::to_string(msg).map_err(|e| Error::Session(e.to_string()))?;
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| Error::Session(format!("send failed: {e}")))
}
