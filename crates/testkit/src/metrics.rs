//! Reading a `/metrics` page in a test: [`prom_value`], on top of the workspace's one Prometheus text parser
//! (`fpaas_ops::prom`).

/// Sum of the samples of metric `name` on a Prometheus text page whose labels include every pair of
/// `filter`, written as in a sample (`reason="unknown_frame"`, several comma separated; `""` for all
/// series); 0 when there is none.
///
/// # Panics
/// When `filter` is not label pairs (a mistake in the test).
pub fn prom_value(page: &str, name: &str, filter: &str) -> f64 {
    let wanted = fpaas_ops::prom::parse_labels(filter)
        .unwrap_or_else(|| panic!("label filter {filter:?} is not `name=\"value\",…`"));
    let wanted: Vec<(&str, &str)> = wanted.iter().map(|(k, v)| (*k, v.as_str())).collect();
    fpaas_ops::prom::sum(page, name, &wanted).unwrap_or(0.0)
}
