//! [`AppState`]: what every handler shares — the control-plane store, the dead-letter log and the admin
//! token's hash, and the webhook sender of dead-letter replays.

use fpaas_bus::{MsgLog, MsgLogSettings};
use fpaas_control::{Store, StoreSettings, layout};

use crate::ApiConfig;

/// Shared handler state; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Tenants, keys, subscriptions, progress, stats.
    pub store: Store,
    /// The dead-letter stream.
    pub dlq: MsgLog,
    /// SHA-256 of the admin token (`None`: admin routes refuse everyone).
    pub admin_token_sha256: Option<[u8; 32]>,
    /// Posts replayed dead letters; its address policy also checks the URLs of new subscriptions.
    pub sender: fpaas_webhook::Sender,
    /// The NATS client (the console's playground and live tail read streams with it).
    pub client: fpaas_bus::Client,
    /// The firehose stream's name (`subscribe.stream` of the configuration: the stream `/subscribe` reads too).
    pub firehose_stream: String,
    /// Open state watches and live tails per tenant (bounded by [`crate::state_api::MAX_WATCHES_PER_TENANT`]).
    pub watches: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl AppState {
    /// Opens (creating when needed) the control-plane buckets and the dead-letter stream.
    ///
    /// # Errors
    /// NATS cannot be reached or refuses the configuration.
    pub async fn open(
        js: &fpaas_bus::JetStream,
        config: &ApiConfig,
    ) -> Result<Self, crate::ServeError> {
        let store = Store::open(
            js,
            &StoreSettings {
                replicas: config.replicas,
                storage: fpaas_bus::Storage::File,
            },
        )
        .await
        .map_err(crate::ServeError::Store)?;
        let dlq = fpaas_bus::ensure_msglog(
            js,
            &MsgLogSettings {
                name: layout::DLQ_STREAM.to_owned(),
                subjects: vec![layout::DLQ_SUBJECTS.to_owned()],
                max_age_secs: config.dlq_max_age_secs,
                replicas: config.replicas,
                ..MsgLogSettings::default()
            },
        )
        .await
        .map_err(crate::ServeError::Bus)?;
        let sender = fpaas_webhook::Sender::new(config.webhook_addresses.clone())
            .map_err(crate::ServeError::Webhook)?;
        Ok(Self {
            client: js.client(),
            firehose_stream: config.subscribe.stream.clone(),
            store,
            dlq,
            sender,
            watches: std::sync::Arc::default(),
            admin_token_sha256: config
                .admin_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(crate::auth::sha256),
        })
    }
}
