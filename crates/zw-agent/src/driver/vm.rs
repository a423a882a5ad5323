//! What the VM drivers share: the guest init, the initramfs that carries it, and the root
//! disk made from an image.

use std::path::{Path, PathBuf};

use zw_proto::api::RootFs;

use super::Launch;
use crate::Error;

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
# The guest's address: QEMU's user network unless the kernel command line says otherwise.
addr=10.0.2.15/24
gw=10.0.2.2
for w in $(cat /proc/cmdline); do
  case "$w" in zw.ip=*) addr=${w#zw.ip=} ;; zw.gw=*) gw=${w#zw.gw=} ;; esac
done
ip link set eth0 up && ip addr add $addr dev eth0 && ip route add default via $gw
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

/// A newc cpio archive: `/init` (this script), `/bin/busybox`, the virtio modules.
pub fn write_initramfs(
    busybox: &Path,
    modules: &Path,
    out: &Path,
    init: &str,
) -> std::io::Result<()> {
    let mut cpio = Cpio::default();
    for dir in ["bin", "lib", "lib/modules", "proc", "sys", "dev", "newroot"] {
        cpio.dir(dir);
    }
    cpio.file("init", 0o755, init.as_bytes());
    cpio.file("bin/busybox", 0o755, &std::fs::read(busybox)?);
    for m in MODULES {
        if let Some(path) = find_module(modules, m) {
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
        while !self.out.len().is_multiple_of(4) {
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

pub async fn run(cmd: &mut tokio::process::Command, what: &str) -> Result<(), Error> {
    let out = cmd.output().await.map_err(|e| Error::Command {
        what: what.to_string(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            what: what.to_string(),
            stderr: zw_proto::abbreviate(String::from_utf8_lossy(&out.stderr).trim(), 500)
                .to_string(),
        })
    }
}

/// The root disk: the image's tree plus the command and environment, as ext4.
pub async fn root_disk(launch: &Launch, stage: &Path, disk: &Path) -> Result<(), Error> {
    let a = &launch.record.assignment;
    let tree =
        match &a.rootfs {
            Some(RootFs::Oci(layout)) => crate::oci::unpacked(Path::new(layout), &launch.work_dir)
                .await
                .map_err(|source| Error::Oci {
                    layout: layout.clone(),
                    source,
                })?,
            Some(RootFs::Dir(dir)) => {
                let _ = std::fs::remove_dir_all(stage);
                std::fs::create_dir_all(stage).map_err(Error::file(stage))?;
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
            None => return Err(Error::Image(
                "a microVM image needs a root filesystem: deploy with --rootfs DIR or --oci PATH"
                    .into(),
            )),
        };
    let meta = tree.join(".zeitwork");
    std::fs::create_dir_all(&meta).map_err(Error::file(&meta))?;
    let vars = super::instance_env(a, a.port);
    let mut argv = String::new();
    for arg in &super::expand_command(&a.command, &vars) {
        if arg.contains('\n') {
            return Err(Error::Image(
                "command arguments cannot contain newlines in a microVM".into(),
            ));
        }
        argv.push_str(arg);
        argv.push('\n');
    }
    std::fs::write(meta.join("argv"), argv).map_err(Error::file(meta.join("argv")))?;
    let mut env = String::new();
    for (k, v) in &vars {
        env.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    std::fs::write(meta.join("env"), env).map_err(Error::file(meta.join("env")))?;
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
