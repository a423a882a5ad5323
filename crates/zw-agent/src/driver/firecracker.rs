//! The `firecracker` driver: instances as Firecracker microVMs, configured through
//! Firecracker's REST API on its unix socket.

use zw_proto::api::{DriverStatus, Runtime};

use super::{BoxFuture, Driver, Launch, Running};

#[derive(Debug, Clone, Default)]
pub struct FirecrackerDriver {
    pub detail: String,
}

impl Driver for FirecrackerDriver {
    fn runtime(&self) -> Runtime {
        Runtime::Firecracker
    }

    fn status(&self) -> DriverStatus {
        DriverStatus {
            runtime: Runtime::Firecracker,
            available: false,
            detail: self.detail.clone(),
        }
    }

    fn start<'a>(&'a self, _launch: &'a Launch) -> BoxFuture<'a, Result<Running, String>> {
        Box::pin(async move {
            Err(format!(
                "the firecracker runtime is unavailable: {}",
                self.detail
            ))
        })
    }
}
