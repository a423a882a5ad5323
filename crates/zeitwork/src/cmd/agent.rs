//! `zeitwork agent`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
#[command(after_help = "Examples:\n  \
zeitwork agent --operator 10.0.0.2:7070 --token $JOIN_TOKEN --region eu --address 10.0.0.7\n\n\
The agent makes a key, sends the operator a certificate signing request with the join token\n\
(role `agent`: POST /api/v1/join-tokens {\"role\":\"agent\"}) and keeps the node certificate in\n\
STATE_DIR/tls. Its worker ingress (--ingress) admits only edges with a platform certificate.\n\
Instances keep running when the agent stops; the next agent adopts them. Run as root to isolate\n\
process instances (namespaces, pivot_root, cgroup limits).")]
pub struct AgentArgs {
    /// The operator's API (`host:port`, or http://host:port).
    #[arg(
        long,
        value_name = "ADDR",
        env = "ZEITWORK_OPERATOR",
        default_value = "127.0.0.1:7070"
    )]
    operator: String,
    /// A join token with the `agent` role.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ZEITWORK_TOKEN",
        hide_env_values = true
    )]
    token: String,
    /// The node's region (must exist at the operator).
    #[arg(long, value_name = "NAME")]
    region: String,
    /// The address edges reach this node at (its certificate names it).
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    address: String,
    /// Where the worker ingress (mutual TLS) listens.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7443")]
    ingress: SocketAddr,
    /// The agent's admin endpoint: /health, /metrics, /debug/instances (plain HTTP).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7071")]
    admin: SocketAddr,
    /// Instance records, logs, work directories and the node certificate.
    #[arg(long, value_name = "DIR", default_value = "./zeitwork-agent")]
    state_dir: PathBuf,
    /// How often the agent heartbeats.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = super::duration)]
    heartbeat: Duration,
    /// Time an instance gets between SIGTERM and SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::duration)]
    stop_grace: Duration,
    /// Before SIGTERM, how long a stopping instance may take to finish the requests in
    /// flight to it (it gets no new ones meanwhile); a rolling release drains each old
    /// instance this way.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = super::duration)]
    drain_timeout: Duration,
    /// Memory limit per isolated instance, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    instance_memory: u64,
    /// CPU limit per isolated instance, in thousandths of a CPU.
    #[arg(long, value_name = "MILLIS", default_value_t = 1000)]
    instance_cpu: u64,
    /// Run process instances without namespaces even as root.
    #[arg(long)]
    no_isolation: bool,
    #[command(flatten)]
    vm: VmArgs,
    /// Stop the instances when the agent stops (default: leave them for the next agent).
    #[arg(long)]
    stop_instances_on_exit: bool,
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

impl AgentArgs {
    pub(crate) fn config(&self) -> anyhow::Result<zw_agent::Config> {
        Ok(zw_agent::Config {
            operator: self
                .operator
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string(),
            token: self.token.clone(),
            region: self.region.clone(),
            hostname: std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into()),
            address: self.address.clone(),
            ingress_listen: self.ingress,
            admin_listen: Some(self.admin),
            state_dir: self.state_dir.clone(),
            heartbeat: self.heartbeat,
            init: if self.no_isolation {
                None
            } else {
                isolation_program()?
            },
            timing: zw_agent::supervise::Timing {
                grace: self.stop_grace,
                drain: self.drain_timeout,
                ..Default::default()
            },
            instance_memory_mb: self.instance_memory,
            instance_cpu_millis: self.instance_cpu,
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            qemu: self.vm.options(),
        })
    }
}

/// The microVM runtimes' options (`zeitwork agent` and `zeitwork up`).
#[derive(Args)]
pub struct VmArgs {
    /// Guest kernel for `qemu` instances (a Debian linux-image vmlinuz). Default: the
    /// newest /boot/vmlinuz-*.
    #[arg(long, value_name = "PATH", env = "ZEITWORK_QEMU_KERNEL")]
    qemu_kernel: Option<PathBuf>,
    /// That kernel's modules directory (/lib/modules/VERSION), for the virtio drivers.
    #[arg(long, value_name = "DIR", env = "ZEITWORK_QEMU_MODULES")]
    qemu_modules: Option<PathBuf>,
    /// `auto`: KVM if a canary VM boots with it, emulation otherwise.
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    qemu_accel: String,
    /// Memory per microVM, in MiB (a Debian kernel needs about 192 to boot).
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    vm_memory: u64,
    /// An uncompressed vmlinux for `firecracker` instances (needs a firecracker binary
    /// on PATH and KVM).
    #[arg(long, value_name = "PATH", env = "ZEITWORK_FIRECRACKER_KERNEL")]
    firecracker_kernel: Option<PathBuf>,
}

impl VmArgs {
    pub(crate) fn options(&self) -> zw_agent::QemuOptions {
        use zw_agent::driver::qemu::Accel;
        zw_agent::QemuOptions {
            kernel: self.qemu_kernel.clone(),
            modules: self.qemu_modules.clone(),
            accel: match self.qemu_accel.as_str() {
                "kvm" => Some(Accel::Kvm),
                "tcg" => Some(Accel::Tcg),
                _ => None,
            },
            memory_mb: self.vm_memory,
            firecracker_kernel: self.firecracker_kernel.clone(),
        }
    }
}

/// `zeitwork-init`, installed beside this binary, when the agent may isolate instances
/// (it is root); else `None`.
pub(crate) fn isolation_program() -> anyhow::Result<Option<PathBuf>> {
    if !nix::unistd::geteuid().is_root() {
        tracing::info!("not root: process instances run without isolation");
        return Ok(None);
    }
    let me = std::env::current_exe().context("finding this binary")?;
    let init = me.with_file_name("zeitwork-init");
    if init.is_file() {
        return Ok(Some(init));
    }
    // `cargo run` builds only this binary: it can be the init itself (started under the
    // init's name), at the cost of a larger image mapped beside each instance.
    tracing::info!(
        missing = %init.display(),
        "zeitwork-init is not installed beside zeitwork; zeitwork serves as the instance init (install zeitwork-init to save memory per instance)"
    );
    Ok(Some(me))
}

pub fn run(args: AgentArgs) -> ExitCode {
    let json = args.log_format == "json";
    super::service("agent", json, || {
        let config = args.config()?;
        super::runtime(None)?.block_on(async move {
            let agent = zw_agent::Agent::start(config)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("node {} ingress {}", agent.node_id, agent.ingress_address);
            if let Some(a) = agent.admin_address {
                tracing::info!(addr = %a, "admin listening (/health /metrics /debug/instances)");
            }
            super::shutdown_signal().await;
            agent.shutdown(args.stop_instances_on_exit).await;
            tracing::info!("stopped");
            Ok(())
        })
    })
}
