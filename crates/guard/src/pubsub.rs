//! A small pub/sub helper for cache invalidation across nodes.
//!
//! ```no_run
//! # async fn demo(store: guard::RedisStore) -> Result<(), guard::GuardError> {
//! use guard::{BusEvent, PubSub};
//! let bus = PubSub::redis(&store);
//! let mut sub = bus.subscribe(&["gap:cache:keys"], |event| match event {
//!     BusEvent::Message { channel, payload } => { /* drop `payload` from the cache */ }
//!     BusEvent::Reconnected => { /* messages may have been missed: flush the whole cache */ }
//! })?;
//! sub.ready().await; // the SUBSCRIBE is confirmed
//! bus.publish("gap:cache:keys", "key:42").await?;
//! # Ok(()) }
//! ```
//!
//! With Redis the subscriber is a background task on its own connection. When that connection
//! drops (or a periodic PING goes unanswered) it reconnects with backoff, subscribes again, and
//! then delivers [`BusEvent::Reconnected`]: messages published while it was away are lost, so
//! the receiver must flush what those messages would have invalidated. The same event follows a
//! first subscription that only succeeded after failed attempts. [`PubSub::local`] is the
//! single-node variant: `publish` calls the subscribers of this process directly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::RedisSettings;
use crate::error::GuardError;
use crate::store::RedisStore;

/// What a subscriber's callback receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// A message published on one of the subscribed channels.
    Message {
        /// The channel.
        channel: String,
        /// The message (non-UTF-8 bytes are replaced).
        payload: String,
    },
    /// The subscription was re-established after a loss: messages may have been missed, flush
    /// your caches.
    Reconnected,
}

type Callback = Arc<dyn Fn(BusEvent) + Send + Sync + 'static>;

#[derive(Default)]
struct LocalBus {
    subs: Mutex<Vec<(u64, Vec<String>, Callback)>>,
    next: AtomicU64,
}

#[derive(Clone)]
enum Kind {
    Local(Arc<LocalBus>),
    Redis(RedisStore),
}

/// Publish messages and subscribe to channels; see the [module docs](self).
#[derive(Clone)]
pub struct PubSub {
    kind: Kind,
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Local(_) => "local",
            Kind::Redis(_) => "redis",
        };
        f.debug_struct("PubSub").field("kind", &kind).finish()
    }
}

impl PubSub {
    /// In-process pub/sub for a single node.
    pub fn local() -> Self {
        Self {
            kind: Kind::Local(Arc::new(LocalBus::default())),
        }
    }

    /// Pub/sub through Redis. Publishing uses the store's connection (and fails fast while it is
    /// down); each subscription opens its own connection.
    pub fn redis(store: &RedisStore) -> Self {
        Self {
            kind: Kind::Redis(store.clone()),
        }
    }

    /// Publishes `message` on `channel`.
    pub async fn publish(&self, channel: &str, message: &str) -> Result<(), GuardError> {
        match &self.kind {
            Kind::Local(bus) => {
                let targets: Vec<Callback> = bus
                    .subs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .filter(|(_, chans, _)| chans.iter().any(|c| c == channel))
                    .map(|(_, _, cb)| cb.clone())
                    .collect();
                for cb in targets {
                    cb(BusEvent::Message {
                        channel: channel.to_owned(),
                        payload: message.to_owned(),
                    });
                }
                Ok(())
            }
            Kind::Redis(store) => {
                store.publish(channel, message).await?;
                Ok(())
            }
        }
    }

    /// Delivers the messages of `channels` to `on_event` until the returned [`Subscription`] is
    /// dropped. With Redis this spawns a task (a Tokio runtime must be running).
    pub fn subscribe<F>(&self, channels: &[&str], on_event: F) -> Result<Subscription, GuardError>
    where
        F: Fn(BusEvent) + Send + Sync + 'static,
    {
        let channels: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        let callback: Callback = Arc::new(on_event);
        match &self.kind {
            Kind::Local(bus) => {
                let id = bus.next.fetch_add(1, Ordering::Relaxed);
                bus.subs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((id, channels, callback));
                let (_tx, rx) = watch::channel(true);
                Ok(Subscription {
                    task: None,
                    local: Some((Arc::downgrade(bus), id)),
                    ready: rx,
                })
            }
            Kind::Redis(store) => {
                let handle =
                    tokio::runtime::Handle::try_current().map_err(|_| GuardError::NoRuntime)?;
                let (tx, rx) = watch::channel(false);
                let task = handle.spawn(subscriber(
                    store.link.client.clone(),
                    store.link.settings.clone(),
                    channels,
                    callback,
                    tx,
                ));
                Ok(Subscription {
                    task: Some(task),
                    local: None,
                    ready: rx,
                })
            }
        }
    }
}

/// A live subscription; dropping it unsubscribes (and stops the Redis task).
pub struct Subscription {
    task: Option<JoinHandle<()>>,
    local: Option<(Weak<LocalBus>, u64)>,
    ready: watch::Receiver<bool>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("ready", &*self.ready.borrow())
            .finish()
    }
}

impl Subscription {
    /// Waits until the channels are subscribed (at once for the local bus). After a reconnect
    /// it stays ready; [`BusEvent::Reconnected`] tells about the gap.
    pub async fn ready(&mut self) {
        let _ = self.ready.wait_for(|r| *r).await;
    }

    /// Whether the channels have been subscribed at least once.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub(crate) fn ready_signal(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some((bus, id)) = self.local.take()
            && let Some(bus) = bus.upgrade()
        {
            bus.subs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|(i, _, _)| *i != id);
        }
    }
}

async fn subscriber(
    client: redis::Client,
    settings: RedisSettings,
    channels: Vec<String>,
    on_event: Callback,
    ready: watch::Sender<bool>,
) {
    let connect_timeout = Duration::from_millis(settings.connect_timeout_ms.max(1));
    let response_timeout = Duration::from_millis(settings.response_timeout_ms.max(1));
    let ping_every = Duration::from_millis(settings.pubsub_ping_ms.max(10));
    let min = settings.reconnect_min_ms.max(1);
    let max = settings.reconnect_max_ms.max(min);
    let mut lost = false;
    let mut delay: Option<u64> = None;
    loop {
        if let Ok(Ok(ps)) = tokio::time::timeout(connect_timeout, client.get_async_pubsub()).await {
            let (mut sink, mut stream) = ps.split();
            let subscribed = tokio::time::timeout(
                connect_timeout.max(response_timeout),
                sink.subscribe(&channels),
            )
            .await;
            if let Ok(Ok(())) = subscribed {
                delay = None;
                if lost {
                    on_event(BusEvent::Reconnected);
                }
                ready.send_replace(true);
                let mut ping = tokio::time::interval(ping_every);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ping.tick().await;
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => on_event(BusEvent::Message {
                                channel: msg.get_channel_name().to_owned(),
                                payload: String::from_utf8_lossy(msg.get_payload_bytes()).into_owned(),
                            }),
                            None => break,
                        },
                        _ = ping.tick() => {
                            let pong = tokio::time::timeout(
                                response_timeout,
                                sink.ping::<redis::Value>(),
                            )
                            .await;
                            if !matches!(pong, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                tracing::warn!("guard: pub/sub connection lost, resubscribing");
            }
        }
        lost = true;
        let d = delay.map_or(min, |d| d.saturating_mul(2).min(max));
        delay = Some(d);
        tokio::time::sleep(Duration::from_millis(d)).await;
    }
}
