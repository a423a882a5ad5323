//! The `qemu` driver: each instance is a microVM (`qemu-system-x86_64 -M microvm`).
//!
//! - **Kernel**: a Debian `linux-image-*` kernel (`--qemu-kernel`), with its modules
//!   directory (`--qemu-modules`) for the virtio drivers it builds as modules.
//! - **Initramfs**: made by the agent once — a static busybox and our guest init
//!   ([`vm::GUEST_INIT`]), which loads the virtio modules, mounts the root disk, brings up the
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
use zw_proto::api::{DriverStatus, Runtime};

use super::{vm, BoxFuture, Driver, Exit, Launch, Running};
use crate::Error;

const CANARY_INIT: &str =
    "#!/bin/busybox sh\n/bin/busybox echo ZEITWORK-CANARY-OK\n/bin/busybox poweroff -f\n";
const CANARY_MARK: &str = "ZEITWORK-CANARY-OK";

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
        if let Err(e) = std::fs::create_dir_all(&config.dir).and_then(|_| {
            vm::write_initramfs(
                &config.busybox,
                &config.modules,
                &config.dir.join("initramfs.cpio"),
                vm::GUEST_INIT,
            )
        }) {
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

/// Whether KVM runs a guest here: a canary VM must boot with it within `deadline` —
/// opening `/dev/kvm` proves nothing on hosts whose nested virtualisation fails once a
/// guest runs.
pub async fn probe_kvm(config: &QemuConfig, deadline: Duration) -> Result<u128, Error> {
    if !Path::new("/dev/kvm").exists() {
        return Err(Error::RuntimeUnavailable("no /dev/kvm".into()));
    }
    canary(config, Accel::Kvm, deadline).await
}

/// Boots a canary VM that prints a mark and powers off; the milliseconds it took.
pub async fn canary(config: &QemuConfig, accel: Accel, deadline: Duration) -> Result<u128, Error> {
    let what = match accel {
        Accel::Kvm => "KVM canary",
        Accel::Tcg => "canary",
    };
    let failed = |detail: String| Error::Boot { what, detail };
    let (accel_arg, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    let initrd = config.dir.join("canary.cpio");
    vm::write_initramfs(&config.busybox, &config.modules, &initrd, CANARY_INIT)
        .map_err(|e| failed(format!("has no initramfs: {e}")))?;
    let start = std::time::Instant::now();
    let mut child = tokio::process::Command::new(&config.qemu)
        .args(["-M", "microvm", "-accel", accel_arg, "-cpu", cpu])
        .args(["-m", "256M", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&config.kernel)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(boot_args(accel))
        .args(["-serial", "stdio"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::Spawn {
            program: config.qemu.clone(),
            source,
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| failed("gave no output".into()))?;
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
            Err(failed(format!(
                "failed: {}",
                zw_proto::abbreviate(err.trim(), 300)
            )))
        }
        Err(_) => Err(failed(format!("did not boot within {deadline:?}"))),
    }
}

/// The guest kernel's command line.
fn boot_args(accel: Accel) -> String {
    let mut args = String::from("console=ttyS0 rdinit=/init panic=-1 quiet");
    if accel == Accel::Tcg {
        if let Some(khz) = tsc_khz() {
            args.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    args
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

impl QemuDriver {
    async fn launch(&self, launch: &Launch) -> Result<Running, Error> {
        let (config, accel) = self
            .setup
            .as_ref()
            .map_err(|e| Error::RuntimeUnavailable(e.clone()))?;
        let disk = launch.work_dir.join("root.ext4");
        vm::root_disk(launch, &launch.work_dir.join("stage"), &disk).await?;
        let qmp = launch.work_dir.join("qmp.sock");
        let _ = std::fs::remove_file(&qmp);
        let a = &launch.record.assignment;
        let append = boot_args(*accel);
        let (accel_arg, cpu) = match accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg", "max"),
        };
        let (mut log, log_err) = super::open_log(&launch.log_file)?;
        let _ = writeln!(log, "zeitwork: booting a microVM ({accel_arg})");
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
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            program: config.qemu.clone(),
            source,
        })?;
        let mut running = Running::owned(child)?;
        running.control = Some(qmp);
        Ok(running)
    }
}

/// Asks the VM's monitor to quit.
async fn qmp_quit(socket: &Path) -> Result<(), Error> {
    let qmp = |source| Error::Qmp {
        socket: socket.to_path_buf(),
        source,
    };
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(qmp)?;
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    // Greeting, then capabilities negotiation, then the command.
    let _ = lines.next_line().await;
    for cmd in [r#"{"execute":"qmp_capabilities"}"#, r#"{"execute":"quit"}"#] {
        write
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .map_err(qmp)?;
        let _ = lines.next_line().await;
    }
    Ok(())
}

impl Driver for QemuDriver {
    fn status(&self) -> DriverStatus {
        DriverStatus {
            runtime: Runtime::Qemu,
            available: self.setup.is_ok(),
            detail: self.detail.clone(),
        }
    }

    fn start<'a>(
        &'a self,
        launch: &'a Launch,
    ) -> BoxFuture<'a, Result<Running, super::LaunchError>> {
        Box::pin(async move { Ok(self.launch(launch).await?) })
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
