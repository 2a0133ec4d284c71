//! The outcome of a chaos run: a table per fault, the same as JSON, a latency-over-time
//! plot with the fault windows shaded, and the history for anyone to re-check.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;

use crate::history::History;
use crate::nemesis::Fault;
use crate::run::{FinalCheck, RunOptions};

/// One send as a producer saw it (times in ms since the run started).
#[derive(Clone, Debug, Serialize)]
pub struct Op {
    pub body: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Acknowledged; otherwise the outcome is unknown (it may or may not have been stored)
    /// unless `refused`.
    pub ok: bool,
    /// Refused for lack of disk room: certainly not stored.
    pub refused: bool,
}

impl Serialize for Fault {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One injected fault, from injection to the group being whole again.
#[derive(Clone, Debug, Serialize)]
pub struct FaultWindow {
    pub fault: Fault,
    pub description: String,
    pub old_leader: Option<u64>,
    pub injected_ms: u64,
    pub healed_ms: u64,
    /// Every node caught up with the leader's commit index (or the wait gave up).
    pub recovered_ms: u64,
    pub recovery_error: Option<String>,
    /// When a new leader took office (by its own `leading_since_ms`), and which node.
    pub new_leader_ms: Option<u64>,
    pub new_leader: Option<u64>,
    /// Filled in by the report: see [`FaultWindow::measure_unavailable`].
    pub unavailable_ms: Option<u64>,
}

impl FaultWindow {
    /// From injection to the first acknowledgement of a send that started after it.
    pub fn measure_unavailable(&self, ops: &[Op]) -> Option<u64> {
        ops.iter()
            .filter(|op| op.ok && op.start_ms >= self.injected_ms)
            .map(|op| op.end_ms)
            .min()
            .map(|end| end - self.injected_ms)
    }

    fn contains(&self, at_ms: u64) -> bool {
        (self.injected_ms..self.recovered_ms.max(self.healed_ms)).contains(&at_ms)
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Spread {
    pub count: usize,
    pub min: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Spread {
    fn of(mut values: Vec<u64>) -> Spread {
        values.sort_unstable();
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        if values.is_empty() {
            return Spread::default();
        }
        Spread {
            count: values.len(),
            min: values[0],
            p50: at(0.5),
            p99: at(0.99),
            max: values[values.len() - 1],
        }
    }
}

/// Sends, outcomes and checker findings of the sends that started during one kind of fault
/// (or outside every fault: `none`).
#[derive(Debug, Default, Serialize)]
pub struct FaultRow {
    pub fault: String,
    pub injections: usize,
    pub attempted: usize,
    pub acknowledged: usize,
    /// Refused cleanly: the group had no disk room (TOO_MANY_REQUESTS).
    pub refused: usize,
    pub unknown: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub reordered: usize,
    pub unavailable_ms: Spread,
    /// Injection to the moment a new leader took office, by its own clock (detection and
    /// election together).
    pub election_ms: Spread,
    /// New leader in office to the first acknowledgement: the clients finding their way to it.
    pub reroute_ms: Spread,
    pub not_recovered: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of<'a>(ops: impl Iterator<Item = &'a Op>) -> Latency {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("valid bounds");
        for op in ops {
            let _ = h.record((op.end_ms - op.start_ms).max(1));
        }
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_ms: h.value_at_quantile(0.5) as f64,
            p99_ms: h.value_at_quantile(0.99) as f64,
            p999_ms: h.value_at_quantile(0.999) as f64,
            max_ms: h.max() as f64,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub nodes: u64,
    pub flush: String,
    pub replay: String,
    pub clean: bool,
    pub faults: Vec<FaultRow>,
    /// Ack latency of sends that started outside / inside a fault window.
    pub latency_normal: Latency,
    pub latency_fault: Latency,
    pub check: FinalCheck,
    pub windows: Vec<FaultWindow>,
    #[serde(skip)]
    pub ops: Vec<Op>,
}

impl RunReport {
    pub fn build(
        options: &RunOptions,
        ops: Vec<Op>,
        mut windows: Vec<FaultWindow>,
        check: FinalCheck,
    ) -> RunReport {
        for window in &mut windows {
            window.unavailable_ms = window.measure_unavailable(&ops);
        }
        let window_of = |at: u64| windows.iter().position(|w| w.contains(at));
        let kind_of = |at: u64| {
            window_of(at).map_or("none".to_string(), |i| windows[i].fault.name().to_string())
        };
        let mut rows: BTreeMap<String, FaultRow> = BTreeMap::new();
        let mut start_of: HashMap<&str, u64> = HashMap::new();
        for op in &ops {
            start_of.insert(op.body.as_str(), op.start_ms);
            let entry = rows.entry(kind_of(op.start_ms)).or_default();
            entry.attempted += 1;
            if op.ok {
                entry.acknowledged += 1;
            } else if op.refused {
                entry.refused += 1;
            } else {
                entry.unknown += 1;
            }
        }
        let mut attribute = |bodies: &mut dyn Iterator<Item = &str>, field: fn(&mut FaultRow)| {
            for body in bodies {
                let kind = start_of.get(body).map_or("none".into(), |&at| kind_of(at));
                field(rows.entry(kind).or_default());
            }
        };
        attribute(&mut check.lost.iter().map(String::as_str), |r| r.lost += 1);
        attribute(&mut check.duplicated.iter().map(String::as_str), |r| {
            r.duplicated += 1
        });
        attribute(&mut check.reordered.iter().map(|(_, b)| b.as_str()), |r| {
            r.reordered += 1
        });
        let mut per_kind: BTreeMap<&str, Vec<&FaultWindow>> = BTreeMap::new();
        for w in &windows {
            per_kind.entry(w.fault.name()).or_default().push(w);
        }
        for (kind, list) in per_kind {
            let entry = rows.entry(kind.to_string()).or_default();
            entry.injections = list.len();
            entry.unavailable_ms =
                Spread::of(list.iter().filter_map(|w| w.unavailable_ms).collect());
            entry.election_ms = Spread::of(
                list.iter()
                    .filter_map(|w| w.new_leader_ms.map(|at| at.saturating_sub(w.injected_ms)))
                    .collect(),
            );
            entry.reroute_ms = Spread::of(
                list.iter()
                    .filter_map(|w| {
                        let elected = w.new_leader_ms?.saturating_sub(w.injected_ms);
                        Some(w.unavailable_ms?.saturating_sub(elected))
                    })
                    .collect(),
            );
            entry.not_recovered = list.iter().filter(|w| w.recovery_error.is_some()).count();
        }
        let faults = rows
            .into_iter()
            .map(|(kind, mut r)| {
                r.fault = kind;
                r
            })
            .collect::<Vec<_>>();
        let in_fault = |op: &&Op| window_of(op.start_ms).is_some();
        let latency_normal = Latency::of(ops.iter().filter(|o| o.ok).filter(|o| !in_fault(o)));
        let latency_fault = Latency::of(ops.iter().filter(|o| o.ok).filter(in_fault));
        let clean = check.is_clean() && faults.iter().all(|r| r.not_recovered == 0);
        RunReport {
            seed: options.seed,
            nodes: options.nodes,
            flush: options.flush.to_string(),
            replay: options.replay_command(),
            clean,
            faults,
            latency_normal,
            latency_fault,
            check,
            windows,
            ops,
        }
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "chaos run: {} nodes, seed {}, flush {}\nreplay: {}\n",
            self.nodes, self.seed, self.flush, self.replay
        );
        let _ = writeln!(
            out,
            "{:<18} {:>4} {:>8} {:>8} {:>7} {:>7} {:>5} {:>5} {:>7}  {:>29}  {:>16}  {:>14}",
            "fault",
            "runs",
            "sent",
            "acked",
            "refused",
            "unknown",
            "lost",
            "dup",
            "reorder",
            "unavailable ms min/p50/p99/max",
            "election p50/max",
            "reroute p50/max"
        );
        for r in &self.faults {
            let u = &r.unavailable_ms;
            let e = &r.election_ms;
            let unavailable = if u.count == 0 {
                "-".to_string()
            } else {
                format!("{}/{}/{}/{}", u.min, u.p50, u.p99, u.max)
            };
            let p50_max = |s: &Spread| {
                if s.count == 0 {
                    "-".to_string()
                } else {
                    format!("{}/{}", s.p50, s.max)
                }
            };
            let (election, reroute) = (p50_max(e), p50_max(&r.reroute_ms));
            let _ = writeln!(
                out,
                "{:<18} {:>4} {:>8} {:>8} {:>7} {:>7} {:>5} {:>5} {:>7}  {:>29}  {:>16}  {:>14}{}",
                r.fault,
                r.injections,
                r.attempted,
                r.acknowledged,
                r.refused,
                r.unknown,
                r.lost,
                r.duplicated,
                r.reordered,
                unavailable,
                election,
                reroute,
                if r.not_recovered > 0 {
                    format!("  ({} not recovered)", r.not_recovered)
                } else {
                    String::new()
                }
            );
        }
        let l = |l: &Latency| {
            format!(
                "{} acks, p50 {} ms, p99 {} ms, p999 {} ms, max {} ms",
                l.count, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
            )
        };
        let c = &self.check;
        let _ = writeln!(
            out,
            "\nack latency outside faults: {}\nack latency during faults:  {}\n",
            l(&self.latency_normal),
            l(&self.latency_fault)
        );
        let _ = writeln!(
            out,
            "checked: {} acknowledged, {} refused for lack of disk room (none may be stored), \
             {} unknown sends ({} of them stored), {} consumed\n\
             lost {}, duplicated {}, reordered {}, phantom {}, wrong offset {}, offset gaps {}, \
             dirty reads {}, offset regressions {}, replicas identical {}{}{}",
            c.acknowledged,
            c.refused_sends,
            c.unknown_sends,
            c.unknown_present,
            c.consumed,
            c.lost.len(),
            c.duplicated.len(),
            c.reordered.len(),
            c.phantom.len(),
            c.wrong_offset.len(),
            c.offset_gaps.len(),
            c.dirty_reads.len(),
            c.offset_regressions.len(),
            c.replicas_identical,
            c.not_caught_up
                .as_ref()
                .map_or(String::new(), |e| format!("\nnot caught up: {e}")),
            c.exited
                .iter()
                .map(|(id, how)| format!("\nnode {id} exited by itself: {how}"))
                .collect::<String>()
        );
        let examples: [(&str, Vec<String>); 4] = [
            ("lost", c.lost.iter().cloned().collect()),
            ("dirty reads", c.dirty_reads.clone()),
            ("offset regressions", c.offset_regressions.clone()),
            ("phantom", c.phantom.iter().cloned().collect()),
        ];
        for (name, list) in examples {
            if !list.is_empty() {
                let _ = writeln!(out, "{name} (first 5): {:?}", &list[..list.len().min(5)]);
            }
        }
        let _ = writeln!(
            out,
            "\nverdict: {}",
            if self.clean { "CLEAN" } else { "FAILED" }
        );
        out
    }
}

/// Write report.txt, report.json, history.jsonl and latency.svg into `dir`.
pub fn write(report: &RunReport, dir: &Path, history: &History) -> anyhow::Result<()> {
    std::fs::write(dir.join("report.txt"), report.text())?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    let file = std::fs::File::create(dir.join("history.jsonl"))?;
    let mut out = std::io::BufWriter::new(file);
    let acks: HashMap<String, _> = history
        .acks()
        .into_iter()
        .map(|a| (a.body.clone(), a))
        .collect();
    for op in &report.ops {
        let line = match acks.get(&op.body) {
            Some(a) => json!({
                "body": op.body, "ok": true, "start_ms": op.start_ms, "end_ms": op.end_ms,
                "message_id": a.message_id, "offset": a.offset, "started": a.started, "acked": a.acked,
            }),
            None => {
                json!({"body": op.body, "ok": false, "unknown": !op.refused, "refused": op.refused, "start_ms": op.start_ms, "end_ms": op.end_ms})
            }
        };
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    plot(report, &dir.join("latency.svg")).context("draw latency.svg")?;
    Ok(())
}

/// Ack latency of every send over time (unknown outcomes as red crosses along the top), with
/// each fault window shaded and named.
fn plot(report: &RunReport, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let end_s = report.ops.iter().map(|o| o.end_ms).max().unwrap_or(1000) as f64 / 1000.0;
    let top_ms = report
        .ops
        .iter()
        .map(|o| (o.end_ms - o.start_ms) as f64)
        .fold(10.0, f64::max)
        * 2.0;
    let root = SVGBackend::new(path, (1600, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "raftmq chaos run, seed {}: ack latency per send (shaded: fault injected → healed)",
                report.seed
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end_s, (0.5f64..top_ms).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("ack latency (ms)")
        .draw()?;
    for (i, w) in report.windows.iter().enumerate() {
        let (from, to) = (w.injected_ms as f64 / 1000.0, w.healed_ms as f64 / 1000.0);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(from, 0.5), (to, top_ms)],
            RGBColor(255, 170, 120).mix(0.35).filled(),
        )))?;
        // Alternate label heights so neighbouring names do not overlap.
        let label_at = if i % 2 == 0 {
            top_ms / 1.6
        } else {
            top_ms / 3.2
        };
        chart.draw_series(std::iter::once(Text::new(
            w.fault.name().to_string(),
            (from, label_at),
            ("sans-serif", 12),
        )))?;
    }
    chart.draw_series(report.ops.iter().filter(|o| o.ok).map(|o| {
        let latency = ((o.end_ms - o.start_ms) as f64).max(0.6);
        Circle::new(
            (o.start_ms as f64 / 1000.0, latency),
            1,
            BLUE.mix(0.5).filled(),
        )
    }))?;
    chart.draw_series(
        report
            .ops
            .iter()
            .filter(|o| !o.ok)
            .map(|o| Cross::new((o.start_ms as f64 / 1000.0, top_ms / 1.2), 3, RED)),
    )?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(body: &str, start_ms: u64, end_ms: u64, ok: bool) -> Op {
        Op {
            body: body.into(),
            start_ms,
            end_ms,
            ok,
            refused: false,
        }
    }

    fn window(fault: Fault, injected_ms: u64, recovered_ms: u64) -> FaultWindow {
        FaultWindow {
            fault,
            description: String::new(),
            old_leader: Some(1),
            injected_ms,
            healed_ms: recovered_ms,
            recovered_ms,
            recovery_error: None,
            new_leader_ms: Some(injected_ms + 700),
            new_leader: Some(2),
            unavailable_ms: None,
        }
    }

    #[test]
    fn unavailability_runs_to_the_first_ack_of_a_send_started_after_the_fault() {
        let w = window(Fault::KillLeader, 1_000, 3_000);
        let ops = [
            // Started before the fault: does not count, however late its ack.
            op("a", 990, 1_005, true),
            op("b", 1_010, 2_000, false),
            op("c", 1_020, 1_900, true),
            op("d", 1_500, 1_950, true),
        ];
        assert_eq!(w.measure_unavailable(&ops), Some(900));
        assert_eq!(w.measure_unavailable(&ops[..2]), None);
    }

    #[test]
    fn sends_and_findings_are_counted_under_the_fault_they_started_in() {
        let windows = vec![window(Fault::KillLeader, 1_000, 3_000)];
        let ops = vec![
            op("p0:0", 100, 110, true),
            op("p0:1", 1_100, 1_900, true),
            op("p0:2", 1_200, 2_300, false),
            op("p0:3", 3_500, 3_510, true),
        ];
        let check = FinalCheck {
            lost: ["p0:1".to_string()].into(),
            replicas_identical: true,
            ..Default::default()
        };
        let options = RunOptions {
            nodes: 3,
            seed: 1,
            faults: vec![Fault::KillLeader],
            rounds: 1,
            duration: std::time::Duration::ZERO,
            rate: 1,
            producers: 1,
            consumers: 0,
            flush: "sync",
            netns: true,
            lose_unsynced: false,
            out: "unused".into(),
        };
        let report = RunReport::build(&options, ops, windows, check);
        let row = |name: &str| report.faults.iter().find(|r| r.fault == name).unwrap();
        let kill = row("kill-leader");
        assert_eq!(
            (kill.attempted, kill.acknowledged, kill.unknown, kill.lost),
            (2, 1, 1, 1)
        );
        assert_eq!(kill.unavailable_ms.p50, 900);
        assert_eq!(kill.election_ms.p50, 700);
        assert_eq!(kill.reroute_ms.p50, 200);
        let none = row("none");
        assert_eq!((none.attempted, none.lost), (2, 0));
        assert!(!report.clean, "a lost message must fail the run");
    }
}
