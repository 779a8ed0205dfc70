//! Ed25519 verification of cluster calls, in batches when calls arrive together.
//!
//! One ed25519 verification costs ~32 µs on the bench machine; a batch of 8 or more costs
//! ~14 µs a signature (`ed25519_dalek::verify_batch`: one multiscalar multiplication with
//! 128-bit coefficients drawn from a transcript of the whole batch). Each call hands its
//! signature base, signature and key to a verifier task and waits; the task takes whatever
//! calls are waiting when it runs (up to [`MAX_BATCH`]), so under load a batch forms by
//! itself and a lone call is verified alone, at once, with `verify_strict`. There is one
//! verifier task per runtime worker thread, calls dealt to them in turn, so verification
//! spreads over the cores as it did when each call verified its own.
//!
//! A batch that fails is verified again one call at a time with `verify_strict`, so a bad
//! signature refuses only its own call. The batch equation is not `verify_strict`'s (no
//! small-order checks, and whether a signature with a small-order component passes can
//! depend on the batch it lands in); such a signature can only be made by the holder of
//! the private key, so a batch never accepts a forgery. Keys of small order never enter a
//! batch. Nothing changes on the wire: every call is still signed by its host's ed25519
//! key (docs/security.md, "What the signature covers").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ed25519_dalek::{Signature, VerifyingKey};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// The most signatures verified in one batch (gains flatten out past ~16).
pub const MAX_BATCH: usize = 64;

struct Job {
    base: String,
    signature: Signature,
    key: VerifyingKey,
    done: oneshot::Sender<bool>,
}

/// Hands signatures to the verifier tasks.
pub struct BatchVerifier {
    tasks: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl BatchVerifier {
    /// Starts one verifier task per worker thread of the current tokio runtime.
    pub fn spawn(metrics: Arc<Metrics>) -> Self {
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let tasks = (0..workers.max(1))
            .map(|_| {
                let (jobs, rx) = mpsc::unbounded_channel();
                tokio::spawn(run(rx, metrics.clone()));
                jobs
            })
            .collect();
        BatchVerifier {
            tasks,
            next: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Whether `signature` is `key`'s over `base`; `None` if the verifier task is gone.
    pub async fn verify(
        &self,
        base: String,
        signature: Signature,
        key: VerifyingKey,
    ) -> Option<bool> {
        let (done, verdict) = oneshot::channel();
        let job = Job {
            base,
            signature,
            key,
            done,
        };
        let task = &self.tasks[self.next.fetch_add(1, Ordering::Relaxed) % self.tasks.len()];
        if let Err(mpsc::error::SendError(job)) = task.send(job) {
            // No task to batch with (the runtime is shutting down): verify here.
            self.metrics.verified(1);
            return Some(strict(&job));
        }
        verdict.await.ok()
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Job>, metrics: Arc<Metrics>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        // A call whose client went away needs no answer.
        jobs.retain(|j| !j.done.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let verdicts = settle(&jobs);
        metrics.verified(jobs.len() as u64);
        for (job, ok) in jobs.drain(..).zip(verdicts) {
            let _ = job.done.send(ok);
        }
    }
}

fn strict(job: &Job) -> bool {
    job.key
        .verify_strict(job.base.as_bytes(), &job.signature)
        .is_ok()
}

/// One verdict per job: the whole batch at once when it passes, else one by one.
fn settle(jobs: &[Job]) -> Vec<bool> {
    if jobs.len() > 1 && jobs.iter().all(|j| !j.key.is_weak()) {
        let messages: Vec<&[u8]> = jobs.iter().map(|j| j.base.as_bytes()).collect();
        let signatures: Vec<Signature> = jobs.iter().map(|j| j.signature).collect();
        let keys: Vec<VerifyingKey> = jobs.iter().map(|j| j.key).collect();
        if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
            return vec![true; jobs.len()];
        }
    }
    jobs.iter().map(strict).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};

    fn job(key: &SigningKey, base: &str, signed: &str) -> (Job, oneshot::Receiver<bool>) {
        let (done, rx) = oneshot::channel();
        let job = Job {
            base: base.to_string(),
            signature: key.sign(signed.as_bytes()),
            key: key.verifying_key(),
            done,
        };
        (job, rx)
    }

    #[test]
    fn a_bad_signature_fails_only_its_own_call() {
        let a = SigningKey::from_bytes(&[1; 32]);
        let b = SigningKey::from_bytes(&[2; 32]);
        let mut jobs = Vec::new();
        for i in 0..10 {
            let base = format!("call {i}");
            let signer = if i == 6 { &b } else { &a };
            let signed = if i == 3 { "something else" } else { &base };
            let (mut j, _) = job(signer, &base, signed);
            if i == 6 {
                // Signed by b, presented as a's.
                j.key = a.verifying_key();
            }
            jobs.push(j);
        }
        let verdicts = settle(&jobs);
        let expected: Vec<bool> = (0..10).map(|i| i != 3 && i != 6).collect();
        assert_eq!(verdicts, expected);
        // All good: the batch passes as a whole; a lone call too.
        let good: Vec<Job> = (0..5)
            .map(|i| job(&a, &format!("{i}"), &format!("{i}")).0)
            .collect();
        assert_eq!(settle(&good), vec![true; 5]);
        assert_eq!(settle(&good[..1]), vec![true]);
        assert_eq!(settle(&jobs[3..4]), vec![false]);
    }

    #[tokio::test]
    async fn concurrent_calls_are_verified_together_and_each_gets_its_verdict() {
        let metrics = Arc::new(Metrics::default());
        let v = Arc::new(BatchVerifier::spawn(metrics.clone()));
        let a = SigningKey::from_bytes(&[1; 32]);
        let calls = (0..40).map(|i| {
            let v = v.clone();
            let base = format!("call {i}");
            let signature = a.sign(if i % 7 == 0 {
                b"other"
            } else {
                base.as_bytes()
            });
            let key = a.verifying_key();
            tokio::spawn(async move { (i, v.verify(base, signature, key).await) })
        });
        for call in calls.collect::<Vec<_>>() {
            let (i, verdict) = call.await.expect("task");
            assert_eq!(verdict, Some(i % 7 != 0), "call {i}");
        }
        let (batches, signatures) = metrics.verifications();
        assert_eq!(signatures, 40);
        // On one thread the 40 calls queue before the verifier runs: fewer batches than calls.
        assert!(batches < 40, "{batches} batches");
    }
}
