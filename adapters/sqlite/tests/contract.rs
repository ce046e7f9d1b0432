//! The SQLite stores through the same contract cases as the memory and DynamoDB ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_core::contract::{
    a_queue_keeps_its_leases, checkpoint_never_moves_back, first_write_wins,
};
use leadpipe_local::LocalDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_stores_keep_the_contract() {
    let path = std::env::temp_dir().join(format!("leadpipe-contract-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let db = LocalDb::open(&path).unwrap();
    first_write_wins(&db, "s", async |id: &str| {
        db.leads()
            .unwrap()
            .into_iter()
            .find(|r| r.lead_id == id)
            .map(|r| {
                let at = time::OffsetDateTime::parse(
                    &r.ingested_at,
                    &time::format_description::well_known::Rfc3339,
                )
                .unwrap();
                (r.source.as_str().to_owned(), at.unix_timestamp())
            })
    })
    .await
    .unwrap();
    checkpoint_never_moves_back(&db, "form#1").await.unwrap();
    a_queue_keeps_its_leases(&db).await.unwrap();
}
