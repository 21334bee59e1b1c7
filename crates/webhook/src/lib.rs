//! Webhook delivery, the parts that do not know about subscriptions or NATS:
//!
//! - [`guard`]: the SSRF guard — [`AddrPolicy`] (which destination addresses are allowed), the URL check the API
//!   runs when a subscription is created, and a DNS resolver for reqwest that returns only allowed addresses,
//!   so the client connects exactly to what was checked.
//! - [`sign`]: Standard Webhooks signatures — [`Secret`] (`whsec_…`), [`sign()`](sign::sign) with every current
//!   secret, [`verify()`](sign::verify) as a receiver does it.
//! - [`sender`]: the [`Sender`] (one signed POST through the guard, the answer classified as an [`Outcome`]) and
//!   the [`RetrySchedule`] (backoff with jitter, honouring `Retry-After`).

pub mod guard;
pub mod sender;
pub mod sign;

pub use guard::{AddrClass, AddrPolicy, GuardError, GuardedResolver, classify};
pub use sender::{BatchRequest, Outcome, RetryReason, RetrySchedule, Sender, SenderError};
pub use sign::{Secret, SecretError, VerifyError};
