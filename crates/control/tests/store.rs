//! The store against a real nats-server: tenants and keys, subscription CRUD with compare-and-set, tenant
//! scoping (another tenant's id is not found), quotas, nothing written on a refused create, progress, stats
//! and usage.

use fpaas_control::{
    Quotas, Store, StoreErrorKind, StoreSettings, SubState, SubStats, SubscriptionPatch,
    SubscriptionSpec, TenantPatch, TenantSpec, layout,
};
use fpaas_testkit::NatsServer;
use serde_json::json;

async fn store(server: &NatsServer) -> Store {
    let client = fpaas_bus::connect(&server.url(), "control-test")
        .await
        .expect("connect");
    let js = fpaas_bus::jetstream(client, 16);
    Store::open(&js, &StoreSettings::default())
        .await
        .expect("open store")
}

fn spec(url: &str) -> SubscriptionSpec {
    serde_json::from_value(json!({
        "name": "likes",
        "filter": {"collections": ["app.bsky.feed.like"]},
        "delivery": {"type": "webhook", "url": url}
    }))
    .unwrap()
}

#[tokio::test]
async fn tenants_keys_subscriptions_and_scoping() {
    let server = NatsServer::new();
    let store = store(&server).await;

    let (a, key_a, token_a) = store
        .create_tenant(
            TenantSpec {
                name: "acme".into(),
                quotas: Quotas {
                    max_subscriptions: 2,
                    ..Quotas::default()
                },
            },
            "first",
        )
        .await
        .unwrap();
    let (b, _, token_b) = store
        .create_tenant(
            TenantSpec {
                name: "bravo".into(),
                ..Default::default()
            },
            "",
        )
        .await
        .unwrap();
    assert_eq!(store.authenticate(&token_a).await.unwrap().unwrap(), key_a);
    assert_eq!(
        store
            .authenticate(&token_b)
            .await
            .unwrap()
            .unwrap()
            .tenant_id,
        b.id
    );
    assert!(store.authenticate("fpk_nope").await.unwrap().is_none());
    assert!(store.authenticate("garbage").await.unwrap().is_none());
    let tenants = store.list_tenants().await.unwrap();
    assert_eq!(
        tenants.iter().map(|t| &t.id).collect::<Vec<_>>(),
        [&a.id, &b.id]
    );

    // Keys.
    let (key2, token2) = store.create_key(&a.id, "second").await.unwrap();
    assert_eq!(store.list_keys(&a.id).await.unwrap().len(), 2);
    assert_eq!(
        store
            .delete_key(&b.id, &key2.key_id)
            .await
            .unwrap_err()
            .kind(),
        StoreErrorKind::NotFound,
        "another tenant's key"
    );
    store.delete_key(&a.id, &key2.key_id).await.unwrap();
    assert!(store.authenticate(&token2).await.unwrap().is_none());

    // Subscriptions.
    let s1 = store
        .create_subscription(&a, spec("https://example.com/1"))
        .await
        .unwrap();
    assert_eq!(s1.state, SubState::Active);
    assert_eq!(s1.generation, 1);
    assert!(s1.secrets[0].secret.starts_with("whsec_"));
    let (got, rev) = store.subscription(&a.id, &s1.id).await.unwrap();
    assert_eq!(got, s1);
    assert_eq!(
        store.subscription(&b.id, &s1.id).await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );
    assert_eq!(
        store.subscription(&a.id, "*").await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );
    assert!(store.list_subscriptions(&b.id).await.unwrap().is_empty());
    assert_eq!(
        store
            .delete_subscription(&b.id, &s1.id)
            .await
            .unwrap_err()
            .kind(),
        StoreErrorKind::NotFound
    );
    assert_eq!(
        store.stats(&b.id, &s1.id).await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );

    // Update with compare-and-set.
    let patch = SubscriptionPatch {
        state: Some(SubState::Paused),
        ..Default::default()
    };
    let (paused, rev2) = store
        .update_subscription(&a, &s1.id, Some(rev), |s| Ok(s.patched(&patch)))
        .await
        .unwrap();
    assert_eq!(paused.state, SubState::Paused);
    assert_eq!(paused.generation, 2);
    assert!(rev2 > rev);
    let stale = store
        .update_subscription(&a, &s1.id, Some(rev), |s| Ok(s.patched(&patch)))
        .await
        .unwrap_err();
    assert_eq!(stale.kind(), StoreErrorKind::Conflict);
    // An invalid change is refused and nothing is written.
    let bad: SubscriptionPatch = serde_json::from_value(json!({"transform": "foo.["})).unwrap();
    let err = store
        .update_subscription(&a, &s1.id, None, |s| Ok(s.patched(&bad)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Invalid);
    assert_eq!(err.validation().unwrap().code.as_str(), "bad_jmespath");
    assert_eq!(store.subscription(&a.id, &s1.id).await.unwrap().1, rev2);

    // Quota: 2 subscriptions.
    let s2 = store
        .create_subscription(&a, spec("https://example.com/2"))
        .await
        .unwrap();
    let over = store
        .create_subscription(&a, spec("https://example.com/3"))
        .await
        .unwrap_err();
    assert_eq!(over.kind(), StoreErrorKind::Quota);
    assert_eq!(store.count_subscriptions(&a.id).await.unwrap(), 2);
    // A refused create writes nothing.
    let invalid = store
        .create_subscription(&b, spec("not a url"))
        .await
        .unwrap_err();
    assert_eq!(invalid.kind(), StoreErrorKind::Invalid);
    assert_eq!(store.count_subscriptions(&b.id).await.unwrap(), 0);

    // Stats, progress, usage (written here as the worker would).
    store
        .stats_bucket()
        .put(
            &layout::stats_key(&s1.id),
            serde_json::to_vec(&SubStats {
                matched_events: 10,
                delivered_events: 7,
                delivered_bytes: 700,
                ..Default::default()
            })
            .unwrap()
            .into(),
        )
        .await
        .unwrap();
    store
        .stats_bucket()
        .put(
            &layout::stats_key(&s2.id),
            serde_json::to_vec(
                &json!({"matched_events": 5, "delivered_events": 5, "delivered_bytes": 50}),
            )
            .unwrap()
            .into(),
        )
        .await
        .unwrap();
    store
        .progress_bucket()
        .put(
            &layout::progress_key(&s1.id),
            br#"{"acked_seq": 77, "pending": null}"#.to_vec().into(),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .stats(&a.id, &s1.id)
            .await
            .unwrap()
            .unwrap()
            .delivered_events,
        7
    );
    assert_eq!(
        store
            .progress(&a.id, &s1.id)
            .await
            .unwrap()
            .unwrap()
            .acked_seq,
        77
    );
    assert!(store.progress(&a.id, &s2.id).await.unwrap().is_none());
    let usage = store.usage(&a.id).await.unwrap();
    assert_eq!(
        (
            usage.subscriptions,
            usage.matched_events,
            usage.delivered_events,
            usage.delivered_bytes
        ),
        (2, 15, 12, 750)
    );
    assert_eq!(store.usage(&b.id).await.unwrap().delivered_events, 0);

    // Tenant update and delete.
    let a2 = store
        .update_tenant(
            &a.id,
            &TenantPatch {
                quotas: Some(fpaas_control::QuotasPatch {
                    max_subscriptions: Some(5),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(a2.quotas.max_subscriptions, 5);
    assert_eq!(a2.quotas.max_dids_per_filter, 10_000);
    store.delete_subscription(&a.id, &s2.id).await.unwrap();
    assert_eq!(store.list_subscriptions(&a.id).await.unwrap().len(), 1);
    store.delete_tenant(&a.id).await.unwrap();
    assert_eq!(
        store.tenant(&a.id).await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );
    assert!(store.authenticate(&token_a).await.unwrap().is_none());
    assert_eq!(store.count_subscriptions(&a.id).await.unwrap(), 0);
    assert_eq!(store.list_tenants().await.unwrap().len(), 1);
}
