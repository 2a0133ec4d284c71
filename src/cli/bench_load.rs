//! How every load generator of the project drives and measures a load: `raftmq bench produce`
//! and `bench rpc`, and `nats-bench`, the NATS JetStream side of `scripts/bench-vs-nats.sh`.
//! One driver for all of them means one way of pacing, warming up and counting, so that their
//! figures compare.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

/// Parse a duration like `30s`, `500ms` or `2m` (seconds without a unit), for clap.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("`{text}`: unit must be ms, s or m")),
    }
}

/// The runtime a load generator runs on: one thread (the default of every bench) is a
/// single-threaded runtime, which drives a thousand calls in flight with the least CPU per
/// call and leaves the most CPU to servers that share the machine.
pub fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    anyhow::ensure!(threads > 0, "--threads must be at least 1");
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    Ok(builder.enable_all().build()?)
}

/// Pause between two fsyncs of a probe beside a load: at most 500 fsyncs a second, a few
/// thousand samples in a 10 s run, about 1 % of a core.
const FSYNC_PROBE_PAUSE: Duration = Duration::from_millis(2);
/// Bytes each fsync of a probe writes first, as `bench fsync` does by default.
const FSYNC_PROBE_BYTES: usize = 4096;

/// Append `size` bytes to a temporary file in `dir` and fsync it, over and over from `from`
/// until `until` with `pause` between fsyncs; the latency of each write+fsync in microseconds.
pub fn fsync_latencies(
    dir: &std::path::Path,
    size: usize,
    from: Instant,
    until: Instant,
    pause: Duration,
) -> anyhow::Result<Histogram<u64>> {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| anyhow::anyhow!("cannot create a file in {}: {e}", dir.display()))?;
    let block = vec![0xA5u8; size.max(1)];
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    std::thread::sleep(from.saturating_duration_since(Instant::now()));
    while Instant::now() < until {
        let began = Instant::now();
        file.write_all(&block)?;
        file.as_file().sync_data()?;
        histogram.saturating_record(began.elapsed().as_micros() as u64);
        std::thread::sleep(pause);
    }
    Ok(histogram)
}

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    failed: AtomicU64,
    /// Why the first call that failed failed: a run whose every call fails (a body over the
    /// broker's limit, a topic that does not exist) must say why, not just count.
    first_failure: std::sync::OnceLock<String>,
    /// Slowest answer since the last progress line, in microseconds.
    slowest_us: AtomicU64,
}

/// How a load is driven: `concurrency` workers, each starting its next call when the last one
/// is answered (and, with a target rate, not before its turn).
pub struct Load {
    pub concurrency: usize,
    /// Unmeasured load before `duration`.
    pub warmup: Duration,
    pub duration: Duration,
    /// Target calls per second over all workers; 0: as fast as answers come.
    pub calls_per_sec: f64,
    /// Messages one call carries (what the counters count).
    pub messages_per_call: u64,
}

/// What a run of a load measured.
pub struct Outcome {
    pub acked: u64,
    pub failed: u64,
    /// The error of the first call that failed, warmup included.
    pub first_failure: Option<String>,
    pub elapsed: Duration,
    /// Latency of each answered call from when it was sent.
    pub histogram: Histogram<u64>,
    /// With a target rate: the same from when the call was due. A stall that holds a worker
    /// past its next turn delays calls that were never sent; this counts them (wrk2-style).
    pub from_schedule: Option<Histogram<u64>>,
}

/// Latencies in microseconds, shared by all workers.
struct Latencies {
    from_send: Histogram<u64>,
    from_schedule: Histogram<u64>,
}

/// Run `call` from `load.concurrency` workers until the duration is over, printing a progress
/// line every second. `call()` makes one call and returns why it failed, if it did; the
/// latency of each successful call is recorded, and the first failure is printed once.
pub async fn drive<F, Fut>(load: &Load, call: F) -> anyhow::Result<Outcome>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let counters = Arc::new(Counters::default());
    let start = Instant::now() + load.warmup;
    let end = start + load.duration;
    let per_worker_interval = (load.calls_per_sec > 0.0)
        .then(|| Duration::from_secs_f64(load.concurrency as f64 / load.calls_per_sec));
    // One histogram for all workers: one per worker (140 KB each at this precision) would cost
    // a thousand workers 140 MB of freshly zeroed pages and a cache miss per recorded answer.
    let histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
    let latencies = Arc::new(std::sync::Mutex::new(Latencies {
        from_send: histogram()?,
        from_schedule: histogram()?,
    }));
    let mut workers = Vec::new();
    for worker in 0..load.concurrency {
        let (counters, call, latencies) = (counters.clone(), call.clone(), latencies.clone());
        let (concurrency, messages) = (load.concurrency, load.messages_per_call);
        workers.push(tokio::spawn(async move {
            // Spread the workers' schedules over one interval so that a target rate is an even
            // stream of calls, not a burst of `concurrency` calls at every tick.
            let mut next_call = Instant::now()
                + per_worker_interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(worker as f64 / concurrency as f64)
                });
            while Instant::now() < end {
                let due = per_worker_interval.map(|interval| {
                    let due = next_call;
                    next_call += interval;
                    due
                });
                if let Some(due) = due.filter(|due| *due > Instant::now()) {
                    tokio::time::sleep_until(due.into()).await;
                }
                let called = Instant::now();
                let result = call().await;
                if let Err(error) = &result
                    && counters.first_failure.set(error.clone()).is_ok()
                {
                    eprintln!("first failed call: {error}");
                }
                if called < start {
                    continue;
                }
                if result.is_ok() {
                    let micros = called.elapsed().as_micros() as u64;
                    let mut latencies = latencies.lock().expect("latency histogram lock poisoned");
                    latencies.from_send.saturating_record(micros);
                    if let Some(due) = due {
                        let late_micros = due.elapsed().as_micros() as u64;
                        latencies.from_schedule.saturating_record(late_micros);
                    }
                    drop(latencies);
                    counters.slowest_us.fetch_max(micros, Ordering::Relaxed);
                    counters.acked.fetch_add(messages, Ordering::Relaxed);
                } else {
                    counters.failed.fetch_add(messages, Ordering::Relaxed);
                }
            }
        }));
    }

    let progress = {
        let counters = counters.clone();
        let warmup = load.warmup;
        tokio::spawn(async move {
            if !warmup.is_zero() {
                eprintln!("warming up for {:.1}s (not measured)", warmup.as_secs_f64());
                tokio::time::sleep_until(start.into()).await;
            }
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let acked = counters.acked.load(Ordering::Relaxed);
                let slowest_us = counters.slowest_us.swap(0, Ordering::Relaxed);
                eprintln!(
                    "[{:>4.0}s] acked {acked} ({}/s), failed {}, slowest {:.1} ms",
                    start.elapsed().as_secs_f64(),
                    acked - last,
                    counters.failed.load(Ordering::Relaxed),
                    slowest_us as f64 / 1000.0
                );
                last = acked;
            }
        })
    };
    for worker in workers {
        worker.await?;
    }
    progress.abort();
    let latencies = std::mem::replace(
        &mut *latencies.lock().expect("latency histogram lock poisoned"),
        Latencies {
            from_send: Histogram::new(1)?,
            from_schedule: Histogram::new(1)?,
        },
    );
    Ok(Outcome {
        acked: counters.acked.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        first_failure: counters.first_failure.get().cloned(),
        elapsed: start.elapsed(),
        histogram: latencies.from_send,
        from_schedule: per_worker_interval.map(|_| latencies.from_schedule),
    })
}

impl Outcome {
    pub fn per_sec(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64()
    }

    /// The line naming the first failure, for a run in which some calls succeeded: with none,
    /// [`Outcome::ensure_some_succeeded`] names it in its error instead.
    pub fn first_failure_line(&self) -> Option<String> {
        let first = self.first_failure.as_ref().filter(|_| self.acked > 0)?;
        Some(format!("first failed call: {first}"))
    }

    /// A run in which calls were made and none succeeded is an error, naming the first cause.
    pub fn ensure_some_succeeded(&self) -> anyhow::Result<()> {
        match &self.first_failure {
            Some(first) if self.acked == 0 && self.failed > 0 => {
                anyhow::bail!(
                    "nothing was acknowledged ({} failed in the measured time); the first failure: {first}",
                    self.failed
                )
            }
            _ => Ok(()),
        }
    }

    pub fn latency_json(&self) -> serde_json::Value {
        latency_json(&self.histogram)
    }

    pub fn latency_line(&self) -> String {
        latency_line(&self.histogram)
    }
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

pub fn latency_json(histogram: &Histogram<u64>) -> serde_json::Value {
    json!({"p50": ms(histogram, 0.5), "p99": ms(histogram, 0.99), "p999": ms(histogram, 0.999),
           "max": histogram.max() as f64 / 1000.0})
}

pub fn latency_line(histogram: &Histogram<u64>) -> String {
    format!(
        "p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}",
        ms(histogram, 0.5),
        ms(histogram, 0.99),
        ms(histogram, 0.999),
        histogram.max() as f64 / 1000.0
    )
}

/// A load's outcome and, when asked for, what the disk did meanwhile.
pub struct Measured {
    pub outcome: Outcome,
    /// Write+fsync latencies of the probe over the measured seconds, in microseconds.
    pub fsyncs: Option<Histogram<u64>>,
}

/// Drive `call` as `load` says (see [`drive`]) and, with `fsync_probe`, time a 4 KiB write +
/// fdatasync in that folder every 2 ms over exactly the measured seconds: a disk's latency
/// swings with the machine's load, so acks are best set against what it did in the same run.
pub async fn measure<F, Fut>(
    load: &Load,
    fsync_probe: Option<std::path::PathBuf>,
    call: F,
) -> anyhow::Result<Measured>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let probe = fsync_probe.map(|dir| {
        let from = Instant::now() + load.warmup;
        let until = from + load.duration;
        std::thread::spawn(move || {
            fsync_latencies(&dir, FSYNC_PROBE_BYTES, from, until, FSYNC_PROBE_PAUSE)
        })
    });
    let outcome = drive(load, call).await?;
    let fsyncs = match probe {
        Some(thread) => Some(
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the fsync probe panicked"))??,
        ),
        None => None,
    };
    Ok(Measured { outcome, fsyncs })
}

impl Measured {
    /// The figures every load generator reports, under the same JSON names; `size` is the
    /// bytes one message carries.
    pub fn json(&self, load: &Load, size: usize) -> serde_json::Value {
        let rate = self.outcome.per_sec();
        let mut result = json!({
            "acked": self.outcome.acked, "failed": self.outcome.failed,
            "seconds": self.outcome.elapsed.as_secs_f64(),
            "msgs_per_sec": rate, "mb_per_sec": rate * size as f64 / 1_000_000.0,
            "ack_latency_ms": self.outcome.latency_json(),
            "concurrency": load.concurrency, "size": size,
            "target_rate": (load.calls_per_sec * load.messages_per_call as f64).round() as u64,
            "warmup_seconds": load.warmup.as_secs_f64(),
        });
        if let Some(from_schedule) = &self.outcome.from_schedule {
            result["ack_latency_from_schedule_ms"] = latency_json(from_schedule);
        }
        if let Some(first) = &self.outcome.first_failure {
            result["first_failure"] = first.as_str().into();
        }
        if let Some(fsyncs) = &self.fsyncs {
            result["fsyncs_during_run"] = fsyncs.len().into();
            result["fsync_latency_during_run_ms"] = latency_json(fsyncs);
        }
        result
    }

    /// The same as lines for a person; `what` names the messages (`messages`, `publishes`).
    pub fn text(&self, size: usize, what: &str) -> String {
        let rate = self.outcome.per_sec();
        let mut text = format!(
            "acked {} {what} in {:.1}s: {rate:.0} msgs/s, {:.1} MB/s; failed {}\nack latency ms: {}",
            self.outcome.acked,
            self.outcome.elapsed.as_secs_f64(),
            rate * size as f64 / 1_000_000.0,
            self.outcome.failed,
            self.outcome.latency_line()
        );
        if let Some(from_schedule) = &self.outcome.from_schedule {
            text += &format!("\nfrom when each was due: {}", latency_line(from_schedule));
        }
        if let Some(fsyncs) = &self.fsyncs {
            text += &format!(
                "\ndisk write+fsync during the run ({} fsyncs): {}",
                fsyncs.len(),
                latency_line(fsyncs)
            );
        }
        if let Some(line) = self.outcome.first_failure_line() {
            text += &format!("\n{line}");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(Ok(Duration::from_secs(30)), parse_duration("30s"));
        assert_eq!(Ok(Duration::from_millis(500)), parse_duration("500ms"));
        assert_eq!(Ok(Duration::from_secs(120)), parse_duration("2m"));
        assert_eq!(Ok(Duration::from_secs(7)), parse_duration("7"));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[tokio::test]
    async fn a_target_rate_paces_the_calls_and_failures_are_counted_apart() {
        let load = Load {
            concurrency: 8,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(500),
            calls_per_sec: 400.0,
            messages_per_call: 2,
        };
        let turn = Arc::new(AtomicU64::new(0));
        let outcome = drive(&load, move || {
            let turn = turn.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                // Every fourth call fails.
                match turn.fetch_add(1, Ordering::Relaxed) % 4 {
                    3 => Err(format!("call {turn:?} refused")),
                    _ => Ok(()),
                }
            }
        })
        .await
        .unwrap();
        // 400 calls/s over the measured 0.5 s: about 200 calls, 400 messages, a quarter failed.
        let calls = (outcome.acked + outcome.failed) / 2;
        assert!((170..=215).contains(&calls), "{calls} calls");
        assert!(
            outcome.failed * 4 >= outcome.acked,
            "{} failed",
            outcome.failed
        );
        assert_eq!(outcome.acked / 2, outcome.histogram.len());
        assert!(
            outcome
                .first_failure
                .as_deref()
                .is_some_and(|e| e.ends_with("refused"))
        );
        assert!(
            outcome.ensure_some_succeeded().is_ok(),
            "some calls succeeded"
        );
        // Each call sleeps 1 ms, and none waited for its turn long.
        assert!(outcome.histogram.min() >= 1_000);
        let from_schedule = outcome
            .from_schedule
            .expect("a target rate times from the due time");
        assert_eq!(outcome.histogram.len(), from_schedule.len());
        assert!(from_schedule.value_at_quantile(0.5) < 50_000);
    }

    #[tokio::test]
    async fn a_run_in_which_every_call_fails_is_an_error_that_names_the_cause() {
        let load = Load {
            concurrency: 2,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(50),
            calls_per_sec: 200.0,
            messages_per_call: 1,
        };
        let outcome = drive(&load, || async {
            Err("rejected with MessageBodyTooLarge: body of 5000000 bytes".to_string())
        })
        .await
        .unwrap();
        assert_eq!(outcome.acked, 0);
        assert!(outcome.failed > 0);
        let error = outcome.ensure_some_succeeded().unwrap_err().to_string();
        assert!(
            error.starts_with("nothing was acknowledged")
                && error.ends_with(
                    "the first failure: rejected with MessageBodyTooLarge: body of 5000000 bytes"
                ),
            "{error}"
        );
    }

    #[test]
    fn the_fsync_probe_times_every_fsync_and_names_a_missing_folder() {
        let dir = tempfile::tempdir().unwrap();
        let from = Instant::now();
        let until = from + Duration::from_millis(100);
        let probed = fsync_latencies(dir.path(), 4096, from, until, Duration::from_millis(2))
            .expect("probe a writable folder");
        // Each round trip sleeps 2 ms, so 100 ms hold at most 50 fsyncs.
        assert!((1..=50).contains(&probed.len()), "{} fsyncs", probed.len());
        assert!(probed.min() > 0);
        // The probe's file is removed when it ends.
        assert_eq!(0, std::fs::read_dir(dir.path()).unwrap().count());

        let missing = dir.path().join("no-such-folder");
        let err = fsync_latencies(&missing, 4096, from, until, Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("no-such-folder"), "{err}");
    }
}
