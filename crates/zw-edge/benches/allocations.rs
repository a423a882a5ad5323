//! Heap allocations per proxied request: a counting allocator around the system one, a
//! client on one kept-alive HTTP/1.1 connection, and the same requests sent once straight
//! to the upstream and once through the edge. The edge's share is the difference.
//!
//! `cargo bench -p zw-edge --bench allocations` (everything runs on one thread: the
//! counts include no other work).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use zw_edge::testkit::{one_route, Client, TestEdge, Upstream};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const REQUESTS: u64 = 20_000;

async fn count(mut client: Client, host: &str) -> (f64, f64) {
    // warm: pools, caches, the first connection
    for _ in 0..200 {
        client.get(host, "/").await.expect("request");
    }
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..REQUESTS {
        let r = client.get(host, "/").await.expect("request");
        assert_eq!(r.status, 200);
    }
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    (
        (a1 - a0) as f64 / REQUESTS as f64,
        (b1 - b0) as f64 / REQUESTS as f64,
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let upstream = Upstream::start("up").await;
        let edge = TestEdge::start(&one_route("Host(`app.test`)", &upstream.url())).await;
        let direct = count(
            Client::h1(upstream.addr).await.expect("upstream"),
            "app.test",
        )
        .await;
        let via = count(Client::h1(edge.addr).await.expect("edge"), "app.test").await;
        println!("allocations per request, {REQUESTS} keep-alive GETs, one thread:");
        println!(
            "  client → upstream:         {:6.1} allocations, {:8.0} bytes",
            direct.0, direct.1
        );
        println!(
            "  client → edge → upstream:  {:6.1} allocations, {:8.0} bytes",
            via.0, via.1
        );
        println!(
            "  the edge's share:          {:6.1} allocations, {:8.0} bytes",
            via.0 - direct.0,
            via.1 - direct.1
        );
        edge.shutdown().await;
    });
}
