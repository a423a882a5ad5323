//! The `qemu` driver: each instance is a microVM (`qemu-system-x86_64 -M microvm`).
//!
//! - **Kernel**: a Debian `linux-image-*` kernel (`--qemu-kernel`), with its modules
//!   directory (`--qemu-modules`) for the virtio drivers it builds as modules.
//! - **Initramfs**: made by the agent once — a static busybox and our guest init
//!   ([`GUEST_INIT`]), which loads the virtio modules, mounts the root disk, brings up the
//!   network and hands over to the app with `switch_root`.
//! - **Root disk**: the image's root filesystem (a directory, or an unpacked OCI layout)
//!   plus `/.zeitwork/{argv,env}`, made into an ext4 image with `mkfs.ext4 -d` (no mount,
//!   no loop device).
//! - **Network**: QEMU's user-mode network; the instance's host port (on 127.0.0.1)
//!   forwards to the deployment's port in the guest, so the ingress reaches a VM exactly
//!   as it reaches a process.
//! - **Acceleration**: KVM when a canary VM booted with KVM within its deadline
//!   ([`probe_kvm`]); software emulation (TCG) otherwise. Under TCG the kernel gets
//!   `tsc_early_khz=` (the host's TSC rate), without which its TSC calibration under
//!   emulation can take seconds or fail.
//! - **Stopping**: through QMP (`quit`) on the VM's monitor socket, then SIGKILL after the
//!   grace period.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use zw_proto::api::{DriverStatus, RootFs, Runtime};

use super::{BoxFuture, Driver, Exit, Launch, Running};

/// The guest's PID 1 inside the initramfs (run by busybox's shell).
pub const GUEST_INIT: &str = r#"#!/bin/busybox sh
# Zeitwork guest init: load the virtio modules, mount the root disk, bring up the network,
# hand over to the app.
/bin/busybox mkdir -p /bin /proc /sys /dev /newroot
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# In dependency order; the microVM describes its virtio-mmio devices through ACPI.
for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net; do
  [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do usleep 20000; i=$((i+1)); done
if ! mount -t ext4 /dev/vda /newroot; then
  echo "zeitwork-init: cannot mount the root disk /dev/vda"
  poweroff -f
fi
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
[ -d /newroot/dev ] && mount -t devtmpfs dev /newroot/dev
[ -d /newroot/proc ] && mount -t proc proc /newroot/proc
set --
while IFS= read -r a; do set -- "$@" "$a"; done < /newroot/.zeitwork/argv
. /newroot/.zeitwork/env
echo "zeitwork-init: starting $1"
exec switch_root /newroot "$@"
echo "zeitwork-init: could not start $1"
poweroff -f
"#;

const CANARY_INIT: &str =
    "#!/bin/busybox sh\n/bin/busybox echo ZEITWORK-CANARY-OK\n/bin/busybox poweroff -f\n";
const CANARY_MARK: &str = "ZEITWORK-CANARY-OK";

/// The virtio drivers the guest init loads, in dependency order.
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    /// `/lib/modules/VERSION` of that kernel.
    pub modules: PathBuf,
    /// A statically linked busybox for the initramfs.
    pub busybox: PathBuf,
    pub memory_mb: u64,
    /// Where the initramfs is made and kept.
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct QemuDriver {
    /// `Err`: why the driver cannot run here.
    pub setup: Result<(QemuConfig, Accel), String>,
    /// What the probe found (KVM or not, and why).
    pub detail: String,
}

impl QemuDriver {
    /// Finds what the driver needs, builds the initramfs, and decides KVM or emulation
    /// (`accel`: `None` asks the canary).
    pub async fn setup(
        qemu: Option<PathBuf>,
        kernel: Option<PathBuf>,
        modules: Option<PathBuf>,
        busybox: Option<PathBuf>,
        accel: Option<Accel>,
        memory_mb: u64,
        dir: PathBuf,
    ) -> QemuDriver {
        let found = (|| {
            let qemu =
                qemu.ok_or("qemu-system-x86_64 is not installed (Debian: qemu-system-x86)")?;
            let kernel = kernel
                .ok_or("no guest kernel: give --qemu-kernel (a Debian linux-image vmlinuz)")?;
            let modules = modules
                .ok_or("no guest kernel modules: give --qemu-modules (its /lib/modules/VERSION)")?;
            let busybox =
                busybox.ok_or("no static busybox for the initramfs (Debian: busybox-static)")?;
            Ok::<_, &str>(QemuConfig {
                qemu,
                kernel,
                modules,
                busybox,
                memory_mb,
                dir,
            })
        })();
        let config = match found {
            Ok(c) => c,
            Err(e) => {
                return QemuDriver {
                    setup: Err(e.to_string()),
                    detail: e.to_string(),
                }
            }
        };
        if let Err(e) = std::fs::create_dir_all(&config.dir)
            .and_then(|_| write_initramfs(&config, &config.dir.join("initramfs.cpio"), GUEST_INIT))
        {
            let why = format!("building the initramfs: {e}");
            return QemuDriver {
                setup: Err(why.clone()),
                detail: why,
            };
        }
        let (accel, detail) = match accel {
            Some(Accel::Kvm) => (Accel::Kvm, "KVM (as configured)".to_string()),
            Some(Accel::Tcg) => (Accel::Tcg, "software emulation (as configured)".to_string()),
            None => match probe_kvm(&config, Duration::from_secs(10)).await {
                Ok(ms) => (Accel::Kvm, format!("KVM (a canary VM booted in {ms} ms)")),
                Err(why) => (Accel::Tcg, format!("software emulation: {why}")),
            },
        };
        QemuDriver {
            detail: format!("{} with {}", config.kernel.display(), detail),
            setup: Ok((config, accel)),
        }
    }
}

/// Boots a canary VM with KVM: it prints a mark and powers off. KVM "works" only if that
/// happens within `deadline` — opening `/dev/kvm` proves nothing on hosts whose nested
/// virtualisation fails once a guest runs.
pub async fn probe_kvm(config: &QemuConfig, deadline: Duration) -> Result<u128, String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("no /dev/kvm".into());
    }
    let initrd = config.dir.join("canary.cpio");
    write_initramfs(config, &initrd, CANARY_INIT).map_err(|e| format!("canary initramfs: {e}"))?;
    let start = std::time::Instant::now();
    let mut child = tokio::process::Command::new(&config.qemu)
        .args([
            "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "256M", "-smp", "1",
        ])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&config.kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 rdinit=/init panic=-1 quiet"])
        .args(["-serial", "stdio"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", config.qemu.display()))?;
    let stdout = child.stdout.take().ok_or("no canary output")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let seen = tokio::time::timeout(deadline, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(CANARY_MARK) {
                return true;
            }
        }
        false
    })
    .await;
    let _ = child.kill().await;
    match seen {
        Ok(true) => Ok(start.elapsed().as_millis()),
        Ok(false) => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut err).await;
            }
            Err(format!(
                "the KVM canary VM failed: {}",
                zw_proto::abbreviate(err.trim(), 300)
            ))
        }
        Err(_) => Err(format!(
            "the KVM canary VM did not boot within {deadline:?}"
        )),
    }
}

/// A newc cpio archive: `/init` (this script), `/bin/busybox`, the virtio modules.
fn write_initramfs(config: &QemuConfig, out: &Path, init: &str) -> std::io::Result<()> {
    let mut cpio = Cpio::default();
    for dir in ["bin", "lib", "lib/modules", "proc", "sys", "dev", "newroot"] {
        cpio.dir(dir);
    }
    cpio.file("init", 0o755, init.as_bytes());
    cpio.file("bin/busybox", 0o755, &std::fs::read(&config.busybox)?);
    for m in MODULES {
        if let Some(path) = find_module(&config.modules, m) {
            cpio.file(&format!("lib/modules/{m}.ko"), 0o644, &std::fs::read(path)?);
        }
    }
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, cpio.finish())?;
    std::fs::rename(tmp, out)
}

fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    let file = format!("{name}.ko");
    let mut stack = vec![dir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().and_then(|n| n.to_str()) == Some(file.as_str()) {
                return Some(p);
            }
        }
    }
    None
}

/// The "newc" cpio format the kernel unpacks as an initramfs.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            namesize,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// Single quotes for the guest shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The host's TSC rate in kHz, for `tsc_early_khz=` under emulation.
fn tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

async fn run(cmd: &mut tokio::process::Command, what: &str) -> Result<(), String> {
    let out = cmd.output().await.map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}",
            zw_proto::abbreviate(String::from_utf8_lossy(&out.stderr).trim(), 500)
        ))
    }
}

/// The root disk: the image's tree plus the command and environment, as ext4.
async fn root_disk(launch: &Launch, stage: &Path, disk: &Path) -> Result<(), String> {
    let a = &launch.record.assignment;
    let tree = match &a.rootfs {
        Some(RootFs::Oci(layout)) => crate::oci::unpacked(Path::new(layout), &launch.work_dir)
            .await
            .map_err(|e| format!("unpacking the OCI image {layout}: {e}"))?,
        Some(RootFs::Dir(dir)) => {
            let _ = std::fs::remove_dir_all(stage);
            std::fs::create_dir_all(stage).map_err(|e| e.to_string())?;
            run(
                tokio::process::Command::new("cp")
                    .arg("-a")
                    .arg(format!("{dir}/."))
                    .arg(stage),
                "copying the root filesystem",
            )
            .await?;
            stage.to_path_buf()
        }
        None => return Err("a qemu image needs a root filesystem (--rootfs or --oci)".into()),
    };
    let meta = tree.join(".zeitwork");
    std::fs::create_dir_all(&meta).map_err(|e| e.to_string())?;
    let mut argv = String::new();
    for arg in &a.command {
        if arg.contains('\n') {
            return Err("command arguments cannot contain newlines in a VM".into());
        }
        argv.push_str(arg);
        argv.push('\n');
    }
    std::fs::write(meta.join("argv"), argv).map_err(|e| e.to_string())?;
    let mut env = format!(
        "export PORT={}\nexport ZEITWORK_INSTANCE={}\n",
        a.port,
        shell_quote(&a.id)
    );
    for (k, v) in &a.env {
        env.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    std::fs::write(meta.join("env"), env).map_err(|e| e.to_string())?;
    // Room for the tree and some to spare.
    let used: u64 = dir_size(&tree);
    let size_mb = (used * 2 / (1 << 20)).max(64);
    let _ = std::fs::remove_file(disk);
    run(
        tokio::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "root", "-d"])
            .arg(&tree)
            .arg(disk)
            .arg(format!("{size_mb}M")),
        "making the root disk (mkfs.ext4, Debian: e2fsprogs)",
    )
    .await
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

impl QemuDriver {
    async fn launch(&self, launch: &Launch) -> Result<Running, String> {
        let (config, accel) = self.setup.as_ref().map_err(|e| e.clone())?;
        let disk = launch.work_dir.join("root.ext4");
        root_disk(launch, &launch.work_dir.join("stage"), &disk).await?;
        let qmp = launch.work_dir.join("qmp.sock");
        let _ = std::fs::remove_file(&qmp);
        let a = &launch.record.assignment;
        let mut append = String::from("console=ttyS0 rdinit=/init panic=-1 quiet");
        let (accel_arg, cpu) = match accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => {
                if let Some(khz) = tsc_khz() {
                    append.push_str(&format!(" tsc_early_khz={khz}"));
                }
                ("tcg", "max")
            }
        };
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log_file)
            .map_err(|e| format!("opening {}: {e}", launch.log_file.display()))?;
        let _ = writeln!(log, "zeitwork: booting a microVM ({accel_arg})");
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = tokio::process::Command::new(&config.qemu);
        cmd.args([
            "-M", "microvm", "-accel", accel_arg, "-cpu", cpu, "-smp", "1",
        ])
        .arg("-m")
        .arg(format!("{}M", config.memory_mb))
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&config.kernel)
        .arg("-initrd")
        .arg(config.dir.join("initramfs.cpio"))
        .arg("-append")
        .arg(&append)
        .args(["-serial", "stdio"])
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none",
            disk.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .arg("-netdev")
        .arg(format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{}-:{}",
            launch.record.port, a.port
        ))
        .args(["-device", "virtio-net-device,netdev=n0"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(log))
        .stderr(std::process::Stdio::from(log_err))
        .process_group(0)
        .kill_on_drop(false);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", config.qemu.display()))?;
        let mut running = Running::owned(child)?;
        running.control = Some(qmp);
        Ok(running)
    }
}

/// Asks the VM's monitor to quit.
async fn qmp_quit(socket: &Path) -> Result<(), String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("QMP {}: {e}", socket.display()))?;
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    // Greeting, then capabilities negotiation, then the command.
    let _ = lines.next_line().await;
    for cmd in [r#"{"execute":"qmp_capabilities"}"#, r#"{"execute":"quit"}"#] {
        write
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let _ = lines.next_line().await;
    }
    Ok(())
}

impl Driver for QemuDriver {
    fn runtime(&self) -> Runtime {
        Runtime::Qemu
    }

    fn status(&self) -> DriverStatus {
        DriverStatus {
            runtime: Runtime::Qemu,
            available: self.setup.is_ok(),
            detail: self.detail.clone(),
        }
    }

    fn start<'a>(&'a self, launch: &'a Launch) -> BoxFuture<'a, Result<Running, String>> {
        Box::pin(self.launch(launch))
    }

    fn stop<'a>(&'a self, running: &'a mut Running, grace: Duration) -> BoxFuture<'a, Exit> {
        Box::pin(async move {
            if let Some(qmp) = running.control.clone() {
                match tokio::time::timeout(grace, qmp_quit(&qmp)).await {
                    Ok(Ok(())) => {
                        if let Ok(exit) = tokio::time::timeout(grace, running.wait()).await {
                            return exit;
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "QMP quit failed; signalling the VM"),
                    Err(_) => tracing::warn!("QMP did not answer; signalling the VM"),
                }
            }
            running.terminate(grace).await
        })
    }
}
