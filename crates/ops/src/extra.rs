//! Metric families rendered by their owner at scrape time instead of being registered with the recorder.
//!
//! For series whose count follows the data, such as one per subscription: the recorder keeps about 1.4 KB per
//! registered series (measured: nine series per subscription cost a worker 12.5 KB per subscription), while a
//! collector renders them from the counters its owner keeps anyway. A collector appends complete families
//! (`# HELP`, `# TYPE`, samples) in the text format to the page; [`crate::router`]'s `/metrics` calls every
//! registered collector after the recorder's own families.

use std::sync::{Mutex, OnceLock};

type Collector = Box<dyn Fn(&mut String) + Send + Sync>;

fn collectors() -> &'static Mutex<Vec<Collector>> {
    static COLLECTORS: OnceLock<Mutex<Vec<Collector>>> = OnceLock::new();
    COLLECTORS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Adds a collector for the life of the process (register each once: a family must appear once per page).
pub fn register(collector: impl Fn(&mut String) + Send + Sync + 'static) {
    collectors()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Box::new(collector));
}

/// Appends every collector's families to `page`.
pub fn render_into(page: &mut String) {
    let collectors = collectors()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for c in collectors.iter() {
        if !page.is_empty() && !page.ends_with('\n') {
            page.push('\n');
        }
        c(page);
    }
}

/// A label value escaped for the text format (`\`, `"` and newlines).
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collectors_append_their_families_and_labels_are_escaped() {
        register(|out| out.push_str("# TYPE fpaas_test_extra gauge\nfpaas_test_extra 1\n"));
        let mut page = String::from("fpaas_other 2");
        render_into(&mut page);
        assert!(
            page.contains("fpaas_other 2\n# TYPE fpaas_test_extra gauge\nfpaas_test_extra 1\n")
        );
        let parsed: Vec<_> = crate::prom::samples(&page).map(|s| s.name).collect();
        assert!(parsed.contains(&"fpaas_test_extra"), "{parsed:?}");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
