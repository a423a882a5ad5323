//! `zeitwork-init`: the init of an isolated process instance (see `zw_agent::init`).
//!
//! A separate, small binary rather than a subcommand of `zeitwork`: two of these run
//! beside every isolated instance (a shim outside its PID namespace and PID 1 inside), so
//! what they cost in memory is per-instance overhead. It parses its arguments by hand and
//! uses the system allocator.
//!
//! Usage (the agent's process driver builds it):
//!   zeitwork-init --hostname NAME [--rootfs DIR] [--cgroup-procs FILE]... -- COMMAND [ARG]...

use std::process::ExitCode;

fn main() -> ExitCode {
    zw_agent::init::main(std::env::args().skip(1))
}
