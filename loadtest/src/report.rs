//! Measurements and the report: latency histograms (HdrHistogram, microseconds), outcome counts
//! by status, a per-second time series, the text and JSON reports and the SVG chart.
//!
//! Each connection records into its own `Recorder` and merges it into the shared `Totals`
//! once a second and at the end, so that no lock is taken per operation.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use ledger_protocol::Status;

/// Longest latency recorded exactly; longer ones are recorded as this.
const LATENCY_MAX_US: u64 = 60_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

/// Outcomes of one interval (or of the whole run).
#[derive(Debug, Clone)]
pub struct Interval {
    /// Latency of every answered operation, µs.
    pub latency: Histogram<u64>,
    /// Answered operations by status.
    pub statuses: BTreeMap<Status, u64>,
    /// Operations that got no answer (connection lost) or a refused request.
    pub errors: u64,
    /// Open-loop: how late each request was sent after it was due, µs (the generator's own
    /// precision; it is part of the measured latency).
    pub send_lag: Histogram<u64>,
}

impl Default for Interval {
    fn default() -> Interval {
        Interval {
            latency: histogram(),
            statuses: BTreeMap::new(),
            errors: 0,
            send_lag: histogram(),
        }
    }
}

impl Interval {
    fn merge(&mut self, other: &Interval) {
        self.latency.add(&other.latency).expect("same bounds");
        self.send_lag.add(&other.send_lag).expect("same bounds");
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_default() += count;
        }
        self.errors += other.errors;
    }

    /// Operations answered `ok`.
    pub fn ok(&self) -> u64 {
        self.statuses.get(&Status::Ok).copied().unwrap_or(0)
    }

    /// Operations answered with a refusal.
    pub fn rejected(&self) -> u64 {
        self.statuses.iter().filter(|(s, _)| **s != Status::Ok).map(|(_, c)| c).sum()
    }

    /// Operations answered at all.
    pub fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }
}

/// What one connection measured since its last merge.
#[derive(Debug, Default)]
pub struct Recorder {
    current: Interval,
    /// The second of the run `current` belongs to.
    second: usize,
}

impl Recorder {
    /// Records `count` operations answered with `status` after `latency`.
    pub fn record(&mut self, status: Status, latency: Duration, count: u64) {
        let micros =
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, LATENCY_MAX_US);
        self.current.latency.record_n(micros, count).expect("clamped into bounds");
        *self.current.statuses.entry(status).or_default() += count;
    }

    /// Records how late a request went out after it was due (open-loop).
    pub fn lag(&mut self, lag: Duration) {
        let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX).clamp(1, LATENCY_MAX_US);
        self.current.send_lag.record(micros).expect("clamped into bounds");
    }

    /// Records `count` operations that failed without an answer.
    pub fn error(&mut self, count: u64) {
        self.current.errors += count;
    }
}

/// The shared totals.
#[derive(Debug)]
pub struct Totals {
    seconds: Mutex<Vec<Interval>>,
    /// Operations answered so far (for the progress line).
    pub answered: AtomicU64,
    /// Operations answered `ok` so far.
    pub ok: AtomicU64,
    /// Errors so far.
    pub errors: AtomicU64,
}

impl Totals {
    /// Totals for a run of `seconds` seconds (plus a little drain time).
    pub fn new(seconds: usize) -> Totals {
        Totals {
            seconds: Mutex::new(vec![Interval::default(); seconds + 5]),
            answered: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// Adds a recorder's interval to second `second` of the run (clamped to the last slot) and
    /// starts the recorder afresh for `next_second`.
    pub fn merge(&self, recorder: &mut Recorder, next_second: usize) {
        let interval = std::mem::take(&mut recorder.current);
        self.answered.fetch_add(interval.answered(), Ordering::Relaxed);
        self.ok.fetch_add(interval.ok(), Ordering::Relaxed);
        self.errors.fetch_add(interval.errors, Ordering::Relaxed);
        let mut seconds = self.seconds.lock().expect("totals lock");
        let last = seconds.len() - 1;
        if let Some(slot) = seconds.get_mut(recorder.second.min(last)) {
            slot.merge(&interval);
        }
        recorder.second = next_second;
    }

    /// The per-second intervals, up to the last one with any outcome.
    pub fn intervals(&self) -> Vec<Interval> {
        let mut seconds = self.seconds.lock().expect("totals lock").clone();
        while seconds.last().is_some_and(|s| s.answered() == 0 && s.errors == 0) {
            seconds.pop();
        }
        seconds
    }
}

/// The final report.
#[derive(Debug)]
pub struct Report {
    /// The whole run.
    pub total: Interval,
    /// Seconds measured (from the first send to the last answer counted).
    pub elapsed: Duration,
    /// Per second.
    pub seconds: Vec<Interval>,
    /// A description of the run (for the text report and the JSON).
    pub settings: serde_json::Value,
}

impl Report {
    /// Builds the report from the totals.
    pub fn new(totals: &Totals, elapsed: Duration, settings: serde_json::Value) -> Report {
        let seconds = totals.intervals();
        let mut total = Interval::default();
        for second in &seconds {
            total.merge(second);
        }
        Report { total, elapsed, seconds, settings }
    }

    /// Operations answered per second of the run (ok and rejected alike: both are work the
    /// server did durably or decided).
    pub fn throughput(&self) -> u64 {
        let micros = self.elapsed.as_micros().max(1);
        u64::try_from(u128::from(self.total.answered()) * 1_000_000 / micros).unwrap_or(u64::MAX)
    }

    fn quantile(&self, q: f64) -> u64 {
        self.total.latency.value_at_quantile(q)
    }

    /// The machine-readable summary: one JSON object.
    pub fn json(&self) -> serde_json::Value {
        let statuses: serde_json::Map<String, serde_json::Value> = self
            .total
            .statuses
            .iter()
            .map(|(status, count)| (status.name().to_string(), (*count).into()))
            .collect();
        serde_json::json!({
            "tps": self.throughput(),
            "ok": self.total.ok(),
            "rejected": self.total.rejected(),
            "errors": self.total.errors,
            "p50_us": self.quantile(0.5),
            "p90_us": self.quantile(0.9),
            "p99_us": self.quantile(0.99),
            "p999_us": self.quantile(0.999),
            "max_us": self.total.latency.max(),
            "send_lag_p50_us": self.total.send_lag.value_at_quantile(0.5),
            "send_lag_p99_us": self.total.send_lag.value_at_quantile(0.99),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "statuses": statuses,
            "settings": self.settings,
        })
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("settings:   {}\n", self.settings));
        out.push_str(&format!(
            "throughput: {} ops/s over {:.1} s ({} answered, {} ok, {} rejected, {} errors)\n",
            self.throughput(),
            self.elapsed.as_secs_f64(),
            self.total.answered(),
            self.total.ok(),
            self.total.rejected(),
            self.total.errors,
        ));
        out.push_str(&format!(
            "latency µs: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
            self.quantile(0.5),
            self.quantile(0.9),
            self.quantile(0.99),
            self.quantile(0.999),
            self.total.latency.max()
        ));
        if !self.total.send_lag.is_empty() {
            out.push_str(&format!(
                "send lag µs (open loop, included above): p50 {}  p99 {}  max {}\n",
                self.total.send_lag.value_at_quantile(0.5),
                self.total.send_lag.value_at_quantile(0.99),
                self.total.send_lag.max()
            ));
        }
        out.push_str("outcomes:\n");
        for (status, count) in &self.total.statuses {
            out.push_str(&format!("  {:<28} {count}\n", status.name()));
        }
        out
    }

    /// Draws throughput and latency (p50, p99, max) per second into an SVG file.
    pub fn chart(&self, path: &Path) -> anyhow::Result<()> {
        use plotters::prelude::*;
        let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
        root.fill(&WHITE)?;
        let (upper, lower) = root.split_vertically(350);
        let seconds = self.seconds.len().max(1);
        #[expect(clippy::cast_precision_loss, reason = "chart coordinates")]
        let points = |value: fn(&Interval) -> u64| -> Vec<(f64, f64)> {
            self.seconds
                .iter()
                .enumerate()
                .map(|(second, interval)| (second as f64 + 0.5, value(interval) as f64))
                .collect()
        };
        let throughput = points(Interval::answered);
        let peak = throughput.iter().map(|(_, y)| *y).fold(1.0, f64::max);
        #[expect(clippy::cast_precision_loss, reason = "chart coordinates")]
        let x_end = seconds as f64;
        let mut chart = ChartBuilder::on(&upper)
            .caption("throughput (operations answered per second)", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..x_end, 0.0..peak * 1.1)?;
        chart.configure_mesh().x_desc("second of the run").y_desc("ops/s").draw()?;
        chart.draw_series(LineSeries::new(throughput, &BLUE))?;

        let quantile = |q: f64| -> Vec<(f64, f64)> {
            #[expect(clippy::cast_precision_loss, reason = "chart coordinates")]
            self.seconds
                .iter()
                .enumerate()
                .filter(|(_, interval)| interval.answered() > 0)
                .map(|(second, interval)| {
                    (second as f64 + 0.5, interval.latency.value_at_quantile(q) as f64 / 1000.0)
                })
                .collect()
        };
        let (p50, p99, max) = (quantile(0.5), quantile(0.99), quantile(1.0));
        let top = max.iter().map(|(_, y)| *y).fold(0.1, f64::max);
        let mut chart = ChartBuilder::on(&lower)
            .caption("latency per second: p50 (green), p99 (orange), max (red)", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..x_end, 0.0..top * 1.1)?;
        chart.configure_mesh().x_desc("second of the run").y_desc("ms").draw()?;
        chart.draw_series(LineSeries::new(p50, &GREEN))?;
        chart.draw_series(LineSeries::new(p99, &RGBColor(255, 140, 0)))?;
        chart.draw_series(LineSeries::new(max, &RED))?;
        root.present()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorders_merge_into_seconds_and_the_report_adds_up() {
        let totals = Totals::new(3);
        let mut recorder = Recorder::default();
        recorder.record(Status::Ok, Duration::from_micros(100), 10);
        recorder.record(Status::InsufficientFunds, Duration::from_micros(300), 2);
        totals.merge(&mut recorder, 1);
        recorder.record(Status::Ok, Duration::from_millis(5), 1);
        recorder.error(3);
        totals.merge(&mut recorder, 2);
        let report = Report::new(&totals, Duration::from_secs(2), serde_json::json!({}));
        assert_eq!(report.seconds.len(), 2);
        assert_eq!(report.total.ok(), 11);
        assert_eq!(report.total.rejected(), 2);
        assert_eq!(report.total.errors, 3);
        assert_eq!(report.throughput(), 13 / 2);
        let json = report.json();
        assert_eq!(json["ok"], 11);
        assert_eq!(json["statuses"]["insufficient_funds"], 2);
        assert!(json["p50_us"].as_u64().unwrap() >= 100);
        assert!(json["max_us"].as_u64().unwrap() >= 4_990);
        let dir = tempfile::tempdir().unwrap();
        let chart = dir.path().join("chart.svg");
        report.chart(&chart).unwrap();
        let svg = std::fs::read_to_string(chart).unwrap();
        assert!(svg.contains("<svg") && svg.contains("throughput"));
    }
}
