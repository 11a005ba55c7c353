//! The archiver Worker: weekly compaction of dailies into `weekly/YYYY-Www.tar.gz` and
//! retention. Its cron is wired now; the archive and retention logic arrive with the archiver
//! issue, so the handler only reports the week it will archive.

use chrono::Datelike;
use platform::millis_to_utc;
use worker::*;

#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, _env: Env, _ctx: ScheduleContext) {
    let at = millis_to_utc(event.schedule() as i64);
    // The ISO week that just ended: the archiver runs on Sundays, archiving Monday to Sunday.
    let week = (at - chrono::Duration::days(1)).iso_week();
    console_log!(
        "archiver cron {} at {at}: weekly archive of {}-W{:02} is not implemented yet",
        event.cron(),
        week.year(),
        week.week()
    );
}
