//! Query sets, a CPU-time measurement and criterion settings shared by the
//! benches.

// Each bench uses a different subset of these helpers.
#![allow(dead_code)]

/// Lookup keys stored back to back in one buffer, so that walking them in
/// order is a sequential read the hardware prefetcher hides, and the cache
/// misses measured are those of the structure under test.
pub struct Queries {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    next: usize,
}

impl Queries {
    pub fn new<K: AsRef<[u8]>>(keys: &[K]) -> Self {
        let mut bytes = Vec::new();
        let mut ends = Vec::with_capacity(keys.len());
        for key in keys {
            bytes.extend_from_slice(key.as_ref());
            ends.push(bytes.len());
        }
        Self {
            bytes,
            ends,
            next: 0,
        }
    }

    /// Returns the next key, wrapping around after the last one.
    #[inline(always)]
    pub fn next_key(&mut self) -> &[u8] {
        let start = if self.next == 0 {
            0
        } else {
            self.ends[self.next - 1]
        };
        let end = self.ends[self.next];
        self.next += 1;
        if self.next == self.ends.len() {
            self.next = 0;
        }
        &self.bytes[start..end]
    }

    /// Returns the next key as UTF-8, for routers that take `&str`.
    #[inline(always)]
    pub fn next_str(&mut self) -> &str {
        std::str::from_utf8(self.next_key()).expect("bench keys are ASCII")
    }
}

/// Criterion measurement of the benchmark thread's CPU time
/// (`CLOCK_THREAD_CPUTIME_ID`) instead of wall-clock time. On a machine
/// shared with other jobs, time spent descheduled then does not count; cache
/// pollution from other processes still does.
pub struct ThreadCpuTime;

fn thread_cpu_now() -> std::time::Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec, and the clock id is a
    // constant that Linux supports for the calling thread.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

impl criterion::measurement::Measurement for ThreadCpuTime {
    type Intermediate = std::time::Duration;
    type Value = std::time::Duration;

    fn start(&self) -> Self::Intermediate {
        thread_cpu_now()
    }

    fn end(&self, start: Self::Intermediate) -> Self::Value {
        thread_cpu_now().saturating_sub(start)
    }

    fn add(&self, a: &Self::Value, b: &Self::Value) -> Self::Value {
        *a + *b
    }

    fn zero(&self) -> Self::Value {
        std::time::Duration::ZERO
    }

    fn to_f64(&self, value: &Self::Value) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn criterion::measurement::ValueFormatter {
        &NanosFormatter
    }
}

/// Formats nanosecond values with the usual time units.
struct NanosFormatter;

impl criterion::measurement::ValueFormatter for NanosFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "ns")
        } else if typical < 1e6 {
            (1e-3, "µs")
        } else if typical < 1e9 {
            (1e-6, "ms")
        } else {
            (1e-9, "s")
        };
        for value in values {
            *value *= factor;
        }
        unit
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &criterion::Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let per_iteration = match *throughput {
            criterion::Throughput::Bytes(n)
            | criterion::Throughput::BytesDecimal(n)
            | criterion::Throughput::Elements(n) => n as f64,
        };
        for value in values.iter_mut() {
            *value = per_iteration * 1e9 / *value;
        }
        "elements/s"
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

/// Criterion settings shared by the benches: few samples and a short
/// measurement, which keep a run of all three benches to a few minutes.
pub fn criterion() -> criterion::Criterion<ThreadCpuTime> {
    criterion::Criterion::default()
        .with_measurement(ThreadCpuTime)
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
}
