//! A real microVM: `zeitwork up`, then `zeitwork deploy --runtime qemu --oci` of an OCI
//! layout holding a static busybox `httpd`, reached through balancer → edge → ingress →
//! the VM's forwarded port.
//!
//! Runs emulated (`--qemu-accel tcg`): nested KVM on the CI machines fails under load, and
//! emulation is what CI can count on. Needs `qemu-system-x86_64`, a static `busybox`,
//! `mkfs.ext4`, and a Debian guest kernel named by `ZEITWORK_QEMU_KERNEL` and
//! `ZEITWORK_QEMU_MODULES`; `.ci/run` provides all of them.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn a_microvm_from_an_oci_layout_answers_through_the_edge() {
    let kernel = std::env::var_os("ZEITWORK_QEMU_KERNEL");
    let modules = std::env::var_os("ZEITWORK_QEMU_MODULES");
    let (Some(qemu), Some(busybox), Some(_), Some(kernel), Some(modules)) = (
        which("qemu-system-x86_64"),
        which("busybox"),
        which("mkfs.ext4"),
        kernel,
        modules,
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide qemu-system-x86_64, busybox-static, mkfs.ext4 and a guest kernel (.ci/run)"
        );
        eprintln!("SKIPPED: needs qemu-system-x86_64, busybox, mkfs.ext4, ZEITWORK_QEMU_KERNEL and ZEITWORK_QEMU_MODULES");
        return;
    };
    let _ = qemu;
    let dir = tempfile::tempdir().unwrap();
    let image = oci_site(dir.path(), &busybox, "hello from a microVM\n");
    let data = dir.path().join("data");
    let (api, http_port, edge, admin, ingress) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let a = |p: u16| format!("127.0.0.1:{p}");
    let args: Vec<String> = vec![
        "up".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--api".into(),
        a(api),
        "--http".into(),
        a(http_port),
        "--edge".into(),
        a(edge),
        "--edge-admin".into(),
        a(admin),
        "--ingress".into(),
        a(ingress),
        "--qemu-accel".into(),
        "tcg".into(),
        "--qemu-kernel".into(),
        kernel.to_string_lossy().into(),
        "--qemu-modules".into(),
        modules.to_string_lossy().into(),
    ];
    let up = Proc::spawn("up", &args);
    let driver = up.wait_log(Duration::from_secs(30), |v| {
        message(v) == "runtime driver" && v["fields"]["runtime"] == "qemu"
    });
    assert_eq!(driver["fields"]["available"], true, "{driver}");
    up.wait_log(Duration::from_secs(30), |v| message(v) == "backend added");

    let start = Instant::now();
    let out = Command::new(BIN)
        .args(["deploy", "--data-dir", data.to_str().unwrap()])
        .args(["--operator", &format!("http://{}", a(api))])
        .args([
            "site",
            "--domain",
            "site.test",
            "--runtime",
            "qemu",
            "--port",
            "8080",
        ])
        .arg("--oci")
        .arg(&image)
        .args([
            "--timeout",
            "90s",
            "--",
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/www",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = std::fs::read_dir(data.join("agent/logs"))
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "deploy failed:\n{text}\nguest console:\n{logs}\n{}",
        up.dump()
    );
    eprintln!(
        "qemu (emulated): {}",
        text.lines()
            .find(|l| l.starts_with("deployed"))
            .unwrap_or("")
    );
    eprintln!("deploy → routed in {} ms", start.elapsed().as_millis());
    assert!(
        logs.contains("zeitwork-init: starting /bin/busybox"),
        "{logs}"
    );

    let balancer = a(http_port).parse().unwrap();
    let (status, body) = http(balancer, "GET", "/", None, None, &[("host", "site.test")]);
    assert_eq!((status, body.as_str()), (200, "hello from a microVM\n"));

    // Destroyed: the VM is stopped through QMP.
    let out = Command::new(BIN)
        .args(["destroy", "--data-dir", data.to_str().unwrap()])
        .args(["--operator", &format!("http://{}", a(api))])
        .arg("site")
        .output()
        .unwrap();
    assert!(out.status.success());
    let ended = up.wait_log(Duration::from_secs(30), |v| {
        message(v) == "instance process ended"
    });
    assert_eq!(
        ended["fields"]["how"], "exited with status 0",
        "QEMU quit when asked: {ended}"
    );
}
