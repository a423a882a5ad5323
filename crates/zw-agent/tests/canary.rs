//! The qemu driver's canary: a tiny VM that prints a mark and powers off, booted on the
//! real guest kernel. Emulated, it must boot; with KVM, the verdict depends on the host
//! (nested KVM fails on the CI machines) and is printed.
//!
//! Needs `qemu-system-x86_64`, a static `busybox` and the guest kernel named by
//! `ZEITWORK_QEMU_KERNEL`/`ZEITWORK_QEMU_MODULES` (`.ci/run` provides them).

use std::path::PathBuf;
use std::time::Duration;

use zw_agent::driver::qemu::{canary, probe_kvm, Accel, QemuDriver};

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

#[tokio::test]
async fn the_canary_boots_emulated_and_decides_kvm() {
    let (Some(qemu), Some(busybox), Some(kernel), Some(modules)) = (
        which("qemu-system-x86_64"),
        which("busybox"),
        std::env::var_os("ZEITWORK_QEMU_KERNEL"),
        std::env::var_os("ZEITWORK_QEMU_MODULES"),
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI provides QEMU and a guest kernel"
        );
        eprintln!("SKIPPED: no qemu-system-x86_64, busybox or guest kernel");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let driver = QemuDriver::setup(
        Some(qemu),
        Some(kernel.into()),
        Some(modules.into()),
        Some(busybox),
        Some(Accel::Tcg),
        256,
        dir.path().to_path_buf(),
    )
    .await;
    let (config, _) = driver.setup.expect("the driver sets up");
    let ms = canary(&config, Accel::Tcg, Duration::from_secs(60))
        .await
        .expect("an emulated canary boots");
    eprintln!("emulated canary booted and powered off in {ms} ms");
    match probe_kvm(&config, Duration::from_secs(10)).await {
        Ok(ms) => eprintln!("KVM works here: canary in {ms} ms"),
        Err(why) => {
            let why = why.to_string();
            assert!(why.contains("canary") || why.contains("/dev/kvm"), "{why}");
            eprintln!("KVM not used here: {why}");
        }
    }
}
