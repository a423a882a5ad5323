//! The `firecracker` driver: each instance is a Firecracker microVM, configured through
//! Firecracker's REST API on its unix socket.
//!
//! Start: the root disk and initramfs as for QEMU ([`super::vm`]); a tap device with a
//! /30 of its own (the host end `.1`, the guest `.2`, passed to the guest init as
//! `zw.ip=`/`zw.gw=`); `firecracker --api-sock`; then `PUT /machine-config`,
//! `/boot-source`, `/drives/rootfs`, `/network-interfaces/eth0` and
//! `PUT /actions {"action_type":"InstanceStart"}`. The ingress reaches the app at the
//! guest's address. Stop: `SendCtrlAltDel`, then SIGTERM/SIGKILL after the grace period,
//! and the tap device is removed.
//!
//! Without a `firecracker` binary on the node the driver reports itself unavailable with
//! the reason, and instances asking for it fail with that reason.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use zw_proto::api::{DriverStatus, Runtime};

use super::{vm, BoxFuture, Driver, Exit, Launch, Running};
use crate::Error;

#[derive(Debug, Clone)]
pub struct FirecrackerConfig {
    pub firecracker: PathBuf,
    /// An uncompressed `vmlinux` (Firecracker boots ELF kernels).
    pub kernel: PathBuf,
    pub modules: PathBuf,
    pub busybox: PathBuf,
    pub memory_mb: u64,
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct FirecrackerDriver {
    /// `Err`: why it cannot run here.
    pub setup: Result<FirecrackerConfig, String>,
}

/// One VM's configuration, as the API calls carry it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub boot_args: String,
    pub root_disk: PathBuf,
    pub tap: String,
    pub memory_mb: u64,
    pub vcpus: u32,
}

/// Sends one request to Firecracker's API; a non-2xx answer is an error carrying its
/// `fault_message`.
pub async fn api(socket: &Path, method: &str, path: &str, body: &Value) -> Result<(), Error> {
    let fc = |detail: String| Error::Firecracker {
        request: format!("{method} {path}"),
        detail,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| fc(format!("connecting to {}: {e}", socket.display())))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fc(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| fc(e.to_string()))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| fc(e.to_string()))?;
    let status = resp.status();
    let bytes = http_body_util::Limited::new(resp.into_body(), 64 << 10)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if status.is_success() {
        return Ok(());
    }
    let fault = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["fault_message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
    Err(fc(format!("refused ({status}): {fault}")))
}

/// Configures a waiting Firecracker process and starts its VM.
pub async fn configure(socket: &Path, spec: &VmSpec) -> Result<(), Error> {
    let path = |p: &Path| p.to_string_lossy().to_string();
    api(
        socket,
        "PUT",
        "/machine-config",
        &json!({ "vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mb }),
    )
    .await?;
    api(
        socket,
        "PUT",
        "/boot-source",
        &json!({
            "kernel_image_path": path(&spec.kernel),
            "initrd_path": path(&spec.initrd),
            "boot_args": spec.boot_args,
        }),
    )
    .await?;
    api(
        socket,
        "PUT",
        "/drives/rootfs",
        &json!({
            "drive_id": "rootfs",
            "path_on_host": path(&spec.root_disk),
            // Our init mounts it; the kernel must not try to.
            "is_root_device": false,
            "is_read_only": false,
        }),
    )
    .await?;
    api(
        socket,
        "PUT",
        "/network-interfaces/eth0",
        &json!({ "iface_id": "eth0", "host_dev_name": spec.tap }),
    )
    .await?;
    api(
        socket,
        "PUT",
        "/actions",
        &json!({ "action_type": "InstanceStart" }),
    )
    .await
}

/// The instance's /30: host end and guest address, chosen from its (node-unique) port.
fn subnet(port: u16) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(172, 30, 0, 0)) + u32::from(port % 16384) * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

fn tap_name(port: u16) -> String {
    format!("zwfc{port}")
}

async fn ip(args: &[&str]) -> Result<(), Error> {
    vm::run(
        tokio::process::Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    )
    .await
}

impl FirecrackerDriver {
    async fn launch(&self, launch: &Launch) -> Result<Running, Error> {
        let config = self
            .setup
            .as_ref()
            .map_err(|e| Error::RuntimeUnavailable(e.clone()))?;
        let r = &launch.record;
        let disk = launch.work_dir.join("root.ext4");
        vm::root_disk(launch, &launch.work_dir.join("stage"), &disk).await?;
        let (host, guest) = subnet(r.port);
        let tap = tap_name(r.port);
        let _ = ip(&["link", "del", &tap]).await;
        ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]).await?;
        ip(&["addr", "add", &format!("{host}/30"), "dev", &tap]).await?;
        ip(&["link", "set", &tap, "up"]).await?;
        let socket = launch.work_dir.join("firecracker.sock");
        let _ = std::fs::remove_file(&socket);
        let (log, log_err) = super::open_log(&launch.log_file)?;
        let child = tokio::process::Command::new(&config.firecracker)
            .arg("--api-sock")
            .arg(&socket)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(log))
            .stderr(std::process::Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: config.firecracker.clone(),
                source,
            })?;
        let mut running = Running::owned(child)?;
        running.control = Some(socket.clone());
        running.target = Some(SocketAddr::from((guest, r.assignment.port)));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !socket.exists() {
            if tokio::time::Instant::now() > deadline {
                running.terminate(Duration::from_secs(1)).await;
                return Err(Error::Boot {
                    what: "Firecracker",
                    detail: "did not open its API socket within 5s".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let spec = VmSpec {
            kernel: config.kernel.clone(),
            initrd: config.dir.join("initramfs.cpio"),
            boot_args: format!(
                "console=ttyS0 reboot=k panic=1 pci=off rdinit=/init quiet zw.ip={guest}/30 zw.gw={host}"
            ),
            root_disk: disk,
            tap,
            memory_mb: config.memory_mb,
            vcpus: 1,
        };
        if let Err(e) = configure(&socket, &spec).await {
            running.terminate(Duration::from_secs(1)).await;
            return Err(e);
        }
        Ok(running)
    }
}

impl Driver for FirecrackerDriver {
    fn status(&self) -> DriverStatus {
        DriverStatus {
            runtime: Runtime::Firecracker,
            available: self.setup.is_ok(),
            detail: match &self.setup {
                Ok(c) => format!("{} with {}", c.firecracker.display(), c.kernel.display()),
                Err(e) => e.clone(),
            },
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
            if let Some(socket) = running.control.clone() {
                let body = json!({ "action_type": "SendCtrlAltDel" });
                let ask = api(&socket, "PUT", "/actions", &body);
                if let Ok(Ok(())) = tokio::time::timeout(grace, ask).await {
                    if let Ok(exit) = tokio::time::timeout(grace, running.wait()).await {
                        return exit;
                    }
                }
            }
            let exit = running.terminate(grace).await;
            if let Some(SocketAddr::V4(a)) = running.target {
                // The tap is named after the port its /30 was derived from.
                let port =
                    ((u32::from(*a.ip()) - u32::from(Ipv4Addr::new(172, 30, 0, 0))) / 4) as u16;
                let _ = ip(&["link", "del", &tap_name(port)]).await;
            }
            exit
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A stand-in for Firecracker's API server: no Firecracker binary can be installed
    /// here, so this speaks the same HTTP-over-unix-socket API, records every call, and
    /// refuses what `refuse` names (with Firecracker's error body).
    async fn fake_firecracker(
        socket: &Path,
        refuse: Option<&'static str>,
    ) -> Arc<Mutex<Vec<(String, String, Value)>>> {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        let seen = calls.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                                let path = parts.uri.path().to_string();
                                seen.lock().unwrap().push((
                                    parts.method.to_string(),
                                    path.clone(),
                                    v,
                                ));
                                let resp = if Some(path.as_str()) == refuse {
                                    http::Response::builder()
                                    .status(400)
                                    .body(Full::new(Bytes::from(r#"{"fault_message":"The kernel file cannot be opened"}"#)))
                                } else {
                                    http::Response::builder()
                                        .status(204)
                                        .body(Full::new(Bytes::new()))
                                };
                                Ok::<_, std::convert::Infallible>(resp.unwrap())
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        calls
    }

    fn spec() -> VmSpec {
        VmSpec {
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initramfs.cpio".into(),
            boot_args: "console=ttyS0 zw.ip=172.30.0.2/30".into(),
            root_disk: "/w/root.ext4".into(),
            tap: "zwfc31000".into(),
            memory_mb: 256,
            vcpus: 1,
        }
    }

    #[tokio::test]
    async fn configures_the_vm_through_the_api_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("fc.sock");
        let calls = fake_firecracker(&socket, None).await;
        configure(&socket, &spec()).await.unwrap();
        let calls = calls.lock().unwrap().clone();
        let paths: Vec<(&str, &str)> = calls
            .iter()
            .map(|(m, p, _)| (m.as_str(), p.as_str()))
            .collect();
        assert_eq!(
            paths,
            [
                ("PUT", "/machine-config"),
                ("PUT", "/boot-source"),
                ("PUT", "/drives/rootfs"),
                ("PUT", "/network-interfaces/eth0"),
                ("PUT", "/actions"),
            ]
        );
        assert_eq!(calls[0].2, json!({ "vcpu_count": 1, "mem_size_mib": 256 }));
        assert_eq!(calls[1].2["kernel_image_path"], "/k/vmlinux");
        assert_eq!(calls[1].2["initrd_path"], "/k/initramfs.cpio");
        assert_eq!(calls[2].2["path_on_host"], "/w/root.ext4");
        assert_eq!(calls[2].2["is_root_device"], false);
        assert_eq!(calls[3].2["host_dev_name"], "zwfc31000");
        assert_eq!(calls[4].2, json!({ "action_type": "InstanceStart" }));
    }

    #[tokio::test]
    async fn a_refusal_stops_the_sequence_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("fc.sock");
        let calls = fake_firecracker(&socket, Some("/boot-source")).await;
        let err = configure(&socket, &spec()).await.unwrap_err().to_string();
        assert!(
            err.contains("/boot-source") && err.contains("The kernel file cannot be opened"),
            "{err}"
        );
        assert_eq!(
            calls.lock().unwrap().len(),
            2,
            "nothing sent after the refusal"
        );
    }

    #[test]
    fn instances_get_distinct_subnets() {
        let (h1, g1) = subnet(31000);
        let (h2, g2) = subnet(31001);
        assert_eq!((h1.octets()[3] % 4, g1.octets()[3] % 4), (1, 2));
        assert_ne!(g1, g2);
        assert_ne!(h1, h2);
    }
}
