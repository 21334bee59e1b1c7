//! Reading the Prometheus text exposition format (what `/metrics` serves): the workspace's one parser, used
//! by `fpaas storage-estimate` to scrape a shuffler and by the tests (through `fpaas_testkit::prom_value`).
//!
//! It reads sample lines (`name{label="value",…} value [timestamp]`) and skips comments (`# HELP`, `# TYPE`),
//! blank and malformed lines. Label values may hold any character, escaped quotes (`\"`), backslashes and
//! newlines (`\\`, `\n`) included. Histogram and summary series are plain samples here (`name_bucket`,
//! `name_sum`, `name_count`).
//!
//! Why not a crate: `prometheus-parse` 0.2.5, the one on crates.io that fits, splits labels on `,` and `=`
//! (a label value holding a URL query or a comma is read wrong) and brings regex, itertools and chrono for
//! what is these few lines.

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// Metric name, e.g. `fpaas_shuffler_drops_total`.
    pub name: &'a str,
    /// Labels in the order written, values unescaped.
    pub labels: Vec<(&'a str, String)>,
    /// The value (`NaN`, `+Inf` and `-Inf` included).
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of an exposition, in page order.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(sample)
}

/// Sum of the samples named exactly `name` that carry every `(label, value)` of `labels`; `None` when
/// there is none.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

/// Parses label pairs written as in a sample, without the braces: `reason="unknown_frame",kind="commit"`.
/// `None` when malformed; the empty string is no labels.
pub fn parse_labels(text: &str) -> Option<Vec<(&str, String)>> {
    let (labels, rest) = labels(text)?;
    rest.trim().is_empty().then_some(labels)
}

/// One line as a sample; `None` for comments, blank and malformed lines.
fn sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = self::labels(inner)?;
        labels = parsed;
        rest = after.strip_prefix('}')?;
    }
    let value = rest.split_whitespace().next()?;
    Some(Sample {
        name,
        labels,
        value: parse_value(value)?,
    })
}

/// Label pairs up to (not including) a closing `}` or the end: (pairs, the rest from `}`).
fn labels(mut text: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start();
        if text.is_empty() || text.starts_with('}') {
            return Some((labels, text));
        }
        let eq = text.find('=')?;
        let key = text[..eq].trim();
        if !is_metric_name(key) {
            return None;
        }
        let (value, after) = quoted(text[eq + 1..].trim_start())?;
        labels.push((key, value));
        text = after.trim_start();
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

/// A `"…"` string at the start of `text`, unescaped: (value, the rest after the closing quote).
fn quoted(text: &str) -> Option<(String, &str)> {
    let body = text.strip_prefix('"')?;
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &body[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP fpaas_shuffler_published_total x\n\
                        # TYPE fpaas_shuffler_published_total counter\n\
                        fpaas_shuffler_published_total 1200\n\
                        fpaas_shuffler_published_total_other 5\n\
                        fpaas_shuffler_message_size_bytes_bucket{le=\"256\"} 3\n\
                        fpaas_shuffler_message_size_bytes_bucket{le=\"+Inf\"} 100\n\
                        fpaas_shuffler_message_size_bytes_sum 61234.5\n\
                        fpaas_shuffler_message_size_bytes_count 100\n\
                        fpaas_shuffler_events_total{kind=\"commit\"} 90\n\
                        fpaas_shuffler_events_total{kind=\"sync\"} 10\n\
                        \n\
                        fpaas_shuffler_drops_total{reason=\"unknown_frame\",stage=\"decode\"} 4 1700000000000\n\
                        fpaas_shuffler_drops_total{reason=\"record_too_large\",stage=\"normalize\",} 2\n\
                        fpaas_relay_connects_total{relay=\"ws://h:1/x?cursor=5,a=b\",note=\"say \\\"hi\\\"\\n\"} 1\n\
                        not a sample\n\
                        fpaas_broken{reason=\"unterminated} 3\n";

    #[test]
    fn sums_a_metric_over_its_series_by_exact_name() {
        assert_eq!(
            sum(PAGE, "fpaas_shuffler_published_total", &[]),
            Some(1200.0)
        );
        assert_eq!(
            sum(PAGE, "fpaas_shuffler_message_size_bytes_sum", &[]),
            Some(61234.5)
        );
        assert_eq!(sum(PAGE, "fpaas_shuffler_events_total", &[]), Some(100.0));
        assert_eq!(sum(PAGE, "fpaas_shuffler_drops_total", &[]), Some(6.0));
        assert_eq!(sum(PAGE, "fpaas_missing", &[]), None);
    }

    #[test]
    fn filters_by_labels() {
        let drops = |labels: &[(&str, &str)]| sum(PAGE, "fpaas_shuffler_drops_total", labels);
        assert_eq!(drops(&[("reason", "unknown_frame")]), Some(4.0));
        assert_eq!(
            drops(&[("reason", "record_too_large"), ("stage", "normalize")]),
            Some(2.0)
        );
        assert_eq!(
            drops(&[("reason", "record_too_large"), ("stage", "decode")]),
            None
        );
        assert_eq!(
            sum(
                PAGE,
                "fpaas_shuffler_message_size_bytes_bucket",
                &[("le", "+Inf")]
            ),
            Some(100.0)
        );
    }

    #[test]
    fn label_values_may_hold_commas_equals_and_escapes() {
        let s = samples(PAGE)
            .find(|s| s.name == "fpaas_relay_connects_total")
            .expect("sample");
        assert_eq!(s.label("relay"), Some("ws://h:1/x?cursor=5,a=b"));
        assert_eq!(s.label("note"), Some("say \"hi\"\n"));
        assert_eq!(s.value, 1.0);
    }

    #[test]
    fn skips_comments_blank_and_malformed_lines() {
        let names: Vec<&str> = samples(PAGE).map(|s| s.name).collect();
        assert_eq!(names.len(), 11, "{names:?}");
        assert!(!names.contains(&"not"));
        assert!(!names.contains(&"fpaas_broken"));
        assert_eq!(samples("x 1\ny +Inf\nz NaN").count(), 3);
    }

    #[test]
    fn parses_label_filters() {
        assert_eq!(parse_labels(""), Some(vec![]));
        assert_eq!(
            parse_labels("reason=\"unknown_frame\", type=\"a\""),
            Some(vec![
                ("reason", "unknown_frame".into()),
                ("type", "a".into())
            ])
        );
        assert_eq!(parse_labels("reason=unquoted"), None);
        assert_eq!(parse_labels("reason=\"x\"}"), None);
    }
}
