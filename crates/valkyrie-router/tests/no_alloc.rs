//! Checks that lookups on the common path do not allocate, with a global
//! allocator that counts allocations per thread.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{table, Request};

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with` fails only while the thread is being torn down.
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a const-initialized thread-local that never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn lookups_do_not_allocate() {
    let table = table(
        r#"
        [[routes]]
        name = "exact-host"
        host = "api.example.com"
        path_prefix = "/v1/"
        methods = ["GET"]
        upstream = "app"

        [[routes]]
        name = "exact-path"
        host = "api.example.com"
        path_exact = "/health"
        headers = [{ name = "x-probe" }, { name = "x-zone", value = "eu" }]
        upstream = "app"

        [[routes]]
        name = "wildcard"
        host = "*.example.com"
        path_regex = "/items/[0-9]+"
        upstream = "app"

        [[routes]]
        name = "catch-all"
        upstream = "app"
        "#,
    );
    let requests = [
        (
            Request::new(Some("api.example.com"), "/v1/users"),
            "exact-host",
        ),
        (
            Request::new(Some("API.Example.COM:8443"), "/v1/users"),
            "exact-host",
        ),
        (
            Request::new(Some("api.example.com"), "/health")
                .headers(&[("x-probe", "1"), ("x-zone", "eu")]),
            "exact-path",
        ),
        (
            Request::new(Some("shop.example.com."), "/items/42"),
            "wildcard",
        ),
        (
            Request::new(Some("other.org"), "/v1/users").method("POST"),
            "catch-all",
        ),
        (Request::new(None, "/"), "catch-all"),
    ];

    // The first regex search on a thread may set up the regex's cache.
    for (request, _) in &requests {
        table.route(&request.info());
    }

    for (request, expected) in &requests {
        let info = request.info();
        let before = allocations();
        let matched = table.route(&info).map(|matched| matched.route.name.clone());
        let after = allocations();
        assert_eq!(matched.as_deref(), Some(*expected), "request {request:?}");
        assert_eq!(after - before, 0, "allocations for {request:?}");
    }
}

#[test]
fn normalizing_lookup_is_counted() {
    // Guards the counter itself: a path with a dot segment must be copied.
    let table = table(
        r#"
        [[routes]]
        name = "all"
        upstream = "app"
        "#,
    );
    let request = Request::new(None, "/a/../b");
    let info = request.info();
    let before = allocations();
    let matched = table.route(&info).map(|matched| matched.path.into_owned());
    let after = allocations();
    assert_eq!(matched.as_deref(), Some("/b"));
    assert!(
        after > before,
        "the copy of the normalized path was not counted"
    );
}
