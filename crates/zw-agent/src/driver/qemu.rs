//! The `qemu` driver: instances as microVMs (`qemu-system-x86_64 -M microvm`).

use std::time::Duration;

use zw_proto::api::{DriverStatus, Runtime};

use super::{BoxFuture, Driver, Launch, Running};

#[derive(Debug, Clone, Default)]
pub struct QemuDriver {
    pub detail: String,
}

impl Driver for QemuDriver {
    fn runtime(&self) -> Runtime {
        Runtime::Qemu
    }

    fn status(&self) -> DriverStatus {
        DriverStatus {
            runtime: Runtime::Qemu,
            available: false,
            detail: self.detail.clone(),
        }
    }

    fn start<'a>(&'a self, _launch: &'a Launch) -> BoxFuture<'a, Result<Running, String>> {
        Box::pin(async move { Err(format!("the qemu runtime is unavailable: {}", self.detail)) })
    }

    fn stop<'a>(&'a self, running: &'a mut Running, grace: Duration) -> BoxFuture<'a, super::Exit> {
        Box::pin(running.terminate(grace))
    }
}
