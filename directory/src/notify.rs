//! NOTIFY (RFC 1996): tells each of a zone's secondaries that the zone
//! changed, signed with the secondary's TSIG key (RFC 8945), so it asks for
//! the change (IXFR) at once instead of at its next refresh.
//!
//! One task per (zone, secondary) holds the latest serial to announce. It
//! sends a NOTIFY over UDP and waits for the secondary's signed answer,
//! trying again after 1, 2, 4 and 8 s (§3.6) and then every 10 s until it
//! answers, so a secondary that was down hears of the change when it is back;
//! a newer serial meanwhile starts over with it. Every secondary is told once at start, as a restart
//! may have missed changes (§3.7). Nothing here holds up a change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::Query;
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use crate::state::Directory;
use crate::tsig;

/// Waits for a secondary's answer before sending again: 1, 2, 4, 8 s.
const TRIES: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// After the quick tries, how often an unanswered NOTIFY is sent again.
const PATIENCE: Duration = Duration::from_secs(10);

/// What a secondary is told: the zone at a serial, signed with a key.
#[derive(Clone)]
struct Notice {
    origin: String,
    serial: u32,
    key: tsig::Key,
}

/// Runs until `stop`: follows the directory's changes and keeps every
/// secondary told.
pub async fn run(dir: Arc<Directory>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut changes = dir.subscribe();
    let mut tellers: HashMap<(String, SocketAddr), tokio::sync::watch::Sender<Option<Notice>>> =
        HashMap::new();
    loop {
        let mut wanted = Vec::new();
        for origin in dir.origins() {
            let current = dir
                .view()
                .load()
                .zones
                .iter()
                .find(|z| z.origin.to_string() == origin)
                .map(|z| z.serial);
            let Some(serial) = current else { continue };
            dir.read(&origin, |z| {
                for s in z.secondaries.values() {
                    let key = z
                        .tsig
                        .get(&s.tsig)
                        .and_then(|k| tsig::Key::new(&k.name, k.secret_bytes()));
                    if let Some(key) = key {
                        wanted.push((
                            (origin.clone(), s.addr),
                            Notice {
                                origin: origin.clone(),
                                serial,
                                key,
                            },
                        ));
                    }
                }
            });
        }
        // Secondaries removed: their tasks end when their sender goes.
        tellers.retain(|k, _| wanted.iter().any(|(w, _)| w == k));
        for (k, notice) in wanted {
            let addr = k.1;
            let tx = tellers.entry(k).or_insert_with(|| {
                let (tx, rx) = tokio::sync::watch::channel(None);
                tokio::spawn(tell(addr, rx));
                tx
            });
            let stale = tx
                .borrow()
                .as_ref()
                .is_none_or(|n| n.serial != notice.serial);
            if stale {
                tx.send_replace(Some(notice));
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

/// Keeps one secondary told of the latest notice.
async fn tell(addr: SocketAddr, mut rx: tokio::sync::watch::Receiver<Option<Notice>>) {
    let bind: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = match tokio::net::UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(secondary = %addr, error = %e, "cannot open a socket to send NOTIFY");
            return;
        }
    };
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let Some(notice) = rx.borrow_and_update().clone() else {
            continue;
        };
        // The quick tries, then every `PATIENCE` until it answers: a secondary
        // that was down hears of the change when it is back.
        let waits = TRIES.into_iter().chain(std::iter::repeat(PATIENCE));
        for (i, wait) in waits.enumerate() {
            if i == TRIES.len() {
                tracing::warn!(zone = %notice.origin, serial = notice.serial, secondary = %addr, "secondary does not answer NOTIFY; trying every {}s until it does", PATIENCE.as_secs());
            }
            match notify_once(&socket, addr, &notice, wait).await {
                Ok(()) => {
                    tracing::info!(zone = %notice.origin, serial = notice.serial, secondary = %addr, "secondary notified");
                    break;
                }
                Err(e) => {
                    tracing::debug!(zone = %notice.origin, secondary = %addr, error = %e, "NOTIFY not answered yet")
                }
            }
            if rx.has_changed().unwrap_or(true) {
                break;
            }
        }
    }
}

/// A NOTIFY message for `origin`, unsigned: header and question (origin SOA
/// IN). The optional SOA in the answer section (§3.7) is left out: a
/// secondary asks for the SOA itself.
fn message(id: u16, origin: &str) -> Option<Vec<u8>> {
    let name = Name::from_ascii(origin).ok()?;
    let mut buf = Vec::with_capacity(128);
    let mut enc = BinEncoder::new(&mut buf);
    // ID; opcode NOTIFY (4), AA; one question.
    enc.emit_u16(id).ok()?;
    enc.emit_vec(&[0x24, 0, 0, 1, 0, 0, 0, 0, 0, 0]).ok()?;
    Query::query(name, RecordType::SOA).emit(&mut enc).ok()?;
    Some(buf)
}

/// Sends one signed NOTIFY and waits `wait` for its signed answer.
async fn notify_once(
    socket: &tokio::net::UdpSocket,
    addr: SocketAddr,
    notice: &Notice,
    wait: Duration,
) -> Result<(), String> {
    let id: u16 = rand::random();
    let mut m = message(id, &notice.origin).ok_or("the zone's name does not encode")?;
    let mac = tsig::sign(
        &mut m,
        &notice.key,
        None,
        false,
        crate::time::unix_secs(),
        0,
        &[],
    );
    socket
        .send_to(&m, addr)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| format!("receive: {e}"))?;
        let answer = &buf[..n];
        if from != addr || n < 12 || answer[0..2] != id.to_be_bytes() || answer[2] & 0x80 == 0 {
            continue;
        }
        let rcode = answer[3] & 0x0f;
        if rcode != 0 {
            return Err(format!("answered with rcode {rcode}"));
        }
        return tsig::verify_answer(answer, &notice.key, &mac, crate::time::unix_secs());
    }
}
