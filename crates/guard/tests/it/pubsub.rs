//! The pub/sub helper, in-process and through Redis.

use std::sync::{Arc, Mutex};

use guard::{BusEvent, PubSub, RedisStore};

use crate::common::{eventually, fast_redis_settings, redis_url_or_skip, unique_prefix};

fn msg(channel: &str, payload: &str) -> BusEvent {
    BusEvent::Message {
        channel: channel.into(),
        payload: payload.into(),
    }
}

#[tokio::test]
async fn local_pubsub_delivers_to_subscribers() {
    let bus = PubSub::local();
    let got: Arc<Mutex<Vec<BusEvent>>> = Arc::default();
    let sink = got.clone();
    let mut sub = bus
        .subscribe(&["a", "b"], move |e| sink.lock().unwrap().push(e))
        .unwrap();
    sub.ready().await;
    bus.publish("a", "1").await.unwrap();
    bus.publish("c", "ignored").await.unwrap();
    bus.publish("b", "2").await.unwrap();
    assert_eq!(*got.lock().unwrap(), vec![msg("a", "1"), msg("b", "2")]);
    drop(sub);
    bus.publish("a", "after drop").await.unwrap();
    assert_eq!(got.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn redis_pubsub_delivers_to_subscribers() {
    let Some(url) = redis_url_or_skip("redis_pubsub_delivers_to_subscribers") else {
        return;
    };
    let store = RedisStore::connect(&url, fast_redis_settings())
        .await
        .unwrap();
    let bus = PubSub::redis(&store);
    let (a, b) = (unique_prefix("ps-a"), unique_prefix("ps-b"));
    let got: Arc<Mutex<Vec<BusEvent>>> = Arc::default();
    let sink = got.clone();
    let mut sub = bus
        .subscribe(&[&a, &b], move |e| sink.lock().unwrap().push(e))
        .unwrap();
    sub.ready().await;
    assert!(sub.is_ready());
    bus.publish(&a, "1").await.unwrap();
    bus.publish(&b, "2").await.unwrap();
    assert!(eventually(2000, || async { got.lock().unwrap().len() == 2 }).await);
    assert_eq!(*got.lock().unwrap(), vec![msg(&a, "1"), msg(&b, "2")]);
    drop(sub);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    bus.publish(&a, "after drop").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        got.lock().unwrap().len(),
        2,
        "no Reconnected, no late message"
    );
}
