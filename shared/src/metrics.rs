//! Prometheus text exposition format (0.0.4), written from plain numbers.

use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Gauge,
    Counter,
}

/// Builds the text of `GET /metrics`: each family declared once with its help and type,
/// followed by its samples.
#[derive(Debug, Default)]
pub struct MetricsWriter {
    out: String,
}

impl MetricsWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a metric family.
    pub fn family(&mut self, name: &str, help: &str, kind: MetricType) -> &mut Self {
        let kind = match kind {
            MetricType::Gauge => "gauge",
            MetricType::Counter => "counter",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample of the family just started.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_exposition_format() {
        let mut m = MetricsWriter::new();
        m.family("d1_backup_bytes", "Size of the last\\successful backup\nin bytes.", MetricType::Gauge)
            .sample("d1_backup_bytes", &[("database", "a\"b\\c\nd")], 1234.0)
            .sample("d1_backup_bytes", &[], 0.5);
        m.family("d1_backup_failures_total", "Dead runs.", MetricType::Counter)
            .sample("d1_backup_failures_total", &[("database", "x"), ("kind", "daily")], 3.0)
            .sample("d1_backup_failures_total", &[], f64::NAN)
            .sample("d1_backup_failures_total", &[], f64::INFINITY);
        assert_eq!(
            m.finish(),
            "# HELP d1_backup_bytes Size of the last\\\\successful backup\\nin bytes.\n\
             # TYPE d1_backup_bytes gauge\n\
             d1_backup_bytes{database=\"a\\\"b\\\\c\\nd\"} 1234\n\
             d1_backup_bytes 0.5\n\
             # HELP d1_backup_failures_total Dead runs.\n\
             # TYPE d1_backup_failures_total counter\n\
             d1_backup_failures_total{database=\"x\",kind=\"daily\"} 3\n\
             d1_backup_failures_total NaN\n\
             d1_backup_failures_total +Inf\n"
        );
    }
}
