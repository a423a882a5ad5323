//! A real microVM: `zeitwork up`, then `zeitwork deploy --runtime qemu --oci` of an OCI
//! layout holding a static busybox `httpd`, reached through balancer → edge → ingress →
//! the VM's forwarded port.
//!
//! Runs emulated (`--qemu-accel tcg`): nested KVM on the CI machines fails under load, and
//! emulation is what CI can count on. Needs `qemu-system-x86_64`, a static `busybox`,
//! `mkfs.ext4`, and a Debian guest kernel named by `ZEITWORK_QEMU_KERNEL` and
//! `ZEITWORK_QEMU_MODULES`; `.ci/run` provides all of them.

mod support;

use std::time::{Duration, Instant};

use support::platform::*;
use support::*;

#[test]
fn a_microvm_from_an_oci_layout_answers_through_the_edge() {
    let kernel = std::env::var_os("ZEITWORK_QEMU_KERNEL");
    let modules = std::env::var_os("ZEITWORK_QEMU_MODULES");
    let (Some(_), Some(busybox), Some(_), Some(kernel), Some(modules)) = (
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
    let (kernel, modules) = (kernel.to_string_lossy(), modules.to_string_lossy());
    let p = start_up(&["--qemu-kernel", &kernel, "--qemu-modules", &modules]);
    let driver = p.up.wait_log(Duration::from_secs(30), |v| {
        message(v) == "runtime driver" && v["fields"]["runtime"] == "qemu"
    });
    assert_eq!(driver["fields"]["available"], true, "{driver}");
    let image = oci_site(p.dir.path(), &busybox, "hello from a microVM\n");
    let deploy = |image: &std::path::Path| {
        p.zeitwork(&[
            "deploy",
            "site",
            "--domain",
            "site.test",
            "--runtime",
            "qemu",
            "--port",
            "8080",
            "--oci",
            image.to_str().unwrap(),
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
    };
    let start = Instant::now();
    let (ok, text) = deploy(&image);
    let logs = std::fs::read_dir(p.op.data_dir.join("agent/logs"))
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    assert!(
        ok,
        "deploy failed:\n{text}\nguest console:\n{logs}\n{}",
        p.up.dump()
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
    assert_eq!(p.get("site"), (200, "hello from a microVM\n".to_string()));

    // A new release (another root filesystem) rolls out under load: the new VM boots
    // while the old one serves, and no request is lost. Bounded in count and time.
    let image2 = oci_site(&p.dir.path().join("v2"), &busybox, "hello from release 2\n");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let balancer = p.balancer;
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(150);
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && answers.len() < 50_000
                && Instant::now() < until
            {
                answers.push((
                    Instant::now(),
                    http(balancer, "GET", "/", None, None, &[("host", "site.test")]),
                ));
                std::thread::sleep(Duration::from_millis(5));
            }
            answers
        })
    };
    let (ok, text) = deploy(&image2);
    let done = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = load.join().unwrap();
    assert!(ok, "redeploy failed:\n{text}\n{}", p.up.dump());
    let failed: Vec<_> = answers
        .iter()
        .filter(|(_, (s, body))| {
            *s != 200 || (body != "hello from a microVM\n" && body != "hello from release 2\n")
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the qemu redeploy: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );
    let stale = answers
        .iter()
        .filter(|(at, (_, body))| *at > done && body != "hello from release 2\n")
        .count();
    assert_eq!(stale, 0, "after the deploy was done only release 2 answers");
    eprintln!(
        "qemu redeploy: {} requests, 0 failed; {}",
        answers.len(),
        text.lines()
            .find(|l| l.starts_with("deployed"))
            .unwrap_or("")
    );

    // Destroyed: the VM is stopped through QMP.
    let (ok, text) = p.zeitwork(&["destroy", "site"]);
    assert!(ok, "{text}");
    let ended = p.up.wait_log(Duration::from_secs(30), |v| {
        message(v) == "instance process ended"
    });
    assert_eq!(
        ended["fields"]["how"], "exited with status 0",
        "QEMU quit when asked: {ended}"
    );
}
