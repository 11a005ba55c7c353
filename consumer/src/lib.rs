//! The consumer Worker: exports one database per queue message into R2 and records the run.
//! It also consumes the dead-letter queue, where messages land after their last retry.

use platform::d1_source::D1Source;
use platform::meta::{self, RunView};
use platform::r2_sink::MultipartSink;
use platform::{bindings, config, now};
use shared::dump::{export, DumpOptions, DumpSummary};
use shared::message::BackupMessage;
use shared::state::RunState;
use worker::*;

/// Name of the dead-letter queue (see consumer/wrangler.toml).
const DEAD_LETTER_QUEUE: &str = "backup-jobs-dlq";

#[event(queue)]
async fn queue(batch: MessageBatch<serde_json::Value>, env: Env, _ctx: Context) -> Result<()> {
    let dead_letters = batch.queue() == DEAD_LETTER_QUEUE;
    // Each message is acknowledged or retried on its own: one failing database never makes
    // the others in the batch run again.
    for message in batch.messages()? {
        let parsed = BackupMessage::from_json(message.body().clone());
        let outcome = match parsed {
            Err(e) => {
                console_error!("dropping unreadable message {}: {e}", message.id());
                Outcome::Done
            }
            Ok(msg) if dead_letters => bury(&env, &msg).await,
            Ok(msg) => back_up(&env, &msg).await,
        };
        match outcome {
            Outcome::Done => message.ack(),
            Outcome::Retry => message.retry(),
        }
    }
    Ok(())
}

enum Outcome {
    Done,
    Retry,
}

async fn back_up(env: &Env, msg: &BackupMessage) -> Outcome {
    let label = format!("job {} database {}", msg.job_id, msg.database);
    let meta_db = match env.d1(bindings::META) {
        Ok(db) => db,
        Err(e) => {
            console_error!("{label}: META binding unavailable: {e}");
            return Outcome::Retry;
        }
    };
    let run = match meta::find_run(&meta_db, &msg.job_id, &msg.database).await {
        Ok(Some(run)) => run,
        Ok(None) => {
            console_error!("{label}: no such run recorded; dropping the message");
            return Outcome::Done;
        }
        Err(e) => {
            console_error!("{label}: reading the run failed: {e}");
            return Outcome::Retry;
        }
    };
    if run.state() == RunState::Succeeded {
        console_log!("{label}: already succeeded; duplicate delivery acknowledged");
        return Outcome::Done;
    }
    if let Err(e) = meta::start_run(&meta_db, &run.id, now()).await {
        console_error!("{label}: recording the start failed: {e}");
        return Outcome::Retry;
    }
    match export_to_r2(env, msg).await {
        Ok(summary) => {
            let key = msg.backup_key();
            match meta::succeed_run(&meta_db, &run, &key, &summary, now()).await {
                Ok(()) => {
                    console_log!(
                        "{label}: {} bytes, {} rows in {} tables -> {}",
                        summary.bytes,
                        summary.rows,
                        summary.tables.len(),
                        key.to_key()
                    );
                    Outcome::Done
                }
                Err(e) => record_failure(&meta_db, &run, &label, &format!("recording the backup failed: {e}")).await,
            }
        }
        Err(e) => record_failure(&meta_db, &run, &label, &e).await,
    }
}

async fn record_failure(meta_db: &D1Database, run: &RunView, label: &str, error: &str) -> Outcome {
    console_error!("{label}: attempt failed: {error}");
    if let Err(e) = meta::fail_run(meta_db, &run.id, RunState::Retrying, error, now()).await {
        console_error!("{label}: recording the failure failed too: {e}");
    }
    Outcome::Retry
}

/// Streams the dump of `msg.database` into a multipart upload at its final key; the object
/// only becomes visible when the dump is complete.
async fn export_to_r2(env: &Env, msg: &BackupMessage) -> std::result::Result<DumpSummary, String> {
    let databases = config::databases(env).map_err(|e| e.to_string())?;
    let binding = databases
        .iter()
        .find(|d| d.name == msg.database)
        .map(|d| d.binding.clone())
        .ok_or_else(|| format!("database {:?} is not configured", msg.database))?;
    let source_db = env.d1(&binding).map_err(|e| format!("binding {binding}: {e}"))?;
    let bucket = env.bucket(bindings::BACKUPS).map_err(|e| e.to_string())?;
    let key = msg.backup_key().to_key();

    let mut sink = MultipartSink::create(&bucket, &key).await.map_err(|e| e.to_string())?;
    let opts = DumpOptions::new(&msg.database, now());
    match export(&mut D1Source::new(source_db), &mut sink, &opts).await {
        Ok(summary) => {
            sink.complete().await.map_err(|e| e.to_string())?;
            Ok(summary)
        }
        Err(e) => {
            if let Err(abort_error) = sink.abort().await {
                console_error!("aborting the upload of {key} failed: {abort_error}");
            }
            Err(e.to_string())
        }
    }
}

/// A message whose retries are exhausted: the run is dead, with its last error kept.
async fn bury(env: &Env, msg: &BackupMessage) -> Outcome {
    let label = format!("job {} database {}", msg.job_id, msg.database);
    let result = async {
        let meta_db = env.d1(bindings::META)?;
        if let Some(run) = meta::find_run(&meta_db, &msg.job_id, &msg.database).await? {
            if run.state() != RunState::Succeeded {
                let error = run.error.clone().unwrap_or_else(|| "retries exhausted".into());
                meta::fail_run(&meta_db, &run.id, RunState::Dead, &error, now()).await?;
                console_error!("{label}: dead after {} attempts: {error}", run.attempts);
            }
        }
        Ok::<(), Error>(())
    }
    .await;
    match result {
        Ok(()) => Outcome::Done,
        Err(e) => {
            console_error!("{label}: recording the dead letter failed: {e}");
            Outcome::Retry
        }
    }
}
