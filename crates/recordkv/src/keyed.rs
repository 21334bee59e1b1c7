//! Concurrency with per-key order: a batch of (key, work) items runs with at most `concurrency` keys
//! in flight, while the items of one key run one after another in batch order. This is what lets a
//! batch be written in parallel without ever reordering two changes of the same record.

use std::collections::HashMap;
use std::future::Future;

use futures::{StreamExt, TryStreamExt};

use crate::error::Error;

/// Runs `f(key, item)` for every item; returns the outputs grouped by key (first-seen key order,
/// items in order within a key). Stops at the first error.
///
/// # Errors
/// The first error any `f` returned.
pub async fn run_keyed<T, O, F, Fut>(
    items: Vec<(String, T)>,
    concurrency: usize,
    f: F,
) -> Result<Vec<O>, Error>
where
    F: Fn(String, T) -> Fut,
    Fut: Future<Output = Result<O, Error>>,
{
    let mut index: HashMap<String, usize> = HashMap::with_capacity(items.len());
    let mut chains: Vec<(String, Vec<T>)> = Vec::new();
    for (key, item) in items {
        match index.get(&key) {
            Some(&i) => chains[i].1.push(item),
            None => {
                index.insert(key.clone(), chains.len());
                chains.push((key, vec![item]));
            }
        }
    }
    let f = &f;
    let outputs: Vec<Vec<O>> =
        futures::stream::iter(chains.into_iter().map(|(key, chain)| async move {
            let mut out = Vec::with_capacity(chain.len());
            for item in chain {
                out.push(f(key.clone(), item).await?);
            }
            Ok::<_, Error>(out)
        }))
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
    Ok(outputs.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    #[tokio::test]
    async fn one_key_stays_in_order_while_keys_overlap() {
        let log = Mutex::new(Vec::new());
        let items: Vec<(String, u32)> = (0..40).map(|i| (format!("k{}", i % 4), i)).collect();
        let out = run_keyed(items, 8, |key, i| {
            let log = &log;
            async move {
                // Later items sleep less: without per-key order they would finish first.
                tokio::time::sleep(Duration::from_millis(u64::from(40 - i) / 8)).await;
                log.lock().unwrap().push((key, i));
                Ok(i)
            }
        })
        .await
        .unwrap();
        assert_eq!(out.len(), 40);
        let log = log.into_inner().unwrap();
        for k in 0..4 {
            let seen: Vec<u32> = log
                .iter()
                .filter(|(key, _)| *key == format!("k{k}"))
                .map(|(_, i)| *i)
                .collect();
            let mut sorted = seen.clone();
            sorted.sort();
            assert_eq!(seen, sorted, "key k{k} reordered");
            assert_eq!(seen.len(), 10);
        }
    }

    #[tokio::test]
    async fn first_error_stops_the_batch() {
        let items: Vec<(String, u32)> = (0..5).map(|i| (format!("k{i}"), i)).collect();
        let result = run_keyed(items, 2, |_, i| async move {
            if i == 3 {
                Err(Error::Config("boom".into()))
            } else {
                Ok(i)
            }
        })
        .await;
        assert!(result.is_err());
    }
}
